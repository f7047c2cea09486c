//! What the audit found, aggregated as it walks (bounded: counts, fixed TTL buckets, a key-shape
//! table with a cap on distinct shapes and a few examples each), and the finished report in
//! three formats: a table for terminals, JSON for CI jobs, Markdown for tickets.
//!
//! Values are never recorded: sensitive findings are field or detector names with key counts.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use serde::Serialize;

use crate::policy::ttl::fmt_ms;
use crate::policy::{NsId, Policy, NS_UNMATCHED};

/// Upper bounds of the remaining-TTL buckets, in ms; one more bucket holds the rest.
pub const TTL_BUCKETS: [u64; 10] = [
    60_000,
    300_000,
    900_000,
    1_800_000,
    3_600_000,
    7_200_000,
    21_600_000,
    86_400_000,
    604_800_000,
    2_592_000_000,
];

/// Most distinct (namespace, shape) pairs tracked; keys of further shapes count as "other".
pub const MAX_SHAPES: usize = 10_000;
/// Examples kept per shape.
pub const EXAMPLES: usize = 3;
/// Shapes listed per namespace in the report.
pub const TOP_SHAPES: usize = 20;
/// Distinct Redis types tracked (modules add their own); more fold into `other`.
const MAX_TYPES: usize = 32;

/// What the audit learned about the TTL of one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TtlFinding {
    /// Inside the bounds, or the namespace has no TTL rule.
    Fine,
    /// No expiry in a namespace that requires one.
    NoExpiry,
    /// Above the namespace maximum: the proxy would have lowered (or refused) it.
    AboveMax,
    /// Remaining TTL below the minimum. Remaining TTLs fall as keys age, so this is shown but
    /// is not a violation.
    BelowMin,
}

/// Whether a key's value was read for the sensitive rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inspection {
    /// Read and scanned.
    Inspected,
    /// No rule needs it (type not scanned, or the namespace has no sensitive rules).
    NotNeeded,
    /// Larger than the value cap: not read.
    TooLarge,
}

/// One key as the walker saw it.
#[derive(Debug)]
pub struct KeyObs<'a> {
    pub key: &'a [u8],
    pub ns: NsId,
    pub kind: &'a str,
    /// Remaining TTL in ms; `None` without expiry.
    pub pttl: Option<u64>,
    pub bytes: u64,
    pub ttl: TtlFinding,
    /// Field and detector names found in the value.
    pub sensitive: &'a [String],
    pub inspection: Inspection,
    /// The key matches no namespace and the policy refuses such keys.
    pub refused_name: bool,
}

impl KeyObs<'_> {
    pub fn is_violation(&self) -> bool {
        self.refused_name
            || matches!(self.ttl, TtlFinding::NoExpiry | TtlFinding::AboveMax)
            || !self.sensitive.is_empty()
    }
}

/// Per-namespace running totals.
#[derive(Debug, Default, Clone)]
pub struct NsAgg {
    pub keys: u64,
    pub bytes: u64,
    pub no_expiry: u64,
    pub above_max: u64,
    pub below_min: u64,
    pub not_inspected: u64,
    pub violations: u64,
    pub sensitive_keys: u64,
    pub buckets: [u64; TTL_BUCKETS.len() + 1],
    pub ttl_seen: Option<(u64, u64)>,
    pub types: BTreeMap<String, u64>,
    pub sensitive: BTreeMap<String, u64>,
}

/// Per-shape running totals.
#[derive(Debug, Default, Clone)]
pub struct ShapeAgg {
    pub keys: u64,
    pub bytes: u64,
    pub no_expiry: u64,
    pub ttl_seen: Option<(u64, u64)>,
    pub examples: Vec<String>,
}

fn widen(seen: &mut Option<(u64, u64)>, v: u64) {
    *seen = Some(match *seen {
        None => (v, v),
        Some((lo, hi)) => (lo.min(v), hi.max(v)),
    });
}

/// Index of the bucket a remaining TTL falls in.
pub fn bucket_of(ms: u64) -> usize {
    TTL_BUCKETS
        .iter()
        .position(|&b| ms <= b)
        .unwrap_or(TTL_BUCKETS.len())
}

fn bucket_label(i: usize) -> String {
    match TTL_BUCKETS.get(i) {
        Some(&ms) => format!("<={}", fmt_ms(ms)),
        None => format!(">{}", fmt_ms(TTL_BUCKETS[TTL_BUCKETS.len() - 1])),
    }
}

