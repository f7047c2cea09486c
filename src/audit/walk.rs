//! The keyspace walk: `SCAN` batch by batch (never `KEYS`), and per batch one pipeline of
//! `TYPE`, `PTTL` and `MEMORY USAGE` for every key, one of `GET`/`HGETALL` for the values the
//! sensitive rules need (under a size cap), and with `--fix-ttl --apply` one of the `PEXPIRE`
//! fixes. Each key is judged by the proxy's own policy engine ([`Classifier`]) and folded into
//! the [`Aggregate`]; nothing per key outlives its batch.

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

/// One key between the pipelines of its batch.
struct Pending {
    key: Bytes,
    ns: NsId,
    kind: Bytes,
    pttl: Option<u64>,
    bytes: u64,
    fetch: Fetch,
    inspection: Inspection,
    sensitive: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fetch {
    None,
    Get,
    HGetAll,
}

/// Walks the keyspace until the end, `--sample` keys, or a stop request.
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

impl Walker<'_, '_> {
    /// Returns whether the walk reached the end of the keyspace.
    pub async fn run(&mut self) -> Result<bool, ConnError> {
        let mut cursor = Bytes::from_static(b"0");
        let mut replies = Vec::new();
        let count = self.opts.batch.to_string();
        let started = Instant::now();
        let mut prefetched: Option<BytesFrame> = None;
        loop {
            if self.stop.stopped() {
                return Ok(false);
            }
            if self.opts.sample.is_some_and(|n| self.agg.keys >= n) {
                return Ok(false);
            }
            let reply = match prefetched.take() {
                Some(r) => r,
                None => {
                    replies.clear();
                    self.conn
                        .push([&b"SCAN"[..], &cursor, b"COUNT", count.as_bytes()]);
                    self.conn.send(&mut replies, self.stop).await?;
                    replies.pop().unwrap_or(BytesFrame::Null)
                }
            };
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
            let mut keys: Vec<Bytes> = keys.iter().filter_map(bulk).cloned().collect();
            let mut last_sampled = false;
            if let Some(n) = self.opts.sample {
                let left = usize::try_from(n - self.agg.keys).unwrap_or(usize::MAX);
                last_sampled = keys.len() >= left;
                keys.truncate(left);
            }
            // The next SCAN rides in this batch's first pipeline: one round trip less.
            let ahead = (&next[..] != b"0" && !last_sampled).then_some(&next);
            prefetched = self
                .batch(keys, ahead, count.as_bytes(), &mut replies)
                .await?;
            self.progress.update(self.agg.keys, started);
            if &next[..] == b"0" {
                return Ok(true);
            }
            cursor = next;
        }
    }

