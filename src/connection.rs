//! One client connection: reads commands, runs the policy, forwards to its own upstream
//! connection, and pairs every reply with the command it answers.
//!
//! The task owns four buffers (client in/out, upstream in/out) and waits on readiness of both
//! sockets in one `select!`. Everything already buffered is handled in one pass, so a pipeline
//! of hundreds of commands costs one read and one write each way, not one syscall per command.
//!
//! Pairing is a FIFO of [`Pending`] entries, one per command sent upstream (plus entries the
//! proxy answers itself, kept in the same FIFO so replies stay in order). Frames that answer no
//! command (RESP3 pushes, RESP2 pub/sub messages, `MONITOR` output) are recognised and passed
//! through without consuming an entry. If pairing could ever be wrong (the upstream breaks
//! mid-request), the client is disconnected rather than sent a reply for another command.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::codec::{self, Argv, Limits, ReplyFrame, ReplyScanner, Request, Span};
use crate::command::{self, CommandSpec, CMD_BLOCKING};
use crate::listener::Shared;
use crate::metrics::Outcome;
use crate::policy::{Policy, Scratch, Verdict};
use crate::upstream::{handshake_commands, handshake_len, Upstream, UpstreamError};

/// Stop reading more commands while this much is waiting to be written either way.
const HIGH_WATER: usize = 4 * 1024 * 1024;
/// Stop reading more commands while this many replies are outstanding.
const MAX_PENDING: usize = 64 * 1024;
/// Read size; larger frames grow the buffer as needed.
const READ_CHUNK: usize = 16 * 1024;

/// What the reply to a command means for the connection.
#[derive(Debug)]
enum Kind {
    /// An ordinary command: forward its reply.
    Reply,
    /// Sent by the proxy (policy append, handshake after RESET): swallow its reply.
    Hidden,
    /// Answered by the proxy: these bytes go to the client when the entry reaches the front.
    Local(Bytes, Outcome),
    /// A (un)subscribe command: its reply may come as a pub/sub confirmation frame.
    Pubsub,
    Monitor,
    Hello,
    Reset,
    Quit,
    /// `EXEC`: `visible[i]` says whether element `i` of the reply array is the client's.
    Exec(Vec<bool>),
}

#[derive(Debug)]
struct Pending {
    kind: Kind,
    /// Command-table row, for metrics.
    cmd: Option<usize>,
    /// Blocking commands are exempt from the upstream read timeout.
    blocking: bool,
    start: Instant,
}

/// Connection-level behaviour of the few commands that change how replies are paired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Special {
    None,
    Multi,
    Exec,
    Discard,
    Hello,
    Reset,
    Quit,
    Monitor,
    Pubsub,
}

fn special(spec: Option<&'static CommandSpec>) -> Special {
    let Some(spec) = spec else {
        return Special::None;
    };
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
        _ => Special::None,
    }
}

/// Kinds of pub/sub frames Redis sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PubsubFrame {
    Message,
    /// Confirmation of (un)subscribing; `shard` for the `S` family; the subscription count.
    Confirm {
        shard: bool,
        count: Option<i64>,
    },
}

/// Recognises a pub/sub frame: an array or push whose first element names its kind.
fn pubsub_frame(frame: &[u8], limits: &Limits) -> Option<PubsubFrame> {
    let mut scanner = ReplyScanner::new();
    let header_end = memchr::memchr(b'\n', frame)? + 1;
    let first = scanner.scan(&frame[header_end..], limits).ok()??;
    if first.kind != b'$' && first.kind != b'+' {
        return None;
    }
    let fb = &frame[header_end..header_end + first.len];
    let name_start = memchr::memchr(b'\n', fb)? + 1;
    let name = fb.get(name_start..fb.len().saturating_sub(2))?;
    let lower = |s: &[u8], t: &str| s.eq_ignore_ascii_case(t.as_bytes());
    if lower(name, "message") || lower(name, "pmessage") || lower(name, "smessage") {
        return Some(PubsubFrame::Message);
    }
    let shard = lower(name, "ssubscribe") || lower(name, "sunsubscribe");
    let confirm = shard
        || lower(name, "subscribe")
        || lower(name, "psubscribe")
        || lower(name, "unsubscribe")
        || lower(name, "punsubscribe");
    if !confirm {
        return None;
    }
    // The count is the third element: skip the channel, read the integer.
    let second_at = header_end + first.len;
    let second = scanner.scan(&frame[second_at..], limits).ok()??;
    let third_at = second_at + second.len;
    let third = frame.get(third_at..)?;
    let count = if third.first() == Some(&b':') {
        let eol = memchr::memchr(b'\r', third)?;
        std::str::from_utf8(&third[1..eol]).ok()?.parse().ok()
    } else {
        None
    };
    Some(PubsubFrame::Confirm { shard, count })
}