/// The running audit: everything the report needs, and nothing per key.
#[derive(Debug, Default)]
pub struct Aggregate {
    /// Indexed by namespace id; the last entry is the keys in no namespace.
    pub ns: Vec<NsAgg>,
    pub shapes: HashMap<(NsId, String), ShapeAgg>,
    /// Keys whose shape did not fit in the table, per namespace.
    pub other_shapes: HashMap<NsId, u64>,
    pub keys: u64,
    pub bytes: u64,
    pub vanished: u64,
    pub violations: u64,
    pub refused_names: u64,
    pub sensitive_keys: u64,
}

impl Aggregate {
    pub fn new(policy: &Policy) -> Self {
        Aggregate {
            ns: vec![NsAgg::default(); policy.namespace_names().len() + 1],
            ..Aggregate::default()
        }
    }

    fn slot(&self, ns: NsId) -> usize {
        if ns == NS_UNMATCHED || usize::from(ns) >= self.ns.len() - 1 {
            self.ns.len() - 1
        } else {
            usize::from(ns)
        }
    }

    pub fn add(&mut self, k: &KeyObs<'_>) {
        let violation = k.is_violation();
        self.keys += 1;
        self.bytes += k.bytes;
        self.violations += u64::from(violation);
        self.refused_names += u64::from(k.refused_name);
        self.sensitive_keys += u64::from(!k.sensitive.is_empty());
        let slot = self.slot(k.ns);
        let a = &mut self.ns[slot];
        a.keys += 1;
        a.bytes += k.bytes;
        a.violations += u64::from(violation);
        match k.ttl {
            TtlFinding::NoExpiry => a.no_expiry += 1,
            TtlFinding::AboveMax => a.above_max += 1,
            TtlFinding::BelowMin => a.below_min += 1,
            TtlFinding::Fine => {}
        }
        if k.pttl.is_none() && k.ttl != TtlFinding::NoExpiry {
            // Keys without expiry in namespaces without a TTL rule (or in none).
            a.no_expiry += 1;
        }
        if let Some(ms) = k.pttl {
            a.buckets[bucket_of(ms)] += 1;
            widen(&mut a.ttl_seen, ms);
        }
        a.not_inspected += u64::from(k.inspection == Inspection::TooLarge);
        a.sensitive_keys += u64::from(!k.sensitive.is_empty());
        if let Some(n) = a.types.get_mut(k.kind) {
            *n += 1;
        } else if a.types.len() < MAX_TYPES {
            a.types.insert(k.kind.to_string(), 1);
        } else {
            *a.types.entry("other".into()).or_default() += 1;
        }
        for f in k.sensitive {
            if let Some(n) = a.sensitive.get_mut(f) {
                *n += 1;
            } else {
                a.sensitive.insert(f.clone(), 1);
            }
        }

        // Shapes are for keys in no namespace: what the report lists and the suggested
        // policy turns into new namespaces.
        if slot != self.ns.len() - 1 {
            return;
        }
        let ns = NS_UNMATCHED;
        let shape = super::shape::of(k.key);
        let id = (ns, shape);
        let entry = if self.shapes.len() >= MAX_SHAPES && !self.shapes.contains_key(&id) {
            None
        } else {
            Some(self.shapes.entry(id).or_default())
        };
        match entry {
            None => *self.other_shapes.entry(ns).or_default() += 1,
            Some(s) => {
                s.keys += 1;
                s.bytes += k.bytes;
                match k.pttl {
                    None => s.no_expiry += 1,
                    Some(ms) => widen(&mut s.ttl_seen, ms),
                }
                if s.examples.len() < EXAMPLES {
                    s.examples.push(super::shape::show(k.key));
                }
            }
        }
    }

    /// The namespace totals of `ns` ([`NS_UNMATCHED`] for keys in no namespace).
    pub fn namespace(&self, ns: NsId) -> &NsAgg {
        &self.ns[self.slot(ns)]
    }
}

/// The fixed-bucket distribution as reported.
#[derive(Debug, Serialize)]
pub struct Bucket {
    pub up_to: String,
    pub keys: u64,
}

#[derive(Debug, Serialize)]
pub struct FieldCount {
    pub field: String,
    pub keys: u64,
}

