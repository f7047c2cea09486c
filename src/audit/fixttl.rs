//! `--fix-ttl`: bringing existing keys' expiries into their namespace's bounds without ever
//! touching a value and without racing a concurrent writer into a longer TTL.
//!
//! - A key without expiry gets `PEXPIRE key <default> NX`: `NX` (Redis 7) only sets an expiry
//!   where there is none, so a key that got one since the walk keeps it.
//! - A key above the maximum gets `PEXPIRE key <max> LT`: `LT` only ever lowers an expiry (a
//!   key without one counts as infinite, so it is bounded too).
//!
//! Both are idempotent: a second run finds nothing to change. Remaining TTLs below the minimum
//! are left alone: they fall as keys age, so raising them would extend every key's life on
//! each run (and a key set too short expires soon anyway). Keys in no namespace, or in one
//! without a `ttl` rule, have no bounds and are left alone. Without `--apply` nothing is sent:
//! the report lists what would be done.

use crate::policy::{NsId, Policy};

use super::report::{FixReport, TtlFinding};
use super::shape;

/// How many commands the report quotes.
const EXAMPLES: usize = 10;

/// One change to one key's expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fix {
    /// `PEXPIRE key ms NX`.
    SetDefault(u64),
    /// `PEXPIRE key ms LT`.
    LowerToMax(u64),
}

impl Fix {
    /// The fix a key with this TTL verdict needs, if any.
    pub fn for_key(policy: &Policy, ns: NsId, ttl: TtlFinding) -> Option<Fix> {
        let rule = policy.namespace(ns)?.ttl.as_ref()?;
        match ttl {
            TtlFinding::NoExpiry => Some(Fix::SetDefault(rule.default_ms)),
            TtlFinding::AboveMax => Some(Fix::LowerToMax(rule.max_ms)),
            TtlFinding::Fine | TtlFinding::BelowMin => None,
        }
    }

    pub fn ms(self) -> u64 {
        match self {
            Fix::SetDefault(ms) | Fix::LowerToMax(ms) => ms,
        }
    }

    pub fn option(self) -> &'static [u8] {
        match self {
            Fix::SetDefault(_) => b"NX",
            Fix::LowerToMax(_) => b"LT",
        }
    }
}

/// The fixes of one run: counted per namespace, sent by the walker when `apply`.
#[derive(Debug, Default)]
pub struct FixPlan {
    pub apply: bool,
    pub report: FixReport,
}

impl FixPlan {
    pub fn new(apply: bool) -> Self {
        FixPlan {
            apply,
            report: FixReport {
                applied: apply,
                ..FixReport::default()
            },
        }
    }

    pub fn record(&mut self, policy: &Policy, ns: NsId, key: &[u8], fix: Fix) {
        let name = policy.namespace_label(ns);
        let counts = match fix {
            Fix::SetDefault(_) => &mut self.report.set_default,
            Fix::LowerToMax(_) => &mut self.report.lower_to_max,
        };
        match counts.get_mut(name) {
            Some(n) => *n += 1,
            None => {
                counts.insert(name.to_string(), 1);
            }
        }
        if self.report.examples.len() < EXAMPLES {
            self.report.examples.push(format!(
                "PEXPIRE \"{}\" {} {}",
                shape::show(key),
                fix.ms(),
                String::from_utf8_lossy(fix.option())
            ));
        }
    }
}
