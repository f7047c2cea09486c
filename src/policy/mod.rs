//! Policy stages: what respguard decides about each command before it reaches Redis.
//!
//! The connection calls [`Policy::check`] once per command with the scanned arguments and the
//! command-table row; the answer is a [`Verdict`]. Stages never see sockets and never block, so
//! they are plain functions of the command and the (immutable, reloadable) compiled policy.
//!
//! The stages, in order; each is a [`Stage`]: it reads and changes the command through one
//! [`StageCx`] and either lets it go on or stops it with a [`Stop`] (forward as is, refuse,
//! or answer locally). What each does per command comes from the command table's row and its
//! [`crate::command::Traits`], never from the command's name:
//!
//! 1. command rules ([`commands`]): `denied_commands`, and commands whose keys respguard cannot
//!    locate (not in the command table, unless `allowed_unknown_commands` names them);
//! 2. key naming ([`naming`]): every key of the command, found through the command table, must
//!    belong to a namespace (one compiled matcher, see [`pattern`]);
//!    data a command copies or moves from one key to another (RENAME, COPY, SMOVE, the *STORE
//!    commands) may only go into a namespace whose sensitive rules the source's rules imply;
//! 3. sensitive data ([`sensitive`], wired in by `sensitive_stage`): configured JSON members,
//!    hash and stream fields are stripped from written values (and PUBLISH messages), card
//!    numbers and SSNs redacted, or the command refused or only reported, per `action`;
//!    present only when the policy has a `sensitive` section;
//! 4. TTL enforcement ([`ttl`]): defaults, clamping, refusing `PERSIST`, and `EXPIRE key ttl NX`
//!    appended after writes that can create a key.
//!
//! A command that passes unchanged costs no heap allocation: keys go into the reused
//! [`Scratch`], matching walks a DFA over borrowed bytes, and nothing is recorded.
//!
//! In audit mode the same evaluation runs, what enforce would have done is logged and recorded
//! in [`Scratch::actions`] (with [`Scratch::audit`] set), and the original command is forwarded.
//! The sensitive stage then runs audit-only: its findings are recorded in
//! [`Scratch::sensitive`] with the action `audit`, since the data did reach Redis.
//!
//! Scripts (`EVAL`, `FCALL`, ...) can touch keys they do not declare, out of the proxy's sight;
//! `policy.scripts` refuses them, checks only their declared keys, or lets them through, and
//! the Redis ACL user `respguard acl` prints is the wall inside them.

pub mod acl;
pub mod auth;
pub mod commands;
mod dump;
pub mod identity;
pub mod json;
mod load;
pub mod naming;
pub mod pattern;
pub mod sensitive;
mod sensitive_stage;
pub mod stage;
pub mod ttl;

use std::ops::ControlFlow;

use bytes::Bytes;

use crate::codec::Argv;
use crate::command::{CommandSpec, KeyRef, CMD_WRITE};

pub use stage::{Flow, Stage, StageCx, Stop};

pub use load::{validate, RawPolicy};

/// Index of a namespace in the compiled policy; two values are reserved.
pub type NsId = u16;
/// The command has no keys.
pub const NS_NONE: NsId = u16::MAX;
/// The key matched no configured namespace.
pub const NS_UNMATCHED: NsId = u16::MAX - 1;
/// Index into the policy's table of sensitive field labels
/// ([`Policy::sensitive_field_label`]).
pub type FieldLabelId = u32;

/// What to do with one command.
#[derive(Debug)]
pub enum Verdict {
    /// Forward the client's original bytes unchanged.
    Forward,
    /// Forward a rewritten command and/or append hidden commands after it.
    Rewrite(Rewrite),
    /// Answer the client directly; nothing is sent to Redis.
    Respond(Bytes),
    /// Send `command`, a read that only lets Redis run its own checks on the key (its type,
    /// ACLs): if it fails the client gets that error, else `reply`. Used when the policy turned
    /// a write into a no-op, so a wrong-type key is still reported as Redis would.
    Probe { command: Vec<Bytes>, reply: Bytes },
    /// Refuse the command; nothing is sent to Redis.
    Reject(Rejection),
}