#[derive(Debug, Serialize)]
pub struct TtlBounds {
    pub default: String,
    pub min: Option<String>,
    pub max: Option<String>,
}

/// One namespace in the report.
#[derive(Debug, Serialize)]
pub struct NsReport {
    pub name: String,
    pub patterns: Vec<String>,
    pub ttl: Option<TtlBounds>,
    pub keys: u64,
    pub bytes: u64,
    pub types: BTreeMap<String, u64>,
    pub no_expiry: u64,
    pub ttl_above_max: u64,
    pub ttl_below_min: u64,
    pub ttl_remaining: Vec<Bucket>,
    /// Keys in which the sensitive rules found something.
    pub sensitive_keys: u64,
    pub sensitive: Vec<FieldCount>,
    pub values_not_inspected: u64,
    pub violations: u64,
}

#[derive(Debug, Serialize)]
pub struct ShapeReport {
    pub shape: String,
    pub keys: u64,
    pub bytes: u64,
    pub no_expiry: u64,
    pub examples: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct UnmatchedReport {
    /// With `unknown_keys: reject` the proxy refuses every one of these keys.
    pub refused_by_policy: bool,
    #[serde(flatten)]
    pub totals: NsReport,
    pub shapes: Vec<ShapeReport>,
    pub distinct_shapes: usize,
    /// Keys whose shape was not tracked because the shape table was full.
    pub keys_in_untracked_shapes: u64,
}

#[derive(Debug, Serialize)]
pub struct Violations {
    pub keys: u64,
    pub no_namespace: u64,
    pub no_expiry: u64,
    pub ttl_above_max: u64,
    pub sensitive: u64,
}

/// Planned or applied TTL fixes, per namespace.
#[derive(Debug, Default, Serialize)]
pub struct FixReport {
    pub applied: bool,
    /// `PEXPIRE key <default> NX`, per namespace.
    pub set_default: BTreeMap<String, u64>,
    /// `PEXPIRE key <max> LT`, per namespace.
    pub lower_to_max: BTreeMap<String, u64>,
    /// Commands sent that changed an expiry (with `--apply`).
    pub changed: u64,
    /// Commands sent that found nothing to change (the key expired, was deleted or got an
    /// expiry in bounds between the walk and the fix).
    pub unchanged: u64,
    /// The first few commands, as text.
    pub examples: Vec<String>,
}

/// The finished report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub upstream: String,
    pub partial: bool,
    pub sampled: bool,
    pub dbsize: u64,
    pub keys_scanned: u64,
    pub keys_vanished: u64,
    pub bytes: u64,
    pub commands: u64,
    pub elapsed_ms: u64,
    pub keys_per_second: u64,
    pub unknown_keys: &'static str,
    pub violations: Violations,
    pub namespaces: Vec<NsReport>,
    pub unmatched: UnmatchedReport,
    pub fix_ttl: Option<FixReport>,
}

fn ns_report(policy: &Policy, ns: NsId, name: &str, a: &NsAgg) -> NsReport {
    let namespace = policy.namespace(ns);
    NsReport {
        name: name.to_string(),
        patterns: namespace.map(|n| n.patterns.clone()).unwrap_or_default(),
        ttl: namespace.and_then(|n| n.ttl.as_ref()).map(|t| TtlBounds {
            default: fmt_ms(t.default_ms),
            min: (t.min_ms > 0).then(|| fmt_ms(t.min_ms)),
            max: (t.max_ms < u64::MAX).then(|| fmt_ms(t.max_ms)),
        }),
        keys: a.keys,
        bytes: a.bytes,
        types: a.types.clone(),
        no_expiry: a.no_expiry,
        ttl_above_max: a.above_max,
        ttl_below_min: a.below_min,
        ttl_remaining: a
            .buckets
            .iter()
            .enumerate()
            .map(|(i, &keys)| Bucket {
                up_to: bucket_label(i),
                keys,
            })
            .collect(),
        sensitive_keys: a.sensitive_keys,
        sensitive: a
            .sensitive
            .iter()
            .map(|(f, &keys)| FieldCount {
                field: f.clone(),
                keys,
            })
            .collect(),
        values_not_inspected: a.not_inspected,
        violations: a.violations,
    }
}

