//! Sensitive-data stage: keeps passwords, card numbers and SSNs out of Redis.
//!
//! Applications cache JSON documents and hashes; a field they forgot to drop must still never
//! reach Redis. For each write command this stage finds the values it stores ([`apply`] knows
//! every supported command's value positions) and, per the key's namespace rules:
//!
//! - removes JSON members whose *name* is a configured field, at any depth, byte for byte:
//!   the member and one separating comma go, nothing else changes ([`super::json`]);
//! - drops hash and stream fields whose name is configured (`HSET`, `HSETNX`, `HMSET`, `XADD`);
//! - with detectors on, replaces string values and JSON leaves holding a card number or a US
//!   SSN with `[REDACTED]`;
//! - or, per `action`, refuses the command (`reject`) or only reports it (`audit`).
//!
//! Field names match ASCII-case-insensitively and ignoring `_` and `-`: each name is
//! *normalized* (separators dropped, ASCII lowercased) and compared by the normalized bytes.
//!
//! # Prefilters: clean values are not parsed
//!
//! Most values hold nothing sensitive, so the common path must stay close to a plain copy.
//! Before any parsing, two cheap scans decide whether a parse could find anything; both are
//! *complete*: they never say "clean" for a value in which the full parse would find a match.
//!
//! **Field names** (only for values that start, after whitespace, with `{` or `[`). A
//! separator-insensitive name has unboundedly many spellings (`c_r-e__dit_card`), so no
//! substring longer than one character is common to all of them. A complete Aho-Corasick set
//! exists (each normalized name, plus `x_y`/`x-y` for each adjacent pair `xy` of a name, plus
//! `x__`-style prefixes of longer separator runs, plus `\u`), but it has ~130 patterns for the
//! six default names, must be ASCII-case-insensitive (which disables the crate's SIMD
//! prefilters) and so runs as a plain DFA: ~1.5 ns/byte, about 95 µs for the benchmark's 64 KB
//! document, several times slower than the scan below. The scan is anchored instead on the
//! byte every member name is followed by: in valid JSON a member is `string ws* ':' ws* value`,
//! so `memchr` finds each `:` (SIMD), and for each one:
//!
//! 1. skip JSON whitespace backwards; unless that lands on a `"`, this colon does not follow a
//!    member name (it is inside a string), so move on;
//! 2. skip `_`/`-` backwards from that closing quote; the byte reached is the last character of
//!    the normalized name, so it must be the last character of some configured name
//!    (a 256-bit set), unless it ends an escape (`\` two or six bytes back), which is decoded
//!    in step 3; most member names stop here;
//! 3. the name starts after the nearest `"` before its closing quote: a configured name cannot
//!    contain `"` (validation refuses it), so a sensitive name's raw bytes cannot contain `\"`
//!    either, and any other escape (including `\u0077`) is decoded exactly as the parser
//!    decodes it. Unescaped names must also start with the first character of some configured
//!    name; then the name is normalized and looked up. A match means "parse".
//!
//! Every member of a valid document has such a colon, and steps 1-3 compute for it exactly what
//! the parser's name lookup computes (the same function), so no match is missed; a wrong guess
//! (a colon inside a string value, after a quoted word that looks like a field) only costs a
//! parse. A backwards scan
//! stops at the nearest quote, and an earlier candidate's closing quote is one, so no byte is
//! scanned backwards twice: the scan is linear.
//!
//! **Detectors.** A card number is at least 13 digits and an SSN 11 bytes, all digits, spaces
//! or dashes. Probing every 11th byte cannot step over a run of 11 such bytes, so only those
//! bytes are looked at; a probe that hits is extended to its whole run, which is then checked,
//! and probing resumes 11 bytes past the run's end.
//! Inside JSON only leaves count (strings, and integers written as plain digits), but a leaf's
//! digits, spaces and dashes are the same bytes in the raw document unless written as escapes,
//! so a loose raw check (a run with ≥ 13 digits, or the SSN shape) is a superset of the exact
//! leaf check; a document with a `\u002X`/`\u003X` escape, which could decode to one of those
//! bytes, is always parsed.
//!
//! # Parsing
//!
//! Only on a possible hit. [`super::json::scan`] validates RFC 8259 (UTF-8, no trailing commas,
//! ...) with at most [`super::json::MAX_DEPTH`] levels, on an explicit stack; a value that is
//! not valid JSON is a plain string: fields do not apply, detectors do.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::json::{self, Leaf, Visitor};
use crate::codec::Argv;
use crate::diag::Problems;

/// Index into [`SensitiveRules::field_names`].
pub type FieldId = u16;

/// Most configured field names in one rule set.
pub const MAX_FIELDS: usize = 1024;
/// Longest configured field name, in bytes.
pub const MAX_FIELD_LEN: usize = 128;
/// What a detected plain string value becomes.
pub const REDACTED: &[u8] = b"[REDACTED]";

// ---------------------------------------------------------------------------------------------
// Configuration

/// `policy.sensitive` (and `policy.namespaces.<ns>.sensitive`) as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSensitive {
    pub fields: Option<Vec<Spanned<String>>>,
    pub action: Option<Spanned<String>>,
    pub detect: Option<Vec<Spanned<String>>>,
    pub publish: Option<Spanned<bool>>,
}

/// What happens to a command carrying sensitive data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SensitiveAction {
    /// Remove the data and forward the rest.
    #[default]
    Strip,
    /// Refuse the whole command.
    Reject,
    /// Forward unchanged; only report.
    Audit,
}

impl SensitiveAction {
    /// The configuration spelling, also used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SensitiveAction::Strip => "strip",
            SensitiveAction::Reject => "reject",
            SensitiveAction::Audit => "audit",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "strip" => Some(SensitiveAction::Strip),
            "reject" => Some(SensitiveAction::Reject),
            "audit" => Some(SensitiveAction::Audit),
            _ => None,
        }
    }
}

/// A value detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detector {
    /// 13-19 digits (single spaces or dashes between digit groups allowed), Luhn-valid, with a
    /// payment-card major industry identifier (first digit 2-6).
    CardNumber,
    /// `ddd-dd-dddd` not adjacent to other digits or dashes, with an area, group and serial
    /// the SSA can issue (not 000/666/9xx, 00, 0000).
    UsSsn,
}

impl Detector {
    pub const ALL: [Detector; 2] = [Detector::CardNumber, Detector::UsSsn];

    /// The configuration spelling, also the metric `field` label of its findings.
    pub fn name(self) -> &'static str {
        match self {
            Detector::CardNumber => "card_number",
            Detector::UsSsn => "us_ssn",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Detector::CardNumber => "a card number",
            Detector::UsSsn => "a US social security number",
        }
    }
}

/// One kind of sensitive data found in a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    /// Index into [`SensitiveRules::field_names`]: a configured field, or for a detector
    /// finding the detector's name (those follow the configured fields).
    pub field: FieldId,
    /// The detector that fired; `None` for a field name match.
    pub detector: Option<Detector>,
}

/// A set of small integers, `64 * W` bits.
#[derive(Clone, Copy)]
struct Bits<const W: usize>([u64; W]);

impl<const W: usize> Default for Bits<W> {
    fn default() -> Self {
        Bits([0; W])
    }
}

impl<const W: usize> Bits<W> {
    /// `i` must be below `64 * W`.
    fn insert(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i >> 6) {
            *w |= 1 << (i & 63);
        }
    }
    #[inline]
    fn contains(&self, i: usize) -> bool {
        self.0.get(i >> 6).is_some_and(|w| w & (1 << (i & 63)) != 0)
    }
}

/// Bytes, as a 256-bit set.
type ByteSet = Bits<4>;

/// A 1024-bit filter over (length, first byte, last byte) of the normalized names. Document
/// member names share first and last letters with configured names often (`status` and
/// `ssn`, `email` and `cvl`); with the length they rarely do, and a name that fails here
/// costs no normalization and no search.
#[derive(Clone, Default)]
struct ShapeFilter(Bits<16>);

impl ShapeFilter {
    #[inline]
    fn slot(len: usize, first: u8, last: u8) -> usize {
        (len.wrapping_mul(131) ^ usize::from(first).wrapping_mul(31) ^ usize::from(last) << 3)
            & 1023
    }
    fn insert(&mut self, len: usize, first: u8, last: u8) {
        self.0.insert(Self::slot(len, first, last));
    }
    #[inline]
    fn contains(&self, len: usize, first: u8, last: u8) -> bool {
        self.0.contains(Self::slot(len, first, last))
    }
}

/// Compiled rules for one namespace (or the default). Cloning shares them.
#[derive(Clone, Default)]
pub struct SensitiveRules {
    inner: Arc<Inner>,
}

#[derive(Clone, Default)]
struct Inner {
    /// Configured field spellings, then the enabled detectors' names.
    labels: Vec<String>,
    field_count: usize,
    /// Normalized names, sorted, for binary search.
    normalized: Vec<(Box<[u8]>, FieldId)>,
    /// First and last byte of every normalized name.
    first: ByteSet,
    last: ByteSet,
    shape: ShapeFilter,
    max_normalized: usize,
    action: SensitiveAction,
    /// The action as configured, which [`SensitiveRules::with_action`] keeps: values that
    /// cannot be inspected are refused unless it is `audit`, and policy audit mode reports
    /// those refusals as it does any other.
    configured: SensitiveAction,
    card: Option<FieldId>,
    ssn: Option<FieldId>,
    /// Scan PUBLISH/SPUBLISH messages. Default rules (`SensitiveRules::default()`) are
    /// inactive, so the `false` there is never consulted.
    publish: bool,
}

impl fmt::Debug for SensitiveRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SensitiveRules")
            .field("fields", &self.field_names())
            .field("action", &self.inner.action)
            .field("card", &self.inner.card.is_some())
            .field("ssn", &self.inner.ssn.is_some())
            .field("publish", &self.inner.publish)
            .finish()
    }
}

#[inline]
fn is_separator(b: u8) -> bool {
    b == b'_' || b == b'-'
}

/// Why a configured field name is unusable, or its normalized form.
fn check_field_name(name: &str) -> Result<Vec<u8>, String> {
    if name.is_empty() {
        return Err("field name is empty".into());
    }
    if name.len() > MAX_FIELD_LEN {
        return Err(format!("field name is longer than {MAX_FIELD_LEN} bytes"));
    }
    // `"` is refused because the prefilter relies on sensitive names never containing an
    // escaped quote; control and non-ASCII characters because matching is ASCII-only.
    if let Some(c) = name
        .chars()
        .find(|&c| !(' '..='~').contains(&c) || c == '"')
    {
        return Err(format!(
            "field name {name:?} contains {c:?}: use printable ASCII characters other than '\"'"
        ));
    }
    let norm: Vec<u8> = name
        .bytes()
        .filter(|&b| !is_separator(b))
        .map(|b| b.to_ascii_lowercase())
        .collect();
    if norm.is_empty() {
        return Err(format!(
            "field name {name:?} has no characters besides the '_' and '-' separators"
        ));
    }
    Ok(norm)
}