    /// Judges one batch of keys; with `scan_next`, also sends that SCAN and returns its reply.
    async fn batch(
        &mut self,
        keys: Vec<Bytes>,
        scan_next: Option<&Bytes>,
        count: &[u8],
        replies: &mut Vec<BytesFrame>,
    ) -> Result<Option<BytesFrame>, ConnError> {
        if keys.is_empty() {
            return Ok(None);
        }
        // 1. what each key is
        for k in &keys {
            self.conn.push([&b"TYPE"[..], k]);
            self.conn.push([&b"PTTL"[..], k]);
            self.conn.push([&b"MEMORY"[..], b"USAGE", k]);
        }
        if let Some(cursor) = scan_next {
            self.conn.push([&b"SCAN"[..], cursor, b"COUNT", count]);
        }
        replies.clear();
        self.conn.send(replies, self.stop).await?;
        let scan_reply = match scan_next {
            Some(_) => replies.pop(),
            None => None,
        };
        let mut pending = Vec::with_capacity(keys.len());
        let mut it = replies.drain(..);
        for key in keys {
            let (Some(t), Some(p), Some(m)) = (it.next(), it.next(), it.next()) else {
                return Err(unexpected("TYPE", &BytesFrame::Null));
            };
            let kind = match &t {
                BytesFrame::SimpleString(s) | BytesFrame::BulkString(s) => s.clone(),
                other => return Err(unexpected("TYPE", other)),
            };
            let pttl = match p {
                BytesFrame::Integer(-2) => None,
                BytesFrame::Integer(v) if v < 0 => None,
                BytesFrame::Integer(v) => Some(v as u64),
                ref other => return Err(unexpected("PTTL", other)),
            };
            if &kind[..] == b"none" || matches!(p, BytesFrame::Integer(-2)) {
                self.agg.vanished += 1;
                continue;
            }
            // MEMORY USAGE can be refused (ACLs, renamed commands) or nil for a key that
            // just vanished: the size is then unknown, counted as 0 and, since the value cap
            // cannot be checked, the value is not read.
            let size = match m {
                BytesFrame::Integer(v) => u64::try_from(v).ok(),
                _ => None,
            };
            let bytes = size.unwrap_or(0);
            let ns = self.classifier.namespace(&key);
            let fetch = if !self.classifier.needs_values(ns) {
                Fetch::None
            } else {
                match &kind[..] {
                    b"string" => Fetch::Get,
                    b"hash" => Fetch::HGetAll,
                    _ => Fetch::None,
                }
            };
            let (fetch, inspection) = match fetch {
                Fetch::None => (Fetch::None, Inspection::NotNeeded),
                _ if size.is_none_or(|b| b > self.opts.value_cap as u64) => {
                    (Fetch::None, Inspection::TooLarge)
                }
                f => (f, Inspection::Inspected),
            };
            pending.push(Pending {
                key,
                ns,
                kind,
                pttl,
                bytes,
                fetch,
                inspection,
                sensitive: Vec::new(),
            });
        }
        drop(it);

        // 2. values the sensitive rules need
        for p in &pending {
            match p.fetch {
                Fetch::Get => self.conn.push([&b"GET"[..], &p.key]),
                Fetch::HGetAll => self.conn.push([&b"HGETALL"[..], &p.key]),
                Fetch::None => {}
            }
        }
        if self.conn.pending() > 0 {
            replies.clear();
            self.conn.send(replies, self.stop).await?;
            let mut it = replies.iter();
            for p in pending.iter_mut() {
                if p.fetch == Fetch::None {
                    continue;
                }
                let Some(reply) = it.next() else { break };
                match (p.fetch, reply) {
                    (Fetch::Get, BytesFrame::BulkString(v)) => {
                        self.classifier
                            .sensitive("SET", &[b"SET", &p.key, v], &mut p.sensitive);
                    }
                    (Fetch::HGetAll, BytesFrame::Array(items)) if !items.is_empty() => {
                        let mut args: Vec<&[u8]> = Vec::with_capacity(items.len() + 2);
                        args.push(b"HSET");
                        args.push(&p.key);
                        args.extend(items.iter().filter_map(bulk).map(|b| &b[..]));
                        if args.len() == items.len() + 2 {
                            self.classifier.sensitive("HSET", &args, &mut p.sensitive);
                        }
                    }
                    // Changed type or vanished between the pipelines: not inspected.
                    _ => p.inspection = Inspection::NotNeeded,
                }
            }
        }

        // 3. verdicts, and the fixes
        let mut fixes_sent = 0;
        for p in &pending {
            let ttl = self.classifier.ttl(&p.key, p.ns, p.pttl);
            let kind = std::str::from_utf8(&p.kind).unwrap_or("(binary)");
            self.agg.add(&KeyObs {
                key: &p.key,
                ns: p.ns,
                kind,
                pttl: p.pttl,
                bytes: p.bytes,
                ttl,
                sensitive: &p.sensitive,
                inspection: p.inspection,
                refused_name: self.classifier.refuses_name(p.ns),
            });
            if let Some(plan) = self.fix.as_deref_mut() {
                if let Some(fix) = Fix::for_key(self.classifier.policy, p.ns, ttl) {
                    plan.record(self.classifier.policy, p.ns, &p.key, fix);
                    if plan.apply {
                        let amount = fix.ms().to_string();
                        self.conn
                            .push([&b"PEXPIRE"[..], &p.key, amount.as_bytes(), fix.option()]);
                        fixes_sent += 1;
                    }
                }
            }
        }
        if fixes_sent > 0 {
            replies.clear();
            self.conn.send(replies, self.stop).await?;
            if let Some(plan) = self.fix.as_deref_mut() {
                for r in replies.iter() {
                    match r {
                        BytesFrame::Integer(1) => plan.report.changed += 1,
                        BytesFrame::Integer(_) => plan.report.unchanged += 1,
                        other => return Err(unexpected("PEXPIRE", other)),
                    }
                }
            }
        }
        Ok(scan_reply)
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
