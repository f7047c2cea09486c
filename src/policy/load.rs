//! The `policy:` section of the configuration: its raw shape, and validation into a compiled
//! [`Policy`].
//!
//! Every field keeps its line number (`Spanned`), every problem is reported with its line and
//! dotted field path, and validation goes on after a problem so one run lists them all. Only a
//! policy without problems is compiled; on reload the old one stays otherwise.
//!
//! ```yaml
//! policy:
//!   mode: enforce              # enforce | audit
//!   unknown_keys: reject       # reject | allow
//!   denied_commands: ["@admin", FLUSHALL, KEYS, "SCRIPT|FLUSH"]
//!   scripts: refuse            # refuse | declared_keys (the default) | allow
//!   allowed_unknown_commands: [MY.CMD]
//!   sensitive:                 # optional; without it (here and below) the stage is off
//!     fields: [password, ssn]  # JSON members / hash and stream fields, matched ignoring
//!                              # ASCII case, '_' and '-'
//!     action: strip            # strip | reject | audit
//!     detect: [card_number, us_ssn]
//!     publish: true            # also scan PUBLISH/SPUBLISH messages (default rules only)
//!   namespaces:
//!     session:
//!       keys: ["session:{id}", "session:{id}:{device}"]
//!       ttl: { default: 30m, min: 15m, max: 30m }
//!       on_violation: clamp    # clamp | reject
//!       sensitive:             # overrides policy.sensitive for this namespace's keys;
//!         fields: [password, ssn, dateOfBirth]   # inherits what it leaves out
//! ```
//!
//! A namespace `sensitive` list of `fields` (or `detect`) replaces the default list rather
//! than adding to it, so removing a default field for one namespace is possible; repeat the
//! default fields to extend it.

use std::fmt;
use std::sync::Arc;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use crate::diag::{parse_duration, Problems};

use super::commands::{CommandRules, Scripts};
use super::pattern::{self, Builder, CompileError};
use super::sensitive::{
    check_field_name, duplicate_message, Detector, SensitiveAction, SensitiveRules, MAX_FIELDS,
};
use super::sensitive_stage::SensitiveStage;
use super::ttl::{fmt_ms, OnViolation, TtlRule, MAX_TTL_MS};
use super::{Mode, Namespace, NsId, Policy, PolicyConfig, UnknownKeys, NS_UNMATCHED};
use crate::command::{CommandSpec, ACL_DANGEROUS};

/// Most namespaces in one policy (ids below the reserved ones, and a bounded metric label set).
pub const MAX_NAMESPACES: usize = 1000;
/// Longest namespace name.
const MAX_NAME_LEN: usize = 64;

/// The `policy:` section as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    mode: Option<Spanned<String>>,
    unknown_keys: Option<Spanned<String>>,
    denied_commands: Option<Vec<Spanned<String>>>,
    scripts: Option<Spanned<String>>,
    allowed_unknown_commands: Option<Vec<Spanned<String>>>,
    sensitive: Option<RawSensitive>,
    namespaces: Option<RawNamespaces>,
    clients: Option<super::identity::RawClients>,
}

/// `namespaces:` in file order (the order gives the [`NsId`]s), each name with its line.
#[derive(Debug, Default)]
struct RawNamespaces(Vec<(Spanned<String>, RawNamespace)>);