/// Normalizes a member or hash field name into `buf`: separators dropped, ASCII lowercased,
/// JSON escapes decoded when `escaped`. `None` when it cannot be a configured name (longer
/// than `max` once normalized, non-ASCII, or a malformed escape).
#[inline]
fn normalize<'b>(
    raw: &[u8],
    escaped: bool,
    max: usize,
    buf: &'b mut [u8; MAX_FIELD_LEN],
) -> Option<&'b [u8]> {
    let mut n = 0;
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        let mut c = b;
        i += 1;
        if escaped && b == b'\\' {
            c = match raw.get(i)? {
                b'u' => {
                    let hex = std::str::from_utf8(raw.get(i + 1..i + 5)?).ok()?;
                    i += 4;
                    u8::try_from(u32::from_str_radix(hex, 16).ok()?).ok()?
                }
                b'b' => 8,
                b'f' => 12,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                &other @ (b'"' | b'\\' | b'/') => other,
                _ => return None,
            };
            i += 1;
        }
        if !c.is_ascii() {
            return None;
        }
        if is_separator(c) {
            continue;
        }
        if n >= max {
            return None;
        }
        *buf.get_mut(n)? = c.to_ascii_lowercase();
        n += 1;
    }
    buf.get(..n)
}

impl SensitiveRules {
    /// Compiles rules from already-validated parts; see [`SensitiveRules::new`].
    fn build(
        fields: Vec<String>,
        normalized: Vec<Vec<u8>>,
        action: SensitiveAction,
        detect: &[Detector],
        publish: bool,
    ) -> SensitiveRules {
        let field_count = fields.len();
        let mut labels = fields;
        let mut card = None;
        let mut ssn = None;
        for d in Detector::ALL {
            if detect.contains(&d) {
                let id = FieldId::try_from(labels.len()).unwrap_or(FieldId::MAX);
                labels.push(d.name().to_string());
                match d {
                    Detector::CardNumber => card = Some(id),
                    Detector::UsSsn => ssn = Some(id),
                }
            }
        }
        let mut first = ByteSet::default();
        let mut last = ByteSet::default();
        let mut shape = ShapeFilter::default();
        let mut max_normalized = 0;
        let mut sorted = Vec::with_capacity(normalized.len());
        for (i, norm) in normalized.into_iter().enumerate() {
            if let (Some(&a), Some(&b)) = (norm.first(), norm.last()) {
                first.insert(usize::from(a));
                last.insert(usize::from(b));
                shape.insert(norm.len(), a, b);
            }
            max_normalized = max_normalized.max(norm.len());
            sorted.push((
                norm.into_boxed_slice(),
                FieldId::try_from(i).unwrap_or(FieldId::MAX),
            ));
        }
        sorted.sort();
        SensitiveRules {
            inner: Arc::new(Inner {
                labels,
                field_count,
                normalized: sorted,
                first,
                last,
                shape,
                max_normalized,
                action,
                configured: action,
                card,
                ssn,
                publish,
            }),
        }
    }

    /// Compiles rules outside configuration loading (tests, benchmarks, tools). Errors are
    /// the same as [`validate`] reports, first one only.
    pub fn new(
        fields: &[&str],
        action: SensitiveAction,
        detect: &[Detector],
        publish: bool,
    ) -> Result<SensitiveRules, String> {
        if fields.len() > MAX_FIELDS {
            return Err(format!("at most {MAX_FIELDS} fields"));
        }
        let mut normalized: Vec<Vec<u8>> = Vec::with_capacity(fields.len());
        for f in fields {
            let norm = check_field_name(f)?;
            if let Some(j) = normalized.iter().position(|n| *n == norm) {
                return Err(duplicate_message(f, fields[j]));
            }
            normalized.push(norm);
        }
        Ok(SensitiveRules::build(
            fields.iter().map(|f| f.to_string()).collect(),
            normalized,
            action,
            detect,
            publish,
        ))
    }

    /// The same rules with another action. Policy `mode: audit` uses it to make every rule
    /// set audit-only; it copies the compiled tables, so call it at load time, not per command.
    pub fn with_action(&self, action: SensitiveAction) -> SensitiveRules {
        let mut inner = (*self.inner).clone();
        inner.action = action;
        SensitiveRules {
            inner: Arc::new(inner),
        }
    }

    /// Configured field spellings, then the enabled detectors' names (`card_number`,
    /// `us_ssn`): every [`Finding::field`] indexes this, so it doubles as the metric label.
    pub fn field_names(&self) -> &[String] {
        &self.inner.labels
    }

    /// Number of configured fields (the first entries of [`SensitiveRules::field_names`]).
    pub fn field_count(&self) -> usize {
        self.inner.field_count
    }

    pub fn action(&self) -> SensitiveAction {
        self.inner.action
    }

    /// True when a write these rules cannot inspect (a partial write, an opaque payload, a
    /// document nested too deep) must be refused: the configured action is not `audit`.
    pub fn refuses_uninspectable(&self) -> bool {
        self.inner.configured != SensitiveAction::Audit
    }

    /// Whether PUBLISH/SPUBLISH messages are scanned.
    pub fn publish(&self) -> bool {
        self.inner.publish
    }

    /// Enabled detectors.
    pub fn detectors(&self) -> impl Iterator<Item = Detector> + '_ {
        let i = &self.inner;
        i.card
            .map(|_| Detector::CardNumber)
            .into_iter()
            .chain(i.ssn.map(|_| Detector::UsSsn))
    }

    /// False when there is nothing to look for; the caller may skip the stage.
    pub fn is_active(&self) -> bool {
        let i = &self.inner;
        i.field_count > 0 || i.card.is_some() || i.ssn.is_some()
    }

    /// The configured field a hash or stream field name (raw bytes, no JSON escapes) matches.
    pub fn is_sensitive_field(&self, name: &[u8]) -> Option<FieldId> {
        self.lookup(name, false)
    }

    #[inline]
    fn lookup(&self, raw: &[u8], escaped: bool) -> Option<FieldId> {
        let i = &*self.inner;
        if i.field_count == 0 {
            return None;
        }
        if !escaped {
            // Most names fail on their last byte: test it before walking the name.
            if let Some(&b) = raw.last() {
                if !is_separator(b) && !i.last.contains(usize::from(b.to_ascii_lowercase())) {
                    return None;
                }
            }
            // Then on their first character or their length; skip normalizing those.
            let mut sig = raw.iter().filter(|&&b| !is_separator(b));
            let first = sig.next()?.to_ascii_lowercase();
            if !i.first.contains(usize::from(first)) {
                return None;
            }
            let (len, last) = sig.fold((1, first), |(n, _), &b| (n + 1, b));
            let last = last.to_ascii_lowercase();
            if !i.last.contains(usize::from(last)) || !i.shape.contains(len, first, last) {
                return None;
            }
        }
        let mut buf = [0u8; MAX_FIELD_LEN];
        let norm = normalize(raw, escaped, i.max_normalized, &mut buf)?;
        let at = i
            .normalized
            .binary_search_by(|(n, _)| n.as_ref().cmp(norm))
            .ok()?;
        i.normalized.get(at).map(|&(_, id)| id)
    }

    /// True when these rules find nothing that `other` would not find too: each field name
    /// (normalized) and each detector of these rules is also one of `other`'s.
    pub fn covered_by(&self, other: &SensitiveRules) -> bool {
        let (a, b) = (&*self.inner, &*other.inner);
        (a.card.is_none() || b.card.is_some())
            && (a.ssn.is_none() || b.ssn.is_some())
            && a.normalized.iter().all(|(name, _)| {
                b.normalized
                    .binary_search_by(|(n, _)| n.as_ref().cmp(name.as_ref()))
                    .is_ok()
            })
    }

    /// Scans one value: `None` when clean (the fast path: no parse, no allocation), else the
    /// findings are appended to `findings` (at most one per field or detector) and, for
    /// [`SensitiveAction::Strip`], the rewritten value is returned. For `Reject` and `Audit`
    /// the return value is always `None`; compare `findings.len()` before and after.
    pub fn scan_value(&self, value: &[u8], findings: &mut Vec<Finding>) -> Option<Bytes> {
        self.scan(value, false, findings, &mut false)
    }

    /// Like [`SensitiveRules::scan_value`] for a value that is JSON by contract (`JSON.SET`):
    /// a top-level scalar is a leaf, and a value that does not parse is left alone (RedisJSON
    /// refuses it).
    pub fn scan_json(&self, value: &[u8], findings: &mut Vec<Finding>) -> Option<Bytes> {
        self.scan(value, true, findings, &mut false)
    }

    /// The scan behind both; `too_deep` is set when the prefilter saw a possible field or
    /// detector hit in a document nested deeper than [`json::MAX_DEPTH`], which the parser
    /// cannot walk: the result then only reflects the value taken as a plain string.
    fn scan(
        &self,
        value: &[u8],
        json_only: bool,
        findings: &mut Vec<Finding>,
        too_deep: &mut bool,
    ) -> Option<Bytes> {
        let r = &*self.inner;
        let detect = r.card.is_some() || r.ssn.is_some();
        if r.field_count == 0 && !detect {
            return None;
        }
        let start = findings.len();
        let doc = json_only || starts_container(value);
        if doc {
            let names = r.field_count > 0 && self.may_contain_field(value);
            let leaves = detect && (self.may_detect(value, false) || has_detectable_escape(value));
            if !names && !leaves {
                return None;
            }
            let mut visitor = Finder {
                rules: self,
                names,
                leaves,
                strip: r.action == SensitiveAction::Strip,
                findings,
                start,
                scratch: Vec::new(),
            };
            let mut edits = Vec::new();
            match json::scan(value, !json_only, &mut visitor, &mut edits) {
                Ok(()) if r.action == SensitiveAction::Strip && !edits.is_empty() => {
                    return Some(Bytes::from(json::apply_edits(value, &edits)));
                }
                Ok(()) => return None,
                Err(e) => {
                    *too_deep |= e == json::Invalid::TooDeep;
                    // Not a document: findings inside it do not count; it is a plain string.
                    findings.truncate(start);
                    if json_only {
                        return None;
                    }
                }
            }
        }
        let d = self.detect(value)?;
        push_finding(findings, start, self.detector_finding(d));
        (r.action == SensitiveAction::Strip).then(|| Bytes::from_static(REDACTED))
    }

    fn detector_finding(&self, d: Detector) -> Finding {
        let id = match d {
            Detector::CardNumber => self.inner.card,
            Detector::UsSsn => self.inner.ssn,
        };
        Finding {
            field: id.unwrap_or(FieldId::MAX),
            detector: Some(d),
        }
    }

    /// The field-name prefilter described in the module documentation.
    fn may_contain_field(&self, doc: &[u8]) -> bool {
        let r = &*self.inner;
        for colon in Positions::new(doc, b':') {
            // 1. The closing quote of a member name precedes its colon, up to whitespace.
            let mut close = colon;
            while close > 0 && matches!(doc[close - 1], b' ' | b'\t' | b'\n' | b'\r') {
                close -= 1;
            }
            if close == 0 || doc[close - 1] != b'"' {
                continue;
            }
            close -= 1;
            // 2. Its last non-separator byte must end some configured name.
            let mut k = close;
            while k > 0 && is_separator(doc[k - 1]) {
                k -= 1;
            }
            if k == 0 {
                continue;
            }
            let ends_escape = (k >= 2 && doc[k - 2] == b'\\') || (k >= 6 && doc[k - 6] == b'\\');
            if !ends_escape
                && !r
                    .last
                    .contains(usize::from(doc[k - 1].to_ascii_lowercase()))
            {
                continue;
            }
            // 3. The name runs from the nearest quote before (names are short: a plain loop
            // beats memrchr's setup); normalize and look it up.
            let mut open = k - 1;
            let mut escaped = doc[open] == b'\\';
            while open > 0 && doc[open - 1] != b'"' {
                open -= 1;
                escaped |= doc[open] == b'\\';
            }
            if open == 0 {
                continue;
            }
            let name = &doc[open..close];
            if self.lookup(name, escaped).is_some() {
                return true;
            }
        }
        false
    }

    /// The detector prefilter: probes every 11th byte for a run of digits, spaces and dashes.
    /// `exact` applies the full detector rules to each run; otherwise the check is the
    /// superset used on raw JSON (≥ 13 digits in the run, or the SSN shape anywhere in it).
    fn may_detect(&self, s: &[u8], exact: bool) -> bool {
        self.detect_in(s, exact).is_some()
    }

    /// Runs the detectors over a plain string.
    pub fn detect(&self, s: &[u8]) -> Option<Detector> {
        self.detect_in(s, true)
    }

    fn detect_in(&self, s: &[u8], exact: bool) -> Option<Detector> {
        const STRIDE: usize = 11;
        let r = &*self.inner;
        if r.card.is_none() && r.ssn.is_none() {
            return None;
        }
        let mut p = STRIDE - 1;
        while p < s.len() {
            if !is_number_byte(s[p]) {
                p += STRIDE;
                continue;
            }
            let mut a = p;
            while a > 0 && is_number_byte(s[a - 1]) {
                a -= 1;
            }
            let mut b = p + 1;
            while b < s.len() && is_number_byte(s[b]) {
                b += 1;
            }
            let run = &s[a..b];
            // Both detectors need 11 bytes (an SSN; a card needs 13 digits).
            if run.len() < STRIDE {
                p = b + STRIDE;
                continue;
            }
            if r.card.is_some() {
                let digits = run.iter().filter(|c| c.is_ascii_digit()).count();
                let hit = digits >= 13 && (!exact || has_card_number(run));
                if hit {
                    return Some(Detector::CardNumber);
                }
            }
            if r.ssn.is_some() && has_ssn(s, a, b, exact) {
                return Some(Detector::UsSsn);
            }
            // The next run of 11 starts after `b` (a non-number byte), so it covers b + 11.
            p = b + STRIDE;
        }
        None
    }
}