/// Facts about the run that are not aggregates.
#[derive(Debug)]
pub struct RunInfo {
    pub upstream: String,
    pub partial: bool,
    pub sampled: bool,
    pub dbsize: u64,
    pub commands: u64,
    pub elapsed_ms: u64,
}

impl Report {
    pub fn build(policy: &Policy, agg: &Aggregate, run: RunInfo, fix: Option<FixReport>) -> Self {
        let names = policy.namespace_names();
        let namespaces: Vec<NsReport> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let id = NsId::try_from(i).unwrap_or(NS_UNMATCHED);
                ns_report(policy, id, name, agg.namespace(id))
            })
            .collect();
        let un = agg.namespace(NS_UNMATCHED);
        let mut shapes: Vec<(&String, &ShapeAgg)> = agg
            .shapes
            .iter()
            .filter(|((ns, _), _)| *ns == NS_UNMATCHED)
            .map(|((_, s), a)| (s, a))
            .collect();
        let distinct_shapes = shapes.len();
        shapes.sort_by(|a, b| b.1.keys.cmp(&a.1.keys).then_with(|| a.0.cmp(b.0)));
        let refused = policy.unknown_keys() == crate::policy::UnknownKeys::Reject;
        let violations = Violations {
            keys: agg.violations,
            no_namespace: agg.refused_names,
            no_expiry: namespaces
                .iter()
                .map(|n| if n.ttl.is_some() { n.no_expiry } else { 0 })
                .sum(),
            ttl_above_max: namespaces.iter().map(|n| n.ttl_above_max).sum(),
            sensitive: agg.sensitive_keys,
        };
        let secs = (run.elapsed_ms as f64 / 1000.0).max(0.001);
        Report {
            upstream: run.upstream,
            partial: run.partial,
            sampled: run.sampled,
            dbsize: run.dbsize,
            keys_scanned: agg.keys,
            keys_vanished: agg.vanished,
            bytes: agg.bytes,
            commands: run.commands,
            elapsed_ms: run.elapsed_ms,
            keys_per_second: (agg.keys as f64 / secs) as u64,
            unknown_keys: if refused { "reject" } else { "allow" },
            violations,
            namespaces,
            unmatched: UnmatchedReport {
                refused_by_policy: refused,
                totals: ns_report(policy, NS_UNMATCHED, "(no namespace)", un),
                shapes: shapes
                    .into_iter()
                    .take(TOP_SHAPES)
                    .map(|(s, a)| ShapeReport {
                        shape: s.clone(),
                        keys: a.keys,
                        bytes: a.bytes,
                        no_expiry: a.no_expiry,
                        examples: a.examples.clone(),
                    })
                    .collect(),
                distinct_shapes,
                keys_in_untracked_shapes: agg.other_shapes.get(&NS_UNMATCHED).copied().unwrap_or(0),
            },
            fix_ttl: fix,
        }
    }

    pub fn has_violations(&self) -> bool {
        self.violations.keys > 0
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The table for terminals, or Markdown when `markdown`.
    pub fn text(&self, markdown: bool) -> String {
        let mut t = Text::new(markdown);
        let state = match (self.partial, self.sampled) {
            (true, _) => " (INTERRUPTED: partial report)",
            (false, true) => " (sample)",
            _ => "",
        };
        t.heading(&format!("respguard audit of {}{state}", self.upstream));
        t.line(&format!(
            "{} keys scanned of {} (DBSIZE), {}, {} commands in {:.1} s ({} keys/s){}",
            self.keys_scanned,
            self.dbsize,
            human_bytes(self.bytes),
            self.commands,
            self.elapsed_ms as f64 / 1000.0,
            self.keys_per_second,
            if self.keys_vanished > 0 {
                format!("; {} keys vanished during the walk", self.keys_vanished)
            } else {
                String::new()
            }
        ));
        t.blank();

        t.heading2("Namespaces");
        let mut rows = vec![vec![
            "namespace".to_string(),
            "ttl (default, min..max)".into(),
            "keys".into(),
            "bytes".into(),
            "no expiry".into(),
            "above max".into(),
            "below min*".into(),
            "sensitive keys".into(),
            "not inspected".into(),
            "violations".into(),
        ]];
        for n in self
            .namespaces
            .iter()
            .chain(std::iter::once(&self.unmatched.totals))
        {
            rows.push(vec![
                n.name.clone(),
                n.ttl
                    .as_ref()
                    .map(|t| {
                        format!(
                            "{}, {}..{}",
                            t.default,
                            t.min.as_deref().unwrap_or("0"),
                            t.max.as_deref().unwrap_or("-")
                        )
                    })
                    .unwrap_or_else(|| "-".into()),
                n.keys.to_string(),
                human_bytes(n.bytes),
                n.no_expiry.to_string(),
                n.ttl_above_max.to_string(),
                n.ttl_below_min.to_string(),
                n.sensitive_keys.to_string(),
                n.values_not_inspected.to_string(),
                n.violations.to_string(),
            ]);
        }
        t.table(&rows);
        t.note(
            "* remaining TTL below the minimum: TTLs fall as keys age, so this is not a violation.",
        );
        t.blank();

        t.heading2("Remaining TTLs (keys per bucket)");
        let mut rows = vec![std::iter::once("namespace".to_string())
            .chain(std::iter::once("no expiry".to_string()))
            .chain((0..=TTL_BUCKETS.len()).map(bucket_label))
            .collect::<Vec<_>>()];
        for n in self
            .namespaces
            .iter()
            .chain(std::iter::once(&self.unmatched.totals))
        {
            if n.keys == 0 {
                continue;
            }
            rows.push(
                std::iter::once(n.name.clone())
                    .chain(std::iter::once(n.no_expiry.to_string()))
                    .chain(n.ttl_remaining.iter().map(|b| b.keys.to_string()))
                    .collect(),
            );
        }
        t.table(&rows);
        t.blank();

        let sensitive: Vec<&NsReport> = self
            .namespaces
            .iter()
            .chain(std::iter::once(&self.unmatched.totals))
            .filter(|n| !n.sensitive.is_empty())
            .collect();
        if !sensitive.is_empty() {
            t.heading2("Sensitive data found (field or detector, keys; values are never shown)");
            let mut rows = vec![vec!["namespace".to_string(), "field".into(), "keys".into()]];
            for n in sensitive {
                for f in &n.sensitive {
                    rows.push(vec![n.name.clone(), f.field.clone(), f.keys.to_string()]);
                }
            }
            t.table(&rows);
            t.blank();
        }

        if self.unmatched.totals.keys > 0 {
            t.heading2(&format!(
                "Keys in no namespace: {} ({}), {} shapes{}",
                self.unmatched.totals.keys,
                if self.unmatched.refused_by_policy {
                    "the proxy refuses them: unknown_keys: reject"
                } else {
                    "allowed: unknown_keys: allow"
                },
                self.unmatched.distinct_shapes,
                if self.unmatched.keys_in_untracked_shapes > 0 {
                    format!(
                        ", {} more keys in shapes past the table's limit",
                        self.unmatched.keys_in_untracked_shapes
                    )
                } else {
                    String::new()
                }
            ));
            let mut rows = vec![vec![
                "shape".to_string(),
                "keys".into(),
                "bytes".into(),
                "no expiry".into(),
                "examples".into(),
            ]];
            for s in &self.unmatched.shapes {
                rows.push(vec![
                    s.shape.clone(),
                    s.keys.to_string(),
                    human_bytes(s.bytes),
                    s.no_expiry.to_string(),
                    s.examples.join(", "),
                ]);
            }
            t.table(&rows);
            t.blank();
        }

        if let Some(f) = &self.fix_ttl {
            t.heading2(if f.applied {
                "TTL fixes applied"
            } else {
                "TTL fixes (dry run: nothing was changed; --apply to act)"
            });
            let mut rows = vec![vec![
                "namespace".to_string(),
                "PEXPIRE default NX".into(),
                "PEXPIRE max LT".into(),
            ]];
            let mut names: Vec<&String> =
                f.set_default.keys().chain(f.lower_to_max.keys()).collect();
            names.sort();
            names.dedup();
            for n in names {
                rows.push(vec![
                    n.clone(),
                    f.set_default.get(n).copied().unwrap_or(0).to_string(),
                    f.lower_to_max.get(n).copied().unwrap_or(0).to_string(),
                ]);
            }
            t.table(&rows);
            if f.applied {
                t.line(&format!(
                    "{} expiries changed, {} commands found nothing to change",
                    f.changed, f.unchanged
                ));
            }
            for e in &f.examples {
                t.code(e);
            }
            t.blank();
        }

        let v = &self.violations;
        t.line(&format!(
            "Violations: {} keys ({} in no namespace the proxy refuses, {} without expiry, {} above the TTL maximum, {} with sensitive data).",
            v.keys, v.no_namespace, v.no_expiry, v.ttl_above_max, v.sensitive
        ));
        t.finish()
    }
}

