//! Request intake: every complete command in the client buffer, one by one: the policy's
//! verdict, connection-state tracking (MULTI, MONITOR, RESET, QUIT), pinning to a dedicated
//! connection, and the bytes sent upstream.

use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};

use super::modes::ReplyMode;
use super::transaction::ReadInfo;
use super::{Kind, Pending, Session, Slot, Special};
use crate::codec::{self, Argv, Request};
use crate::command::{self, traits};
use crate::metrics::{self, Outcome};
use crate::policy::{Verdict, NS_NONE, NS_UNMATCHED};
use crate::upstream::{handshake_commands, handshake_len};

/// Sent inside MULTI after a command the proxy refused: a command with the wrong number of
/// arguments, which Redis refuses while queueing (no effect) and which flags the transaction.
pub(super) const POISON: &[u8] = b"*1\r\n$3\r\nGET\r\n";

/// The answer to `SYNC`/`PSYNC`.
pub(super) const REPLICATION_REFUSED: &str = "ERR replication through respguard is not supported: \
    connect replicas and 'redis-cli --rdb' or '--replica' to Redis directly";

impl Session {
    /// Client bytes were read into the client buffer: handles every complete command, with
    /// the policy in force.
    pub(super) fn on_client_input(&mut self) {
        self.refresh_policy();
        self.process_client();
    }

    /// Once a pinning client's shared replies are all in, continues on a dedicated
    /// connection with the commands held back. True when it did (the batch is to be sent).
    pub(super) fn finish_pinning(&mut self) -> bool {
        if self.link.is_pinning() && self.pending.is_empty() && self.uout.is_empty() {
            if self.cpin.is_some() {
                self.cluster_leave_router();
            } else {
                self.link.unshare();
            }
            self.process_client();
            return true;
        }
        if self.cpin.is_some() {
            return self.cluster_step();
        }
        false
    }

    /// Hands the batch to a task-backed link (a shared connection) as one job. False when
    /// the link is not task-backed: the batch waits in the upstream buffer for the driver.
    pub(super) fn hand_over(&mut self) -> bool {
        let Some(h) = self.link.handle() else {
            return false;
        };
        if !self.uout.is_empty() {
            let first_new = self.pending.len() - self.batch_len();
            let bytes = self.uout.split().freeze();
            if !h.send(bytes, std::mem::take(&mut self.unsent)) {
                self.shared_failed(false, "shared upstream connection ended");
            } else {
                self.stamp_sent(first_new);
            }
        }
        true
    }

    pub(super) fn refresh_policy(&mut self) {
        let gen = self.shared.policy_generation();
        if gen != self.policy_gen {
            self.policy = self.shared.policy();
            self.ns_table = self.shared.namespace_table();
            self.policy_gen = gen;
            if !self.auth.rebind(self.policy.as_deref()) {
                tracing::info!(
                    "the reloaded policy removed the client's identity or one of the channels it listens to; closing"
                );
                self.closing = true;
            }
        }
    }

