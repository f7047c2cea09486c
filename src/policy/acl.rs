//! The Redis ACL user that mirrors a policy: `respguard acl` prints the `ACL SETUSER` commands
//! for the user respguard should connect upstream as.
//!
//! respguard only sees the commands a client sends; code that runs inside Redis (scripts,
//! functions) is out of its sight. Redis's own ACLs apply there too, so the user gets what the
//! policy allows and no more: the namespaces' key patterns as `~` globs, every command but the
//! denied ones (ACL categories as `-@category`, subcommands as `-container|sub`), the commands
//! that run code removed when `scripts: refuse`, and all pub/sub channels (the policy does not
//! restrict channels). The globs are coarser than the policy's segment-wise patterns (`*`
//! also matches `:` and extra segments), so Redis is the outer wall and respguard the inner
//! one; the policy has no read-only namespaces, so keys are `~` (read and write).

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::command::CommandSpec;

use super::commands::Scripts;
use super::pattern::{self, Segment};
use super::{Policy, UnknownKeys};

/// The `ACL SETUSER` commands for `user`, one per line, in the order they must be applied.
/// `password` becomes its SHA-256 (`#...`), so the secret itself is never printed; without one
/// the user has no password and cannot log in until one is added.
pub fn setuser_commands(
    policy: Option<&Policy>,
    user: &str,
    password: Option<&str>,
) -> Vec<String> {
    let name = quote(user);
    let mut first = format!("ACL SETUSER {name} reset on");
    if let Some(pw) = password {
        let digest = Sha256::digest(pw.as_bytes());
        first.push_str(" #");
        for b in digest {
            let _ = write!(first, "{b:02x}");
        }
    }
    let mut lines = vec![first];

    let mut keys = Vec::new();
    match policy {
        Some(p) if p.unknown_keys() == UnknownKeys::Reject => {
            for ns in (0..p.namespace_names().len()).filter_map(|i| p.namespace(i as u16)) {
                for text in &ns.patterns {
                    if let Ok(segments) = pattern::parse(text) {
                        let glob = format!("~{}", glob(&segments));
                        if !keys.contains(&glob) {
                            keys.push(glob);
                        }
                    }
                }
            }
        }
        _ => keys.push("~*".to_string()),
    }
    let keys: Vec<String> = keys.iter().map(|k| quote(k)).collect();
    lines.push(format!("ACL SETUSER {name} resetkeys {}", keys.join(" ")));

    let mut commands = vec!["&*".to_string(), "+@all".to_string()];
    if let Some(p) = policy {
        let rules = p.command_rules();
        for denied in rules.denied_names() {
            commands.push(quote(&format!("-{}", denied.to_ascii_lowercase())));
        }
        if rules.scripts() == Scripts::Refuse {
            for row in CommandSpec::all().filter(|r| r.runs_code()) {
                let rule = format!("-{}", row.name.to_ascii_lowercase());
                if !commands.contains(&rule) {
                    commands.push(rule);
                }
            }
        }
    }
    lines.push(format!(
        "ACL SETUSER {name} resetchannels {}",
        commands.join(" ")
    ));
    lines
}

/// `ACL DRYRUN user ...` for each command the policy refuses that names no keys (arguments
/// filled up to the command's arity), with the row's name: what [`open_doors`] reads back.
/// Keyed commands are left out, since a dry run also checks the (made-up) keys.
pub fn dryrun_probes(policy: &Policy, user: &[u8]) -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let rules = policy.command_rules();
    CommandSpec::all()
        .filter(|r| !r.is_container() && !r.has_keys() && rules.refuses(r))
        .map(|row| {
            let mut argv = vec![b"ACL".to_vec(), b"DRYRUN".to_vec(), user.to_vec()];
            let parts: Vec<Vec<u8>> = row
                .name
                .split('|')
                .map(|p| p.to_ascii_lowercase().into_bytes())
                .collect();
            let wanted = usize::try_from(row.arity.unsigned_abs()).unwrap_or(0);
            let fill = wanted.saturating_sub(parts.len());
            argv.extend(parts);
            argv.extend(std::iter::repeat_n(b"0".to_vec(), fill));
            (row.name, argv)
        })
        .collect()
}

/// The names of the probes Redis answered `+OK` to: commands the upstream user may run
/// although the policy refuses them. `None` when Redis refused the dry runs themselves
/// (`NOPERM`: a user without `ACL DRYRUN` lacks `@admin`, so it is not an all-powerful one).
pub fn open_doors<'a>(
    probes: &[(&'a str, Vec<Vec<u8>>)],
    replies: &[impl AsRef<[u8]>],
) -> Option<Vec<&'a str>> {
    if replies.iter().any(|r| r.as_ref().starts_with(b"-NOPERM")) {
        return None;
    }
    Some(
        probes
            .iter()
            .zip(replies)
            .filter(|(_, r)| r.as_ref() == b"+OK\r\n")
            .map(|((name, _), _)| *name)
            .collect(),
    )
}

/// A Redis glob matching every key of the pattern: literal segments with the glob's special
/// characters escaped, `*` for placeholders and remainders.
fn glob(segments: &[Segment]) -> String {
    let mut out = String::new();
    for (i, s) in segments.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        match s {
            Segment::Literal(bytes) => {
                for &b in bytes.iter() {
                    if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
                        out.push('\\');
                    }
                    out.push(char::from(b));
                }
            }
            Segment::Placeholder | Segment::Rest => out.push('*'),
        }
    }
    out
}

/// An argument as `redis-cli` reads it: bare when plain, else double-quoted with escapes.
fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'\\'));
    if plain {
        return arg.to_string();
    }
    let mut out = String::from("\"");
    for b in arg.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    #[test]
    fn globs_escape_literals_and_widen_placeholders() {
        let g = |p: &str| glob(&pattern::parse(p).unwrap());
        assert_eq!(g("session:{id}"), "session:*");
        assert_eq!(g("temp:{w}:{id}:{rest...}"), "temp:*:*:*");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("~a\\*b:*"), "\"~a\\\\*b:*\"");
        assert_eq!(quote("-client|kill"), "-client|kill");
    }

    #[test]
    fn the_user_mirrors_denials_scripts_and_namespaces() {
        let cfg = Config::parse(
            "policy:\n  denied_commands: [\"@admin\", KEYS, \"client kill\"]\n  scripts: refuse\n  namespaces:\n    s:\n      keys: [\"session:{id}\", \"session:{id}:{device}\"]\n",
            "t.yaml",
            &Overrides::default(),
        )
        .unwrap();
        let lines = setuser_commands(cfg.policy.as_deref(), "app", Some("pw"));
        assert_eq!(
            lines[0],
            "ACL SETUSER app reset on #30c952fab122c3f9759f02a6d95c3758b246b4fee239957b2d4fee46e26170c4"
        );
        assert_eq!(
            lines[1],
            "ACL SETUSER app resetkeys ~session:* ~session:*:*"
        );
        assert_eq!(
            lines[2],
            "ACL SETUSER app resetchannels &* +@all -@admin -keys -client|kill -eval -evalsha -evalsha_ro -eval_ro -fcall -fcall_ro -function|load -function|restore -script|load"
        );
        assert!(!lines.concat().contains(" pw"));
    }
}
