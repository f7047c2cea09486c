//! `--suggest-policy FILE`: a starting configuration written from what the walk saw.
//!
//! - Namespaces the current policy already has are kept as configured (patterns, TTL bounds,
//!   per-namespace sensitive fields), each with a comment on what the audit saw in it.
//! - Keys in no namespace become new namespaces: each key shape whose segments are literals
//!   or folded ids (`user:{n}:profile`) becomes a pattern (`user:{id}:profile`), grouped into
//!   one namespace per first segment. Shapes a pattern cannot state (`user{n}`, ids in the
//!   first segment, unusual bytes) are listed in a comment: those keys need renaming.
//! - TTL bounds of a new namespace come from the remaining TTLs seen: `default` and `max` are
//!   the longest one, rounded up to a common duration. No `min` is suggested: remaining TTLs
//!   only fall, so the shortest one seen says nothing about what the application sets.
//!
//! The file is checked with the same validation as `--check-config` before it is written.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::config::{Config, Overrides, UpstreamAddr, UpstreamConfig};
use crate::policy::sensitive::SensitiveRules;
use crate::policy::ttl::{fmt_ms, OnViolation, MAX_TTL_MS};
use crate::policy::{NsId, Policy, NS_UNMATCHED};

use super::report::{Aggregate, ShapeAgg};
use super::shape;

/// Durations a suggested TTL is rounded up to.
const NICE_MS: [u64; 16] = [
    60_000,
    300_000,
    600_000,
    900_000,
    1_800_000,
    3_600_000,
    7_200_000,
    21_600_000,
    43_200_000,
    86_400_000,
    172_800_000,
    604_800_000,
    2_592_000_000,
    7_776_000_000,
    31_536_000_000,
    MAX_TTL_MS,
];

/// Patterns per new namespace before its literal segments are generalised.
const MAX_PATTERNS: usize = 8;

/// Default TTL for a new namespace none of whose keys had an expiry.
const PLACEHOLDER_TTL_MS: u64 = 3_600_000;

fn nice_ceil(ms: u64) -> u64 {
    NICE_MS
        .iter()
        .copied()
        .find(|&n| ms <= n)
        .unwrap_or(MAX_TTL_MS)
}

fn safe_literal(seg: &str) -> bool {
    !seg.is_empty()
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The pattern a shape becomes, or why it cannot be one.
fn pattern_of(shape: &str) -> Result<Vec<String>, &'static str> {
    if shape.ends_with("...") {
        return Err("too long");
    }
    let segs: Vec<&str> = shape.split(':').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err("has an empty segment");
    }
    if segs.len() == 1 && shape::is_variable(segs[0]) {
        return Err("has its id inside the name: separate it with ':', like user:{id}");
    }
    if shape::is_variable(segs[0]) {
        return Err("starts with an id: prefix it with what it is, like user:{id}");
    }
    let mut out = Vec::with_capacity(segs.len());
    for s in &segs {
        if shape::is_variable(s) {
            out.push(String::new());
        } else if safe_literal(s) {
            out.push((*s).to_string());
        } else {
            return Err("has characters a pattern cannot state");
        }
    }
    Ok(out)
}

