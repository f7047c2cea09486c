//! The keyspace walk of one node: `SCAN` batch by batch (never `KEYS`), and per batch two
//! pipelines. The probe asks every key's `PTTL`, `MEMORY USAGE` and either its `TYPE` or,
//! in namespaces whose values the sensitive rules read and which hold mostly strings, its
//! value (`GETRANGE` up to the cap: succeeding tells the type too). The follow-up asks what
//! the probe left open: `TYPE` where `GETRANGE` met another type, `GET`/`HGETALL` for the
//! values to read (under the size cap), and with `--fix-ttl --apply` the `PEXPIRE` fixes.
//! Batches overlap so Redis never waits for the audit. Each key is judged by the proxy's own
//! policy engine ([`Classifier`]) and folded into the [`Aggregate`]; nothing per key
//! outlives its batch.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use crate::codec::OwnedArgv;
use crate::command::{self, CommandSpec};
use crate::policy::sensitive::{self, SensitiveRules};
use crate::policy::{NsId, Policy, PolicyAction, Rule, Scratch, UnknownKeys, NS_UNMATCHED};

use super::conn::{describe, Conn, ConnError};
use super::fixttl::{Fix, FixPlan};
use super::report::{Aggregate, Inspection, KeyObs, TtlFinding};
use super::{Options, Progress, Stop};

/// Judges keys with the same code the proxy runs on commands: the namespace matcher, the TTL
/// stage (through [`Policy::check`] of the `PEXPIRE` that would set the key's current TTL)
/// and the sensitive stage's value scan ([`sensitive::apply`] on the `SET` or `HSET` that
/// would write the key's current value).
pub struct Classifier<'p> {
    policy: &'p Policy,
    scratch: Scratch,
    pexpire: Option<&'static CommandSpec>,
    inactive: SensitiveRules,
}

impl<'p> Classifier<'p> {
    pub fn new(policy: &'p Policy) -> Self {
        Classifier {
            policy,
            scratch: Scratch::default(),
            pexpire: command::lookup_name(b"PEXPIRE"),
            inactive: SensitiveRules::default(),
        }
    }

    pub fn namespace(&self, key: &[u8]) -> NsId {
        self.policy.namespace_of(key)
    }

    /// Whether the proxy refuses commands on keys of `ns` for their name alone.
    pub fn refuses_name(&self, ns: NsId) -> bool {
        ns == NS_UNMATCHED && self.policy.unknown_keys() == UnknownKeys::Reject
    }

    /// Whether the values of keys in `ns` must be read for the sensitive rules.
    pub fn needs_values(&self, ns: NsId) -> bool {
        self.policy
            .sensitive_rules(ns)
            .is_some_and(SensitiveRules::is_active)
    }

    /// The TTL verdict for a key of `ns` with remaining TTL `pttl` (`None`: no expiry).
    pub fn ttl(&mut self, key: &[u8], ns: NsId, pttl: Option<u64>) -> TtlFinding {
        let Some(rule) = self.policy.namespace(ns).and_then(|n| n.ttl.as_ref()) else {
            return TtlFinding::Fine;
        };
        let Some(ms) = pttl else {
            return TtlFinding::NoExpiry;
        };
        let max_ms = rule.max_ms;
        let amount = ms.to_string();
        let argv = OwnedArgv::new(&[b"PEXPIRE", key, amount.as_bytes()]);
        let _ = self
            .policy
            .check(&argv.argv(), self.pexpire, &mut self.scratch);
        for (_, action) in &self.scratch.actions {
            match action {
                PolicyAction::TtlLowered => return TtlFinding::AboveMax,
                PolicyAction::TtlRaised => return TtlFinding::BelowMin,
                PolicyAction::Rejected(Rule::Ttl) if ms > max_ms => return TtlFinding::AboveMax,
                PolicyAction::Rejected(Rule::Ttl) => return TtlFinding::BelowMin,
                _ => {}
            }
        }
        TtlFinding::Fine
    }

