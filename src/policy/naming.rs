//! Key naming, the second policy stage: every key of a command belongs to a namespace.
//!
//! Keys come from the command table ([`CommandSpec::keys`]), so multi-key commands, keyword
//! keys (`STORE dst`, `STREAMS k1 k2`) and declared script keys are all checked; one failing key
//! refuses the whole command. Pub/sub channels are not keys and are never looked at.

use std::fmt::Write;

use crate::codec::Argv;
use crate::command::{CommandSpec, KeyError};

use super::pattern::KeyMatch;
use super::stage::{refused, Flow, Stage, StageCx, Stop};
use super::{NsId, Policy, Refusal, Rule, UnknownKeys, NS_UNMATCHED};

/// Longest part of a key quoted in an error.
const SHOW_MAX: usize = 80;

/// Quotes bytes for an error message: printable ASCII as is, the rest as `\xNN`, cut after
/// [`SHOW_MAX`] bytes, so a binary or huge key cannot break the reply or the log.
pub fn show(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().min(SHOW_MAX) + 2);
    out.push('"');
    for &b in bytes.iter().take(SHOW_MAX) {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push('"');
    if bytes.len() > SHOW_MAX {
        out.push_str("...");
    }
    out
}

/// Stage 2: every key of the command belongs to a namespace. Fills `scratch.keys`,
/// `scratch.key_ns` and `scratch.namespace`.
pub struct Naming;

impl Stage for Naming {
    fn check(&self, cx: &mut StageCx<'_, '_>) -> Flow {
        check(cx.policy, cx.spec, cx.argv, cx.scratch)
    }
}

fn check(
    policy: &Policy,
    spec: &'static CommandSpec,
    argv: &Argv<'_>,
    scratch: &mut super::Scratch,
) -> Flow {
    if let Err(e) = spec.keys(argv, &mut scratch.keys) {
        if refused_before_running(spec, argv, &e) {
            scratch.keys.clear();
            return Flow::Break(Stop::Forward);
        }
        return refused(Refusal {
            rule: Rule::Malformed,
            namespace: NS_UNMATCHED,
            message: format!("cannot check the keys of this command: {e}"),
        });
    }
    let reject_unknown = policy.unknown_keys() == UnknownKeys::Reject;
    for k in &scratch.keys {
        let key = argv.get(k.index).unwrap_or_default();
        let ns = match policy.matcher().find(key) {
            KeyMatch::Namespace(ns) => ns,
            KeyMatch::NoMatch if reject_unknown => {
                return refused(Refusal {
                    rule: Rule::Naming,
                    namespace: NS_UNMATCHED,
                    message: format!(
                        "key {} matches no namespace: {}",
                        show(key),
                        suggestion(policy, key)
                    ),
                });
            }
            KeyMatch::EmptySegment if reject_unknown => {
                return refused(Refusal {
                    rule: Rule::Naming,
                    namespace: NS_UNMATCHED,
                    message: format!(
                        "key {} has an empty segment: give every part between ':' a value, like {}",
                        show(key),
                        example(policy, key)
                    ),
                });
            }
            KeyMatch::NoMatch | KeyMatch::EmptySegment => NS_UNMATCHED,
        };
        scratch.key_ns.push(ns);
    }
    scratch.namespace = scratch.key_ns.first().copied().unwrap_or(super::NS_NONE);
    if reject_unknown && spec.reads_pattern_keys(argv) {
        return refused(Refusal {
            rule: Rule::UncheckedKeys,
            namespace: scratch.namespace,
            message: format!(
                "{} with a BY or GET pattern reads keys respguard cannot check: sort in the application, or drop the pattern",
                spec.name
            ),
        });
    }
    Flow::Continue(())
}

/// Whether Redis refuses the command before it runs, so it touches no key and can go to Redis
/// for Redis's own error: a wrong argument count (checked against the same command table
/// Redis uses), a numkeys that is not an integer, negative, zero where keys are required, or
/// larger than the arguments (every command with a numkeys reads it before any key), and
/// `XREAD`/`XREADGROUP` without `STREAMS` or with unbalanced streams and IDs (both parse all
/// their options first). Other failures (keys respguard cannot locate) stay refusals.
fn refused_before_running(spec: &CommandSpec, argv: &Argv<'_>, e: &KeyError) -> bool {
    if !spec.check_arity(argv.len()) {
        return true;
    }
    match e {
        KeyError::NumKeysNotInteger { .. } | KeyError::NumKeysOutOfRange { .. } => true,
        KeyError::Unbalanced { .. } | KeyError::MissingKeyword { .. } => {
            spec.traits().parses_options_first
        }
        _ => false,
    }
}

/// Patterns of namespaces whose first segment is the key's first segment, else a few of all.
fn candidates<'p>(policy: &'p Policy, key: &[u8]) -> Vec<&'p str> {
    let first = key.split(|b| *b == b':').next().unwrap_or_default();
    let all = (0..policy.namespace_names().len())
        .filter_map(|i| policy.namespace(i as NsId))
        .flat_map(|n| n.patterns.iter().map(String::as_str));
    let same: Vec<&str> = all
        .clone()
        .filter(|p| p.split(':').next().map(str::as_bytes) == Some(first))
        .take(4)
        .collect();
    if same.is_empty() {
        all.take(4).collect()
    } else {
        same
    }
}

fn suggestion(policy: &Policy, key: &[u8]) -> String {
    let c = candidates(policy, key);
    if c.is_empty() {
        return "no namespaces are configured (policy.namespaces)".into();
    }
    format!(
        "name it {{system}}:{{entity}}:{{id}} like one of {} (policy.namespaces)",
        c.join(", ")
    )
}

fn example(policy: &Policy, key: &[u8]) -> String {
    candidates(policy, key)
        .first()
        .map(|s| (*s).to_string())
        .unwrap_or_else(|| "{system}:{entity}:{id}".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_escapes_and_truncates() {
        assert_eq!(show(b"user42"), "\"user42\"");
        assert_eq!(show(b"a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(show(b"\xff\r\n"), "\"\\xff\\x0d\\x0a\"");
        let long = vec![b'a'; 200];
        let s = show(&long);
        assert!(s.ends_with("\"...") && s.len() < 100, "{s}");
    }
}
