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
//!
//! # Layout
//!
//! This module holds the compiled rules ([`SensitiveRules`]) and the scan of one value;
//! [`prefilter`] the cheap scans above, [`detect`] the card number and SSN detectors,
//! [`document`] the visitor that finds fields and leaves in a parsed document, and
//! [`positions`] where each command carries its values and what the stage does to them. The
//! `sensitive:` section's schema and validation are with the rest of the policy's in
//! `policy/load.rs`.

mod detect;
mod document;
mod positions;
mod prefilter;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use super::json;
use document::{push_finding, Finder};
use prefilter::{has_detectable_escape, starts_container, ByteSet, ShapeFilter};

pub use super::load::{validate_sensitive as validate, RawSensitive};
pub use positions::{apply, apply_row, StageFinding, StageOutcome};

/// Index into [`SensitiveRules::field_names`].
pub type FieldId = u16;

/// Most configured field names in one rule set.
pub const MAX_FIELDS: usize = 1024;
/// Longest configured field name, in bytes.
pub const MAX_FIELD_LEN: usize = 128;
/// What a detected plain string value becomes.
pub const REDACTED: &[u8] = b"[REDACTED]";

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

    pub(super) fn parse(s: &str) -> Option<Self> {
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

    pub(super) fn describe(self) -> &'static str {
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
pub(super) fn check_field_name(name: &str) -> Result<Vec<u8>, String> {
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

pub(super) fn duplicate_message(name: &str, earlier: &str) -> String {
    format!("field {name:?} is the same as {earlier:?} (names match ignoring case, '_' and '-')")
}

impl SensitiveRules {
    /// Compiles rules from already-validated parts; see [`SensitiveRules::new`].
    pub(super) fn build(
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
}