    /// Field and detector names the sensitive stage finds in a value written by `argv`
    /// (`SET key value` or `HSET key field value ...`).
    pub fn sensitive(&self, command: &str, args: &[&[u8]], out: &mut Vec<String>) {
        let argv = OwnedArgv::new(args);
        let rules_for = |k: &[u8]| -> &SensitiveRules {
            self.policy
                .sensitive_rules(self.policy.namespace_of(k))
                .unwrap_or(&self.inactive)
        };
        let mut findings = Vec::new();
        let _ = sensitive::apply(&argv.argv(), command, &rules_for, &mut findings);
        for f in &findings {
            let label = f.label();
            if !out.iter().any(|o| o == label) {
                out.push(label.to_string());
            }
        }
    }
}

/// The third command of a key's probe, next to `PTTL` and `MEMORY USAGE`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Third {
    /// `TYPE key`.
    Type,
    /// `GETRANGE key 0 <cap - 1>`: a string's value (complete when `MEMORY USAGE` is within
    /// the cap) and, by succeeding, its type; any other type answers `WRONGTYPE`.
    GetRange,
}

/// Which value reads a key's follow-up carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fetch {
    None,
    Get,
    HGetAll,
    /// The type is unknown: whichever of the two matches it answers.
    Both,
}

impl Fetch {
    fn get(self) -> bool {
        matches!(self, Fetch::Get | Fetch::Both)
    }
    fn hgetall(self) -> bool {
        matches!(self, Fetch::HGetAll | Fetch::Both)
    }
}

/// One key whose probe is answered but whose follow-up (type, value, fix) is in flight.
struct Pending {
    key: Bytes,
    ns: NsId,
    /// `None` until the follow-up's `TYPE` answers.
    kind: Option<Bytes>,
    pttl: Option<u64>,
    bytes: u64,
    ttl: TtlFinding,
    ask_type: bool,
    fetch: Fetch,
    fix: bool,
    inspection: Inspection,
    sensitive: Vec<String>,
}

/// A group of commands in flight on the connection, oldest first.
enum Group {
    /// A `SCAN` alone.
    Scan,
    /// Each key's probe, then the next `SCAN` when `scan`.
    Probe {
        keys: Vec<(Bytes, NsId, Third)>,
        scan: bool,
    },
    /// Per key of `keys`, in order: `TYPE` when the probe could not tell it, the value
    /// reads, the `PEXPIRE` fix.
    Follow { keys: Vec<Pending> },
}

/// Value types seen per namespace, to choose each key's [`Third`]: reading a string's value
/// in its probe saves a string its `TYPE`; for other types it costs one command (and hashes
/// one more), so a namespace probes with `GETRANGE` while strings outnumber the other keys
/// weighted by that cost.
#[derive(Clone, Copy, Default)]
struct Mix {
    strings: u64,
    hashes: u64,
    others: u64,
}

impl Mix {
    fn third(&self) -> Third {
        if self.hashes + 2 * self.others <= self.strings {
            Third::GetRange
        } else {
            Third::Type
        }
    }

    fn count(&mut self, kind: &[u8]) {
        match kind {
            b"string" => self.strings += 1,
            b"hash" => self.hashes += 1,
            _ => self.others += 1,
        }
    }
}

/// Walks one node's keyspace over one connection until the end, `--sample` keys, or a stop
/// request; the aggregate may already hold other nodes' keys.
pub struct Walker<'a, 'p> {
    pub conn: &'a mut Conn,
    pub classifier: Classifier<'p>,
    pub opts: &'a Options,
    pub agg: &'a mut Aggregate,
    pub fix: Option<&'a mut FixPlan>,
    pub stop: &'a Stop,
    pub progress: &'a mut Progress,
}

fn bulk(f: &BytesFrame) -> Option<&Bytes> {
    match f {
        BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => Some(b),
        _ => None,
    }
}

fn unexpected(command: &'static str, f: &BytesFrame) -> ConnError {
    ConnError::Unexpected {
        command,
        reply: describe(f),
    }
}

fn wrong_type(f: &BytesFrame) -> bool {
    matches!(f, BytesFrame::Error(e) if e.starts_with("WRONGTYPE"))
}