/// A changed command. Only what changed is re-encoded.
#[derive(Debug, Default)]
pub struct Rewrite {
    /// Arguments replacing the original command, or `None` to forward the original bytes.
    pub command: Option<Vec<Bytes>>,
    /// Arguments added after the client's own when `command` is `None` (`SET ... EX 3600`):
    /// the original bytes are forwarded with these appended, with no copy of the rest.
    pub tail: Vec<Bytes>,
    /// Commands sent right after it whose replies the client never sees (`EXPIRE k ttl NX`).
    pub append: Vec<Vec<Bytes>>,
}

/// A refused command and why.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Full error text, starting with the `POLICY` code.
    pub message: String,
    /// Bounded metric label naming the rule (`naming`, `ttl`, `denied_command`, ...).
    pub rule: &'static str,
    pub namespace: NsId,
}

/// Why a command was (or, in audit mode, would have been) refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// A key matches no namespace, or has an empty segment.
    Naming,
    /// An expiry outside its namespace's bounds, with `on_violation: reject`.
    Ttl,
    /// `PERSIST` or `GETEX ... PERSIST` would leave a key without an expiry.
    Persist,
    /// The command is in `denied_commands`.
    DeniedCommand,
    /// The command is not in the command table, so its keys cannot be located.
    UnknownCommand,
    /// The arguments are malformed, so keys or expiries cannot be read (Redis would refuse
    /// the command too).
    Malformed,
    /// The command reads keys it does not name (`SORT ... BY pattern`), which cannot be checked.
    UncheckedKeys,
    /// A written value holds sensitive data, with `action: reject` (or, for `XADD`, every
    /// field of the entry is sensitive and an empty entry cannot be stored), or cannot be
    /// inspected in a namespace with sensitive rules (a partial write, an opaque payload, a
    /// document nested too deep).
    Sensitive,
    /// The command runs code inside Redis, with `scripts: refuse`.
    Script,
    /// The command copies or moves data into a namespace whose sensitive rules the source
    /// namespace's rules do not imply.
    CrossNamespace,
    /// The client's identity (`policy.clients`) may not run the command or touch its keys
    /// or channels.
    Permission,
}

impl Rule {
    /// The `rule` label of `respguard_policy_rejections_total`.
    pub fn label(self) -> &'static str {
        match self {
            Rule::Naming => "naming",
            Rule::Ttl => "ttl",
            Rule::Persist => "persist",
            Rule::DeniedCommand => "denied_command",
            Rule::UnknownCommand => "unknown_command",
            Rule::Malformed => "malformed",
            Rule::UncheckedKeys => "unchecked_keys",
            Rule::Sensitive => "sensitive",
            Rule::Script => "script",
            Rule::CrossNamespace => "cross_namespace",
            Rule::Permission => "permission",
        }
    }
}

/// Something the policy did to a command (or, in audit mode, would have done).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyAction {
    /// A write without an expiry was given the namespace default (`SET` gains `EX`).
    TtlDefault,
    /// An expiry above the namespace maximum was lowered to it.
    TtlLowered,
    /// An expiry below the namespace minimum was raised to it.
    TtlRaised,
    /// `EXPIRE key ttl NX` was appended after a write that can create the key.
    TtlAppended,
    /// The command was refused.
    Rejected(Rule),
}

impl PolicyAction {
    /// The `action` label of `respguard_ttl_enforced_total` (or the rule, for rejections).
    pub fn label(self) -> &'static str {
        match self {
            PolicyAction::TtlDefault => "default",
            PolicyAction::TtlLowered => "lowered",
            PolicyAction::TtlRaised => "raised",
            PolicyAction::TtlAppended => "appended",
            PolicyAction::Rejected(rule) => rule.label(),
        }
    }
}

/// Scratch space the connection lends to each check so the hot path does not allocate. After
/// a check it also says what the policy found, for metrics.
#[derive(Debug)]
pub struct Scratch {
    pub keys: Vec<KeyRef>,
    /// Namespace of each entry of `keys` (the same order); `NS_UNMATCHED` for allowed unknowns.
    pub key_ns: Vec<NsId>,
    /// Namespace of the command's first key, `NS_NONE` without keys (for hit/miss metrics).
    pub namespace: NsId,
    /// What the policy did, per namespace; empty for a command that passed unchanged.
    pub actions: Vec<(NsId, PolicyAction)>,
    /// True when `actions` were only recorded (audit mode) and the command went through as is.
    pub audit: bool,
    /// Sensitive data found in the command's values, for `respguard_sensitive_fields_total`:
    /// one `(namespace, action, field)` per key (or channel), field or detector, where
    /// `action` is the label `strip`, `reject` or `audit` (what happened to the data; always
    /// `audit` in policy audit mode) and `field` resolves through
    /// [`Policy::sensitive_field_label`] of the policy that made this check. Empty for a
    /// command without findings; it never allocates then.
    pub sensitive: Vec<(NsId, &'static str, FieldLabelId)>,
    /// The sensitive stage ran for this command (so audit mode need not run it again).
    sensitive_checked: bool,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            keys: Vec::new(),
            key_ns: Vec::new(),
            namespace: NS_NONE,
            actions: Vec::new(),
            audit: false,
            sensitive: Vec::new(),
            sensitive_checked: false,
        }
    }
}