/// Plain or Markdown text with aligned tables.
struct Text {
    md: bool,
    out: String,
}

impl Text {
    fn new(md: bool) -> Self {
        Text {
            md,
            out: String::new(),
        }
    }
    fn heading(&mut self, s: &str) {
        let _ = writeln!(self.out, "{}{s}", if self.md { "## " } else { "" });
    }
    fn heading2(&mut self, s: &str) {
        if self.md {
            let _ = writeln!(self.out, "### {s}\n");
        } else {
            let _ = writeln!(self.out, "{s}");
        }
    }
    fn line(&mut self, s: &str) {
        let _ = writeln!(self.out, "{s}");
    }
    fn note(&mut self, s: &str) {
        if self.md {
            let _ = writeln!(self.out, "\n_{s}_");
        } else {
            let _ = writeln!(self.out, "{s}");
        }
    }
    fn code(&mut self, s: &str) {
        if self.md {
            let _ = writeln!(self.out, "    {s}");
        } else {
            let _ = writeln!(self.out, "  {s}");
        }
    }
    fn blank(&mut self) {
        self.out.push('\n');
    }
    fn table(&mut self, rows: &[Vec<String>]) {
        let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                rows.iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        // Columns of names (and the first) align left, figures right.
        let left: Vec<bool> = (0..cols)
            .map(|c| {
                c == 0
                    || rows
                        .iter()
                        .skip(1)
                        .filter_map(|r| r.get(c))
                        .any(|s| !s.starts_with(|ch: char| ch.is_ascii_digit() || ch == '-'))
            })
            .collect();
        for (i, r) in rows.iter().enumerate() {
            if self.md {
                let cells: Vec<String> = r.iter().map(|c| c.replace('|', "\\|")).collect();
                let _ = writeln!(self.out, "| {} |", cells.join(" | "));
                if i == 0 {
                    let _ = writeln!(self.out, "|{}|", vec!["---"; r.len()].join("|"));
                }
            } else {
                let mut line = String::new();
                for (c, cell) in r.iter().enumerate() {
                    let w = widths.get(c).copied().unwrap_or(0);
                    if left.get(c).copied().unwrap_or(true) {
                        let _ = write!(line, "{cell:<w$}  ");
                    } else {
                        let _ = write!(line, "{cell:>w$}  ");
                    }
                }
                let _ = writeln!(self.out, "{}", line.trim_end());
            }
        }
    }
    fn finish(self) -> String {
        self.out
    }
}