    /// Handles every complete command in the client buffer.
    pub(super) fn process_client(&mut self) {
        self.batch_start = Instant::now();
        self.now = self.batch_start;
        let buf = std::mem::take(&mut self.cbuf);
        let mut off = 0;
        let mut incomplete = false;
        while off < buf.len()
            && !self.closing
            && !self.link.is_pinning()
            && !self.cluster_held()
            && self.auth_hold.is_none()
        {
            let rest = &buf[off..];
            match self
                .reqscan
                .scan(rest, &self.limits, &mut self.spans, &mut self.inline_args)
            {
                Ok(Some(Request::Multibulk { len })) => {
                    let raw = &rest[..len];
                    let spans = std::mem::take(&mut self.spans);
                    let done = self.handle_recorded(Argv::new(raw, &spans), raw);
                    self.spans = spans;
                    if !done {
                        break;
                    }
                    off += len;
                }
                Ok(Some(Request::Inline { len })) => {
                    // Inline arguments are not contiguous in the input; send Redis the same
                    // command as a multibulk.
                    let mut ib = std::mem::take(&mut self.inline_buf);
                    ib.clear();
                    codec::encode_command(&mut ib, self.inline_args.iter().map(|a| a.as_slice()));
                    let mut spans = std::mem::take(&mut self.spans);
                    let mut none = Vec::new();
                    let mut done = true;
                    if let Ok(Some(Request::Multibulk { .. })) =
                        codec::scan_request(&ib, &self.limits, &mut spans, &mut none)
                    {
                        done = self.handle_recorded(Argv::new(&ib, &spans), &ib);
                    }
                    self.spans = spans;
                    self.inline_buf = ib;
                    if !done {
                        break;
                    }
                    off += len;
                }
                Ok(Some(Request::Skip { len })) => {
                    // An empty command uses up a `CLIENT REPLY SKIP`, as in Redis.
                    self.take_quiet();
                    off += len;
                }
                Ok(None) => {
                    if rest.len() > self.max_buffered {
                        self.protocol_error(
                            "ERR Protocol error: client query buffer limit exceeded",
                        );
                    }
                    incomplete = true;
                    break;
                }
                Err(e) => {
                    self.protocol_error_reply(&e.to_string(), e.reply());
                    break;
                }
            }
        }
        self.flush_run();
        self.partial_since = match self.partial_since {
            // Still the same command arriving.
            Some(since) if incomplete && off == 0 => Some(since),
            _ if incomplete => Some(self.batch_start),
            _ => None,
        };
        let mut buf = buf;
        if off >= buf.len() {
            buf.clear();
        } else {
            buf.advance(off);
        }
        self.cbuf = buf;
    }

    pub(super) fn protocol_error(&mut self, msg: &str) {
        let mut b = BytesMut::new();
        codec::encode_error(&mut b, msg);
        self.protocol_error_reply(msg, b.freeze());
    }

    /// Answers input Redis would refuse with Redis's own error reply, then closes.
    pub(super) fn protocol_error_reply(&mut self, msg: &str, reply: Bytes) {
        self.quiet = self.take_quiet();
        self.shared.metrics.protocol_errors.increment(1);
        tracing::debug!(error = msg, "client protocol error; closing");
        self.push_local(reply, Outcome::Error, None);
        self.closing = true;
    }

    /// Queues a reply the proxy makes itself, in order with upstream replies.
    pub(super) fn push_local(&mut self, bytes: Bytes, outcome: Outcome, cmd: Option<usize>) {
        let mut p = Pending::new(Kind::Local(bytes, outcome), cmd, self.batch_start);
        p.meta.quiet = self.quiet;
        p.meta.ns = self.scratch.namespace;
        p.meta.actions = self.take_actions();
        p.meta.sensitive = self.take_sensitive();
        self.pending.push_back(p);
        self.drain_locals();
    }

    pub(super) fn push(&mut self, kind: Kind, cmd: Option<usize>, blocking: bool, start: Instant) {
        let mut p = Pending::new(kind, cmd, start);
        p.meta.blocking = blocking;
        self.pending.push_back(p);
        self.unsent += 1;
    }

    /// [`Session::handle`], and what it sent recorded while a cluster transaction has no key
    /// yet (it may have to be sent again on another node).
    fn handle_recorded(&mut self, argv: Argv<'_>, raw: &[u8]) -> bool {
        if self.cpin.is_none() || !self.cluster_recording() {
            return self.handle(argv, raw);
        }
        let (mark, before) = (self.uout.len(), self.unsent);
        let done = self.handle(argv, raw);
        self.cluster_record(mark, before);
        done
    }

