//! Command rules, the first policy stage: `denied_commands`, `scripts`, and commands respguard
//! cannot check because the command table does not know where their keys are.
//!
//! Denied commands are resolved against the command table when the policy is loaded, into one
//! entry per table row, so the check is a single index. Naming a container (`CONFIG`) denies
//! all of its subcommands; `CONFIG|SET` (Redis's own spelling, also accepted as `CONFIG SET`)
//! denies just one; an ACL category (`@admin`, `@dangerous`) denies every command Redis puts in
//! it. Commands that run code (EVAL, FCALL, SCRIPT LOAD, ...) get their row from `scripts`.

use crate::codec::Argv;
use crate::command::traits::DenyHint;
use crate::command::{self, CommandSpec, ACL_CATEGORY_NAMES};

use super::naming::show;
use super::stage::{refused, Flow, Stage, StageCx, Stop};
use super::{Refusal, Rule, NS_NONE};

/// `policy.scripts`: what happens to commands that run code inside Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scripts {
    /// Refused: a script can call any command on any key, which respguard cannot see.
    Refuse,
    /// Run, with the keys the request declares checked like any other keys.
    DeclaredKeys,
    /// Forwarded unchecked; the upstream user's Redis ACL is the only wall.
    Allow,
}

impl Scripts {
    pub fn parse(s: &str) -> Option<Scripts> {
        match s {
            "refuse" => Some(Scripts::Refuse),
            "declared_keys" => Some(Scripts::DeclaredKeys),
            "allow" => Some(Scripts::Allow),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scripts::Refuse => "refuse",
            Scripts::DeclaredKeys => "declared_keys",
            Scripts::Allow => "allow",
        }
    }
}

/// What the policy says about one command-table row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Row {
    /// Checked by the later stages.
    Open,
    /// In `denied_commands`; the text says what to do instead.
    Denied(&'static str),
    /// Runs code, with `scripts: refuse`.
    ScriptRefused,
    /// Runs code, with `scripts: allow`: forwarded without key checks.
    ScriptUnchecked,
}

/// Command rules compiled from the policy.
#[derive(Debug)]
pub struct CommandRules {
    rows: Box<[Row]>,
    /// `denied_commands` as resolved, in order: `@category` (lowercase) or a table name
    /// (`FLUSHALL`, `CLIENT|KILL`), for the Redis ACL that mirrors the policy.
    denied_names: Vec<String>,
    scripts: Scripts,
    /// Commands outside the table let through unchecked (uppercase).
    allowed_unknown: Vec<Box<[u8]>>,
}

impl Default for CommandRules {
    fn default() -> Self {
        CommandRules {
            rows: vec![Row::Open; command::COMMAND_COUNT].into_boxed_slice(),
            denied_names: Vec::new(),
            scripts: Scripts::DeclaredKeys,
            allowed_unknown: Vec::new(),
        }
    }
}

/// The outcome of the command rules.
#[derive(Debug)]
pub enum Decision {
    /// A command from the table: go on to its keys.
    Known(&'static CommandSpec),
    /// Forwarded without checks: a command outside the table allowed by name, or code with
    /// `scripts: allow`.
    Unchecked,
    Refuse(Refusal),
}

/// Why a command name in the configuration is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the command name is empty")]
    Empty,
    #[error("{0:?} is not a command respguard knows (Redis 7 table); check the spelling. Commands respguard does not know are refused anyway unless listed in policy.allowed_unknown_commands")]
    UnknownDenied(String),
    #[error("{0:?} is not a Redis ACL category; use one of {1}")]
    UnknownCategory(String, String),
    #[error("{0:?} is a Redis command respguard knows and checks; allowed_unknown_commands is only for commands it does not know (module commands)")]
    KnownAllowed(String),
    #[error("{0:?} is not a command name (no spaces or '|'; list module commands like MY.CMD)")]
    BadUnknown(String),
}

/// Why a denied command is refused; the text says what to do instead.
fn hint(row: &CommandSpec) -> &'static str {
    match row.traits().deny_hint {
        DenyHint::UseScan => "use SCAN",
        DenyHint::Flush => "delete or expire the keys you changed instead of clearing everything",
        DenyHint::Admin => {
            "administrative commands go to Redis directly, not through the application's proxy"
        }
        DenyHint::Denied => "it is in policy.denied_commands",
    }
}