impl<'de> Deserialize<'de> for RawNamespaces {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = RawNamespaces;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of namespace names to { keys, ttl, on_violation, sensitive }")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawNamespaces, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(RawNamespaces(out))
            }
        }
        d.deserialize_map(Entries)
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNamespace {
    keys: Option<Vec<Spanned<String>>>,
    ttl: Option<RawTtl>,
    on_violation: Option<Spanned<String>>,
    sensitive: Option<RawSensitive>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTtl {
    default: Option<Spanned<String>>,
    min: Option<Spanned<String>>,
    max: Option<Spanned<String>>,
}

/// Problems plus whether this section added any (the shared list may hold others).
struct Check<'p, 'a> {
    p: &'p mut Problems<'a>,
    failed: bool,
}

impl Check<'_, '_> {
    fn at<T>(&mut self, v: &Spanned<T>, field: impl Into<String>, msg: impl Into<String>) {
        self.failed = true;
        self.p.at(v, field, msg);
    }

    fn add(&mut self, line: Option<u64>, field: impl Into<String>, msg: impl Into<String>) {
        self.failed = true;
        self.p.add(line, field, msg);
    }

    /// Validates one `sensitive:` section (see [`validate_sensitive`]); `None` after a
    /// problem, which is then recorded.
    fn sensitive(
        &mut self,
        raw: &RawSensitive,
        base: Option<&SensitiveRules>,
        field: &str,
    ) -> Option<SensitiveRules> {
        let rules = validate_sensitive(raw, base, field, self.p);
        self.failed |= rules.is_none();
        rules
    }
}

fn line<T>(v: &Option<Spanned<T>>) -> Option<u64> {
    v.as_ref().map(|s| s.referenced.line())
}

/// Validates the `policy:` section, adding every problem to `p`.
pub fn validate(raw: RawPolicy, p: &mut Problems<'_>) -> Option<PolicyConfig> {
    let mut c = Check { p, failed: false };

    let mode = match &raw.mode {
        None => Mode::Enforce,
        Some(v) => match v.value.trim() {
            "enforce" => Mode::Enforce,
            "audit" => Mode::Audit,
            other => {
                c.at(
                    v,
                    "policy.mode",
                    format!("{other:?} is not a mode: use enforce or audit"),
                );
                Mode::Enforce
            }
        },
    };
    let unknown_keys = match &raw.unknown_keys {
        None => UnknownKeys::Reject,
        Some(v) => match v.value.trim() {
            "reject" => UnknownKeys::Reject,
            "allow" => UnknownKeys::Allow,
            other => {
                c.at(
                    v,
                    "policy.unknown_keys",
                    format!("{other:?} is not valid: use reject or allow"),
                );
                UnknownKeys::Reject
            }
        },
    };

    let mut rules = CommandRules::default();
    for (i, name) in raw.denied_commands.iter().flatten().enumerate() {
        if let Err(e) = rules.deny(&name.value) {
            c.at(name, format!("policy.denied_commands[{i}]"), e.to_string());
        }
    }
    let scripts = match &raw.scripts {
        None => Scripts::DeclaredKeys,
        Some(v) => Scripts::parse(v.value.trim()).unwrap_or_else(|| {
            c.at(
                v,
                "policy.scripts",
                format!(
                    "{:?} is not valid: use refuse, declared_keys or allow",
                    v.value
                ),
            );
            Scripts::DeclaredKeys
        }),
    };
    rules.set_scripts(scripts);
    warn_open_doors(&rules, &raw, c.p);
    for (i, name) in raw.allowed_unknown_commands.iter().flatten().enumerate() {
        if let Err(e) = rules.allow_unknown(&name.value) {
            c.at(
                name,
                format!("policy.allowed_unknown_commands[{i}]"),
                e.to_string(),
            );
        }
    }

    // Validated before the namespaces, which inherit from it.
    let default_sensitive = raw
        .sensitive
        .as_ref()
        .and_then(|s| c.sensitive(s, None, "policy.sensitive"));

    let raw_ns = raw.namespaces.unwrap_or_default().0;
    if raw_ns.is_empty() && unknown_keys == UnknownKeys::Reject {
        c.add(
            line(&raw.unknown_keys).or(line(&raw.mode)),
            "policy.namespaces",
            "no namespaces are configured, so with unknown_keys: reject every command with a key would be refused; add namespaces or set unknown_keys: allow",
        );
    }
    if raw_ns.len() > MAX_NAMESPACES {
        c.add(
            raw_ns.get(MAX_NAMESPACES).map(|(n, _)| n.referenced.line()),
            "policy.namespaces",
            format!("at most {MAX_NAMESPACES} namespaces are supported"),
        );
    }

    let mut builder = Builder::new();
    let mut names = Vec::with_capacity(raw_ns.len());
    let mut namespaces = Vec::with_capacity(raw_ns.len());
    let mut ns_sensitive = Vec::with_capacity(raw_ns.len());
    for (i, (name, ns)) in raw_ns.into_iter().enumerate() {
        let id = NsId::try_from(i).unwrap_or(NS_UNMATCHED);
        let base = format!("policy.namespaces.{}", name.value);
        let valid_name = !name.value.is_empty()
            && name.value.len() <= MAX_NAME_LEN
            && name
                .value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !valid_name {
            c.at(
                &name,
                &base,
                format!("a namespace name is 1 to {MAX_NAME_LEN} letters, digits, '_', '-' or '.' (it becomes a metric label)"),
            );
        }

        let keys = ns.keys.unwrap_or_default();
        if keys.is_empty() {
            c.at(
                &name,
                format!("{base}.keys"),
                "list at least one key pattern, like \"session:{id}\"",
            );
        }
        let mut patterns = Vec::with_capacity(keys.len());
        for (j, k) in keys.iter().enumerate() {
            let field = format!("{base}.keys[{j}]");
            match pattern::parse(&k.value) {
                Err(e) => c.at(k, field, format!("{:?}: {e}", k.value)),
                Ok(segs) => match builder.add(&segs, id) {
                    Ok(()) => {}
                    Err(CompileError::Duplicate(owner)) => {
                        let other = names
                            .get(usize::from(owner))
                            .map(String::as_str)
                            .unwrap_or(name.value.as_str());
                        c.at(
                            k,
                            field,
                            format!("{:?} is already a pattern of namespace {other} (placeholder names do not matter); a key can belong to only one namespace", k.value),
                        );
                    }
                    Err(e) => c.at(k, field, e.to_string()),
                },
            }
            patterns.push(k.value.clone());
        }

        let on_violation = match &ns.on_violation {
            None => OnViolation::Clamp,
            Some(v) => match v.value.trim() {
                "clamp" => OnViolation::Clamp,
                "reject" => OnViolation::Reject,
                other => {
                    c.at(
                        v,
                        format!("{base}.on_violation"),
                        format!("{other:?} is not valid: use clamp or reject"),
                    );
                    OnViolation::Clamp
                }
            },
        };
        if ns.ttl.is_none() {
            if let Some(v) = &ns.on_violation {
                c.at(
                    v,
                    format!("{base}.on_violation"),
                    "on_violation applies to TTL bounds, but this namespace has no ttl section",
                );
            }
        }
        let ttl = ns
            .ttl
            .and_then(|t| validate_ttl(&t, &name, &base, on_violation, &mut c));

        let field = format!("{base}.sensitive");
        if let Some(publish) = ns.sensitive.as_ref().and_then(|s| s.publish.as_ref()) {
            c.at(
                publish,
                format!("{field}.publish"),
                "publish applies to policy.sensitive only: channels are not keys, so PUBLISH messages are checked with the default rules",
            );
        }
        ns_sensitive.push(
            ns.sensitive
                .as_ref()
                .and_then(|s| c.sensitive(s, default_sensitive.as_ref(), &field)),
        );

        names.push(name.value);
        namespaces.push(Namespace { patterns, ttl });
    }

    let matcher = match builder.compile() {
        Ok(m) => m,
        Err(e) => {
            c.add(None, "policy.namespaces", e.to_string());
            pattern::Matcher::default()
        }
    };
    let clients = match &raw.clients {
        None => None,
        Some(rc) => {
            let v = super::identity::validate(rc, &names, c.p);
            c.failed |= v.is_none();
            v
        }
    };
    if c.failed {
        return None;
    }
    let sensitive = SensitiveStage::build(default_sensitive, ns_sensitive, mode == Mode::Audit);
    Some(Arc::new(Policy {
        mode,
        unknown_keys,
        matcher,
        names,
        namespaces,
        rules,
        sensitive,
        clients,
    }))
}

/// Warnings for a valid policy that leaves Redis open to the application: commands of the
/// `@dangerous` category it does not deny, and scripts it does not refuse.
fn warn_open_doors(rules: &CommandRules, raw: &RawPolicy, p: &mut Problems<'_>) {
    let denied_line = raw
        .denied_commands
        .as_ref()
        .and_then(|d| d.first())
        .map(|s| s.referenced.line());
    let open: Vec<&str> = CommandSpec::all()
        .filter(|r| r.in_category(ACL_DANGEROUS) && !rules.refuses(r))
        .map(|r| r.name)
        .collect();
    if !open.is_empty() {
        p.warn(
            denied_line,
            "policy.denied_commands",
            format!(
                "{} @dangerous command(s) stay open: {}; deny \"@dangerous\" (or \"@admin\" and the rest by name) unless the application needs them",
                open.len(),
                open.join(", ")
            ),
        );
    }
    if rules.scripts() != Scripts::Refuse {
        p.warn(
            line(&raw.scripts),
            "policy.scripts",
            format!(
                "scripts: {} lets EVAL and FCALL run, and a script can call any command on any key out of respguard's sight; use scripts: refuse, or connect respguard as the Redis ACL user `respguard acl` prints",
                rules.scripts().as_str()
            ),
        );
    }
}

fn validate_ttl(
    t: &RawTtl,
    name: &Spanned<String>,
    base: &str,
    on_violation: OnViolation,
    c: &mut Check<'_, '_>,
) -> Option<TtlRule> {
    let mut ok = true;
    let mut dur = |v: &Option<Spanned<String>>,
                   which: &str,
                   c: &mut Check<'_, '_>|
     -> Option<u64> {
        let v = v.as_ref()?;
        let field = format!("{base}.ttl.{which}");
        match parse_duration(&v.value) {
            Err(e) => {
                c.at(v, field, e);
                ok = false;
                None
            }
            Ok(d) => {
                let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                if ms == 0 {
                    c.at(v, field, "must be greater than zero (a key without expiry is what the policy prevents)");
                    ok = false;
                    None
                } else if ms > MAX_TTL_MS {
                    c.at(v, field, format!("must be at most {}", fmt_ms(MAX_TTL_MS)));
                    ok = false;
                    None
                } else {
                    Some(ms)
                }
            }
        }
    };
    let default = dur(&t.default, "default", c);
    let min = dur(&t.min, "min", c);
    let max = dur(&t.max, "max", c);
    if t.default.is_none() {
        c.at(
            name,
            format!("{base}.ttl.default"),
            "ttl needs a default: the expiry given to keys written without one (e.g. default: 30m)",
        );
        ok = false;
    }
    if let (Some(lo), Some(hi), Some(v)) = (min, max, t.max.as_ref()) {
        if lo > hi {
            c.at(
                v,
                format!("{base}.ttl.max"),
                format!("max ({}) is below min ({})", fmt_ms(hi), fmt_ms(lo)),
            );
            ok = false;
        }
    }
    if let (Some(d), Some(v)) = (default, t.default.as_ref()) {
        if min.is_some_and(|lo| d < lo) || max.is_some_and(|hi| d > hi) {
            c.at(
                v,
                format!("{base}.ttl.default"),
                format!(
                    "default ({}) must lie between min and max ({})",
                    fmt_ms(d),
                    TtlRule::new(d, min, max, on_violation).range()
                ),
            );
            ok = false;
        }
    }
    match (ok, default) {
        (true, Some(d)) => Some(TtlRule::new(d, min, max, on_violation)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The `sensitive:` sections

/// `policy.sensitive` (and `policy.namespaces.<ns>.sensitive`) as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSensitive {
    pub fields: Option<Vec<Spanned<String>>>,
    pub action: Option<Spanned<String>>,
    pub detect: Option<Vec<Spanned<String>>>,
    pub publish: Option<Spanned<bool>>,
}

/// Validates one `sensitive:` section, adding every problem to `p` under `field_prefix`
/// (`policy.sensitive`, `policy.namespaces.user_profile.sensitive`). Settings it leaves out
/// are inherited from `base` (the top-level rules, for a namespace override), else default:
/// no fields, `strip`, no detectors, `publish: true`.
pub fn validate_sensitive(
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

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigErrors, Overrides};

    fn parse(policy: &str) -> Result<Config, ConfigErrors> {
        Config::parse(policy, "p.yaml", &Overrides::default())
    }

    fn problems(policy: &str) -> Vec<(Option<u64>, String, String)> {
        match parse(policy) {
            Ok(_) => Vec::new(),
            Err(e) => {
                e.0.into_iter()
                    .map(|p| (p.line, p.field, p.message))
                    .collect()
            }
        }
    }

    #[test]
    fn a_good_policy_compiles() {
        let cfg = parse(
            "policy:\n  mode: audit\n  unknown_keys: allow\n  denied_commands: [KEYS, config set]\n  allowed_unknown_commands: [MY.CMD]\n  namespaces:\n    session:\n      keys: [\"session:{id}\"]\n      ttl: { default: 30m, min: 15m, max: 30m }\n      on_violation: reject\n    rate_limit:\n      keys: [\"rate_limit:{action}:{id}\"]\n",
        )
        .unwrap();
        let p = cfg.policy.unwrap();
        assert_eq!(p.namespace_names(), ["session", "rate_limit"]);
        assert_eq!(p.mode(), super::Mode::Audit);
        assert_eq!(p.namespace_of(b"rate_limit:login:1"), 1);
        assert_eq!(p.namespace_of(b"other"), super::NS_UNMATCHED);
        let ttl = p.namespace(0).unwrap().ttl.as_ref().unwrap();
        assert_eq!(
            (ttl.default_ms, ttl.min_ms, ttl.max_ms),
            (1_800_000, 900_000, 1_800_000)
        );
        assert_eq!(ttl.on_violation, super::OnViolation::Reject);
        assert!(p.namespace(1).unwrap().ttl.is_none());
    }

    #[test]
    fn every_problem_has_its_line_and_field() {
        let text = "\
policy:
  mode: shadow
  unknown_keys: maybe
  denied_commands: [FLUSHAL, KEYS]
  allowed_unknown_commands: [GET]
  namespaces:
    session:
      keys: [\"session:{id}\", \"session:\"]
      ttl: { default: 1h, min: 15m, max: 30m }
    user_profile:
      keys: [\"user{id}\", \"session:{user}\"]
      ttl: { min: 2h, max: 1h }
      on_violation: truncate
    bad name:
      keys: []
      ttl: { default: 0s, max: forever }
";
        let got = problems(text);
        let has =
            |line: u64, field: &str| got.iter().any(|(l, f, _)| *l == Some(line) && f == field);
        assert!(has(2, "policy.mode"), "{got:#?}");
        assert!(has(3, "policy.unknown_keys"), "{got:#?}");
        assert!(has(4, "policy.denied_commands[0]"), "{got:#?}");
        assert!(has(5, "policy.allowed_unknown_commands[0]"), "{got:#?}");
        assert!(has(8, "policy.namespaces.session.keys[1]"), "{got:#?}");
        assert!(has(9, "policy.namespaces.session.ttl.default"), "{got:#?}");
        assert!(
            has(11, "policy.namespaces.user_profile.keys[0]"),
            "{got:#?}"
        );
        assert!(
            has(11, "policy.namespaces.user_profile.keys[1]"),
            "{got:#?}"
        );
        assert!(
            has(12, "policy.namespaces.user_profile.ttl.max"),
            "{got:#?}"
        );
        assert!(
            has(10, "policy.namespaces.user_profile.ttl.default"),
            "{got:#?}"
        );
        assert!(
            has(13, "policy.namespaces.user_profile.on_violation"),
            "{got:#?}"
        );
        assert!(has(14, "policy.namespaces.bad name"), "{got:#?}");
        assert!(has(14, "policy.namespaces.bad name.keys"), "{got:#?}");
        assert!(
            has(16, "policy.namespaces.bad name.ttl.default"),
            "{got:#?}"
        );
        assert!(has(16, "policy.namespaces.bad name.ttl.max"), "{got:#?}");
        assert_eq!(got.len(), 15, "{got:#?}");
        let dup = got
            .iter()
            .find(|(_, f, _)| f == "policy.namespaces.user_profile.keys[1]")
            .map(|(_, _, m)| m.as_str())
            .unwrap_or_default();
        assert!(dup.contains("namespace session"), "{dup}");
    }

    #[test]
    fn an_empty_policy_that_would_refuse_everything_is_an_error() {
        let got = problems("policy:\n  mode: enforce\n");
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].1, "policy.namespaces");
        assert!(parse("policy:\n  unknown_keys: allow\n").is_ok());
    }

    #[test]
    fn unknown_fields_are_refused_with_their_line() {
        let got = problems("policy:\n  namespaces:\n    s:\n      keys: [\"s:{id}\"]\n      tll: { default: 1m }\n");
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, Some(5), "{got:?}");
    }

    #[test]
    fn sensitive_sections_report_every_problem_with_line_and_field() {
        let text = "\
policy:
  unknown_keys: allow
  sensitive:
    fields: [password, Pass_Word]
    action: drop
    detect: [iban]
  namespaces:
    user_profile:
      keys: [\"user_profile:{id}\"]
      sensitive:
        fields: [\"\", dateOfBirth]
        publish: false
    session:
      keys: [\"session:{id}\"]
      sensitive: { action: never }
";
        let got = problems(text);
        let fields: Vec<(Option<u64>, &str)> =
            got.iter().map(|(l, f, _)| (*l, f.as_str())).collect();
        for want in [
            (Some(4), "policy.sensitive.fields[1]"),
            (Some(5), "policy.sensitive.action"),
            (Some(6), "policy.sensitive.detect[0]"),
            (
                Some(11),
                "policy.namespaces.user_profile.sensitive.fields[0]",
            ),
            (Some(12), "policy.namespaces.user_profile.sensitive.publish"),
            (Some(15), "policy.namespaces.session.sensitive.action"),
        ] {
            assert!(fields.contains(&want), "{want:?} missing: {got:#?}");
        }
        assert_eq!(got.len(), 6, "{got:#?}");
        // The misspelled key fails deserialization, which stops at the first such error.
        let got = problems(
            "policy:\n  unknown_keys: allow\n  namespaces:\n    o:\n      keys: [\"o:{id}\"]\n      sensitive: { feilds: [x] }\n",
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, Some(6), "{got:?}");
    }

    #[test]
    fn sensitive_namespace_overrides_inherit_the_default() {
        let cfg = parse(
            "policy:\n  unknown_keys: allow\n  sensitive:\n    fields: [password]\n    action: reject\n    detect: [us_ssn]\n    publish: false\n  namespaces:\n    u:\n      keys: [\"u:{id}\"]\n      sensitive: { fields: [token] }\n    v:\n      keys: [\"v:{id}\"]\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let p = cfg.policy.unwrap();
        let u = p.sensitive_rules(0).unwrap();
        assert_eq!(u.field_names(), ["token", "us_ssn"]);
        assert_eq!(
            u.action(),
            crate::policy::sensitive::SensitiveAction::Reject
        );
        let v = p.sensitive_rules(1).unwrap();
        assert_eq!(v.field_names(), ["password", "us_ssn"]);
        assert!(!p.sensitive_rules(crate::policy::NS_NONE).unwrap().publish());
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml");
        let cfg = Config::load(std::path::Path::new(path), &Overrides::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let p = cfg.policy.unwrap();
        assert!(p.namespace_names().len() >= 10);
        // The seed's good keys are accepted, its bad ones refused.
        for good in [
            "user_profile:42",
            "rate_limit:login:42:3600",
            "session:42:iphone",
            "session:core:42",
            "session:extended:42",
            "analytics:dashboard:42",
            "form_progress:42:intake",
            "user_appointments:42:2025-01",
            "dashboard:user:42",
        ] {
            assert_ne!(
                p.namespace_of(good.as_bytes()),
                super::NS_UNMATCHED,
                "{good}"
            );
        }
        for bad in ["user123", "123_limit", "user:42", "form:42"] {
            assert_eq!(p.namespace_of(bad.as_bytes()), super::NS_UNMATCHED, "{bad}");
        }
        // Sensitive fields: the default list everywhere, plus dateOfBirth for profiles.
        let profile = p
            .sensitive_rules(p.namespace_of(b"user_profile:42"))
            .unwrap();
        let session = p.sensitive_rules(p.namespace_of(b"session:42")).unwrap();
        assert!(profile.is_sensitive_field(b"date_of_birth").is_some());
        assert!(session.is_sensitive_field(b"dateOfBirth").is_none());
        assert!(session.is_sensitive_field(b"credit_card").is_some());
        assert_eq!(session.detectors().count(), 2);
        assert!(p.sensitive_rules(crate::policy::NS_NONE).unwrap().publish());
    }
}