/// What the client gets of one upstream frame.
enum Action {
    Forward,
    Drop,
    Replace(BytesMut),
}

/// Why the connection loop ended, for logs.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("client i/o: {0}")]
    Client(#[source] io::Error),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// Per-connection state. Sockets live outside it so `select!` can borrow them while the
/// handlers mutate the state.
struct Conn {
    shared: Arc<Shared>,
    limits: Limits,
    max_buffered: usize,
    cbuf: BytesMut,
    cout: BytesMut,
    ubuf: BytesMut,
    uout: BytesMut,
    pending: VecDeque<Pending>,
    spans: Vec<Span>,
    inline_args: Vec<Vec<u8>>,
    inline_buf: BytesMut,
    scratch: Scratch,
    scanner: ReplyScanner,
    policy: Option<Arc<Policy>>,
    policy_gen: u64,
    ever_connected: bool,
    resp3: bool,
    subs: i64,
    shard_subs: i64,
    monitor: bool,
    /// `Some` between MULTI and EXEC/DISCARD: visibility of each queued command's reply.
    multi: Option<Vec<bool>>,
    /// A command inside MULTI was refused by the proxy: EXEC must abort, as Redis would.
    multi_poisoned: bool,
    /// Close once everything owed to the client is written.
    closing: bool,
}

/// Serves one accepted client until it disconnects, the upstream fails, or shutdown drains it.
pub async fn serve(client: TcpStream, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let _ = client.set_nodelay(true);
    let cfg = shared.config();
    let limits = cfg.limits;
    let mut conn = Conn {
        limits,
        max_buffered: cfg.max_buffered_bytes,
        cbuf: BytesMut::new(),
        cout: BytesMut::new(),
        ubuf: BytesMut::new(),
        uout: BytesMut::new(),
        pending: VecDeque::new(),
        spans: Vec::new(),
        inline_args: Vec::new(),
        inline_buf: BytesMut::new(),
        scratch: Scratch::default(),
        scanner: ReplyScanner::new(),
        policy: None,
        policy_gen: u64::MAX,
        ever_connected: false,
        resp3: false,
        subs: 0,
        shard_subs: 0,
        monitor: false,
        multi: None,
        multi_poisoned: false,
        closing: false,
        shared,
    };
    let mut upstream = match Upstream::connect(&cfg.upstream, &limits).await {
        Ok(u) => {
            conn.ever_connected = true;
            Some(u)
        }
        Err(e) => {
            conn.shared.metrics.upstream_error(e.kind());
            tracing::warn!(error = %e, "upstream connect failed; commands will get errors until it is back");
            None
        }
    };
    let read_timeout = cfg.upstream.read_timeout;
    drop(cfg);
    if let Err(e) = conn
        .run(&client, &mut upstream, &mut shutdown, read_timeout)
        .await
    {
        tracing::debug!(error = %e, "connection ended");
    }
}

impl Conn {
    async fn run(
        &mut self,
        client: &TcpStream,
        upstream: &mut Option<Upstream>,
        shutdown: &mut watch::Receiver<bool>,
        read_timeout: Duration,
    ) -> Result<(), ConnError> {
        let mut draining = *shutdown.borrow();
        let mut client_eof = false;
        loop {
            if self.closing || client_eof || draining {
                let owed = !self.pending.is_empty() && !client_eof && !self.closing;
                if self.cout.is_empty() && !owed {
                    return Ok(());
                }
                if client_eof {
                    // Nobody is left to read the replies.
                    return Ok(());
                }
            }
            let read_client = !client_eof
                && !self.closing
                && !draining
                && self.uout.len() < HIGH_WATER
                && self.cout.len() < HIGH_WATER
                && self.pending.len() < MAX_PENDING;
            let read_up = upstream.is_some() && self.cout.len() < HIGH_WATER;
            let write_up = upstream.is_some() && !self.uout.is_empty();
            let write_client = !self.cout.is_empty();
            let deadline = self.read_deadline(read_timeout, upstream.is_some());

            tokio::select! {
                r = client.readable(), if read_client => {
                    r.map_err(ConnError::Client)?;
                    self.cbuf.reserve(READ_CHUNK);
                    match client.try_read_buf(&mut self.cbuf) {
                        Ok(0) => client_eof = true,
                        Ok(_) => {
                            self.refresh_policy();
                            self.process_client();
                            if !self.uout.is_empty() && upstream.is_none() {
                                self.reconnect(upstream).await;
                            }
                            if let Some(up) = upstream.as_ref() {
                                if let Err(e) = flush_upstream(up, &mut self.uout) {
                                    self.upstream_failed(upstream, e.into());
                                }
                            }
                            flush_client(client, &mut self.cout).map_err(ConnError::Client)?;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(ConnError::Client(e)),
                    }
                }
                r = async { match upstream.as_ref() { Some(u) => u.readable().await, None => std::future::pending().await } }, if read_up => {
                    let res = match (r, upstream.as_ref()) {
                        (Err(e), _) => Err(UpstreamError::Io(e)),
                        (Ok(()), Some(up)) => {
                            self.ubuf.reserve(READ_CHUNK);
                            match up.try_read_buf(&mut self.ubuf) {
                                Ok(0) => Err(UpstreamError::Closed),
                                Ok(_) => self.process_upstream(),
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                                Err(e) => Err(UpstreamError::Io(e)),
                            }
                        }
                        (Ok(()), None) => Ok(()),
                    };
                    if let Err(e) = res {
                        self.upstream_failed(upstream, e);
                    }
                    flush_client(client, &mut self.cout).map_err(ConnError::Client)?;
                }
                r = async { match upstream.as_ref() { Some(u) => u.writable().await, None => std::future::pending().await } }, if write_up => {
                    let res = r.and_then(|()| match upstream.as_ref() {
                        Some(up) => flush_upstream(up, &mut self.uout),
                        None => Ok(()),
                    });
                    if let Err(e) = res {
                        self.upstream_failed(upstream, e.into());
                        flush_client(client, &mut self.cout).map_err(ConnError::Client)?;
                    }
                }
                r = client.writable(), if write_client => {
                    r.map_err(ConnError::Client)?;
                    flush_client(client, &mut self.cout).map_err(ConnError::Client)?;
                }
                _ = shutdown.changed(), if !draining => {
                    draining = true;
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.upstream_failed(upstream, UpstreamError::ReadTimeout(read_timeout.as_millis()));
                    flush_client(client, &mut self.cout).map_err(ConnError::Client)?;
                }
            }
        }
    }

    /// When the oldest outstanding non-blocking command times out, if a timeout is set.
    fn read_deadline(&self, timeout: Duration, connected: bool) -> Option<tokio::time::Instant> {
        if timeout.is_zero() || !connected || self.monitor || self.subs > 0 || self.shard_subs > 0 {
            return None;
        }
        let front = self
            .pending
            .iter()
            .find(|p| !matches!(p.kind, Kind::Local(..)))?;
        if front.blocking {
            return None;
        }
        Some(tokio::time::Instant::from_std(front.start + timeout))
    }

    fn refresh_policy(&mut self) {
        let gen = self.shared.policy_generation();
        if gen != self.policy_gen {
            self.policy = self.shared.policy();
            self.policy_gen = gen;
        }
    }

    /// Handles every complete command in the client buffer.
    fn process_client(&mut self) {
        let buf = std::mem::take(&mut self.cbuf);
        let mut off = 0;
        while off < buf.len() && !self.closing {
            let rest = &buf[off..];
            match codec::scan_request(rest, &self.limits, &mut self.spans, &mut self.inline_args) {
                Ok(Some(Request::Multibulk { len })) => {
                    let raw = &rest[..len];
                    let spans = std::mem::take(&mut self.spans);
                    self.handle(Argv::new(raw, &spans), raw);
                    self.spans = spans;
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
                    if let Ok(Some(Request::Multibulk { .. })) =
                        codec::scan_request(&ib, &self.limits, &mut spans, &mut none)
                    {
                        self.handle(Argv::new(&ib, &spans), &ib);
                    }
                    self.spans = spans;
                    self.inline_buf = ib;
                    off += len;
                }
                Ok(Some(Request::Skip { len })) => off += len,
                Ok(None) => {
                    if rest.len() > self.max_buffered {
                        self.protocol_error(
                            "ERR Protocol error: client query buffer limit exceeded",
                        );
                    }
                    break;
                }
                Err(e) => {
                    self.protocol_error(&format!("ERR {e}"));
                    break;
                }
            }
        }
        let mut buf = buf;
        if off >= buf.len() {
            buf.clear();
        } else {
            buf.advance(off);
        }
        self.cbuf = buf;
    }

    fn protocol_error(&mut self, msg: &str) {
        self.shared.metrics.protocol_errors.increment(1);
        tracing::debug!(error = msg, "client protocol error; closing");
        let mut b = BytesMut::new();
        codec::encode_error(&mut b, msg);
        self.push_local(b.freeze(), Outcome::Error, None);
        self.closing = true;
    }

    /// Queues a reply the proxy makes itself, in order with upstream replies.
    fn push_local(&mut self, bytes: Bytes, outcome: Outcome, cmd: Option<usize>) {
        self.pending.push_back(Pending {
            kind: Kind::Local(bytes, outcome),
            cmd,
            blocking: false,
            start: Instant::now(),
        });
        self.drain_locals();
    }

    fn push(&mut self, kind: Kind, cmd: Option<usize>, blocking: bool, start: Instant) {
        self.pending.push_back(Pending {
            kind,
            cmd,
            blocking,
            start,
        });
    }

    /// One command: policy, connection-state tracking, and forwarding.
    fn handle(&mut self, argv: Argv<'_>, raw: &[u8]) {
        let start = Instant::now();
        let spec = command::lookup(&argv);
        let cmd = spec.map(|s| s.index());
        if self.monitor {
            // A monitoring connection only streams; replies are not paired any more.
            self.uout.extend_from_slice(raw);
            return;
        }
        let verdict = match &self.policy {
            Some(p) => p.check(&argv, spec, &mut self.scratch),
            None => Verdict::Forward,
        };
        let (rewritten, append) = match verdict {
            Verdict::Forward => (None, Vec::new()),
            Verdict::Rewrite(rw) => (rw.command, rw.append),
            Verdict::Respond(bytes) => {
                self.push_local(bytes, Outcome::Ok, cmd);
                return;
            }
            Verdict::Reject(r) => {
                let mut b = BytesMut::new();
                codec::encode_error(&mut b, &r.message);
                if self.multi.is_some() {
                    self.multi_poisoned = true;
                }
                self.push_local(b.freeze(), Outcome::Rejected, cmd);
                return;
            }
        };
        let blocking = spec.is_some_and(|s| s.is(CMD_BLOCKING));
        let kind = match special(spec) {
            Special::Multi => {
                if self.multi.is_none() {
                    self.multi = Some(Vec::new());
                    self.multi_poisoned = false;
                }
                Kind::Reply
            }
            Special::Exec => match self.multi.take() {
                Some(_) if self.multi_poisoned => {
                    // Redis aborts a transaction with a refused command; do the same, and
                    // tell Redis to drop what it queued.
                    self.multi_poisoned = false;
                    self.send(&encode(&[b"DISCARD"]));
                    self.push(Kind::Hidden, None, false, start);
                    self.push_local(
                        Bytes::from_static(
                            b"-EXECABORT Transaction discarded because of previous errors.\r\n",
                        ),
                        Outcome::Error,
                        cmd,
                    );
                    return;
                }
                Some(layout) => Kind::Exec(layout),
                None => Kind::Reply,
            },
            Special::Discard => {
                self.multi = None;
                self.multi_poisoned = false;
                Kind::Reply
            }
            Special::Hello => Kind::Hello,
            Special::Reset => {
                self.multi = None;
                self.multi_poisoned = false;
                Kind::Reset
            }
            Special::Quit => Kind::Quit,
            Special::Monitor => Kind::Monitor,
            Special::Pubsub => Kind::Pubsub,
            Special::None => {
                if let Some(layout) = self.multi.as_mut() {
                    layout.push(true);
                }
                Kind::Reply
            }
        };
        let is_reset = matches!(kind, Kind::Reset);
        match rewritten {
            Some(args) => {
                let mut b = BytesMut::new();
                codec::encode_command(&mut b, args.iter().map(|a| a.as_ref()));
                self.send(&b);
            }
            None => self.send(raw),
        }
        self.push(kind, cmd, blocking, start);
        for extra in append {
            let mut b = BytesMut::new();
            codec::encode_command(&mut b, extra.iter().map(|a| a.as_ref()));
            self.send(&b);
            if let Some(layout) = self.multi.as_mut() {
                layout.push(false);
            }
            self.push(Kind::Hidden, None, false, start);
        }
        if is_reset {
            // RESET drops the connection's authentication and database: restore the proxy's.
            let cfg = self.shared.config();
            let hs = handshake_commands(&cfg.upstream);
            if !hs.is_empty() {
                self.send(&hs);
                for _ in 0..handshake_len(&cfg.upstream) {
                    self.push(Kind::Hidden, None, false, start);
                }
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.uout.extend_from_slice(bytes);
    }

    /// Connects an upstream that was down; on failure every command of this batch gets the
    /// error, and the client may try again later.
    async fn reconnect(&mut self, upstream: &mut Option<Upstream>) {
        if self.ever_connected {
            return;
        }
        let cfg = self.shared.config();
        match Upstream::connect(&cfg.upstream, &self.limits).await {
            Ok(u) => {
                self.ever_connected = true;
                *upstream = Some(u);
            }
            Err(e) => {
                self.shared.metrics.upstream_error(e.kind());
                tracing::warn!(error = %e, "upstream unavailable");
                self.uout.clear();
                self.multi = None;
                self.fail_pending(&e.to_string());
            }
        }
    }

    /// Answers every outstanding command with an error naming the cause.
    fn fail_pending(&mut self, cause: &str) {
        let msg = format!("ERR {cause}");
        let mut err = BytesMut::new();
        codec::encode_error(&mut err, &msg);
        let err = err.freeze();
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            match p.kind {
                Kind::Local(b, outcome) => {
                    self.cout.extend_from_slice(&b);
                    self.shared
                        .metrics
                        .command_done(p.cmd, outcome, p.start.elapsed());
                }
                Kind::Hidden => {}
                _ => {
                    self.cout.extend_from_slice(&err);
                    self.shared
                        .metrics
                        .command_done(p.cmd, Outcome::Error, p.start.elapsed());
                }
            }
        }
    }

    /// The upstream broke: answer what is outstanding with the error and close the client,
    /// because the connection state it built up is gone.
    fn upstream_failed(&mut self, upstream: &mut Option<Upstream>, e: UpstreamError) {
        self.shared.metrics.upstream_error(e.kind());
        if self.pending.is_empty() {
            tracing::debug!(error = %e, "upstream closed an idle connection");
        } else {
            tracing::warn!(error = %e, outstanding = self.pending.len(), "upstream failed mid-request");
        }
        *upstream = None;
        self.uout.clear();
        self.fail_pending(&e.to_string());
        self.closing = true;
    }

    /// Handles every complete reply in the upstream buffer.
    fn process_upstream(&mut self) -> Result<(), UpstreamError> {
        let buf = std::mem::take(&mut self.ubuf);
        let mut off = 0;
        // Replies forwarded unchanged are copied to the client buffer in one run.
        let mut run_start = 0;
        let mut result = Ok(());
        while off < buf.len() {
            let rest = &buf[off..];
            let frame = match self.scanner.scan(rest, &self.limits) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    if rest.len() > self.max_buffered {
                        result = Err(UpstreamError::Protocol(
                            codec::ProtocolError::InvalidBulkLength,
                        ));
                    }
                    break;
                }
                Err(e) => {
                    result = Err(UpstreamError::Protocol(e));
                    break;
                }
            };
            let bytes = &rest[..frame.len];
            match self.on_reply(bytes, frame) {
                Action::Forward => {}
                Action::Drop => {
                    self.cout.extend_from_slice(&buf[run_start..off]);
                    run_start = off + frame.len;
                }
                Action::Replace(out) => {
                    self.cout.extend_from_slice(&buf[run_start..off]);
                    self.cout.extend_from_slice(&out);
                    run_start = off + frame.len;
                }
            }
            off += frame.len;
            self.drain_locals_into_run(&buf, &mut run_start, off);
        }
        self.cout.extend_from_slice(&buf[run_start..off]);
        let mut buf = buf;
        if off >= buf.len() {
            buf.clear();
        } else {
            buf.advance(off);
        }
        self.ubuf = buf;
        result
    }

    /// Emits proxy-made replies that have reached the front, keeping the copy run in order.
    fn drain_locals_into_run(&mut self, buf: &[u8], run_start: &mut usize, off: usize) {
        if matches!(
            self.pending.front(),
            Some(Pending {
                kind: Kind::Local(..),
                ..
            })
        ) {
            self.cout.extend_from_slice(&buf[*run_start..off]);
            *run_start = off;
            self.drain_locals();
        }
    }

    fn drain_locals(&mut self) {
        while let Some(Pending {
            kind: Kind::Local(..),
            ..
        }) = self.pending.front()
        {
            if let Some(Pending {
                kind: Kind::Local(b, outcome),
                cmd,
                start,
                ..
            }) = self.pending.pop_front()
            {
                self.cout.extend_from_slice(&b);
                self.shared
                    .metrics
                    .command_done(cmd, outcome, start.elapsed());
            }
        }
    }

    /// Pairs one upstream frame and says what the client gets of it.
    fn on_reply(&mut self, bytes: &[u8], f: ReplyFrame) -> Action {
        if self.monitor {
            if bytes == b"+RESET\r\n" {
                self.reset_state();
            }
            return Action::Forward;
        }
        let front_pubsub = matches!(
            self.pending.front(),
            Some(Pending {
                kind: Kind::Pubsub,
                ..
            })
        );
        let maybe_pubsub = f.kind == b'>'
            || (f.kind == b'*'
                && !self.resp3
                && (front_pubsub || self.subs > 0 || self.shard_subs > 0));
        if maybe_pubsub {
            if let Some(ps) = pubsub_frame(&bytes[f.value_at..], &self.limits) {
                if let PubsubFrame::Confirm { shard, count } = ps {
                    if let Some(c) = count {
                        if shard {
                            self.shard_subs = c;
                        } else {
                            self.subs = c;
                        }
                    }
                    if front_pubsub {
                        self.pop_done(Outcome::Ok);
                    }
                }
                return Action::Forward;
            }
            if f.kind == b'>' {
                // Other pushes (client-side caching invalidations) answer no command.
                return Action::Forward;
            }
        }
        let Some(p) = self.pending.pop_front() else {
            // Redis sent a reply nobody asked for: pairing can no longer be trusted.
            tracing::warn!("upstream sent an unexpected reply; closing the connection");
            self.closing = true;
            return Action::Drop;
        };
        let outcome = if f.kind == b'-' || f.kind == b'!' {
            Outcome::Error
        } else {
            Outcome::Ok
        };
        let forward = match p.kind {
            Kind::Reply | Kind::Pubsub => true,
            Kind::Hidden => {
                if outcome == Outcome::Error {
                    tracing::warn!(
                        reply = %String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).trim_end(),
                        "a command added by the proxy failed"
                    );
                }
                return Action::Drop;
            }
            Kind::Local(..) => {
                // Cannot happen: locals are drained before any upstream reply is paired.
                tracing::warn!("reply pairing lost; closing the connection");
                self.closing = true;
                return Action::Drop;
            }
            Kind::Monitor => {
                if f.kind == b'+' {
                    self.monitor = true;
                }
                true
            }
            Kind::Hello => {
                match f.kind {
                    b'%' => self.resp3 = true,
                    b'*' => self.resp3 = false,
                    _ => {}
                }
                true
            }
            Kind::Reset => {
                if f.kind == b'+' {
                    self.reset_state();
                }
                true
            }
            Kind::Quit => {
                self.closing = true;
                true
            }
            Kind::Exec(layout) => {
                if f.kind == b'*' && layout.iter().any(|v| !v) {
                    match self.filter_exec(bytes, f, &layout) {
                        Some(out) => {
                            self.shared
                                .metrics
                                .command_done(p.cmd, outcome, p.start.elapsed());
                            return Action::Replace(out);
                        }
                        None => {
                            tracing::warn!("EXEC reply did not match the queued commands; closing");
                            self.closing = true;
                            return Action::Drop;
                        }
                    }
                }
                true
            }
        };
        self.shared
            .metrics
            .command_done(p.cmd, outcome, p.start.elapsed());
        if forward {
            Action::Forward
        } else {
            Action::Drop
        }
    }

    fn pop_done(&mut self, outcome: Outcome) {
        if let Some(p) = self.pending.pop_front() {
            self.shared
                .metrics
                .command_done(p.cmd, outcome, p.start.elapsed());
        }
    }

    fn reset_state(&mut self) {
        self.resp3 = false;
        self.subs = 0;
        self.shard_subs = 0;
        self.monitor = false;
    }

    /// Removes the replies of proxy-added commands from an EXEC array.
    fn filter_exec(&mut self, bytes: &[u8], f: ReplyFrame, layout: &[bool]) -> Option<BytesMut> {
        if f.count < 0 || f.count as usize != layout.len() {
            return None;
        }
        let mut pos = f.value_at + memchr::memchr(b'\n', &bytes[f.value_at..])? + 1;
        let visible = layout.iter().filter(|v| **v).count();
        let mut out = BytesMut::with_capacity(bytes.len());
        out.extend_from_slice(&bytes[..f.value_at]);
        let mut ib = [0u8; 20];
        out.extend_from_slice(b"*");
        out.extend_from_slice(codec::fmt_int(&mut ib, visible as i64));
        out.extend_from_slice(b"\r\n");
        let mut scanner = ReplyScanner::new();
        for keep in layout {
            let el = scanner.scan(&bytes[pos..], &self.limits).ok()??;
            if *keep {
                out.extend_from_slice(&bytes[pos..pos + el.len]);
            }
            pos += el.len;
        }
        Some(out)
    }
}

fn encode(args: &[&[u8]]) -> BytesMut {
    let mut b = BytesMut::new();
    codec::encode_command(&mut b, args.iter().copied());
    b
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Writes as much as the socket takes now; the rest waits for writability.
fn flush_upstream(up: &Upstream, out: &mut BytesMut) -> io::Result<()> {
    while !out.is_empty() {
        match up.try_write(out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => out.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    shrink(out);
    Ok(())
}

fn flush_client(client: &TcpStream, out: &mut BytesMut) -> io::Result<()> {
    while !out.is_empty() {
        match client.try_write(out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => out.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    shrink(out);
    Ok(())
}

/// Gives back the memory of a buffer that a large frame grew, once it is empty.
fn shrink(b: &mut BytesMut) {
    if b.is_empty() && b.capacity() > 4 * READ_CHUNK {
        *b = BytesMut::new();
    }
}