    /// One command: policy, connection-state tracking, and forwarding. Returns false when
    /// the command must wait: it needs a dedicated connection and shared replies are still
    /// outstanding.
    pub(super) fn handle(&mut self, argv: Argv<'_>, raw: &[u8]) -> bool {
        let start = self.batch_start;
        // Pipelines repeat the same command: one comparison instead of a table search.
        let spec = match (self.last_spec, argv.get(0)) {
            (Some(last), Some(name))
                if last.subcommands.is_empty()
                    && name.eq_ignore_ascii_case(last.name.as_bytes()) =>
            {
                Some(last)
            }
            _ => {
                let found = command::lookup(&argv);
                self.last_spec = found;
                found
            }
        };
        let cmd = spec.map(|s| s.index());
        let traits = traits(spec);
        if self.policy.as_ref().is_some_and(|p| p.clients().is_some()) {
            if let Some(done) = self.identity_gate(spec, &argv) {
                return done;
            }
        }
        if traits.special == Special::Replication {
            // After SYNC/PSYNC Redis sends an RDB payload and then a command stream, not
            // replies: nothing could be paired or checked any more, and the client would wait
            // forever. Refused at once, without touching the upstream connection.
            self.quiet = self.take_quiet();
            self.refuse(REPLICATION_REFUSED, cmd);
            return true;
        }
        if self.monitor {
            // A monitoring connection only streams; replies are not paired any more.
            self.uout.extend_from_slice(raw);
            if traits.special == Special::Reset {
                // Pairing resumes after `+RESET`: restore the proxy's authentication and
                // database, which RESET drops.
                self.send_handshake(start);
            }
            return true;
        }
        if self.link.is_shared() && !traits.shareable {
            if traits.special == Special::Quit {
                // Nothing to clean up on a shared connection: answer QUIT here.
                self.scratch.namespace = NS_NONE;
                self.scratch.clear();
                self.quiet = self.take_quiet();
                self.push_local(Bytes::from_static(b"+OK\r\n"), Outcome::Ok, cmd);
                self.closing = true;
                return true;
            }
            if self.shared.cluster().is_some() {
                // A connection of its own to the one node the state belongs to.
                if let Some(done) = self.cluster_pin(&argv, spec, traits, cmd) {
                    return done;
                }
            } else if !self.pending.is_empty() || !self.uout.is_empty() {
                // Commands already sent on the shared connection must finish first, so this
                // one runs after them.
                self.link.pin();
                return false;
            } else {
                // Pinned: from now on this client has its own upstream connection.
                self.link.unshare();
            }
        }
        if self.cpin.is_some() && !self.link.is_shared() {
            if let Some(done) = self.cluster_pinned(&argv, spec, traits, cmd) {
                return done;
            }
        }
        self.quiet = if traits.special == Special::Reset {
            // RESET turns replies back on before answering.
            self.reply_mode = ReplyMode::On;
            false
        } else {
            self.take_quiet()
        };
        let verdict = match &self.policy {
            Some(p) => p.check(&argv, spec, &mut self.scratch),
            None => {
                // No policy: no namespaces; keyed commands count as unmatched.
                self.scratch.clear();
                self.scratch.namespace = match spec {
                    Some(s) if s.has_keys() => NS_UNMATCHED,
                    _ => NS_NONE,
                };
                Verdict::Forward
            }
        };
        if traits.special == Special::ClientReply
            && matches!(verdict, Verdict::Forward | Verdict::Rewrite(_))
            && self.client_reply(&argv, cmd)
        {
            return true;
        }
        let (rewritten, tail, append) = match verdict {
            Verdict::Forward => (None, Vec::new(), Vec::new()),
            Verdict::Rewrite(rw) => (rw.command, rw.tail, rw.append),
            Verdict::Respond(bytes) => {
                if let Some(layout) = self.multi.as_mut() {
                    // Inside MULTI the client expects +QUEUED now and this reply in EXEC.
                    layout.push(Slot::Local(bytes));
                    self.push_local(Bytes::from_static(b"+QUEUED\r\n"), Outcome::Ok, cmd);
                } else {
                    self.push_local(bytes, Outcome::Ok, cmd);
                }
                return true;
            }
            Verdict::Probe { command, reply } => {
                codec::encode_command(&mut self.uout, command.iter().map(|a| a.as_ref()));
                let kind = match self.multi.as_mut() {
                    Some(layout) => {
                        // Queued: +QUEUED now, and the reply spliced into EXEC.
                        layout.push(Slot::Mapped(reply));
                        Kind::Reply
                    }
                    None => Kind::Mapped(reply),
                };
                let mut entry = Pending::new(kind, cmd, start);
                entry.meta.ns = self.scratch.namespace;
                entry.meta.actions = self.take_actions();
                entry.meta.sensitive = self.take_sensitive();
                entry.meta.queued = self.multi.is_some();
                entry.meta.quiet = self.quiet;
                self.pending.push_back(entry);
                self.unsent += 1;
                return true;
            }
            Verdict::Reject(r) => {
                self.refuse(&r.message, cmd);
                return true;
            }
        };
        let blocking = traits.blocking;
        let kind = match traits.special {
            Special::Multi => {
                if self.multi.is_none() {
                    self.multi = Some(Vec::new());
                }
                Kind::Reply
            }
            Special::Exec => match self.multi.take() {
                Some(layout) => Kind::Exec(layout, std::mem::take(&mut self.multi_specials)),
                None => Kind::Reply,
            },
            Special::Discard => {
                self.multi = None;
                Kind::Reply
            }
            sp @ (Special::Hello | Special::Monitor | Special::Pubsub) if self.multi.is_some() => {
                // Queued: the reply now is +QUEUED; the effect comes with EXEC.
                if let Some(layout) = self.multi.as_mut() {
                    let visible = layout
                        .iter()
                        .filter(|v| matches!(v, Slot::Visible(_)))
                        .count();
                    self.multi_specials.push((visible, sp));
                    layout.push(Slot::Visible(None));
                }
                Kind::Reply
            }
            Special::Hello => Kind::Hello,
            Special::Reset => {
                self.multi = None;
                Kind::Reset
            }
            Special::Quit => {
                // Redis stops reading at QUIT (even inside MULTI): so does the proxy, rather
                // than forward commands that would never be answered.
                self.closing = true;
                Kind::Quit
            }
            Special::Monitor => Kind::Monitor,
            Special::Pubsub => Kind::Pubsub,
            Special::Watch if self.cpin.is_some() && self.multi.is_none() => {
                Kind::Watch(self.cluster_watch_mark())
            }
            Special::None if self.multi.is_none() && self.filter_keys(spec).is_some() => {
                Kind::KeyFilter(self.filter_keys(spec).unwrap_or_default())
            }
            Special::None
            | Special::Watch
            | Special::Unwatch
            | Special::Replication
            | Special::ClientReply => {
                // Redis answers WATCH inside MULTI at once with an error; it is not queued.
                if let (Some(layout), true) = (self.multi.as_mut(), traits.queued_in_multi) {
                    layout.push(Slot::Visible(None));
                }
                Kind::Reply
            }
        };
        let is_reset = matches!(kind, Kind::Reset);
        let mark = self.uout.len();
        let appended = append.len();
        match rewritten {
            Some(args) => {
                // Encoded straight into the upstream buffer: no temporary copy.
                codec::encode_command(&mut self.uout, args.iter().map(|a| a.as_ref()));
            }
            None if tail.is_empty() => self.send(raw),
            None => {
                // The client's arguments stay as they were; only the count and the added
                // arguments are written anew.
                let header_end = codec::multibulk_args_at(raw);
                let mut ib = [0u8; 20];
                self.uout.extend_from_slice(b"*");
                self.uout
                    .extend_from_slice(codec::fmt_int(&mut ib, (argv.len() + tail.len()) as i64));
                self.uout.extend_from_slice(b"\r\n");
                self.uout.extend_from_slice(&raw[header_end..]);
                codec::encode_args(&mut self.uout, tail.iter().map(|a| a.as_ref()));
            }
        }
        let mut entry = Pending::new(kind, cmd, start);
        entry.meta.quiet = self.quiet;
        // Queued in MULTI, a blocking command does not block.
        entry.meta.blocking = blocking && self.multi.is_none();
        entry.meta.nkeys = argv.len().saturating_sub(1) as u32;
        entry.meta.ns = self.scratch.namespace;
        entry.meta.actions = self.take_actions();
        entry.meta.sensitive = self.take_sensitive();
        if self.scratch.key_ns.len() > 1 && metrics::counts_per_key(cmd) {
            entry.meta.key_ns = Some(self.scratch.key_ns.as_slice().into());
        }
        if let (Some(layout), Kind::Reply) = (self.multi.as_mut(), &entry.kind) {
            entry.meta.queued = true;
            if metrics::is_read(cmd) {
                if let Some(Slot::Visible(info)) = layout.last_mut() {
                    *info = Some(Box::new(ReadInfo {
                        cmd,
                        ns: entry.meta.ns,
                        key_ns: entry.meta.key_ns.clone(),
                        nkeys: entry.meta.nkeys,
                    }));
                }
            }
        }
        let monitoring = matches!(entry.kind, Kind::Monitor) && self.multi.is_none();
        self.pending.push_back(entry);
        self.unsent += 1;
        if monitoring {
            // Commands after MONITOR in the same batch are not answered in pairs any more.
            self.monitor = true;
            self.monitor_owed = self
                .pending
                .iter()
                .filter(|p| !matches!(p.kind, Kind::Local(..)))
                .count();
        }
        for extra in append {
            codec::encode_command(&mut self.uout, extra.iter().map(|a| a.as_ref()));
            if let Some(layout) = self.multi.as_mut() {
                layout.push(Slot::Hidden);
            }
            self.push(Kind::Hidden, None, false, start);
        }
        if blocking && self.multi.is_none() && self.cpin.is_some() {
            self.cluster_blocking_sent(mark, 1 + appended);
        }
        if is_reset {
            // RESET drops the connection's authentication and database: restore the proxy's.
            self.send_handshake(start);
        }
        true
    }