impl CommandRules {
    /// Denies a command by its table name (`KEYS`, `config`, `CONFIG|SET`, `CONFIG SET`) or
    /// every command of an ACL category (`@admin`).
    pub fn deny(&mut self, name: &str) -> Result<(), NameError> {
        let trimmed = name.trim();
        if let Some(category) = trimmed.strip_prefix('@') {
            let category = category.to_ascii_lowercase();
            let Some(&(_, bit)) = ACL_CATEGORY_NAMES.iter().find(|(n, _)| *n == category) else {
                let all: Vec<String> = ACL_CATEGORY_NAMES
                    .iter()
                    .map(|(n, _)| format!("@{n}"))
                    .collect();
                return Err(NameError::UnknownCategory(name.to_string(), all.join(", ")));
            };
            for row in CommandSpec::all().filter(|r| r.in_category(bit)) {
                self.set_denied(row);
            }
            self.denied_names.push(format!("@{category}"));
            return Ok(());
        }
        let norm = trimmed
            .split_whitespace()
            .collect::<Vec<_>>()
            .join("|")
            .to_ascii_uppercase();
        if norm.is_empty() {
            return Err(NameError::Empty);
        }
        let spec = command::lookup_name(norm.as_bytes())
            .ok_or_else(|| NameError::UnknownDenied(name.to_string()))?;
        for row in std::iter::once(spec).chain(spec.subcommands.iter()) {
            self.set_denied(row);
        }
        self.denied_names.push(spec.name.to_string());
        Ok(())
    }

    fn set_denied(&mut self, row: &'static CommandSpec) {
        if let Some(slot) = self.rows.get_mut(row.index()) {
            *slot = Row::Denied(hint(row));
        }
    }

    /// Applies `policy.scripts` to the commands that run code; call after every `deny`
    /// (a denied command stays denied).
    pub fn set_scripts(&mut self, scripts: Scripts) {
        self.scripts = scripts;
        for row in CommandSpec::all().filter(|r| r.runs_code()) {
            if let Some(slot) = self.rows.get_mut(row.index()) {
                if !matches!(slot, Row::Denied(_)) {
                    *slot = match scripts {
                        Scripts::Refuse => Row::ScriptRefused,
                        Scripts::DeclaredKeys => Row::Open,
                        Scripts::Allow => Row::ScriptUnchecked,
                    };
                }
            }
        }
    }

    pub fn scripts(&self) -> Scripts {
        self.scripts
    }

    /// `denied_commands` as resolved: `@category` or table names (`CLIENT|KILL`).
    pub fn denied_names(&self) -> &[String] {
        &self.denied_names
    }

    /// True when the policy refuses this row (denied, or code with `scripts: refuse`).
    pub fn refuses(&self, row: &CommandSpec) -> bool {
        matches!(
            self.rows.get(row.index()),
            Some(Row::Denied(_) | Row::ScriptRefused)
        )
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

    /// What stage 1 decides for a command and its row (`None`: not in the table).
    /// Allocation-free unless it refuses.
    pub fn decide(&self, argv: &Argv<'_>, spec: Option<&'static CommandSpec>) -> Decision {
        let Some(spec) = spec else {
            let name = argv.get(0).unwrap_or_default();
            if self
                .allowed_unknown
                .iter()
                .any(|a| a.as_ref().eq_ignore_ascii_case(name))
            {
                return Decision::Unchecked;
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
        match self.rows.get(spec.index()) {
            Some(Row::Denied(h)) => Decision::Refuse(Refusal {
                rule: Rule::DeniedCommand,
                namespace: NS_NONE,
                message: format!("{} is disabled here: {h}", spec.name.replace('|', " ")),
            }),
            Some(Row::ScriptRefused) => Decision::Refuse(Refusal {
                rule: Rule::Script,
                namespace: NS_NONE,
                message: format!(
                    "{} is disabled here: scripts and functions can run any command on any key, which respguard cannot check (policy.scripts: refuse)",
                    spec.name.replace('|', " ")
                ),
            }),
            Some(Row::ScriptUnchecked) => Decision::Unchecked,
            Some(Row::Open) | None => Decision::Known(spec),
        }
    }
}

/// Stage 1 on a command with a row: denied commands and `policy.scripts`.
impl Stage for CommandRules {
    fn check(&self, cx: &mut StageCx<'_, '_>) -> Flow {
        match self.decide(cx.argv, Some(cx.spec)) {
            Decision::Known(_) => Flow::Continue(()),
            Decision::Unchecked => Flow::Break(Stop::Forward),
            Decision::Refuse(r) => refused(r),
        }
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
        with_argv(args, |a| rules.decide(a, command::lookup(a)))
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
        assert!(matches!(decide(&r, &["My.Cmd", "k"]), Decision::Unchecked));
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