/// Offsets of every `needle` byte in `hay`, eight bytes at a time ([`json::swar`]). A
/// document has a colon every few dozen bytes; `memchr_iter` pays a call and a vector setup
/// per hit, which made up 40% of the clean-document prefilter.
struct Positions<'a> {
    hay: &'a [u8],
    needle: u8,
    /// Offset of the word in `mask`.
    base: usize,
    /// High bit set in each byte of the current word that equals `needle`.
    mask: u64,
}

impl<'a> Positions<'a> {
    fn new(hay: &'a [u8], needle: u8) -> Self {
        Positions {
            hay,
            needle,
            base: 0,
            mask: Self::word_mask(hay, 0, needle),
        }
    }

    #[inline]
    fn word_mask(hay: &[u8], at: usize, needle: u8) -> u64 {
        let (v, real) = json::swar::load(hay, at);
        json::swar::eq(v, needle) & real
    }
}

impl Iterator for Positions<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            self.base += 8;
            if self.base >= self.hay.len() {
                return None;
            }
            self.mask = Self::word_mask(self.hay, self.base, self.needle);
        }
        let i = self.base + (self.mask.trailing_zeros() / 8) as usize;
        self.mask &= self.mask - 1;
        Some(i)
    }
}

/// True when the first non-whitespace byte opens an object or array.
#[inline]
fn starts_container(v: &[u8]) -> bool {
    v.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|&b| b == b'{' || b == b'[')
}

#[inline]
fn is_number_byte(b: u8) -> bool {
    b.is_ascii_digit() || b == b' ' || b == b'-'
}

/// True when a `\u00XX` escape could decode to a digit, space or dash (U+0020-U+003F), the
/// one way a leaf's digits can hide from the raw detector prefilter.
fn has_detectable_escape(doc: &[u8]) -> bool {
    memchr::memmem::find_iter(doc, b"\\u00").any(|i| matches!(doc.get(i + 4), Some(b'2' | b'3')))
}

/// Luhn checksum over the digits of `s` (other bytes ignored).
fn luhn(s: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    for &c in s.iter().rev().filter(|c| c.is_ascii_digit()) {
        let mut d = u32::from(c - b'0');
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
    }
    sum % 10 == 0
}

/// A card number inside a run of digits, spaces and dashes: a chain of digit groups joined
/// by single separators, 13-19 digits in all, starting with a payment-card industry digit
/// (2-6; this spares 13-digit millisecond timestamps and snowflake ids, which start with 1),
/// Luhn-valid. Groups of a separated number have at least 3 digits, as every card layout
/// does, so lists of small numbers (`20 30 40 ...`) are not cards. A card may be preceded or
/// followed by other groups of the chain (`4111 1111 1111 1111 12/25`).
fn has_card_number(run: &[u8]) -> bool {
    let mut i = 0;
    while i < run.len() {
        if run[i].is_ascii_digit() {
            if card_starting_at(run, i) {
                return true;
            }
            while i < run.len() && run[i].is_ascii_digit() {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    false
}

fn card_starting_at(run: &[u8], start: usize) -> bool {
    if !(b'2'..=b'6').contains(&run[start]) {
        return false;
    }
    let (mut digits, mut groups, mut short) = (0, 0, false);
    let mut j = start;
    loop {
        let g = j;
        while j < run.len() && run[j].is_ascii_digit() {
            j += 1;
        }
        digits += j - g;
        groups += 1;
        short |= j - g < 3;
        if digits > 19 {
            return false;
        }
        if digits >= 13 && (groups == 1 || !short) && luhn(&run[start..j]) {
            return true;
        }
        match (run.get(j), run.get(j + 1)) {
            (Some(b' ' | b'-'), Some(d)) if d.is_ascii_digit() => j += 1,
            _ => return false,
        }
    }
}

/// An SSN shape `ddd-dd-dddd` within `s[a..b]`; `exact` adds the boundary and SSA rules.
fn has_ssn(s: &[u8], a: usize, b: usize, exact: bool) -> bool {
    if b - a < 11 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| s[r].iter().all(u8::is_ascii_digit);
    (a..=b - 11).any(|i| {
        if s[i + 3] != b'-'
            || s[i + 6] != b'-'
            || !digits(i..i + 3)
            || !digits(i + 4..i + 6)
            || !digits(i + 7..i + 11)
        {
            return false;
        }
        if !exact {
            return true;
        }
        let free = |c: Option<&u8>| c.is_none_or(|&c| !c.is_ascii_digit() && c != b'-');
        let (area, group, serial) = (&s[i..i + 3], &s[i + 4..i + 6], &s[i + 7..i + 11]);
        free(i.checked_sub(1).and_then(|j| s.get(j)))
            && free(s.get(i + 11))
            && area != b"000"
            && area != b"666"
            && area[0] != b'9'
            && group != b"00"
            && serial != b"0000"
    })
}

/// Appends `f` unless this value already reported it.
fn push_finding(findings: &mut Vec<Finding>, start: usize, f: Finding) {
    if !findings.get(start..).is_some_and(|s| s.contains(&f)) {
        findings.push(f);
    }
}

/// The [`Visitor`] of one value scan.
struct Finder<'a> {
    rules: &'a SensitiveRules,
    names: bool,
    leaves: bool,
    strip: bool,
    findings: &'a mut Vec<Finding>,
    start: usize,
    /// Unescaped leaf text; allocated only for leaves with escapes.
    scratch: Vec<u8>,
}

impl Visitor for Finder<'_> {
    fn member(&mut self, raw: &[u8], escaped: bool) -> bool {
        if !self.names {
            return false;
        }
        match self.rules.lookup(raw, escaped) {
            Some(field) => {
                push_finding(
                    self.findings,
                    self.start,
                    Finding {
                        field,
                        detector: None,
                    },
                );
                self.strip
            }
            None => false,
        }
    }

    fn leaf(&mut self, leaf: Leaf<'_>) -> bool {
        if !self.leaves {
            return false;
        }
        let found = match leaf {
            Leaf::Str { raw, escaped: true } => {
                self.scratch.clear();
                if json::unescape(raw, &mut self.scratch) {
                    self.rules.detect(&self.scratch)
                } else {
                    None
                }
            }
            Leaf::Str { raw, .. } | Leaf::Int(raw) => self.rules.detect(raw),
        };
        self.found(found)
    }
}

impl Finder<'_> {
    fn found(&mut self, d: Option<Detector>) -> bool {
        match d {
            Some(d) => {
                push_finding(self.findings, self.start, self.rules.detector_finding(d));
                self.strip
            }
            None => false,
        }
    }
}

fn duplicate_message(name: &str, earlier: &str) -> String {
    format!("field {name:?} is the same as {earlier:?} (names match ignoring case, '_' and '-')")
}