    /// Answers a command the proxy refuses with an error; inside MULTI the transaction then
    /// aborts at EXEC, as it does in Redis after a command it refuses while queueing.
    pub(super) fn refuse(&mut self, message: &str, cmd: Option<usize>) {
        let mut b = BytesMut::new();
        codec::encode_error(&mut b, message);
        self.push_local(b.freeze(), Outcome::Rejected, cmd);
        if self.multi.is_some() {
            // A command with the wrong number of arguments: Redis refuses it while queueing
            // (no effect, not shown by MONITOR) and flags the transaction, so EXEC, forwarded
            // as the client sent it, gets Redis's own EXECABORT.
            self.send(POISON);
            self.push(Kind::Poison, None, false, self.batch_start);
        }
    }

    pub(super) fn send_handshake(&mut self, start: Instant) {
        let cfg = self.shared.config();
        let hs = handshake_commands(&cfg.upstream);
        if !hs.is_empty() {
            self.send(&hs);
            for _ in 0..handshake_len(&cfg.upstream) {
                self.push(Kind::Hidden, None, false, start);
            }
        }
    }

    pub(super) fn send(&mut self, bytes: &[u8]) {
        self.uout.extend_from_slice(bytes);
    }

    /// How many entries at the back of the queue belong to the batch just processed.
    pub(super) fn batch_len(&self) -> usize {
        self.pending
            .iter()
            .rev()
            .take_while(|p| p.meta.start == self.batch_start && p.meta.sent.is_none())
            .count()
    }

    /// Marks when the batch went upstream, for the upstream share of the latency.
    pub(super) fn stamp_sent(&mut self, first_new: usize) {
        if first_new >= self.pending.len() {
            return;
        }
        let now = Instant::now();
        for p in self.pending.range_mut(first_new..) {
            // Replies the proxy made itself never went upstream.
            if !matches!(p.kind, Kind::Local(..)) {
                p.meta.sent = Some(now);
            }
        }
    }
}