/// Placeholders are "" in a pattern until it is written.
fn render(pattern: &[String]) -> String {
    let mut n = 0;
    pattern
        .iter()
        .map(|s| {
            if s.is_empty() {
                n += 1;
                if n == 1 {
                    "{id}".to_string()
                } else {
                    format!("{{id{n}}}")
                }
            } else {
                s.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(":")
}

/// The structure of a written pattern, placeholder names ignored (the duplicate check).
fn structure(pattern: &str) -> String {
    pattern
        .split(':')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Default)]
struct Group {
    patterns: Vec<Vec<String>>,
    keys: u64,
    no_expiry: u64,
    ttl_seen: Option<(u64, u64)>,
    examples: Vec<String>,
}

impl Group {
    fn add(&mut self, pattern: Vec<String>, s: &ShapeAgg) {
        if !self.patterns.contains(&pattern) {
            self.patterns.push(pattern);
        }
        self.keys += s.keys;
        self.no_expiry += s.no_expiry;
        if let Some((lo, hi)) = s.ttl_seen {
            self.ttl_seen = Some(match self.ttl_seen {
                None => (lo, hi),
                Some((a, b)) => (a.min(lo), b.max(hi)),
            });
        }
        for e in &s.examples {
            if self.examples.len() < 3 {
                self.examples.push(e.clone());
            }
        }
    }

    /// Too many literal variants (`cache:home`, `cache:about`, ...): everything after the
    /// first segment becomes a placeholder.
    fn generalise(&mut self) {
        if self.patterns.len() <= MAX_PATTERNS {
            return;
        }
        let mut out: Vec<Vec<String>> = Vec::new();
        for p in &self.patterns {
            let g: Vec<String> = p
                .iter()
                .enumerate()
                .map(|(i, s)| if i == 0 { s.clone() } else { String::new() })
                .collect();
            if !out.contains(&g) {
                out.push(g);
            }
        }
        self.patterns = out;
    }
}

fn ttl_comment(keys: u64, no_expiry: u64, seen: Option<(u64, u64)>) -> String {
    let ttl = match seen {
        Some((lo, hi)) => format!("remaining TTLs {}..{}", fmt_approx(lo), fmt_approx(hi)),
        None => "no key has an expiry".into(),
    };
    format!("{keys} keys seen, {ttl}, {no_expiry} without expiry")
}

/// A duration for comments, rounded to its largest unit.
fn fmt_approx(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ];
    for (size, name) in UNITS {
        if ms >= size {
            return format!("{}{name}", ms / size);
        }
    }
    format!("{ms}ms")
}

fn write_sensitive(out: &mut String, indent: &str, rules: &SensitiveRules, full: bool) {
    let fields: Vec<String> = rules.field_names()[..rules.field_count()]
        .iter()
        .map(|f| quote(f))
        .collect();
    let _ = writeln!(out, "{indent}sensitive:");
    let _ = writeln!(out, "{indent}  fields: [{}]", fields.join(", "));
    if full {
        let _ = writeln!(out, "{indent}  action: {}", rules.action().as_str());
        let detect: Vec<&str> = rules.detectors().map(|d| d.name()).collect();
        let _ = writeln!(out, "{indent}  detect: [{}]", detect.join(", "));
        let _ = writeln!(out, "{indent}  publish: {}", rules.publish());
    }
}

fn upstream_url(u: &UpstreamConfig) -> String {
    match &u.addr {
        UpstreamAddr::Tcp { host, port } => {
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            let db = if u.db != 0 {
                format!("/{}", u.db)
            } else {
                String::new()
            };
            format!("redis://{host}:{port}{db}")
        }
        UpstreamAddr::Unix(p) => format!("unix://{}", p.display()),
    }
}

/// Writes the suggested configuration. `Err` lists the problems validation found (the file
/// is then not written).
pub fn suggest(
    policy: &Policy,
    agg: &Aggregate,
    upstream: &UpstreamConfig,
    source: &str,
) -> Result<String, String> {
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# A starting policy written by `respguard audit --suggest-policy` from {} keys of {}.",
        agg.keys, upstream.addr
    );
    let _ = writeln!(
        y,
        "# Review every namespace before use; check it with `respguard --check-config FILE`."
    );
    let _ = writeln!(y, "upstream:");
    let _ = writeln!(
        y,
        "  url: {}   # credentials are never written: use password_file or RESPGUARD_UPSTREAM_PASSWORD",
        upstream_url(upstream)
    );
    let _ = writeln!(y, "policy:");
    let _ = writeln!(
        y,
        "  mode: enforce              # roll out with mode: audit first to see what would be refused"
    );

    // New namespaces from the shapes of keys in no namespace.
    let mut existing_structures: Vec<String> = Vec::new();
    let mut names: Vec<String> = policy.namespace_names().to_vec();
    for i in 0..names.len() {
        if let Some(ns) = policy.namespace(NsId::try_from(i).unwrap_or(NS_UNMATCHED)) {
            existing_structures.extend(ns.patterns.iter().map(|p| structure(p)));
        }
    }
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let mut unstated: Vec<(String, u64, &'static str)> = Vec::new();
    let mut shapes: Vec<(&String, &ShapeAgg)> = agg
        .shapes
        .iter()
        .filter(|((ns, _), _)| *ns == NS_UNMATCHED)
        .map(|((_, s), a)| (s, a))
        .collect();
    shapes.sort_by(|a, b| b.1.keys.cmp(&a.1.keys).then_with(|| a.0.cmp(b.0)));
    for (shape, a) in &shapes {
        match pattern_of(shape) {
            Ok(p) => groups.entry(p[0].clone()).or_default().add(p, a),
            Err(why) => unstated.push(((*shape).clone(), a.keys, why)),
        }
    }

    let has_namespaces = !names.is_empty() || !groups.is_empty();
    let _ = writeln!(
        y,
        "  unknown_keys: {}",
        if has_namespaces {
            "reject       # keys in no namespace are refused"
        } else {
            "allow        # no key shape could become a namespace"
        }
    );
    let _ = writeln!(
        y,
        "  denied_commands: [FLUSHALL, FLUSHDB, KEYS, DEBUG, CONFIG, SHUTDOWN]"
    );
    match policy.sensitive_rules(NS_UNMATCHED) {
        Some(rules) if rules.is_active() => {
            let _ = writeln!(y, "  # Kept from {source}.");
            write_sensitive(&mut y, "  ", rules, true);
        }
        _ => {
            let _ = writeln!(
                y,
                "  # Common names of secrets and personal data; adjust to what the application stores."
            );
            let _ = writeln!(y, "  sensitive:");
            let _ = writeln!(
                y,
                "    fields: [password, ssn, creditCard, cardNumber, cvv, token]"
            );
            let _ = writeln!(y, "    action: strip");
            let _ = writeln!(y, "    detect: [card_number, us_ssn]");
        }
    }
    let _ = writeln!(y, "  namespaces:");

    let default_rules = policy.sensitive_rules(NS_UNMATCHED);
    for (i, name) in policy.namespace_names().iter().enumerate() {
        let id = NsId::try_from(i).unwrap_or(NS_UNMATCHED);
        let Some(ns) = policy.namespace(id) else {
            continue;
        };
        let a = agg.namespace(id);
        let _ = writeln!(
            y,
            "    # From {source}: {}.",
            ttl_comment(a.keys, a.no_expiry, a.ttl_seen)
        );
        let _ = writeln!(y, "    {name}:");
        let pats: Vec<String> = ns.patterns.iter().map(|p| quote(p)).collect();
        let _ = writeln!(y, "      keys: [{}]", pats.join(", "));
        if let Some(t) = &ns.ttl {
            let mut parts = vec![format!("default: {}", fmt_ms(t.default_ms))];
            if t.min_ms > 0 {
                parts.push(format!("min: {}", fmt_ms(t.min_ms)));
            }
            if t.max_ms < u64::MAX {
                parts.push(format!("max: {}", fmt_ms(t.max_ms)));
            }
            let _ = writeln!(y, "      ttl: {{ {} }}", parts.join(", "));
            if t.on_violation == OnViolation::Reject {
                let _ = writeln!(y, "      on_violation: reject");
            }
        }
        if let (Some(own), Some(def)) = (policy.sensitive_rules(id), default_rules) {
            if own.field_names()[..own.field_count()] != def.field_names()[..def.field_count()] {
                write_sensitive(&mut y, "      ", own, false);
            }
        }
    }

    for (first, mut g) in groups {
        g.generalise();
        let patterns: Vec<String> = g
            .patterns
            .iter()
            .map(|p| render(p))
            .filter(|p| {
                let s = structure(p);
                if existing_structures.contains(&s) {
                    false
                } else {
                    existing_structures.push(s);
                    true
                }
            })
            .collect();
        if patterns.is_empty() {
            continue;
        }
        let mut name: String = first
            .chars()
            .map(|c| if c == '@' { '_' } else { c })
            .take(56)
            .collect();
        if names.contains(&name) {
            let base = name.clone();
            let mut n = 2;
            while names.contains(&name) {
                name = format!("{base}_{n}");
                n += 1;
            }
        }
        names.push(name.clone());
        let _ = writeln!(
            y,
            "    # New: {} (e.g. {}).",
            ttl_comment(g.keys, g.no_expiry, g.ttl_seen),
            g.examples.join(", ")
        );
        let _ = writeln!(y, "    {name}:");
        let pats: Vec<String> = patterns.iter().map(|p| quote(p)).collect();
        let _ = writeln!(y, "      keys: [{}]", pats.join(", "));
        match g.ttl_seen {
            Some((_, hi)) => {
                let d = nice_ceil(hi);
                let _ = writeln!(
                    y,
                    "      ttl: {{ default: {}, max: {} }}   # the longest remaining TTL seen, rounded up",
                    fmt_ms(d),
                    fmt_ms(d)
                );
            }
            None => {
                let _ = writeln!(
                    y,
                    "      ttl: {{ default: {} }}   # no key had an expiry: choose one",
                    fmt_ms(PLACEHOLDER_TTL_MS)
                );
            }
        }
    }

    if !unstated.is_empty() {
        let _ = writeln!(
            y,
            "    # Keys no pattern can state; rename them to {{system}}:{{entity}}:{{id}}:"
        );
        for (s, keys, why) in unstated.iter().take(20) {
            let _ = writeln!(y, "    #   {s} ({keys} keys): {why}");
        }
        if unstated.len() > 20 {
            let _ = writeln!(y, "    #   ... and {} more shapes", unstated.len() - 20);
        }
    }
    if !has_namespaces {
        // An empty mapping, so the file stays valid YAML.
        y = y.replace("  namespaces:\n", "  namespaces: {}\n");
    }

    match Config::parse(&y, "(suggested policy)", &Overrides::default()) {
        Ok(_) => Ok(y),
        Err(errs) => Err(errs.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_become_patterns_or_say_why_not() {
        assert_eq!(
            render(&pattern_of("user:{n}:profile").unwrap()),
            "user:{id}:profile"
        );
        assert_eq!(
            render(&pattern_of("form:{uuid}:{n}").unwrap()),
            "form:{id}:{id2}"
        );
        assert_eq!(render(&pattern_of("config").unwrap()), "config");
        assert!(pattern_of("user{n}").is_err());
        assert!(pattern_of("{n}_limit").is_err());
        assert!(pattern_of("a::b").is_err());
        assert!(pattern_of("a b:{n}").is_err());
    }

    #[test]
    fn ttls_round_up_to_common_durations() {
        assert_eq!(nice_ceil(59_000), 60_000);
        assert_eq!(nice_ceil(3_500_000), 3_600_000);
        assert_eq!(nice_ceil(u64::MAX), MAX_TTL_MS);
    }
}