/// Validates one `sensitive:` section, adding every problem to `p` under `field_prefix`
/// (`policy.sensitive`, `policy.namespaces.user_profile.sensitive`). Settings it leaves out
/// are inherited from `base` (the top-level rules, for a namespace override), else default:
/// no fields, `strip`, no detectors, `publish: true`.
pub fn validate(
    raw: &RawSensitive,
    base: Option<&SensitiveRules>,
    field_prefix: &str,
    p: &mut Problems<'_>,
) -> Option<SensitiveRules> {
    let mut ok = true;
    let (fields, normalized) = match &raw.fields {
        Some(list) => {
            let mut fields = Vec::with_capacity(list.len());
            let mut normalized: Vec<Vec<u8>> = Vec::with_capacity(list.len());
            if list.len() > MAX_FIELDS {
                p.add(
                    None,
                    format!("{field_prefix}.fields"),
                    format!("at most {MAX_FIELDS} fields"),
                );
                ok = false;
            }
            for (i, f) in list.iter().enumerate() {
                let at = format!("{field_prefix}.fields[{i}]");
                match check_field_name(&f.value) {
                    Ok(norm) => match normalized.iter().position(|n| *n == norm) {
                        Some(j) => {
                            p.at(f, at, duplicate_message(&f.value, &list[j].value));
                            ok = false;
                        }
                        None => {
                            fields.push(f.value.clone());
                            normalized.push(norm);
                        }
                    },
                    Err(e) => {
                        p.at(f, at, e);
                        ok = false;
                    }
                }
            }
            (fields, normalized)
        }
        None => {
            let fields: Vec<String> = base
                .map(|b| b.field_names()[..b.field_count()].to_vec())
                .unwrap_or_default();
            // Inherited names were validated with the base.
            let normalized = fields
                .iter()
                .map(|f| check_field_name(f).unwrap_or_default())
                .collect();
            (fields, normalized)
        }
    };
    let action = match &raw.action {
        Some(a) => SensitiveAction::parse(&a.value).unwrap_or_else(|| {
            p.at(
                a,
                format!("{field_prefix}.action"),
                format!("unknown action {:?} (use strip, reject or audit)", a.value),
            );
            ok = false;
            SensitiveAction::Strip
        }),
        None => base.map(SensitiveRules::action).unwrap_or_default(),
    };
    let detect: Vec<Detector> = match &raw.detect {
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                let found = Detector::ALL.into_iter().find(|x| x.name() == d.value);
                if found.is_none() {
                    p.at(
                        d,
                        format!("{field_prefix}.detect[{i}]"),
                        format!("unknown detector {:?} (use card_number or us_ssn)", d.value),
                    );
                    ok = false;
                }
                found
            })
            .collect(),
        None => base.map(|b| b.detectors().collect()).unwrap_or_default(),
    };
    let publish = match &raw.publish {
        Some(v) => v.value,
        None => base.is_none_or(SensitiveRules::publish),
    };
    ok.then(|| SensitiveRules::build(fields, normalized, action, &detect, publish))
}

// ---------------------------------------------------------------------------------------------
// The stage

/// What the stage decided for one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageOutcome {
    /// Forward the command as sent (nothing found, or only `audit` findings).
    Unchanged,
    /// Forward this argv instead (command name included).
    Rewrite(Vec<Bytes>),
    /// Answer the client with this complete RESP reply; nothing reaches Redis.
    Respond(Bytes),
    /// Refuse the command with this error text (starting with `POLICY `); nothing reaches
    /// Redis.
    Reject(String),
}

/// A finding of [`apply`], with what the metric labels need.
#[derive(Debug, Clone, Copy)]
pub struct StageFinding<'r> {
    /// Argv index of the key (or PUBLISH channel) whose rules applied.
    pub arg: usize,
    /// Those rules: they give the action and, with `finding.field`, the label.
    pub rules: &'r SensitiveRules,
    pub finding: Finding,
}

impl<'r> StageFinding<'r> {
    /// The configured field name or detector name: the metric `field` label.
    pub fn label(&self) -> &'r str {
        self.rules
            .field_names()
            .get(usize::from(self.finding.field))
            .map_or("", String::as_str)
    }

    pub fn action(&self) -> SensitiveAction {
        self.rules.action()
    }
}

const REPLY_ZERO: &[u8] = b":0\r\n";
const REPLY_OK: &[u8] = b"+OK\r\n";

/// A key or channel for an error message: printable ASCII as is, other bytes as `\xHH`, at
/// most 200 bytes, so a binary key cannot break the one-line RESP error.
fn shown(key: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for &b in key.iter().take(200) {
        if (b' '..=b'~').contains(&b) && b != b'\\' {
            s.push(char::from(b));
        } else {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    if key.len() > 200 {
        s.push_str("...");
    }
    s
}

/// Where a value goes, for messages.
#[derive(Clone, Copy)]
enum Target {
    Key,
    Channel,
}

/// One command's scan state.
struct Stage<'a, 'v, 'r> {
    argv: &'a Argv<'v>,
    rules_for_key: &'a dyn Fn(&[u8]) -> &'r SensitiveRules,
    findings: &'a mut Vec<StageFinding<'r>>,
    /// Index of this command's first entry in `findings`.
    first: usize,
    /// Changed arguments in increasing index order: a replacement, or `None` to drop it.
    changes: Vec<(usize, Option<Bytes>)>,
    /// Per-value findings, reused.
    tmp: Vec<Finding>,
}

impl<'r> Stage<'_, '_, 'r> {
    fn rules(&self, key: usize) -> Option<&'r SensitiveRules> {
        let rules = (self.rules_for_key)(self.argv.get(key)?);
        rules.is_active().then_some(rules)
    }

    /// Records a finding for the key at `arg`, once per command and key.
    fn record(&mut self, arg: usize, rules: &'r SensitiveRules, finding: Finding) {
        let seen = self.findings[self.first..]
            .iter()
            .rev()
            .take_while(|f| f.arg == arg)
            .any(|f| f.finding == finding);
        if !seen {
            self.findings.push(StageFinding {
                arg,
                rules,
                finding,
            });
        }
    }

    fn reject(&self, arg: usize, rules: &SensitiveRules, f: Finding, target: Target) -> String {
        let what = match f.detector {
            Some(d) => d.describe().to_string(),
            None => format!(
                "sensitive field {:?}",
                rules
                    .field_names()
                    .get(usize::from(f.field))
                    .map_or("", String::as_str)
            ),
        };
        let name = shown(self.argv.get(arg).unwrap_or_default());
        match target {
            Target::Key => format!("POLICY value for {name} contains {what}"),
            Target::Channel => format!("POLICY message for channel {name} contains {what}"),
        }
    }

    /// Scans the value at `at`, stored under the key (or channel) at `key`.
    fn value(
        &mut self,
        key: usize,
        at: usize,
        rules: &'r SensitiveRules,
        json: bool,
        target: Target,
    ) -> Result<(), String> {
        let Some(value) = self.argv.get(at) else {
            return Ok(());
        };
        self.tmp.clear();
        let mut tmp = std::mem::take(&mut self.tmp);
        let mut too_deep = false;
        let out = rules.scan(value, json, &mut tmp, &mut too_deep);
        if too_deep && rules.refuses_uninspectable() {
            self.tmp = tmp;
            let name = shown(self.argv.get(key).unwrap_or_default());
            return Err(match target {
                Target::Key => format!(
                    "POLICY value for {name} is JSON nested deeper than {} levels, which respguard cannot inspect for sensitive data; refused because the key's namespace has sensitive rules",
                    json::MAX_DEPTH
                ),
                Target::Channel => format!(
                    "POLICY message for channel {name} is JSON nested deeper than {} levels, which respguard cannot inspect for sensitive data",
                    json::MAX_DEPTH
                ),
            });
        }
        for &f in &tmp {
            self.record(key, rules, f);
        }
        let first = tmp.first().copied();
        self.tmp = tmp;
        match (rules.action(), first) {
            (SensitiveAction::Reject, Some(f)) => Err(self.reject(key, rules, f, target)),
            _ => {
                if let Some(new) = out {
                    self.changes.push((at, Some(new)));
                }
                Ok(())
            }
        }
    }

    /// Field/value pairs from `from` to the end (HSET, HMSET, HSETNX, XADD); returns how many
    /// pairs remain after stripping sensitive field names.
    fn pairs(
        &mut self,
        key: usize,
        from: usize,
        rules: &'r SensitiveRules,
    ) -> Result<usize, String> {
        let mut kept = 0;
        for f in (from..self.argv.len()).step_by(2) {
            let name = self.argv.get(f).unwrap_or_default();
            if let Some(field) = rules.is_sensitive_field(name) {
                let finding = Finding {
                    field,
                    detector: None,
                };
                self.record(key, rules, finding);
                match rules.action() {
                    SensitiveAction::Reject => {
                        return Err(self.reject(key, rules, finding, Target::Key))
                    }
                    SensitiveAction::Strip => {
                        self.changes.push((f, None));
                        self.changes.push((f + 1, None));
                        continue;
                    }
                    SensitiveAction::Audit => {}
                }
            }
            self.value(key, f + 1, rules, false, Target::Key)?;
            kept += 1;
        }
        Ok(kept)
    }

    /// `RESTORE key ttl payload ...`: the string a DUMP payload holds is scanned like a
    /// written value. A finding refuses the command, whatever the action but audit: a value
    /// inside a payload cannot be stripped without re-encoding it. A payload that cannot be
    /// decoded is refused, since it cannot be inspected.
    fn restore(&mut self, rules: &'r SensitiveRules) -> Result<(), String> {
        let audit = !rules.refuses_uninspectable();
        let name = shown(self.argv.get(1).unwrap_or_default());
        let value = match super::dump::string_value(self.argv.get(3).unwrap_or_default()) {
            Ok(v) => v,
            Err(_) if audit => return Ok(()),
            Err(why) => {
                return Err(format!(
                    "POLICY the RESTORE payload for {name} cannot be inspected: {why}; refused because the key's namespace has sensitive rules"
                ))
            }
        };
        self.tmp.clear();
        let mut tmp = std::mem::take(&mut self.tmp);
        let mut too_deep = false;
        rules.scan(&value, false, &mut tmp, &mut too_deep);
        for &f in &tmp {
            self.record(1, rules, f);
        }
        let first = tmp.first().copied();
        self.tmp = tmp;
        if audit {
            return Ok(());
        }
        if too_deep {
            return Err(format!(
                "POLICY the RESTORE payload for {name} holds JSON nested deeper than {} levels, which respguard cannot inspect; refused because the key's namespace has sensitive rules",
                json::MAX_DEPTH
            ));
        }
        match first {
            Some(f) => Err(format!(
                "{} (in a RESTORE payload, which respguard cannot rewrite)",
                self.reject(1, rules, f, Target::Key)
            )),
            None => Ok(()),
        }
    }

    fn finish(self) -> StageOutcome {
        if self.changes.is_empty() {
            return StageOutcome::Unchanged;
        }
        let mut out = Vec::with_capacity(self.argv.len());
        let mut changes = self.changes.into_iter().peekable();
        for (i, arg) in self.argv.iter().enumerate() {
            match changes.next_if(|(at, _)| *at == i) {
                Some((_, Some(new))) => out.push(new),
                Some((_, None)) => {}
                None => out.push(Bytes::copy_from_slice(arg)),
            }
        }
        StageOutcome::Rewrite(out)
    }
}

fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

/// Argv index of the first field of `XADD key [NOMKSTREAM] [MAXLEN|MINID [=|~] thr
/// [LIMIT n]] id|* field value ...`, parsed like Redis's `streamParseAddOrTrimArgsOrReply`
/// (options in any order, the first other argument is the ID).
fn xadd_fields(argv: &Argv<'_>) -> Option<usize> {
    let argc = argv.len();
    let mut i = 2;
    loop {
        let opt = argv.get(i)?;
        let more = argc - 1 - i;
        if opt == b"*" {
            return Some(i + 1);
        } else if (eq(opt, "MAXLEN") || eq(opt, "MINID")) && more > 0 {
            if more >= 2 && matches!(argv.get(i + 1), Some(b"~" | b"=")) {
                i += 1;
            }
            i += 2;
        } else if eq(opt, "LIMIT") && more > 0 {
            i += 2;
        } else if eq(opt, "NOMKSTREAM") {
            i += 1;
        } else {
            return Some(i + 1);
        }
    }
}

/// The configured field a RedisJSON path writes under (`$.password`, `$['credit-card']`,
/// `.user.ssn`, `$..token`), if any. Names inside filter expressions `?(...)` are conditions,
/// not destinations, and are skipped.
fn json_path_field(rules: &SensitiveRules, path: &[u8]) -> Option<FieldId> {
    let mut i = 0;
    let mut parens = 0usize;
    while i < path.len() {
        let c = path[i];
        match c {
            b'(' => parens += 1,
            b')' => parens = parens.saturating_sub(1),
            b'\'' | b'"' => {
                // A quoted name: up to the next unescaped matching quote.
                let mut j = i + 1;
                while j < path.len() && path[j] != c {
                    j += if path[j] == b'\\' { 2 } else { 1 };
                }
                let name = path.get(i + 1..j.min(path.len())).unwrap_or_default();
                if parens == 0 {
                    let escaped = memchr::memchr(b'\\', name).is_some();
                    if let Some(f) = rules.lookup(name, escaped) {
                        return Some(f);
                    }
                }
                i = j + 1;
                continue;
            }
            _ => {}
        }
        if c.is_ascii_alphanumeric() || is_separator(c) || !c.is_ascii() {
            let start = i;
            while i < path.len()
                && (path[i].is_ascii_alphanumeric() || is_separator(path[i]) || !path[i].is_ascii())
            {
                i += 1;
            }
            if parens == 0 {
                if let Some(f) = rules.is_sensitive_field(&path[start..i]) {
                    return Some(f);
                }
            }
            continue;
        }
        i += 1;
    }
    None
}

/// Applies the stage to one command. `command` is the table's uppercase name (`"HSET"`,
/// `"JSON.SET"`); `rules_for_key` returns the rules of a key's namespace (or the default;
/// inactive rules skip the key). Findings are appended to `findings`, at most once per key,
/// field and detector; on `Reject` they stop at the refusing value.
///
/// Commands whose shape Redis would refuse (wrong arity, unbalanced pairs) are left
/// `Unchanged`: Redis rejects them without storing anything, with its own error.
pub fn apply<'r>(
    argv: &Argv<'_>,
    command: &str,
    rules_for_key: &dyn Fn(&[u8]) -> &'r SensitiveRules,
    findings: &mut Vec<StageFinding<'r>>,
) -> StageOutcome {
    let first = findings.len();
    let mut st = Stage {
        argv,
        rules_for_key,
        findings,
        first,
        changes: Vec::new(),
        tmp: Vec::new(),
    };
    match dispatch(&mut st, command) {
        Err(message) => StageOutcome::Reject(message),
        Ok(Some(outcome)) => outcome,
        Ok(None) => st.finish(),
    }
}

