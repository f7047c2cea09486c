//! Policy stages: what respguard decides about each command before it reaches Redis.
//!
//! The connection calls [`Policy::check`] once per command with the scanned arguments and the
//! command-table row; the answer is a [`Verdict`]. Stages never see sockets and never block, so
//! they are plain functions of the command and the (immutable, reloadable) compiled policy.

use bytes::Bytes;
use serde::Deserialize;

use crate::codec::Argv;
use crate::command::{CommandSpec, KeyRef};
use crate::config::Problems;

/// Index of a namespace in the compiled policy; two values are reserved.
pub type NsId = u16;
/// The command has no keys.
pub const NS_NONE: NsId = u16::MAX;
/// The key matched no configured namespace.
pub const NS_UNMATCHED: NsId = u16::MAX - 1;

/// What to do with one command.
#[derive(Debug)]
pub enum Verdict {
    /// Forward the client's original bytes unchanged.
    Forward,
    /// Forward a rewritten command and/or append hidden commands after it.
    Rewrite(Rewrite),
    /// Answer the client directly; nothing is sent to Redis.
    Respond(Bytes),
    /// Refuse the command; nothing is sent to Redis.
    Reject(Rejection),
}

/// A changed command. Only what changed is re-encoded.
#[derive(Debug, Default)]
pub struct Rewrite {
    /// Arguments replacing the original command, or `None` to forward the original bytes.
    pub command: Option<Vec<Bytes>>,
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

/// Scratch space the connection lends to each check so the hot path does not allocate.
#[derive(Debug, Default)]
pub struct Scratch {
    pub keys: Vec<KeyRef>,
}

/// The `policy:` section as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {}

/// A validated, compiled policy.
#[derive(Debug, Default)]
pub struct Policy {}

/// Validated policy, ready to use.
pub type PolicyConfig = std::sync::Arc<Policy>;

/// Validates the `policy:` section, adding every problem to `p`.
pub fn validate(_raw: RawPolicy, _p: &mut Problems<'_>) -> Option<PolicyConfig> {
    Some(std::sync::Arc::new(Policy {}))
}

impl Policy {
    /// Decides what happens to one command. `spec` is `None` for a command the table lacks.
    pub fn check(
        &self,
        _argv: &Argv<'_>,
        _spec: Option<&'static CommandSpec>,
        _scratch: &mut Scratch,
    ) -> Verdict {
        Verdict::Forward
    }
}