impl Scratch {
    /// Forgets the previous command's results, keeping the vectors' capacity. [`Policy::check`]
    /// does this itself; a caller that skips the policy for a command calls it instead, so no
    /// stale entry is recorded twice.
    pub fn clear(&mut self) {
        self.keys.clear();
        self.key_ns.clear();
        self.namespace = NS_NONE;
        self.actions.clear();
        self.audit = false;
        self.sensitive.clear();
        self.sensitive_checked = false;
    }
}

/// `policy.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Refuse and rewrite.
    Enforce,
    /// Forward everything unchanged; log and count what enforce would have done.
    Audit,
}

/// `policy.unknown_keys`: what happens to keys that match no namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownKeys {
    Reject,
    Allow,
}

/// One configured namespace, compiled.
#[derive(Debug)]
pub struct Namespace {
    /// The patterns as written, for error messages.
    pub patterns: Vec<String>,
    /// `None`: the namespace only constrains naming.
    pub ttl: Option<ttl::TtlRule>,
}

/// A validated, compiled policy.
#[derive(Debug)]
pub struct Policy {
    mode: Mode,
    unknown_keys: UnknownKeys,
    matcher: pattern::Matcher,
    /// Namespace names, indexed by [`NsId`]; bounded, so usable as metric labels.
    names: Vec<String>,
    namespaces: Vec<Namespace>,
    rules: commands::CommandRules,
    /// `None` when no `sensitive` section can find anything: stage 3 is skipped.
    sensitive: Option<sensitive_stage::SensitiveStage>,
    /// `policy.clients`: `None` leaves client authentication to Redis.
    clients: Option<identity::Clients>,
}

impl Default for Policy {
    /// A policy that lets everything through: no namespaces, unknown keys allowed.
    fn default() -> Self {
        Policy {
            mode: Mode::Enforce,
            unknown_keys: UnknownKeys::Allow,
            matcher: pattern::Matcher::default(),
            names: Vec::new(),
            namespaces: Vec::new(),
            rules: commands::CommandRules::default(),
            sensitive: None,
            clients: None,
        }
    }
}

/// Validated policy, ready to use.
pub type PolicyConfig = std::sync::Arc<Policy>;

/// A refusal as a stage reports it; [`Policy::check`] turns it into a [`Rejection`].
#[derive(Debug)]
pub struct Refusal {
    pub rule: Rule,
    pub namespace: NsId,
    /// The text after `POLICY `.
    pub message: String,
}

/// The changes stages make to a command, turned into a [`Verdict`] at the end.
#[derive(Debug, Default)]
pub struct Plan {
    command: Option<Vec<Bytes>>,
    tail: Vec<Bytes>,
    append: Vec<Vec<Bytes>>,
}

impl Plan {
    /// The rewritten arguments, copied from `argv` on first use. A stage that changes the
    /// command edits these; the original bytes are forwarded if no stage calls this.
    pub fn args(&mut self, argv: &Argv<'_>) -> &mut Vec<Bytes> {
        let args = self
            .command
            .get_or_insert_with(|| argv.iter().map(Bytes::copy_from_slice).collect());
        args.append(&mut self.tail);
        args
    }

    /// Adds an argument after the client's own. Until a stage rewrites the command, the
    /// original bytes are kept and only these are encoded.
    pub fn push_tail(&mut self, arg: Bytes) {
        match self.command.as_mut() {
            Some(args) => args.push(arg),
            None => self.tail.push(arg),
        }
    }

    /// Replaces the whole command (a stage that rebuilt it); later edits apply to this one.
    pub fn replace(&mut self, mut args: Vec<Bytes>) {
        args.append(&mut self.tail);
        self.command = Some(args);
    }