/// Runs the command's value positions through `st`. `Ok(Some)` is a final answer, `Ok(None)`
/// means "whatever `st` collected", `Err` a rejection message.
fn dispatch<'r>(st: &mut Stage<'_, '_, 'r>, command: &str) -> Result<Option<StageOutcome>, String> {
    let argc = st.argv.len();
    // (key index, value index) for the single-value commands.
    let single = match command {
        "SET" if argc >= 3 => Some((1, 2)),
        "SETNX" | "GETSET" if argc == 3 => Some((1, 2)),
        "SETEX" | "PSETEX" | "LSET" if argc == 4 => Some((1, 3)),
        "LINSERT" if argc == 5 => Some((1, 4)),
        _ => None,
    };
    if let Some((k, v)) = single {
        if let Some(rules) = st.rules(k) {
            st.value(k, v, rules, false, Target::Key)?;
        }
        return Ok(None);
    }
    match command {
        "MSET" | "MSETNX" if argc >= 3 && argc % 2 == 1 => {
            for k in (1..argc).step_by(2) {
                if let Some(rules) = st.rules(k) {
                    st.value(k, k + 1, rules, false, Target::Key)?;
                }
            }
        }
        "LPUSH" | "RPUSH" | "LPUSHX" | "RPUSHX" | "SADD" if argc >= 3 => {
            if let Some(rules) = st.rules(1) {
                for v in 2..argc {
                    st.value(1, v, rules, false, Target::Key)?;
                }
            }
        }
        "HSET" | "HMSET" | "HSETNX"
            if argc >= 4 && argc % 2 == 0 && (command != "HSETNX" || argc == 4) =>
        {
            if let Some(rules) = st.rules(1) {
                if st.pairs(1, 2, rules)? == 0 {
                    // What Redis replies for writing zero fields; the key is not created.
                    let reply = if command == "HMSET" {
                        REPLY_OK
                    } else {
                        REPLY_ZERO
                    };
                    return Ok(Some(StageOutcome::Respond(Bytes::from_static(reply))));
                }
            }
        }
        "ZADD" if argc >= 4 => {
            let mut i = 2;
            while st.argv.get(i).is_some_and(|a| {
                ["NX", "XX", "GT", "LT", "CH", "INCR"]
                    .iter()
                    .any(|o| eq(a, o))
            }) {
                i += 1;
            }
            let elements = argc - i;
            if elements > 0 && elements % 2 == 0 {
                if let Some(rules) = st.rules(1) {
                    for m in (i + 1..argc).step_by(2) {
                        st.value(1, m, rules, false, Target::Key)?;
                    }
                }
            }
        }
        "XADD" => {
            let Some(from) = xadd_fields(st.argv) else {
                return Ok(None);
            };
            let n = argc.saturating_sub(from);
            if n >= 2 && n % 2 == 0 {
                if let Some(rules) = st.rules(1) {
                    if st.pairs(1, from, rules)? == 0 {
                        return Err(format!(
                            "POLICY every field of the entry for {} is sensitive, and Redis \
                             cannot store an empty stream entry",
                            shown(st.argv.get(1).unwrap_or_default())
                        ));
                    }
                }
            }
        }
        "PUBLISH" | "SPUBLISH" if argc == 3 => {
            if let Some(rules) = st.rules(1) {
                if rules.publish() {
                    st.value(1, 2, rules, false, Target::Channel)?;
                }
            }
        }
        "ZINCRBY" if argc == 4 => {
            if let Some(rules) = st.rules(1) {
                st.value(1, 3, rules, false, Target::Key)?;
            }
        }
        "GEOADD" if argc >= 5 => {
            let mut i = 2;
            while st
                .argv
                .get(i)
                .is_some_and(|a| ["NX", "XX", "CH"].iter().any(|o| eq(a, o)))
            {
                i += 1;
            }
            let elements = argc - i;
            if elements > 0 && elements % 3 == 0 {
                if let Some(rules) = st.rules(1) {
                    for m in (i + 2..argc).step_by(3) {
                        st.value(1, m, rules, false, Target::Key)?;
                    }
                }
            }
        }
        "APPEND" | "SETRANGE" | "SETBIT" | "BITFIELD" => {
            let writes = command != "BITFIELD"
                || (2..argc).any(|i| {
                    st.argv
                        .get(i)
                        .is_some_and(|a| eq(a, "SET") || eq(a, "INCRBY"))
                });
            if let Some(rules) = st.rules(1).filter(|_| writes) {
                if rules.refuses_uninspectable() {
                    return Err(format!(
                        "POLICY {command} changes part of the value of {}, and respguard cannot see the value that would result; refused because the key's namespace has sensitive rules: write whole values (SET) there",
                        shown(st.argv.get(1).unwrap_or_default())
                    ));
                }
            }
        }
        "JSON.ARRAPPEND" | "JSON.ARRINSERT" | "JSON.MERGE" | "JSON.MSET" | "JSON.STRAPPEND" => {
            // Values written under paths respguard does not resolve (or, for MSET, under
            // several keys): only JSON.SET is inspected.
            for k in (1..argc).step_by(if command == "JSON.MSET" { 3 } else { argc }) {
                if st.rules(k).is_some_and(|r| r.refuses_uninspectable()) {
                    return Err(format!(
                        "POLICY {command} writes into the document at {} in a way respguard does not inspect; refused because the key's namespace has sensitive rules: write the document with JSON.SET there",
                        shown(st.argv.get(k).unwrap_or_default())
                    ));
                }
            }
        }
        "RESTORE" if argc >= 4 => {
            if let Some(rules) = st.rules(1) {
                st.restore(rules)?;
            }
        }
        "JSON.SET" if argc >= 4 => {
            if let Some(rules) = st.rules(1) {
                let path = st.argv.get(2).unwrap_or_default();
                if let Some(field) = json_path_field(rules, path) {
                    let finding = Finding {
                        field,
                        detector: None,
                    };
                    st.record(1, rules, finding);
                    match rules.action() {
                        SensitiveAction::Reject => {
                            return Err(st.reject(1, rules, finding, Target::Key))
                        }
                        // Stripping the field strips the whole write: it becomes a
                        // no-op, which JSON.SET acknowledges with OK.
                        SensitiveAction::Strip => {
                            return Ok(Some(StageOutcome::Respond(Bytes::from_static(REPLY_OK))))
                        }
                        SensitiveAction::Audit => {}
                    }
                }
                st.value(1, 3, rules, true, Target::Key)?;
            }
        }
        _ => {}
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_finds_every_needle_and_nothing_else() {
        // Lengths around the 8-byte words; bytes next to the needle's value and with the high
        // bit set, where a carrying zero-byte test would report false hits.
        let fill = [b':' ^ 0x80, b':' + 1, b':' - 1, 0x00, 0xff, b'a'];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..40 {
            for round in 0..200 {
                let hay: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        if (state >> 3) % 4 == 0 {
                            b':'
                        } else {
                            fill[(state >> 8) as usize % fill.len()]
                        }
                    })
                    .collect();
                let want: Vec<usize> = (0..len).filter(|&i| hay[i] == b':').collect();
                let got: Vec<usize> = Positions::new(&hay, b':').collect();
                assert_eq!(got, want, "len {len} round {round} {hay:?}");
            }
        }
    }

    const FIELDS: &[&str] = &[
        "password",
        "ssn",
        "creditCard",
        "cardNumber",
        "cvv",
        "token",
    ];

    fn rules(action: SensitiveAction, detect: &[Detector]) -> SensitiveRules {
        SensitiveRules::new(FIELDS, action, detect, true).unwrap()
    }

    fn strip_rules() -> SensitiveRules {
        rules(SensitiveAction::Strip, &[])
    }

    /// Scans `v` and returns (rewritten value as text, finding labels).
    fn scan(r: &SensitiveRules, v: &str) -> (Option<String>, Vec<String>) {
        let mut f = Vec::new();
        let out = r.scan_value(v.as_bytes(), &mut f);
        let labels = f
            .iter()
            .map(|f| r.field_names()[usize::from(f.field)].clone())
            .collect();
        (out.map(|b| String::from_utf8(b.to_vec()).unwrap()), labels)
    }

    fn stripped(v: &str) -> Option<String> {
        scan(&strip_rules(), v).0
    }

    /// Builds an `Argv` over `args` and runs `apply`.
    fn run<'r>(
        args: &[&[u8]],
        rules_for: &dyn Fn(&[u8]) -> &'r SensitiveRules,
    ) -> (StageOutcome, Vec<String>) {
        let owned = crate::codec::OwnedArgv::new(args);
        let argv = owned.argv();
        let cmd = String::from_utf8(args[0].to_ascii_uppercase()).unwrap();
        let mut findings = Vec::new();
        let out = apply(&argv, &cmd, rules_for, &mut findings);
        let labels = findings
            .iter()
            .map(|f| format!("{}:{}", f.arg, f.label()))
            .collect();
        (out, labels)
    }

    fn rewrite(out: &StageOutcome) -> Vec<String> {
        match out {
            StageOutcome::Rewrite(v) => v
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect(),
            other => panic!("expected a rewrite, got {other:?}"),
        }
    }

    #[test]
    fn strips_nested_objects_and_arrays_of_objects() {
        assert_eq!(
            stripped(r#"{"name":"Ann","password":"hunter2","profile":{"ssn":"x","age":3}}"#)
                .unwrap(),
            r#"{"name":"Ann","profile":{"age":3}}"#
        );
        assert_eq!(
            stripped(r#"[{"cvv":"1","id":1},{"id":2,"cvv":"2"},{"cvv":"3"}]"#).unwrap(),
            r#"[{"id":1},{"id":2},{}]"#
        );
        assert_eq!(
            stripped(r#"{"a":{"b":{"c":[{"d":{"token":"t","e":1}}]}}}"#).unwrap(),
            r#"{"a":{"b":{"c":[{"d":{"e":1}}]}}}"#
        );
        // Pretty-printed: formatting of everything else is untouched.
        let pretty = "{\n  \"user\": \"ann\",\n  \"password\": \"x\",\n  \"n\": 1.50e3\n}";
        assert_eq!(
            stripped(pretty).unwrap(),
            "{\n  \"user\": \"ann\",\n  \"n\": 1.50e3\n}"
        );
        let (_, labels) = scan(
            &strip_rules(),
            r#"{"password":1,"x":{"password":2,"cvv":3}}"#,
        );
        assert_eq!(labels, ["password", "cvv"], "once per value and field");
        let (_, labels) = scan(&strip_rules(), r#"{"password":{"cvv":3}}"#);
        assert_eq!(
            labels,
            ["password"],
            "a removed member's subtree is not inspected"
        );
    }

    #[test]
    fn escaped_names_and_separator_case_variants_match() {
        for name in [
            r"pass\u0077ord",
            r"\u0070\u0061\u0073\u0073\u0077\u006f\u0072\u0064",
            "PASSWORD",
            "Pass_Word",
            "credit_card",
            "CREDIT-CARD",
            "c_r-e__d-i_t_c_a_r_d",
            "creditCard",
            "_cvv_",
            r"credit\u005fcard",
            r"cre\u0064it\/card",
        ] {
            let doc = format!(r#"{{"keep":1,"{name}":"secret"}}"#);
            let want = if name.contains(r"\/") {
                None
            } else {
                Some(r#"{"keep":1}"#.to_string())
            };
            assert_eq!(stripped(&doc), want, "{name}");
        }
        // Not the same field: other separators, extra letters, escapes decoding elsewhere.
        for name in [
            "pass word",
            "passwords",
            "pass.word",
            r"pass\u00f7ord",
            "xssn",
            r"ss\n",
        ] {
            let doc = format!(r#"{{"{name}":1}}"#);
            assert_eq!(stripped(&doc), None, "{name}");
        }
        let r = strip_rules();
        assert_eq!(r.is_sensitive_field(b"Credit-Card"), Some(2));
        assert_eq!(r.is_sensitive_field(b"card_number"), Some(3));
        assert_eq!(r.is_sensitive_field(b"cardnumbers"), None);
        assert_eq!(r.is_sensitive_field(b"__"), None);
    }

    #[test]
    fn only_member_names_match_never_string_values() {
        for doc in [
            r#"{"note":"my password is in the token","hint":"password"}"#,
            r#"{"note":"\"password\": \"x\""}"#,
            r#"["password","ssn",{"k":"cvv"}]"#,
            r#"{"payload":"{\"password\":\"x\"}"}"#,
        ] {
            assert_eq!(stripped(doc), None, "{doc}");
        }
    }

    #[test]
    fn invalid_json_and_non_json_pass_untouched() {
        for v in [
            r#"{"password":"x""#,
            r#"{"password":"x",}"#,
            r#"{password:"x"}"#,
            r#"{"password":"x"} trailing"#,
            "[\"password\":1]",
            "password: hunter2",
            r#""password""#,
        ] {
            assert_eq!(stripped(v), None, "{v}");
        }
        let mut f = Vec::new();
        assert!(strip_rules()
            .scan_value(b"{\"password\":\"\xff\"}", &mut f)
            .is_none());
        assert!(f.is_empty());
    }

    #[test]
    fn deep_nesting_is_forwarded_untouched_without_overflow() {
        let mut doc = "[".repeat(100_000);
        doc.push_str(r#"{"password":"x"}"#);
        doc.push_str(&"]".repeat(100_000));
        assert_eq!(stripped(&doc), None);
        assert_eq!(stripped(&"[".repeat(100_000)), None);
        // Within the limit it is stripped.
        let ok = "[".repeat(127) + r#"{"password":"x"}"# + &"]".repeat(127);
        assert_eq!(
            stripped(&ok).unwrap(),
            "[".repeat(127) + "{}" + &"]".repeat(127)
        );
    }

    #[test]
    fn luhn_card_detector() {
        let r = rules(SensitiveAction::Strip, &[Detector::CardNumber]);
        for card in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "5555 5555 5555 4444",
            "378282246310005",
            "3782 822463 10005",
            "6011111111111117",
            "4222222222222",
            "card: 4111 1111 1111 1111, exp 12/25",
            "4111 1111 1111 1111 12/25",
            "order 12345 4111 1111 1111 1111",
        ] {
            assert_eq!(
                scan(&r, card),
                (Some("[REDACTED]".into()), vec!["card_number".into()]),
                "{card}"
            );
        }
        for not_card in [
            "4111111111111112",
            "4111 1111 1111 1112",
            "1700000000004", // a millisecond timestamp: 13 digits, Luhn-valid, not a card
            "1234567890123456789012",
            "4111  1111 1111 1111",
            "41 11 11 11 11 11 11 11",
            "411111111111",
            "hello world",
            "",
        ] {
            assert_eq!(scan(&r, not_card).1, Vec::<String>::new(), "{not_card}");
        }
        assert!(
            luhn(b"1700000000004"),
            "the timestamp case above really is Luhn-valid"
        );
        // Inside JSON only the leaf is replaced, integers included; names are not leaves.
        assert_eq!(
            scan(
                &r,
                r#"{"n":"4111 1111 1111 1111","m":4111111111111111,"4111111111111111":1}"#
            )
            .0
            .unwrap(),
            r#"{"n":"[REDACTED]","m":"[REDACTED]","4111111111111111":1}"#
        );
        // Escaped digits are decoded.
        assert_eq!(
            scan(&r, r#"["\u0034111 1111 1111 1111"]"#).0.unwrap(),
            r#"["[REDACTED]"]"#
        );
        assert_eq!(
            scan(&r, r#"["\u00e94111 1111 1111 1111"]"#).0.unwrap(),
            r#"["[REDACTED]"]"#
        );
    }

    #[test]
    fn ssn_detector() {
        let r = rules(SensitiveAction::Strip, &[Detector::UsSsn]);
        for v in ["123-45-6789", "ssn 123-45-6789.", "x:078-05-1120"] {
            assert_eq!(scan(&r, v).0.as_deref(), Some("[REDACTED]"), "{v}");
        }
        for v in [
            "123-45-67890",
            "1123-45-6789",
            "000-12-3456",
            "666-12-3456",
            "912-34-5678",
            "123-00-4567",
            "123-45-0000",
            "123 45 6789",
            "2024-01-15",
            "555-123-4567",
        ] {
            assert_eq!(scan(&r, v).0, None, "{v}");
        }
        assert_eq!(
            scan(&r, r#"{"id":"123-45-6789","d":"2024-01-15"}"#)
                .0
                .unwrap(),
            r#"{"id":"[REDACTED]","d":"2024-01-15"}"#
        );
        // Detectors off: untouched.
        assert_eq!(scan(&strip_rules(), "123-45-6789").0, None);
    }

    #[test]
    fn reject_and_audit_report_without_rewriting() {
        let r = rules(SensitiveAction::Reject, &[Detector::CardNumber]);
        let (out, labels) = scan(&r, r#"{"password":"x","c":"4111111111111111"}"#);
        assert_eq!(out, None);
        assert_eq!(labels, ["password", "card_number"]);
        let r = rules(SensitiveAction::Audit, &[]);
        assert_eq!(
            scan(&r, r#"{"password":"x"}"#),
            (None, vec!["password".to_string()])
        );
    }

    /// Hand-written valid documents: stripping must keep them valid JSON and remove exactly
    /// the sensitive members.
    #[test]
    fn stripping_valid_json_yields_valid_json() {
        let r = rules(
            SensitiveAction::Strip,
            &[Detector::CardNumber, Detector::UsSsn],
        );
        let docs = [
            r#"{"password":1}"#,
            r#"{"password":1,"ssn":2}"#,
            r#"{"a":1,"password":1,"ssn":2}"#,
            r#"{"password":1,"a":1,"ssn":2}"#,
            r#"{"password":1,"ssn":2,"a":1}"#,
            r#"{ "password" : { "x" : [ 1 , { "cvv" : 2 } ] } , "a" : [ ] , "token" : null }"#,
            "[\n {\"token\": \"t\"},\n {\"a\": {\"CVV\": 1, \"b\": \"123-45-6789\"}}\n]",
            r#"[[[{"a":[{"password":{}}],"b":{"credit_card":[]}}]],{},[]]"#,
            r#"{"":0,"password":"","\"":1,"\\":2,"é":"4111 1111 1111 1111"}"#,
            r#"{"x":{"y":{"z":{"ssn":1}},"ssn":2},"ssn":3,"w":[{"ssn":4},{"ssn":5,"q":6}]}"#,
            "{\t\"a\"\t:\t1\t,\t\"cvv\"\t:\t2\t}",
            r#"{"a":true,"cardNumber":false,"b":-0.5e-3,"pass\u0077ord":"\u00e9"}"#,
        ];
        for doc in docs {
            let mut f = Vec::new();
            let out = r.scan_value(doc.as_bytes(), &mut f).expect(doc);
            let v: serde_json::Value = serde_json::from_slice(&out)
                .unwrap_or_else(|e| panic!("{doc} -> {} : {e}", String::from_utf8_lossy(&out)));
            let text = v.to_string();
            for name in [
                "password",
                "ssn",
                "cvv",
                "CVV",
                "token",
                "credit_card",
                "cardNumber",
            ] {
                assert!(!text.contains(&format!("\"{name}\":")), "{doc} -> {text}");
            }
            assert!(!text.contains("4111") && !text.contains("123-45"), "{text}");
            assert!(
                serde_json::from_str::<serde_json::Value>(doc).is_ok(),
                "{doc} is valid"
            );
        }
    }

    /// A small deterministic generator, so the property tests need no extra dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Spells `name` the way a client might: random case, separators, `\u` escapes.
    fn spelling(rng: &mut Rng, name: &str) -> String {
        let mut s = String::new();
        for c in name.chars() {
            while rng.below(4) == 0 {
                s.push(if rng.below(2) == 0 { '_' } else { '-' });
            }
            let c = if rng.below(2) == 0 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            if rng.below(6) == 0 {
                s.push_str(&format!("\\u{:04x}", c as u32));
            } else {
                s.push(c);
            }
        }
        if rng.below(4) == 0 {
            s.push('_');
        }
        s
    }

    /// Random documents mixing sensitive and ordinary names: the prefilter must flag every
    /// document the full parse finds something in, and stripping must keep them valid JSON.
    #[test]
    fn prefilter_never_misses_and_output_stays_valid() {
        let r = strip_rules();
        let plain = [
            "id",
            "name",
            "user_id",
            "created-at",
            "passwd",
            "tokens",
            "ss",
            "card",
            "\\\"q\\\"",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut found = 0;
        for _ in 0..3000 {
            let mut doc = String::new();
            let mut stack: Vec<bool> = Vec::new();
            let mut need_value = true;
            let mut first = true;
            // Builds a random document of at most ~30 tokens.
            for step in 0..30 {
                if need_value {
                    match rng.below(5) {
                        0 if stack.len() < 6 => {
                            doc.push('{');
                            stack.push(true);
                            first = true;
                            need_value = false;
                            continue;
                        }
                        1 if stack.len() < 6 => {
                            doc.push('[');
                            stack.push(false);
                            first = true;
                            continue;
                        }
                        2 => doc.push_str("\"password: \\\"x\\\"\""),
                        3 => doc.push_str("12"),
                        _ => doc.push_str("\"v\""),
                    }
                    need_value = false;
                    first = false;
                    continue;
                }
                let Some(&obj) = stack.last() else { break };
                if step > 20 || rng.below(4) == 0 {
                    doc.push(if obj { '}' } else { ']' });
                    stack.pop();
                    first = false;
                    continue;
                }
                if !first {
                    doc.push_str(if rng.below(3) == 0 { " ,\n " } else { "," });
                }
                first = false;
                if obj {
                    let name = if rng.below(3) == 0 {
                        {
                            let i = rng.below(FIELDS.len());
                            spelling(&mut rng, FIELDS[i])
                        }
                    } else {
                        plain[rng.below(plain.len())].to_string()
                    };
                    doc.push_str(&format!("\"{name}\"{}:", [" ", "", "\t"][rng.below(3)]));
                }
                need_value = true;
            }
            if need_value {
                doc.push('0');
            }
            while let Some(obj) = stack.pop() {
                doc.push(if obj { '}' } else { ']' });
            }
            if doc.is_empty() || !starts_container(doc.as_bytes()) {
                continue;
            }
            let valid = serde_json::from_str::<serde_json::Value>(&doc).is_ok();
            // The full parse, bypassing the prefilter.
            let mut findings = Vec::new();
            let mut v = Finder {
                rules: &r,
                names: true,
                leaves: false,
                strip: true,
                findings: &mut findings,
                start: 0,
                scratch: Vec::new(),
            };
            let mut edits = Vec::new();
            let parsed = json::scan(doc.as_bytes(), true, &mut v, &mut edits).is_ok();
            assert_eq!(parsed, valid, "{doc}");
            if !findings.is_empty() && parsed {
                found += 1;
                assert!(
                    r.may_contain_field(doc.as_bytes()),
                    "prefilter missed: {doc}"
                );
                let out = r.scan_value(doc.as_bytes(), &mut Vec::new()).expect(&doc);
                let v: serde_json::Value = serde_json::from_slice(&out)
                    .unwrap_or_else(|e| panic!("{doc} -> {}: {e}", String::from_utf8_lossy(&out)));
                let mut again = Vec::new();
                let out2 = r.scan_value(v.to_string().as_bytes(), &mut again);
                assert!(
                    out2.is_none() && again.is_empty(),
                    "{doc} left a field: {v}"
                );
            }
        }
        assert!(
            found > 300,
            "the generator produced only {found} sensitive documents"
        );
    }

    fn rules_fn<'r>(r: &'r SensitiveRules) -> impl Fn(&[u8]) -> &'r SensitiveRules + 'r {
        move |_| r
    }

    #[test]
    fn hset_family_drops_fields_and_answers_like_redis() {
        let r = strip_rules();
        let f = rules_fn(&r);
        let (out, labels) = run(&[b"HSET", b"user:1", b"Password", b"x", b"cvv", b"1"], &f);
        assert_eq!(out, StageOutcome::Respond(Bytes::from_static(b":0\r\n")));
        assert_eq!(labels, ["1:password", "1:cvv"]);
        let (out, _) = run(&[b"HSETNX", b"user:1", b"ssn", b"x"], &f);
        assert_eq!(out, StageOutcome::Respond(Bytes::from_static(b":0\r\n")));
        let (out, _) = run(&[b"hmset", b"user:1", b"token", b"x"], &f);
        assert_eq!(out, StageOutcome::Respond(Bytes::from_static(b"+OK\r\n")));
        let (out, _) = run(
            &[
                b"HSET",
                b"user:1",
                b"name",
                b"ann",
                b"password",
                b"x",
                b"prefs",
                br#"{"token":1,"a":2}"#,
            ],
            &f,
        );
        assert_eq!(
            rewrite(&out),
            ["HSET", "user:1", "name", "ann", "prefs", r#"{"a":2}"#]
        );
        let (out, _) = run(&[b"HSET", b"user:1", b"name", b"ann"], &f);
        assert_eq!(out, StageOutcome::Unchanged);
        // Unbalanced: Redis refuses it; we leave it alone.
        let (out, _) = run(&[b"HSET", b"user:1", b"password"], &f);
        assert_eq!(out, StageOutcome::Unchanged);
    }

    #[test]
    fn reject_names_the_key_and_field_and_audit_forwards() {
        let r = rules(SensitiveAction::Reject, &[Detector::UsSsn]);
        let f = rules_fn(&r);
        let (out, _) = run(&[b"SET", b"user_profile:42", br#"{"password":"x"}"#], &f);
        assert_eq!(
            out,
            StageOutcome::Reject(
                r#"POLICY value for user_profile:42 contains sensitive field "password""#.into()
            )
        );
        let (out, _) = run(&[b"HSET", b"user_profile:\r\n", b"CREDIT_CARD", b"x"], &f);
        assert_eq!(
            out,
            StageOutcome::Reject(
                r#"POLICY value for user_profile:\x0d\x0a contains sensitive field "creditCard""#
                    .into()
            )
        );
        let (out, _) = run(&[b"PUBLISH", b"news", b"ssn 123-45-6789"], &f);
        assert_eq!(
            out,
            StageOutcome::Reject(
                "POLICY message for channel news contains a US social security number".into()
            )
        );
        let r = rules(SensitiveAction::Audit, &[]);
        let f = rules_fn(&r);
        let (out, labels) = run(
            &[
                b"HSET",
                b"k",
                b"password",
                b"x",
                b"password",
                br#"{"password":1}"#,
            ],
            &f,
        );
        assert_eq!(out, StageOutcome::Unchanged);
        assert_eq!(labels, ["1:password"], "once per key and field");
    }

    #[test]
    fn value_positions_of_every_command() {
        let r = rules(SensitiveAction::Strip, &[Detector::CardNumber]);
        let f = rules_fn(&r);
        let doc: &[u8] = br#"{"a":1,"password":"x"}"#;
        let clean = r#"{"a":1}"#;
        let cases: &[(&[&[u8]], &[&str])] = &[
            (
                &[b"SET", b"k", doc, b"EX", b"10", b"NX"],
                &["SET", "k", clean, "EX", "10", "NX"],
            ),
            (&[b"SETEX", b"k", b"10", doc], &["SETEX", "k", "10", clean]),
            (
                &[b"PSETEX", b"k", b"10", doc],
                &["PSETEX", "k", "10", clean],
            ),
            (&[b"SETNX", b"k", doc], &["SETNX", "k", clean]),
            (&[b"GETSET", b"k", doc], &["GETSET", "k", clean]),
            (&[b"LPUSH", b"k", b"a", doc], &["LPUSH", "k", "a", clean]),
            (&[b"RPUSHX", b"k", doc, doc], &["RPUSHX", "k", clean, clean]),
            (&[b"LSET", b"k", b"0", doc], &["LSET", "k", "0", clean]),
            (
                &[b"LINSERT", b"k", b"BEFORE", doc, doc],
                &[
                    "LINSERT",
                    "k",
                    "BEFORE",
                    std::str::from_utf8(doc).unwrap(),
                    clean,
                ],
            ),
            (
                &[b"SADD", b"k", doc, b"4111 1111 1111 1111"],
                &["SADD", "k", clean, "[REDACTED]"],
            ),
            (&[b"PUBLISH", b"ch", doc], &["PUBLISH", "ch", clean]),
            (&[b"SPUBLISH", b"ch", doc], &["SPUBLISH", "ch", clean]),
            (
                &[b"JSON.SET", b"k", b"$", doc, b"NX"],
                &["JSON.SET", "k", "$", clean, "NX"],
            ),
            (
                &[b"JSON.SET", b"k", b"$.card", b"\"4111111111111111\""],
                &["JSON.SET", "k", "$.card", "\"[REDACTED]\""],
            ),
        ];
        for (args, want) in cases {
            let (out, _) = run(args, &f);
            assert_eq!(rewrite(&out), *want, "{:?}", want[0]);
        }
        // Wrong arity: Redis refuses; unchanged.
        let bad: [&[&[u8]]; 3] = [
            &[b"SETEX", b"k", doc],
            &[b"LSET", b"k", doc],
            &[b"GET", b"k"],
        ];
        for args in bad {
            assert_eq!(run(args, &f).0, StageOutcome::Unchanged);
        }
    }

    #[test]
    fn zadd_members_after_options() {
        let r = strip_rules();
        let f = rules_fn(&r);
        let doc: &[u8] = br#"{"token":"t","u":1}"#;
        let (out, _) = run(
            &[b"ZADD", b"z", b"NX", b"gt", b"CH", b"INCR", b"1.5", doc],
            &f,
        );
        assert_eq!(
            rewrite(&out),
            ["ZADD", "z", "NX", "gt", "CH", "INCR", "1.5", r#"{"u":1}"#]
        );
        let (out, _) = run(&[b"ZADD", b"z", b"XX", b"1", b"a", b"2", doc], &f);
        assert_eq!(
            rewrite(&out),
            ["ZADD", "z", "XX", "1", "a", "2", r#"{"u":1}"#]
        );
        // A score is never a member, even when it looks like JSON.
        let (out, _) = run(&[b"ZADD", b"z", doc, b"m"], &f);
        assert_eq!(out, StageOutcome::Unchanged);
    }

    #[test]
    fn xadd_fields_after_trim_options() {
        let r = strip_rules();
        let f = rules_fn(&r);
        let (out, labels) = run(
            &[
                b"XADD",
                b"s",
                b"NOMKSTREAM",
                b"MAXLEN",
                b"~",
                b"1000",
                b"LIMIT",
                b"10",
                b"*",
                b"password",
                b"x",
                b"msg",
                br#"{"cvv":1,"b":2}"#,
            ],
            &f,
        );
        assert_eq!(
            rewrite(&out),
            [
                "XADD",
                "s",
                "NOMKSTREAM",
                "MAXLEN",
                "~",
                "1000",
                "LIMIT",
                "10",
                "*",
                "msg",
                r#"{"b":2}"#
            ]
        );
        assert_eq!(labels, ["1:password", "1:cvv"]);
        let (out, _) = run(
            &[b"XADD", b"s", b"minid", b"=", b"0-1", b"1-1", b"ssn", b"x"],
            &f,
        );
        assert!(
            matches!(out, StageOutcome::Reject(ref m) if m.starts_with("POLICY every field")),
            "{out:?}"
        );
        // `MAXLEN 5` without `~`: 5 is the threshold and `*` the ID.
        let (out, _) = run(
            &[
                b"XADD", b"s", b"MAXLEN", b"5", b"*", b"a", b"1", b"token", b"t",
            ],
            &f,
        );
        assert_eq!(rewrite(&out), ["XADD", "s", "MAXLEN", "5", "*", "a", "1"]);
        // A field named like an option is still a field after the ID.
        let (out, _) = run(&[b"XADD", b"s", b"1-1", b"MAXLEN", b"x", b"cvv", b"1"], &f);
        assert_eq!(rewrite(&out), ["XADD", "s", "1-1", "MAXLEN", "x"]);
    }

    #[test]
    fn mset_uses_each_keys_rules() {
        let strip = strip_rules();
        let reject = rules(SensitiveAction::Reject, &[]);
        let audit = rules(SensitiveAction::Audit, &[]);
        let off = SensitiveRules::default();
        let by_key = |k: &[u8]| match k.split(|&b| b == b':').next() {
            Some(b"s") => &strip,
            Some(b"r") => &reject,
            Some(b"a") => &audit,
            _ => &off,
        };
        let doc: &[u8] = br#"{"password":"x","k":1}"#;
        let (out, labels) = run(
            &[
                b"MSET", b"s:1", doc, b"a:1", doc, b"o:1", doc, b"s:2", b"plain",
            ],
            &by_key,
        );
        assert_eq!(
            rewrite(&out),
            [
                "MSET",
                "s:1",
                r#"{"k":1}"#,
                "a:1",
                std::str::from_utf8(doc).unwrap(),
                "o:1",
                std::str::from_utf8(doc).unwrap(),
                "s:2",
                "plain"
            ]
        );
        assert_eq!(labels, ["1:password", "3:password"]);
        let (out, _) = run(&[b"MSETNX", b"s:1", doc, b"r:1", doc], &by_key);
        assert_eq!(
            out,
            StageOutcome::Reject(
                r#"POLICY value for r:1 contains sensitive field "password""#.into()
            )
        );
        assert_eq!(
            run(&[b"MSET", b"s:1", doc, b"s:2"], &by_key).0,
            StageOutcome::Unchanged
        );
    }

    #[test]
    fn json_set_paths_and_publish_switch() {
        let r = strip_rules();
        let f = rules_fn(&r);
        for path in [
            "$.password",
            "$['credit-card']",
            ".user.SSN",
            "$..token",
            "$[\"pass\\u0077ord\"]",
            "password",
        ] {
            let (out, labels) = run(&[b"JSON.SET", b"k", path.as_bytes(), b"\"x\""], &f);
            assert_eq!(
                out,
                StageOutcome::Respond(Bytes::from_static(b"+OK\r\n")),
                "{path}"
            );
            assert_eq!(labels.len(), 1, "{path}");
        }
        for path in ["$", "$.user.name", "$[?(@.password)].name", "$.passwords"] {
            assert_eq!(
                run(&[b"JSON.SET", b"k", path.as_bytes(), b"\"x\""], &f).0,
                StageOutcome::Unchanged,
                "{path}"
            );
        }
        let quiet = SensitiveRules::new(FIELDS, SensitiveAction::Strip, &[], false).unwrap();
        let f = rules_fn(&quiet);
        assert_eq!(
            run(&[b"PUBLISH", b"c", br#"{"password":1}"#], &f).0,
            StageOutcome::Unchanged
        );
    }

    #[test]
    fn config_validation_and_inheritance() {
        let yaml = "fields: [password, ssn, creditCard]\naction: reject\ndetect: [card_number]\n";
        let raw: RawSensitive = serde_saphyr::from_str(yaml).unwrap();
        let mut p = Problems::new("t.yaml");
        let base = validate(&raw, None, "policy.sensitive", &mut p).unwrap();
        assert!(p.is_empty());
        assert_eq!(
            base.field_names(),
            ["password", "ssn", "creditCard", "card_number"]
        );
        assert_eq!(base.action(), SensitiveAction::Reject);
        assert!(base.publish());

        let raw: RawSensitive =
            serde_saphyr::from_str("fields: [password, dateOfBirth]\npublish: false\n").unwrap();
        let ns = validate(
            &raw,
            Some(&base),
            "policy.namespaces.user_profile.sensitive",
            &mut p,
        )
        .unwrap();
        assert_eq!(ns.field_names(), ["password", "dateOfBirth", "card_number"]);
        assert_eq!(ns.action(), SensitiveAction::Reject, "inherited");
        assert!(!ns.publish());
        assert_eq!(ns.is_sensitive_field(b"date_of_birth"), Some(1));
        assert_eq!(
            ns.is_sensitive_field(b"ssn"),
            None,
            "fields replace the default list"
        );

        let raw: RawSensitive = serde_saphyr::from_str("action: audit\n").unwrap();
        let ns = validate(&raw, Some(&base), "x", &mut p).unwrap();
        assert_eq!(ns.field_names(), base.field_names());
        assert_eq!(ns.action(), SensitiveAction::Audit);

        let bad = "fields:\n  - password\n  - \"\"\n  - credit_card\n  - CREDIT-CARD\n  - 'a\"b'\n  - _-\naction: drop\ndetect: [iban]\n";
        let raw: RawSensitive = serde_saphyr::from_str(bad).unwrap();
        let mut p = Problems::new("t.yaml");
        assert!(validate(&raw, None, "policy.sensitive", &mut p).is_none());
        let err = p.into_result(()).unwrap_err();
        let got: Vec<_> = err.0.iter().map(|p| (p.line, p.field.as_str())).collect();
        assert_eq!(
            got,
            [
                (Some(3), "policy.sensitive.fields[1]"),
                (Some(5), "policy.sensitive.fields[3]"),
                (Some(6), "policy.sensitive.fields[4]"),
                (Some(7), "policy.sensitive.fields[5]"),
                (Some(8), "policy.sensitive.action"),
                (Some(9), "policy.sensitive.detect[0]"),
            ],
            "{err}"
        );
        assert!(serde_saphyr::from_str::<RawSensitive>("feilds: [x]\n").is_err());
    }

    #[test]
    fn clean_values_do_not_allocate_findings_or_parse() {
        let r = rules(
            SensitiveAction::Strip,
            &[Detector::CardNumber, Detector::UsSsn],
        );
        let doc = r#"{"id":"u-1","user_id":7,"created_at":"2024-01-15T10:00:00Z","tags":["a"]}"#;
        let mut f = Vec::new();
        assert!(r.scan_value(doc.as_bytes(), &mut f).is_none());
        assert!(!r.may_contain_field(doc.as_bytes()));
        assert!(!r.may_detect(doc.as_bytes(), false));
        assert_eq!(f.capacity(), 0);
        assert!(!SensitiveRules::default().is_active());
    }
}