const STRING: Bytes = Bytes::from_static(b"string");

/// The walk's state between groups.
struct State {
    groups: std::collections::VecDeque<Group>,
    count: Bytes,
    getrange_end: Bytes,
    /// Keys whose probe was sent (for `--sample`).
    sent: u64,
    /// `SCAN` returned cursor 0.
    complete: bool,
    /// No further `SCAN` is sent (end, `--sample` or stop).
    scan_done: bool,
    /// `GETRANGE` or `MEMORY USAGE` was refused: every probe asks `TYPE`.
    no_getrange: bool,
    mix: HashMap<NsId, Mix>,
}

impl Walker<'_, '_> {
    /// Returns whether the walk reached the end of the keyspace.
    ///
    /// Up to three groups are in flight: while the audit judges the replies of batch N's
    /// probe, Redis answers batch N+1's probe (sent as soon as N's probe brought its `SCAN`
    /// reply) and batch N's follow-up, so Redis never waits for the audit.
    pub async fn run(&mut self) -> Result<bool, ConnError> {
        let mut st = State {
            groups: std::collections::VecDeque::new(),
            count: Bytes::from(self.opts.batch.to_string()),
            getrange_end: Bytes::from(self.opts.value_cap.saturating_sub(1).to_string()),
            sent: 0,
            complete: false,
            scan_done: false,
            no_getrange: self.opts.value_cap == 0,
            mix: HashMap::new(),
        };
        let started = Instant::now();
        let mut replies = Vec::new();
        self.conn
            .push([&b"SCAN"[..], b"0", b"COUNT", &st.count[..]]);
        self.conn.submit(self.stop).await;
        st.groups.push_back(Group::Scan);
        while let Some(group) = st.groups.pop_front() {
            replies.clear();
            self.conn.recv(&mut replies).await?;
            match group {
                Group::Scan => {
                    let reply = replies.pop().unwrap_or(BytesFrame::Null);
                    self.next_batch(&mut st, reply).await?;
                }
                Group::Probe { keys, scan } => {
                    if scan {
                        let reply = replies.pop().unwrap_or(BytesFrame::Null);
                        self.next_batch(&mut st, reply).await?;
                    }
                    self.probed(&mut st, keys, &mut replies).await?;
                }
                Group::Follow { keys } => self.followed(&mut st, keys, &replies)?,
            }
            self.progress.update(self.agg.keys, started);
        }
        Ok(st.complete)
    }

    /// Sends the probe of the keys in a `SCAN` reply, with the next `SCAN`.
    async fn next_batch(&mut self, st: &mut State, reply: BytesFrame) -> Result<(), ConnError> {
        let (next, keys) = match reply {
            BytesFrame::Array(mut parts) if parts.len() == 2 => {
                let keys = match parts.pop() {
                    Some(BytesFrame::Array(k)) => k,
                    Some(other) => return Err(unexpected("SCAN", &other)),
                    None => Vec::new(),
                };
                let next = parts.pop().as_ref().and_then(bulk).cloned();
                (next, keys)
            }
            other => return Err(unexpected("SCAN", &other)),
        };
        let Some(next) = next else {
            return Err(unexpected("SCAN", &BytesFrame::Null));
        };
        if self.stop.stopped() {
            st.scan_done = true;
            return Ok(());
        }
        let mut keys: Vec<Bytes> = keys.iter().filter_map(bulk).cloned().collect();
        if &next[..] == b"0" {
            st.complete = true;
            st.scan_done = true;
        }
        if let Some(n) = self.opts.sample {
            let left = usize::try_from(n - st.sent).unwrap_or(usize::MAX);
            if keys.len() >= left {
                // Keys left out: the walk stops short of the end.
                st.complete &= keys.len() == left;
                keys.truncate(left);
                st.scan_done = true;
            }
        }
        st.sent += keys.len() as u64;
        let mut probe = Vec::with_capacity(keys.len());
        for key in keys {
            let ns = self.classifier.namespace(&key);
            let third = if !st.no_getrange && self.classifier.needs_values(ns) {
                st.mix.get(&ns).copied().unwrap_or_default().third()
            } else {
                Third::Type
            };
            self.conn.push([&b"PTTL"[..], &key]);
            self.conn.push([&b"MEMORY"[..], b"USAGE", &key]);
            match third {
                Third::Type => self.conn.push([&b"TYPE"[..], &key]),
                Third::GetRange => {
                    self.conn
                        .push([&b"GETRANGE"[..], &key, b"0", &st.getrange_end[..]])
                }
            }
            probe.push((key, ns, third));
        }
        let scan = !st.scan_done;
        if scan {
            self.conn
                .push([&b"SCAN"[..], &next, b"COUNT", &st.count[..]]);
        }
        if !self.conn.submit(self.stop).await {
            return Ok(());
        }
        st.groups.push_back(if probe.is_empty() {
            Group::Scan
        } else {
            Group::Probe { keys: probe, scan }
        });
        Ok(())
    }