    /// Queues a command to send after this one, its reply hidden from the client.
    pub fn append(&mut self, cmd: Vec<Bytes>) {
        self.append.push(cmd);
    }

    /// The commands appended so far.
    pub fn appended(&self) -> &[Vec<Bytes>] {
        &self.append
    }

    fn into_verdict(self) -> Verdict {
        if self.command.is_none() && self.tail.is_empty() && self.append.is_empty() {
            Verdict::Forward
        } else {
            Verdict::Rewrite(Rewrite {
                command: self.command,
                tail: self.tail,
                append: self.append,
            })
        }
    }
}

impl Policy {
    /// Decides what happens to one command. `spec` is `None` for a command the table lacks.
    pub fn check(
        &self,
        argv: &Argv<'_>,
        spec: Option<&'static CommandSpec>,
        scratch: &mut Scratch,
    ) -> Verdict {
        self.check_with(argv, spec, scratch, &mut ttl::Clock::default())
    }

    /// [`Policy::check`] with a given clock (absolute expiries are compared with it).
    pub fn check_with(
        &self,
        argv: &Argv<'_>,
        spec: Option<&'static CommandSpec>,
        scratch: &mut Scratch,
        clock: &mut ttl::Clock,
    ) -> Verdict {
        scratch.clear();
        let verdict = self.evaluate(argv, spec, scratch, clock);
        match self.mode {
            Mode::Enforce => verdict,
            Mode::Audit => {
                if let (Some(stage), Some(spec), false) =
                    (&self.sensitive, spec, scratch.sensitive_checked)
                {
                    // An earlier stage refused, but audit mode forwards the command anyway:
                    // its sensitive data reaches Redis and must be counted. The stage is
                    // audit-only here, so it only records.
                    let _ = stage.check(&mut StageCx {
                        policy: self,
                        spec,
                        argv,
                        scratch,
                        plan: &mut Plan::default(),
                        clock,
                    });
                }
                if !matches!(verdict, Verdict::Forward) || !scratch.sensitive.is_empty() {
                    scratch.audit = true;
                }
                if !matches!(verdict, Verdict::Forward) {
                    self.log_audit(argv, spec, scratch, &verdict);
                }
                Verdict::Forward
            }
        }
    }

    /// What enforce mode does with the command; records actions in `scratch`.
    fn evaluate(
        &self,
        argv: &Argv<'_>,
        spec: Option<&'static CommandSpec>,
        scratch: &mut Scratch,
        clock: &mut ttl::Clock,
    ) -> Verdict {
        let Some(spec) = spec else {
            return match self.rules.decide(argv, None) {
                commands::Decision::Refuse(r) if !self.keys_unconstrained() => {
                    self.refuse(scratch, r)
                }
                // Listed in `allowed_unknown_commands`, or no rule could apply to its keys,
                // wherever they are: Redis answers it (with its own "unknown command" error
                // when it does not know it either).
                _ => Verdict::Forward,
            };
        };
        let mut plan = Plan::default();
        let flow = self.stages(&mut StageCx {
            policy: self,
            spec,
            argv,
            scratch,
            plan: &mut plan,
            clock,
        });
        match flow {
            ControlFlow::Continue(()) => plan.into_verdict(),
            ControlFlow::Break(Stop::Forward) => Verdict::Forward,
            ControlFlow::Break(Stop::Refuse(r)) => self.refuse(scratch, r),
            ControlFlow::Break(Stop::Answer(verdict)) => verdict,
        }
    }

    /// The stages, in order, on a command with a row.
    fn stages(&self, cx: &mut StageCx<'_, '_>) -> Flow {
        // 1. command rules
        self.rules.check(cx)?;
        // PUBLISH and SPUBLISH have no keys (channels are not keys) but carry a value: only
        // the sensitive stage applies to commands without keys.
        let keys = cx.spec.has_keys();

        // 2. keys and naming
        if keys {
            naming::Naming.check(cx)?;
        }

        // 2b. Data copied or moved between keys (RENAME, COPY, SMOVE, *STORE, ...) is never
        //     seen by the sensitive stage, so it may only flow into a namespace whose rules
        //     the source's rules already enforce.
        if let Some(stage) = &self.sensitive {
            if keys && cx.scratch.keys.len() > 1 && cx.spec.is(CMD_WRITE) && !cx.spec.runs_code() {
                stage.check_flows(cx)?;
            }
        }

        // 3. Sensitive data, before TTL: it reads the original `argv` and puts a rewritten
        //    one into `plan.replace(args)`. TTL then edits through `plan.args(argv)`, which
        //    returns the stripped argv: stripping keeps the positions of every expiry
        //    argument (it changes values, and drops fields only from commands whose TTL
        //    handling merely appends), so both sets of edits combine.
        if let Some(stage) = &self.sensitive {
            stage.check(cx)?;
        }

        // 4. TTL
        if keys {
            ttl::Ttl.check(cx)?;
        }
        ControlFlow::Continue(())
    }

