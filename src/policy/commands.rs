//! Command rules, the first policy stage: `denied_commands`, and commands respguard cannot
//! check because the command table does not know where their keys are.
//!
//! Denied commands are resolved against the command table when the policy is loaded, into one
//! flag per table row, so the check is a single index. Naming a container (`CONFIG`) denies all
//! of its subcommands; `CONFIG|SET` (or `CONFIG SET`) denies just one.

use crate::codec::Argv;
use crate::command::{self, CommandSpec};

use super::naming::show;
use super::{Refusal, Rule, NS_NONE};

/// Command rules compiled from the policy.
#[derive(Debug)]
pub struct CommandRules {
    /// Per command-table row: `Some(hint)` when denied.
    denied: Box<[Option<&'static str>]>,
    /// Commands outside the table let through unchecked (uppercase).
    allowed_unknown: Vec<Box<[u8]>>,
}

impl Default for CommandRules {
    fn default() -> Self {
        CommandRules {
            denied: vec![None; command::COMMAND_COUNT].into_boxed_slice(),
            allowed_unknown: Vec::new(),
        }
    }
}

/// The outcome of the command rules.
#[derive(Debug)]
pub enum Decision {
    /// A command from the table: go on to its keys.
    Known(&'static CommandSpec),
    /// Not in the table, but allowed by name: forwarded without checks.
    UnknownAllowed,
    Refuse(Refusal),
}

/// Why a command name in the configuration is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the command name is empty")]
    Empty,
    #[error("{0:?} is not a command respguard knows (Redis 7 table); check the spelling. Commands respguard does not know are refused anyway unless listed in policy.allowed_unknown_commands")]
    UnknownDenied(String),
    #[error("{0:?} is a Redis command respguard knows and checks; allowed_unknown_commands is only for commands it does not know (module commands)")]
    KnownAllowed(String),
    #[error("{0:?} is not a command name (no spaces or '|'; list module commands like MY.CMD)")]
    BadUnknown(String),
}

/// Why a denied command is refused; the text says what to do instead.
fn hint(top: &str) -> &'static str {
    match top {
        "KEYS" => "use SCAN",
        "FLUSHALL" | "FLUSHDB" => {
            "delete or expire the keys you changed instead of clearing everything"
        }
        "DEBUG" | "CONFIG" | "SHUTDOWN" | "SAVE" | "BGSAVE" | "BGREWRITEAOF" | "REPLICAOF"
        | "SLAVEOF" | "MODULE" | "ACL" | "CLUSTER" | "FAILOVER" | "SWAPDB" | "MONITOR" => {
            "administrative commands go to Redis directly, not through the application's proxy"
        }
        _ => "it is in policy.denied_commands",
    }
}

impl CommandRules {
    /// Denies a command by its table name (`KEYS`, `config`, `CONFIG|SET`, `CONFIG SET`).
    pub fn deny(&mut self, name: &str) -> Result<(), NameError> {
        let norm = name.trim().replace(' ', "|").to_ascii_uppercase();
        if norm.is_empty() {
            return Err(NameError::Empty);
        }
        let spec = command::lookup_name(norm.as_bytes())
            .ok_or_else(|| NameError::UnknownDenied(name.to_string()))?;
        let top = norm.split('|').next().unwrap_or(&norm);
        let h = hint(top);
        let rows = std::iter::once(spec).chain(spec.subcommands.iter());
        for row in rows {
            if let Some(slot) = self.denied.get_mut(row.index()) {
                *slot = Some(h);
            }
        }
        Ok(())
    }

    /// Lets a command the table does not know through unchecked.
    pub fn allow_unknown(&mut self, name: &str) -> Result<(), NameError> {
        let norm = name.trim().to_ascii_uppercase();
        if norm.is_empty() {
            return Err(NameError::Empty);
        }
        if norm.contains(|c: char| c.is_whitespace() || c == '|') {
            return Err(NameError::BadUnknown(name.to_string()));
        }
        if command::lookup_name(norm.as_bytes()).is_some() {
            return Err(NameError::KnownAllowed(name.to_string()));
        }
        self.allowed_unknown
            .push(norm.into_bytes().into_boxed_slice());
        Ok(())
    }