    /// Judges a batch's probe replies; keys that need nothing more are counted now, the
    /// others go into the batch's follow-up.
    async fn probed(
        &mut self,
        st: &mut State,
        keys: Vec<(Bytes, NsId, Third)>,
        replies: &mut Vec<BytesFrame>,
    ) -> Result<(), ConnError> {
        let mut pending = Vec::new();
        let mut it = replies.drain(..);
        let apply = self.fix.as_deref().is_some_and(|f| f.apply);
        for (key, ns, third) in keys {
            let (Some(p), Some(m), Some(x)) = (it.next(), it.next(), it.next()) else {
                return Err(unexpected("PTTL", &BytesFrame::Null));
            };
            let pttl = match p {
                BytesFrame::Integer(-2) => {
                    self.agg.vanished += 1;
                    continue;
                }
                BytesFrame::Integer(v) => u64::try_from(v).ok(),
                ref other => return Err(unexpected("PTTL", other)),
            };
            // MEMORY USAGE can be refused (ACLs, renamed commands): the size is then
            // unknown, counted as 0 and, since the value cap cannot be checked, the value is
            // not read. Nil means the key just vanished.
            let size = match m {
                BytesFrame::Integer(v) => u64::try_from(v).ok(),
                BytesFrame::Null => {
                    self.agg.vanished += 1;
                    continue;
                }
                _ => {
                    st.no_getrange = true;
                    None
                }
            };
            let within_cap = size.is_some_and(|b| b <= self.opts.value_cap as u64);
            let needs_values = self.classifier.needs_values(ns);
            let mut kind = None;
            let mut fetch = Fetch::None;
            let mut inspection = Inspection::NotNeeded;
            let mut sensitive = Vec::new();
            match (third, x) {
                (Third::Type, BytesFrame::SimpleString(t) | BytesFrame::BulkString(t)) => {
                    if &t[..] == b"none" {
                        self.agg.vanished += 1;
                        continue;
                    }
                    if needs_values && matches!(&t[..], b"string" | b"hash") {
                        if within_cap {
                            fetch = if &t[..] == b"string" {
                                Fetch::Get
                            } else {
                                Fetch::HGetAll
                            };
                            inspection = Inspection::Inspected;
                        } else {
                            inspection = Inspection::TooLarge;
                        }
                    }
                    kind = Some(t);
                }
                (Third::Type, other) => return Err(unexpected("TYPE", &other)),
                (Third::GetRange, BytesFrame::BulkString(v)) => {
                    if within_cap {
                        inspection = Inspection::Inspected;
                        self.classifier
                            .sensitive("SET", &[b"SET", &key, &v], &mut sensitive);
                    } else {
                        inspection = Inspection::TooLarge;
                    }
                    kind = Some(STRING);
                }
                (Third::GetRange, other) => {
                    // Not a string (WRONGTYPE), or GETRANGE refused: the follow-up asks the
                    // type and reads whichever value it can be.
                    if !wrong_type(&other) {
                        st.no_getrange = true;
                    }
                    if within_cap {
                        fetch = if wrong_type(&other) {
                            Fetch::HGetAll
                        } else {
                            Fetch::Both
                        };
                    }
                }
            }
            if let Some(t) = &kind {
                st.mix.entry(ns).or_default().count(t);
            }
            let ttl = self.classifier.ttl(&key, ns, pttl);
            let mut fix = false;
            if let Some(plan) = self.fix.as_deref_mut() {
                if let Some(f) = Fix::for_key(self.classifier.policy, ns, ttl) {
                    plan.record(self.classifier.policy, ns, &key, f);
                    if apply {
                        let amount = f.ms().to_string();
                        self.conn
                            .push([&b"PEXPIRE"[..], &key, amount.as_bytes(), f.option()]);
                        fix = true;
                    }
                }
            }
            let p = Pending {
                ask_type: kind.is_none(),
                key,
                ns,
                kind,
                pttl,
                bytes: size.unwrap_or(0),
                ttl,
                fetch,
                fix,
                inspection,
                sensitive,
            };
            if p.ask_type || p.fetch != Fetch::None || p.fix {
                if p.ask_type {
                    self.conn.push([&b"TYPE"[..], &p.key]);
                }
                if p.fetch.get() {
                    self.conn.push([&b"GET"[..], &p.key]);
                }
                if p.fetch.hgetall() {
                    self.conn.push([&b"HGETALL"[..], &p.key]);
                }
                pending.push(p);
            } else {
                self.count(&p);
            }
        }
        drop(it);
        if self.conn.submit(self.stop).await {
            st.groups.push_back(Group::Follow { keys: pending });
        }
        Ok(())
    }

