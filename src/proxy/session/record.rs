//! Metrics of finished commands: taken once per command, after its reply, and added to the
//! shared counters once per run of identical results.

use std::time::Instant;

use super::{Meta, Session};
use crate::metrics::{self, Outcome};
use crate::policy::{FieldLabelId, NsId, PolicyAction};

/// What the policy did to one command; one action (a TTL added) needs no allocation.
#[derive(Debug)]
pub(super) enum Actions {
    None,
    One((NsId, PolicyAction)),
    Many(Box<[(NsId, PolicyAction)]>),
}

impl Actions {
    fn as_slice(&self) -> &[(NsId, PolicyAction)] {
        match self {
            Actions::None => &[],
            Actions::One(a) => std::slice::from_ref(a),
            Actions::Many(b) => b,
        }
    }
}

/// A sensitive field the policy found: namespace, action label, field label id.
pub(super) type SensitiveFinding = (NsId, &'static str, FieldLabelId);

/// Consecutive finished commands with identical metrics, counted once.
pub(super) struct Run {
    pub(super) cmd: Option<usize>,
    pub(super) ns: NsId,
    pub(super) outcome: Outcome,
    /// When the run's commands arrived, went upstream and were answered: equal instants give
    /// equal latencies, which are only computed when the run is flushed.
    pub(super) start: Instant,
    pub(super) sent: Option<Instant>,
    pub(super) done: Instant,
    pub(super) n: u64,
    pub(super) hits: u64,
    pub(super) misses: u64,
}

impl Session {
    /// Records one finished command: the single place where a command's metrics are taken,
    /// after its reply. `reply` is the reply value when Redis sent one.
    pub(super) fn record(&mut self, m: &Meta, outcome: Outcome, reply: Option<&[u8]>) {
        let now = self.now;
        // Commands of one pipelined batch finish with identical figures: count them as a run
        // and touch the shared counters once per run rather than once per command.
        let same = self.run.as_ref().is_some_and(|r| {
            r.cmd == m.cmd
                && r.ns == m.ns
                && r.outcome == outcome
                && r.start == m.start
                && r.sent == m.sent
                && r.done == now
        });
        if same {
            if let Some(r) = self.run.as_mut() {
                r.n += 1;
            }
        } else {
            self.flush_run();
            self.run = Some(Run {
                cmd: m.cmd,
                ns: m.ns,
                outcome,
                start: m.start,
                sent: m.sent,
                done: now,
                n: 1,
                hits: 0,
                misses: 0,
            });
        }
        let t = &self.ns_table;
        for &(ns, action) in m.actions.as_slice() {
            t.policy_action(ns, action);
        }
        if let Some(found) = &m.sensitive {
            for &(ns, action, field) in found.iter() {
                let label = self
                    .policy
                    .as_deref()
                    .map_or("_unknown", |p| p.sensitive_field_label(field));
                t.sensitive(ns, label, action);
            }
        }
        if let (Some(reply), Outcome::Ok, false) = (reply, outcome, m.queued) {
            let nkeys = m.nkeys as usize;
            let run = &mut self.run;
            let mut count = |ns: NsId, r: metrics::Lookup, n: u64| match run.as_mut() {
                Some(run) if run.ns == ns => match r {
                    metrics::Lookup::Hit => run.hits += n,
                    metrics::Lookup::Miss => run.misses += n,
                },
                _ => t.lookup(m.cmd, ns, r, n),
            };
            metrics::count_lookups(
                &mut count,
                m.cmd,
                m.ns,
                m.key_ns.as_deref(),
                nkeys,
                reply,
                &self.reply_limits,
            );
        }
    }

    /// Adds the current run of identical command results to the shared metrics.
    pub(super) fn flush_run(&mut self) {
        if let Some(r) = self.run.take() {
            let t = &self.ns_table;
            t.command(r.cmd, r.ns, r.outcome, r.n);
            t.lookup(r.cmd, r.ns, metrics::Lookup::Hit, r.hits);
            t.lookup(r.cmd, r.ns, metrics::Lookup::Miss, r.misses);
            let total = r.done.saturating_duration_since(r.start);
            let upstream = r.sent.map(|s| r.done.saturating_duration_since(s));
            self.shared.metrics.latency_n(r.cmd, total, upstream, r.n);
        }
    }

    pub(super) fn take_sensitive(&mut self) -> Option<Box<[SensitiveFinding]>> {
        if self.scratch.sensitive.is_empty() {
            None
        } else {
            Some(self.scratch.sensitive.as_slice().into())
        }
    }

    pub(super) fn take_actions(&mut self) -> Actions {
        match self.scratch.actions.as_slice() {
            [] => Actions::None,
            [one] => Actions::One(*one),
            many => Actions::Many(many.into()),
        }
    }
}