    /// True when no rule can apply to any key: unknown keys are allowed, no namespace has a
    /// TTL rule and nothing sensitive is configured.
    fn keys_unconstrained(&self) -> bool {
        self.unknown_keys == UnknownKeys::Allow
            && self.namespaces.iter().all(|n| n.ttl.is_none())
            && self.sensitive.is_none()
    }

    fn refuse(&self, scratch: &mut Scratch, r: Refusal) -> Verdict {
        scratch
            .actions
            .push((r.namespace, PolicyAction::Rejected(r.rule)));
        if self.mode == Mode::Enforce {
            tracing::debug!(rule = r.rule.label(), namespace = self.namespace_label(r.namespace), reason = %r.message, "policy refused a command");
        }
        Verdict::Reject(Rejection {
            message: format!("POLICY {}", r.message),
            rule: r.rule.label(),
            namespace: r.namespace,
        })
    }

    /// Logs what enforce mode would have done. Never the value; the key only at debug level.
    fn log_audit(
        &self,
        argv: &Argv<'_>,
        spec: Option<&'static CommandSpec>,
        scratch: &Scratch,
        verdict: &Verdict,
    ) {
        let command = spec.map(|s| s.name).unwrap_or("(unknown)");
        for (ns, action) in &scratch.actions {
            tracing::info!(
                mode = "audit",
                command,
                namespace = self.namespace_label(*ns),
                action = action.label(),
                "enforce mode would have changed or refused this command"
            );
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let key = scratch
                .keys
                .first()
                .and_then(|k| argv.get(k.index))
                .map(naming::show)
                .unwrap_or_default();
            let detail = match verdict {
                Verdict::Reject(r) => r.message.clone(),
                Verdict::Rewrite(rw) => {
                    format!(
                        "rewrite (command changed: {}, {} appended)",
                        rw.command.is_some() || !rw.tail.is_empty(),
                        rw.append.len()
                    )
                }
                _ => String::new(),
            };
            tracing::debug!(mode = "audit", command, key = %key, detail = %detail, "audit detail");
        }
    }

    /// Names of the namespaces, indexed by [`NsId`].
    pub fn namespace_names(&self) -> &[String] {
        &self.names
    }

    /// The namespace of `key`: its id, or [`NS_UNMATCHED`]. Allocation-free.
    pub fn namespace_of(&self, key: &[u8]) -> NsId {
        match self.matcher.find(key) {
            pattern::KeyMatch::Namespace(ns) => ns,
            pattern::KeyMatch::NoMatch | pattern::KeyMatch::EmptySegment => NS_UNMATCHED,
        }
    }

    /// A bounded metric label for a namespace id: its name, `_unmatched` or `_none`.
    pub fn namespace_label(&self, ns: NsId) -> &str {
        match ns {
            NS_NONE => "_none",
            NS_UNMATCHED => "_unmatched",
            n => self
                .names
                .get(usize::from(n))
                .map(String::as_str)
                .unwrap_or("_unmatched"),
        }
    }

    /// The compiled namespace `ns`, if it is one.
    pub fn namespace(&self, ns: NsId) -> Option<&Namespace> {
        self.namespaces.get(usize::from(ns))
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn unknown_keys(&self) -> UnknownKeys {
        self.unknown_keys
    }

    /// The compiled command rules (`denied_commands`, `scripts`).
    pub fn command_rules(&self) -> &commands::CommandRules {
        &self.rules
    }

    /// The client identities (`policy.clients`), when configured.
    pub fn clients(&self) -> Option<&identity::Clients> {
        self.clients.as_ref()
    }

    pub(crate) fn matcher(&self) -> &pattern::Matcher {
        &self.matcher
    }
}

#[cfg(test)]
mod tests;