    /// Judges a batch's follow-up replies: per key, in order, the `PEXPIRE` fix, `TYPE`,
    /// `GET`, `HGETALL` (each only where the key asked for it).
    fn followed(
        &mut self,
        st: &mut State,
        keys: Vec<Pending>,
        replies: &[BytesFrame],
    ) -> Result<(), ConnError> {
        let mut it = replies.iter();
        let mut next = |command| {
            it.next()
                .ok_or_else(|| unexpected(command, &BytesFrame::Null))
        };
        for mut p in keys {
            if p.fix {
                let r = next("PEXPIRE")?;
                if let Some(plan) = self.fix.as_deref_mut() {
                    match r {
                        BytesFrame::Integer(1) => plan.report.changed += 1,
                        BytesFrame::Integer(_) => plan.report.unchanged += 1,
                        other => return Err(unexpected("PEXPIRE", other)),
                    }
                }
            }
            if p.ask_type {
                match next("TYPE")? {
                    BytesFrame::SimpleString(t) | BytesFrame::BulkString(t) => {
                        p.kind = Some(t.clone())
                    }
                    other => return Err(unexpected("TYPE", other)),
                }
            }
            let got = if p.fetch.get() {
                Some(next("GET")?)
            } else {
                None
            };
            let hgot = if p.fetch.hgetall() {
                Some(next("HGETALL")?)
            } else {
                None
            };
            let Some(kind) = p.kind.clone() else { continue };
            if &kind[..] == b"none" {
                self.agg.vanished += 1;
                continue;
            }
            if p.ask_type {
                st.mix.entry(p.ns).or_default().count(&kind);
                if self.classifier.needs_values(p.ns) && matches!(&kind[..], b"string" | b"hash") {
                    p.inspection = if p.fetch == Fetch::None {
                        Inspection::TooLarge
                    } else {
                        Inspection::Inspected
                    };
                }
            }
            if p.fetch != Fetch::None {
                match (&kind[..], got, hgot) {
                    (b"string", Some(BytesFrame::BulkString(v)), _) => {
                        self.classifier
                            .sensitive("SET", &[b"SET", &p.key, v], &mut p.sensitive);
                    }
                    (b"hash", _, Some(BytesFrame::Array(items))) if !items.is_empty() => {
                        let mut args: Vec<&[u8]> = Vec::with_capacity(items.len() + 2);
                        args.push(b"HSET");
                        args.push(&p.key);
                        args.extend(items.iter().filter_map(bulk).map(|b| &b[..]));
                        if args.len() == items.len() + 2 {
                            self.classifier.sensitive("HSET", &args, &mut p.sensitive);
                        }
                    }
                    // Another type (not read), or the type changed or the key vanished
                    // between the commands: not inspected.
                    _ => p.inspection = Inspection::NotNeeded,
                }
            }
            self.count(&p);
        }
        Ok(())
    }

