//! What a command means for the session beyond its table row, derived once per row: these
//! are asked for every command of every pipeline.

use std::sync::OnceLock;

use crate::command::{CommandSpec, CMD_BLOCKING};
use crate::upstream;

/// Connection-level behaviour of the few commands that change how replies are paired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Special {
    None,
    Multi,
    Exec,
    Discard,
    Hello,
    Reset,
    Quit,
    Monitor,
    Pubsub,
    /// `SYNC`/`PSYNC`: refused, as the replication stream is not made of replies.
    Replication,
    /// `CLIENT REPLY`: the reply mode is applied by the proxy.
    ClientReply,
}

/// What the session needs to know about a command beyond its table row, derived
/// once per row: these are asked for every command of every pipeline.
#[derive(Clone, Copy, Debug)]
pub(super) struct Traits {
    pub(super) special: Special,
    /// [`upstream::shareable`].
    pub(super) shareable: bool,
    /// Exempt from the read timeout: flagged blocking, or `WAIT`/`WAITAOF`, which wait for
    /// replicas by design.
    pub(super) blocking: bool,
}

impl Traits {
    fn of(spec: &'static CommandSpec) -> Traits {
        Traits {
            special: special_of(spec),
            shareable: upstream::shareable(spec),
            blocking: spec.is(CMD_BLOCKING) || matches!(spec.name, "WAIT" | "WAITAOF"),
        }
    }
}

/// Unknown commands: nothing special, not blocking, and never shared (what they do to the
/// connection cannot be known).
pub(super) const UNKNOWN_TRAITS: Traits = Traits {
    special: Special::None,
    shareable: false,
    blocking: false,
};

pub(super) fn traits(spec: Option<&'static CommandSpec>) -> Traits {
    static TABLE: OnceLock<Box<[Traits]>> = OnceLock::new();
    let Some(spec) = spec else {
        return UNKNOWN_TRAITS;
    };
    let table = TABLE.get_or_init(|| CommandSpec::all().map(Traits::of).collect());
    match table.get(spec.index()) {
        Some(t) => *t,
        None => Traits::of(spec),
    }
}

pub(super) fn special_of(spec: &'static CommandSpec) -> Special {
    match spec.name {
        "MULTI" => Special::Multi,
        "EXEC" => Special::Exec,
        "DISCARD" => Special::Discard,
        "HELLO" => Special::Hello,
        "RESET" => Special::Reset,
        "QUIT" => Special::Quit,
        "MONITOR" => Special::Monitor,
        "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE"
        | "SUNSUBSCRIBE" => Special::Pubsub,
        "SYNC" | "PSYNC" => Special::Replication,
        "CLIENT|REPLY" => Special::ClientReply,
        _ => Special::None,
    }
}
