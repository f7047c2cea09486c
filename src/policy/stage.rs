//! The one shape of a policy stage: it reads the command through a [`StageCx`] and either lets
//! it go on to the next stage or stops it with a [`Stop`].
//!
//! The context borrows everything a stage may read or change (the compiled policy, the
//! command's row and arguments, the reused [`Scratch`], the [`Plan`] of changes, the clock
//! for absolute expiries), so a stage that lets a command through unchanged allocates
//! nothing. [`Policy::check`] runs the stages in a fixed order and turns the result into a
//! [`Verdict`].

use std::ops::ControlFlow;

use crate::codec::Argv;
use crate::command::CommandSpec;

use super::ttl::Clock;
use super::{Plan, Policy, Refusal, Scratch, Verdict};

/// What a stage reads and changes while it checks one command.
pub struct StageCx<'c, 'a> {
    pub policy: &'a Policy,
    /// The command's row; commands without one stop at the command rules.
    pub spec: &'static CommandSpec,
    pub argv: &'c Argv<'a>,
    /// Keys, their namespaces, and what the policy did, for the caller's metrics.
    pub scratch: &'c mut Scratch,
    /// Changes to the command, turned into the verdict when every stage let it through.
    pub plan: &'c mut Plan,
    pub clock: &'c mut Clock,
}

/// How a stage ends the evaluation of a command before the later stages.
#[derive(Debug)]
pub enum Stop {
    /// Forward the client's bytes unchanged: Redis refuses the command before it runs (wrong
    /// arity, a bad numkeys), so it touches no key and Redis's error is exact; or no rule
    /// applies to it (scripts with `scripts: allow`).
    Forward,
    /// Refuse the command.
    Refuse(Refusal),
    /// Answer with this verdict (a local reply or a probe); nothing else reaches Redis.
    Answer(Verdict),
}

/// What a stage says about a command: `Continue(())` goes on to the next stage.
pub type Flow = ControlFlow<Stop>;

/// One policy stage.
pub trait Stage {
    fn check(&self, cx: &mut StageCx<'_, '_>) -> Flow;
}

/// Stops the command with a refusal.
pub fn refused(r: Refusal) -> Flow {
    ControlFlow::Break(Stop::Refuse(r))
}