    /// Folds one key into the aggregate.
    fn count(&mut self, p: &Pending) {
        let kind = p.kind.as_deref().map_or("(unknown)", |k| {
            std::str::from_utf8(k).unwrap_or("(binary)")
        });
        self.agg.add(&KeyObs {
            key: &p.key,
            ns: p.ns,
            kind,
            pttl: p.pttl,
            bytes: p.bytes,
            ttl: p.ttl,
            sensitive: &p.sensitive,
            inspection: p.inspection,
            refused_name: self.classifier.refuses_name(p.ns),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn example() -> std::sync::Arc<Policy> {
        let cfg = Config::parse(
            include_str!("../../config/example.yaml"),
            "example.yaml",
            &Overrides::default(),
        )
        .unwrap();
        cfg.policy.unwrap()
    }

    #[test]
    fn ttl_verdicts_follow_the_ttl_stage_when_it_clamps_and_when_it_refuses() {
        let policy = example();
        let mut c = Classifier::new(&policy);
        // session: 15m..30m, clamped
        let s = c.namespace(b"session:1");
        assert_eq!(
            c.ttl(b"session:1", s, Some(3_600_000)),
            TtlFinding::AboveMax
        );
        assert_eq!(c.ttl(b"session:1", s, Some(1_200_000)), TtlFinding::Fine);
        assert_eq!(c.ttl(b"session:1", s, Some(60_000)), TtlFinding::BelowMin);
        assert_eq!(c.ttl(b"session:1", s, None), TtlFinding::NoExpiry);
        // session_core: 15m..30m, on_violation: reject
        let core = c.namespace(b"session:core:1");
        assert_ne!(core, s);
        assert_eq!(
            c.ttl(b"session:core:1", core, Some(3_600_000)),
            TtlFinding::AboveMax
        );
        assert_eq!(
            c.ttl(b"session:core:1", core, Some(60_000)),
            TtlFinding::BelowMin
        );
        assert_eq!(
            c.ttl(b"session:core:1", core, Some(1_800_000)),
            TtlFinding::Fine
        );
        // no namespace: no bounds, but the name alone is refused
        let un = c.namespace(b"user42");
        assert_eq!(un, NS_UNMATCHED);
        assert_eq!(c.ttl(b"user42", un, None), TtlFinding::Fine);
        assert!(c.refuses_name(un));
        assert!(!c.refuses_name(s));
    }

    #[test]
    fn probes_read_values_while_strings_outweigh_the_commands_other_types_cost() {
        let mut m = Mix::default();
        assert!(
            m.third() == Third::GetRange,
            "nothing seen yet: strings assumed"
        );
        for _ in 0..3 {
            m.count(b"string");
        }
        m.count(b"hash");
        m.count(b"list");
        assert!(
            m.third() == Third::GetRange,
            "3 strings save 3, a hash and a list cost 3"
        );
        m.count(b"zset");
        assert!(m.third() == Third::Type);
    }

    #[test]
    fn sensitive_findings_use_the_namespace_rules() {
        let policy = example();
        let c = Classifier::new(&policy);
        let mut found = Vec::new();
        let doc = br#"{"a":{"dateOfBirth":"1990-01-01"},"password":"x"}"#;
        c.sensitive("SET", &[b"SET", b"user_profile:1", doc], &mut found);
        found.sort();
        assert_eq!(found, ["dateOfBirth", "password"]);
        // dateOfBirth is sensitive in user_profile only
        found.clear();
        c.sensitive("SET", &[b"SET", b"session:1", doc], &mut found);
        assert_eq!(found, ["password"]);
        found.clear();
        c.sensitive(
            "HSET",
            &[b"HSET", b"customer:1", b"token", b"t", b"name", b"n"],
            &mut found,
        );
        assert_eq!(found, ["token"]);
    }
}