    /// Stage 1. Allocation-free unless it refuses.
    pub fn check(&self, argv: &Argv<'_>, spec: Option<&'static CommandSpec>) -> Decision {
        let Some(spec) = spec else {
            let name = argv.get(0).unwrap_or_default();
            if self
                .allowed_unknown
                .iter()
                .any(|a| a.as_ref().eq_ignore_ascii_case(name))
            {
                return Decision::UnknownAllowed;
            }
            return Decision::Refuse(Refusal {
                rule: Rule::UnknownCommand,
                namespace: NS_NONE,
                message: format!(
                    "unknown command {}: respguard cannot tell which of its arguments are keys, so it refuses it; list it in policy.allowed_unknown_commands to let it through unchecked",
                    show(name)
                ),
            });
        };
        if let Some(Some(h)) = self.denied.get(spec.index()) {
            return Decision::Refuse(Refusal {
                rule: Rule::DeniedCommand,
                namespace: NS_NONE,
                message: format!("{} is disabled here: {h}", spec.name.replace('|', " ")),
            });
        }
        Decision::Known(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_argv<R>(args: &[&str], f: impl FnOnce(&Argv<'_>) -> R) -> R {
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        f(&crate::codec::OwnedArgv::new(&bytes).argv())
    }

    fn decide(rules: &CommandRules, args: &[&str]) -> Decision {
        with_argv(args, |a| rules.check(a, command::lookup(a)))
    }

    #[test]
    fn denied_commands_and_subcommands() {
        let mut r = CommandRules::default();
        r.deny("keys").unwrap();
        r.deny("CONFIG").unwrap();
        r.deny("client kill").unwrap();
        let Decision::Refuse(f) = decide(&r, &["KEYS", "*"]) else {
            panic!("KEYS passes")
        };
        assert_eq!(f.message, "KEYS is disabled here: use SCAN");
        assert_eq!(f.rule, Rule::DeniedCommand);
        assert!(matches!(
            decide(&r, &["config", "get", "x"]),
            Decision::Refuse(_)
        ));
        assert!(matches!(decide(&r, &["CONFIG"]), Decision::Refuse(_)));
        let Decision::Refuse(f) = decide(&r, &["CLIENT", "KILL", "ID", "1"]) else {
            panic!("CLIENT KILL passes")
        };
        assert!(
            f.message.starts_with("CLIENT KILL is disabled here"),
            "{}",
            f.message
        );
        assert!(matches!(decide(&r, &["CLIENT", "ID"]), Decision::Known(_)));
        assert!(matches!(decide(&r, &["GET", "k"]), Decision::Known(_)));
        assert_eq!(
            r.deny("FLUSHAL"),
            Err(NameError::UnknownDenied("FLUSHAL".into()))
        );
        assert_eq!(r.deny(" "), Err(NameError::Empty));
    }

    #[test]
    fn unknown_commands() {
        let mut r = CommandRules::default();
        let Decision::Refuse(f) = decide(&r, &["MY.CMD", "k"]) else {
            panic!("unknown passes")
        };
        assert_eq!(f.rule, Rule::UnknownCommand);
        assert!(
            f.message.contains("allowed_unknown_commands"),
            "{}",
            f.message
        );
        r.allow_unknown("my.cmd").unwrap();
        assert!(matches!(
            decide(&r, &["My.Cmd", "k"]),
            Decision::UnknownAllowed
        ));
        assert!(matches!(
            r.allow_unknown("GET"),
            Err(NameError::KnownAllowed(_))
        ));
        assert!(matches!(
            r.allow_unknown("A B"),
            Err(NameError::BadUnknown(_))
        ));
    }
}