/// Bytes in the largest binary unit that keeps one decimal.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_ttl() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(60_000), 0);
        assert_eq!(bucket_of(60_001), 1);
        assert_eq!(bucket_of(u64::MAX), TTL_BUCKETS.len());
        assert_eq!(bucket_label(0), "<=1m");
        assert_eq!(bucket_label(TTL_BUCKETS.len()), ">30d");
    }

    #[test]
    fn the_shape_table_stops_growing_at_its_cap() {
        let policy = Policy::default();
        let mut agg = Aggregate::new(&policy);
        for i in 0..(MAX_SHAPES + 500) {
            // Letters, not digits, so every key is its own shape.
            let key: String = format!("k{i}")
                .chars()
                .map(|c| {
                    if c.is_ascii_digit() {
                        char::from(b'a' + (c as u8 - b'0'))
                    } else {
                        c
                    }
                })
                .collect();
            agg.add(&KeyObs {
                key: key.as_bytes(),
                ns: NS_UNMATCHED,
                kind: "string",
                pttl: None,
                bytes: 10,
                ttl: TtlFinding::Fine,
                sensitive: &[],
                inspection: Inspection::NotNeeded,
                refused_name: false,
            });
        }
        assert_eq!(agg.shapes.len(), MAX_SHAPES);
        assert_eq!(agg.other_shapes.get(&NS_UNMATCHED), Some(&500));
        assert_eq!(agg.keys, (MAX_SHAPES + 500) as u64);
    }
}
