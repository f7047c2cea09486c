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
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use std::future::Future;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};

use crate::codec::{self, Argv, Limits, ReplyFrame, ReplyScanner, Request, Span};
use crate::command::{self, CommandSpec, CMD_BLOCKING};
use crate::listener::Shared;
use crate::metrics::{self, NsTable, Outcome};
use crate::multiplex::{self, Job, ReplyRx, ReplyTx, SharedReply};
use crate::policy::auth::{ClientAuth, PeerInfo};
use crate::policy::{
    FieldLabelId, NsId, Policy, PolicyAction, Scratch, Verdict, NS_NONE, NS_UNMATCHED,
};
use crate::transport::{ClientStream, ClientWrite};
use crate::upstream::{
    handshake_commands, handshake_len, UpRead, UpWrite, Upstream, UpstreamError,
};

/// Stop reading more commands while this much is waiting to be written either way.
const HIGH_WATER: usize = 4 * 1024 * 1024;
/// Stop reading more commands while this many replies are outstanding.
const MAX_PENDING: usize = 64 * 1024;
/// The same on a shared connection, where other clients' replies queue behind this client's:
/// what one client has in flight there delays the others and is the most a client that
/// stops reading can still have coming to it.
const SHARED_MAX_PENDING: usize = 1024;
/// Read size; larger frames grow the buffer as needed.
const READ_CHUNK: usize = 16 * 1024;
/// Granularity of a client's share in the process-wide unread reply total.
const OUTPUT_STEP: usize = 256 * 1024;
/// The answer to `CLIENT REPLY ON|OFF|SKIP` queued in MULTI.
const CLIENT_REPLY_IN_MULTI: &str =
    "ERR CLIENT REPLY inside MULTI is not supported through respguard";
/// The answer to `SYNC`/`PSYNC`.
const REPLICATION_REFUSED: &str = "ERR replication through respguard is not supported: \
    connect replicas and 'redis-cli --rdb' or '--replica' to Redis directly";

mod identity;

/// What the reply to a command means for the connection.
#[derive(Debug)]
enum Kind {
    /// An ordinary command: forward its reply.
    Reply,
    /// Sent by the proxy (policy append, handshake after RESET): swallow its reply.
    Hidden,
    /// Sent inside MULTI after a command the proxy refused, so that Redis aborts the
    /// transaction at EXEC as it would have: its error reply is expected and swallowed.
    Poison,
    /// Answered by the proxy: these bytes go to the client when the entry reaches the front.
    Local(Bytes, Outcome),
    /// `SCAN` (`true`) or `KEYS` from an identity that may not read every key: the keys in
    /// the reply are filtered to the readable ones.
    KeyFilter(bool),
    /// A (un)subscribe command: its reply may come as a pub/sub confirmation frame.
    Pubsub,
    Monitor,
    Hello,
    Reset,
    Quit,
    /// A probe sent for a command the policy made a no-op: the client gets `reply`, or the
    /// probe's error.
    Mapped(Bytes),
    /// `EXEC`: `visible[i]` says whether element `i` of the reply array is the client's.
    /// `specials` are queued commands that change the connection when EXEC runs them, by
    /// position among the visible elements.
    Exec(Vec<Slot>, Vec<(usize, Special)>),
}

#[derive(Debug)]
struct Pending {
    kind: Kind,
    meta: Meta,
}

/// What metrics need to know about a command once its reply is there.
#[derive(Debug)]
struct Meta {
    /// Command-table row, for metrics.
    cmd: Option<usize>,
    /// Namespace of the first key (`NS_NONE` for keyless commands), for metrics.
    ns: NsId,
    /// Namespaces of every key, kept only for reads counted per key (`MGET`, `EXISTS`).
    key_ns: Option<Box<[NsId]>>,
    /// What the policy did, recorded with the reply.
    actions: Actions,
    /// Sensitive fields found: namespace, action label, field label in the policy.
    sensitive: Option<Box<[SensitiveFinding]>>,
    /// How many arguments follow the command name (the key count of `EXISTS`).
    nkeys: u32,
    /// Blocking commands are exempt from the upstream read timeout.
    blocking: bool,
    /// Queued in MULTI: its reply is `+QUEUED`, not the data (counted at EXEC instead).
    queued: bool,
    /// Sent while the client's `CLIENT REPLY` mode suppresses its reply: the reply (Redis's
    /// or the proxy's) is dropped.
    quiet: bool,
    /// When the command was read (its batch's read).
    start: Instant,
    /// When its batch was handed to the upstream socket.
    sent: Option<Instant>,
}

impl Pending {
    fn new(kind: Kind, cmd: Option<usize>, start: Instant) -> Pending {
        Pending {
            kind,
            meta: Meta {
                cmd,
                ns: NS_NONE,
                key_ns: None,
                actions: Actions::None,
                sensitive: None,
                nkeys: 0,
                blocking: false,
                queued: false,
                quiet: false,
                start,
                sent: None,
            },
        }
    }
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
    /// `SYNC`/`PSYNC`: refused, as the replication stream is not made of replies.
    Replication,
    /// `CLIENT REPLY`: the reply mode is applied by the proxy.
    ClientReply,
}

/// What the connection task needs to know about a command beyond its table row, derived
/// once per row: these are asked for every command of every pipeline.
#[derive(Clone, Copy, Debug)]
struct Traits {
    special: Special,
    /// [`multiplex::shareable`].
    shareable: bool,
    /// Exempt from the read timeout: flagged blocking, or `WAIT`/`WAITAOF`, which wait for
    /// replicas by design.
    blocking: bool,
}

impl Traits {
    fn of(spec: &'static CommandSpec) -> Traits {
        Traits {
            special: special_of(spec),
            shareable: multiplex::shareable(spec),
            blocking: spec.is(CMD_BLOCKING) || matches!(spec.name, "WAIT" | "WAITAOF"),
        }
    }
}

/// Unknown commands: nothing special, not blocking, and never shared (what they do to the
/// connection cannot be known).
const UNKNOWN_TRAITS: Traits = Traits {
    special: Special::None,
    shareable: false,
    blocking: false,
};

fn traits(spec: Option<&'static CommandSpec>) -> Traits {
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

fn special_of(spec: &'static CommandSpec) -> Special {
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
    /// `max_client_output` and `max_total_output`.
    max_output: usize,
    max_total_output: usize,
    /// Unread reply bytes counted in the process-wide total for this client.
    charged: usize,
    /// `idle_timeout` and `incomplete_command_timeout` (zero: off).
    idle_timeout: Duration,
    incomplete_timeout: Duration,
    /// When the first bytes of the incomplete command at the end of `cbuf` were read.
    partial_since: Option<Instant>,
    cbuf: BytesMut,
    cout: BytesMut,
    ubuf: BytesMut,
    uout: BytesMut,
    pending: VecDeque<Pending>,
    spans: Vec<Span>,
    /// Progress through an incomplete request at the start of `cbuf`, so each byte is
    /// scanned once however many reads the request takes.
    reqscan: codec::RequestScanner,
    inline_args: Vec<Vec<u8>>,
    inline_buf: BytesMut,
    scratch: Scratch,
    scanner: ReplyScanner,
    policy: Option<Arc<Policy>>,
    policy_gen: u64,
    ns_table: Arc<NsTable>,
    /// Read time of the batch being processed.
    batch_start: Instant,
    /// Time of the read being handled, for latencies: one clock read per batch, not per command.
    now: Instant,
    ever_connected: bool,
    resp3: bool,
    subs: i64,
    shard_subs: i64,
    monitor: bool,
    /// `Some` between MULTI and EXEC/DISCARD: visibility of each queued command's reply.
    multi: Option<Vec<Slot>>,
    /// Replies still owed for commands sent up to and including MONITOR; frames after them
    /// are monitor output.
    monitor_owed: usize,
    /// Queued commands that change the connection when EXEC runs them.
    multi_specials: Vec<(usize, Special)>,
    /// Read no more commands; close once everything owed to the client is written.
    closing: bool,
    /// Close now: pairing can no longer be trusted.
    abort: bool,
    /// The client's `CLIENT REPLY` mode. Redis itself always replies (the command is not
    /// forwarded): replies are dropped here, so the proxy's own replies follow the mode too.
    reply_mode: ReplyMode,
    /// Whether the reply to the command being handled is suppressed by `reply_mode`.
    quiet: bool,
    /// The reply just paired was for a quiet command: the client does not get it.
    drop_reply: bool,
    /// When the last reply arrived: a command's read timeout starts when it reaches the front.
    last_reply_at: Instant,
    /// Scanner limits for replies: Redis's own values may be larger than clients may send.
    reply_limits: Limits,
    /// Metrics of the latest finished commands, not yet added to the shared counters.
    run: Option<Run>,
    /// The command-table row of the previous command.
    last_spec: Option<&'static CommandSpec>,
    /// While the client has no connection state: its shared upstream connection.
    mux: Option<Mux>,
    /// A command needs a dedicated connection once the shared replies are in.
    pin_wanted: bool,
    /// Replies expected for what is in `uout` (the size of the next shared job).
    unsent: usize,
    /// The client's identity (`policy.clients`).
    auth: ClientAuth,
    /// A failed login's answer, held until its delay is over; no command is read meanwhile.
    auth_hold: Option<(tokio::time::Instant, Bytes, Option<usize>)>,
}

/// What a read queued in MULTI needs for hit/miss counting when EXEC answers it.
#[derive(Debug, Clone)]
struct ReadInfo {
    cmd: Option<usize>,
    ns: NsId,
    key_ns: Option<Box<[NsId]>>,
    nkeys: u32,
}

/// What the policy did to one command; one action (a TTL added) needs no allocation.
#[derive(Debug)]
enum Actions {
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
type SensitiveFinding = (NsId, &'static str, FieldLabelId);

/// One queued command of a transaction, in order, for rebuilding the EXEC reply.
#[derive(Debug, Clone)]
enum Slot {
    /// The client's command: its element of the EXEC array is the client's. Reads carry what
    /// hit/miss counting needs, as their real reply only comes inside the EXEC array.
    Visible(Option<Box<ReadInfo>>),
    /// Added by the proxy: its element is removed.
    Hidden,
    /// Answered by the proxy (never sent): this element is inserted.
    Local(Bytes),
    /// A probe for a command the policy made a no-op: its element becomes this reply unless
    /// it is an error.
    Mapped(Bytes),
}

/// Which client timeout a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientTimeout {
    Idle,
    Incomplete,
}

/// Whether Redis answers the client's commands (`CLIENT REPLY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReplyMode {
    On,
    Off,
    SkipNext,
}

/// Consecutive finished commands with identical metrics, counted once.
struct Run {
    cmd: Option<usize>,
    ns: NsId,
    outcome: Outcome,
    /// When the run's commands arrived, went upstream and were answered: equal instants give
    /// equal latencies, which are only computed when the run is flushed.
    start: Instant,
    sent: Option<Instant>,
    done: Instant,
    n: u64,
    hits: u64,
    misses: u64,
}

/// A client's link to a shared upstream connection.
struct Mux {
    jobs: mpsc::UnboundedSender<Job>,
    reply_tx: ReplyTx,
    replies: ReplyRx,
    /// Reply bytes the shared connection has sent and this client has not taken yet.
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// Serves one accepted client until it disconnects, the upstream fails, or shutdown drains it.
pub async fn serve(
    client: ClientStream,
    peer: PeerInfo,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<crate::listener::ShutdownPhase>,
) {
    let _ = client.set_nodelay();
    let cfg = shared.config();
    let limits = cfg.limits;
    let mut conn = Conn {
        limits,
        max_buffered: cfg.max_buffered_bytes,
        max_output: cfg.max_client_output,
        max_total_output: cfg.max_total_output,
        charged: 0,
        idle_timeout: cfg.idle_timeout,
        incomplete_timeout: cfg.incomplete_command_timeout,
        partial_since: None,
        cbuf: BytesMut::new(),
        cout: BytesMut::new(),
        ubuf: BytesMut::new(),
        uout: BytesMut::new(),
        pending: VecDeque::new(),
        spans: Vec::new(),
        reqscan: codec::RequestScanner::new(),
        inline_args: Vec::new(),
        inline_buf: BytesMut::new(),
        scratch: Scratch::default(),
        scanner: ReplyScanner::new(),
        policy: None,
        policy_gen: u64::MAX,
        ns_table: shared.namespace_table(),
        batch_start: Instant::now(),
        now: Instant::now(),
        ever_connected: false,
        resp3: false,
        subs: 0,
        shard_subs: 0,
        monitor: false,
        multi: None,
        multi_specials: Vec::new(),
        monitor_owed: 0,
        closing: false,
        abort: false,
        reply_mode: ReplyMode::On,
        quiet: false,
        drop_reply: false,
        run: None,
        last_spec: None,
        last_reply_at: Instant::now(),
        reply_limits: Limits {
            max_bulk_len: cfg.max_buffered_bytes,
            max_inline_len: cfg.max_buffered_bytes,
            ..limits
        },
        mux: shared.pool().and_then(|p| p.pick()).map(|jobs| {
            let (reply_tx, replies) = mpsc::unbounded_channel();
            Mux {
                jobs,
                reply_tx,
                replies,
                queued: Arc::default(),
            }
        }),
        pin_wanted: false,
        unsent: 0,
        auth: ClientAuth::new(peer.addr, peer.cert_names, shared.policy().as_deref()),
        auth_hold: None,
        shared,
    };
    let mut up = Up::default();
    if conn.mux.is_none() {
        match Upstream::connect(&cfg.upstream, &limits).await {
            Ok(u) => {
                conn.ever_connected = true;
                up.attach(u);
            }
            Err(e) => {
                conn.shared.metrics.upstream_error(e.kind());
                tracing::warn!(error = %e, "upstream connect failed; commands will get errors until it is back");
            }
        }
    }
    let read_timeout = cfg.upstream.read_timeout;
    drop(cfg);
    if let Err(e) = conn.run(client, &mut up, &mut shutdown, read_timeout).await {
        tracing::debug!(error = %e, "connection ended");
    }
    conn.cout = BytesMut::new();
    conn.charge_output();
    conn.flush_run();
}

/// The upstream connection's halves, absent while Redis is unreachable.
#[derive(Default)]
struct Up {
    rd: Option<UpRead>,
    wr: Option<UpWrite>,
}

impl Up {
    fn attach(&mut self, u: Upstream) {
        let (r, w) = u.into_split();
        self.rd = Some(r);
        self.wr = Some(w);
    }

    fn detach(&mut self) {
        self.rd = None;
        self.wr = None;
    }

    fn connected(&self) -> bool {
        self.wr.is_some()
    }
}

async fn up_readable(rd: Option<&UpRead>) -> io::Result<()> {
    match rd {
        Some(r) => r.readable().await,
        None => std::future::pending().await,
    }
}

async fn up_writable(wr: Option<&UpWrite>) -> io::Result<()> {
    match wr {
        Some(w) => w.writable().await,
        None => std::future::pending().await,
    }
}

/// Polls a read once without waiting: `Ok(None)` when no data is there.
///
/// Reading through `AsyncRead` (rather than `try_read`) lets tokio clear the readiness flag on
/// a short read, which saves the extra `recv` returning `EAGAIN` that would otherwise follow
/// every read: one syscall less per request and direction.
pub fn read_now<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut) -> io::Result<Option<usize>> {
    let mut cx = Context::from_waker(Waker::noop());
    let fut = std::pin::pin!(r.read_buf(buf));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(n)) => Ok(Some(n)),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => Ok(None),
    }
}

/// Leaves room for one read without growing an idle connection's buffer before data arrives.
///
/// Starts small (most commands and replies are short, and an idle client's memory is mostly
/// these buffers) and doubles while a large frame is arriving, so a 64 MB value still needs
/// only a few dozen reads.
fn reserve_for_read(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 8 {
        buf.reserve(buf.len().max(READ_CHUNK / 4));
    }
}

impl Conn {
    async fn run(
        &mut self,
        client: ClientStream,
        up: &mut Up,
        shutdown: &mut watch::Receiver<crate::listener::ShutdownPhase>,
        read_timeout: Duration,
    ) -> Result<(), ConnError> {
        let (mut crd, cwr) = client.into_split();
        let mut draining = *shutdown.borrow() != crate::listener::ShutdownPhase::Running;
        // Kept across iterations: a fresh `changed()` per wakeup would register with and
        // leave the shutdown signal's waiter list every time.
        let mut phase = std::pin::pin!(next_phase(shutdown.clone()));
        // Only a logged-in client can lose its identity in a reload; the others pick up a
        // new policy at their next command.
        let mut reload = std::pin::pin!(next_reload(self.shared.policy_watch()));
        let mut reload_open = true;
        let mut client_eof = false;
        loop {
            // Metrics are current whenever the task waits.
            self.flush_run();
            if self.pin_wanted && self.pending.is_empty() && self.uout.is_empty() {
                // The shared replies are in: continue on a dedicated connection.
                self.pin_wanted = false;
                self.mux = None;
                self.process_client();
                self.send_batch(up, &cwr).await?;
            }
            if self.abort {
                let _ = flush_client(&cwr, &mut self.cout);
                return Ok(());
            }
            if client_eof && self.pending.iter().any(|p| p.meta.blocking) {
                // Redis forgets a blocked client the moment it disconnects. Keeping the
                // upstream connection would leave it blocked, and the next pushed element
                // would be popped for nobody: close it now.
                return Ok(());
            }
            if (self.closing || client_eof || draining)
                && self.pending.is_empty()
                && self.cout.is_empty()
            {
                // Everything owed was delivered (a half-closed client still gets its replies).
                return Ok(());
            }
            let read_client = !client_eof
                && !draining
                && self.auth_hold.is_none()
                && (self.closing
                    || (!self.pin_wanted
                        && self.uout.len() < HIGH_WATER
                        && self.cout.len() < HIGH_WATER
                        && self.pending.len()
                            < if self.mux.is_some() {
                                SHARED_MAX_PENDING
                            } else {
                                MAX_PENDING
                            }));
            let read_up = up.rd.is_some() && self.cout.len() < HIGH_WATER;
            let write_up = up.wr.is_some() && !self.uout.is_empty();
            let write_client = !self.cout.is_empty();
            let deadline = self.read_deadline(read_timeout, up.connected() || self.mux.is_some());
            let client_deadline = if read_client {
                self.client_deadline()
            } else {
                None
            };

            tokio::select! {
                r = crd.readable(), if read_client => {
                    r.map_err(ConnError::Client)?;
                    reserve_for_read(&mut self.cbuf);
                    match read_now(&mut crd, &mut self.cbuf) {
                        Ok(Some(0)) => client_eof = true,
                        Ok(Some(_)) if self.closing => {
                            // Nothing more is read after QUIT or a protocol error, but the
                            // socket is still watched so a disconnect is noticed.
                            self.cbuf.clear();
                        }
                        Ok(Some(_)) => {
                            self.refresh_policy();
                            self.process_client();
                            self.send_batch(up, &cwr).await?;
                        }
                        Ok(None) => {}
                        Err(e) => return Err(ConnError::Client(e)),
                    }
                }
                r = up_readable(up.rd.as_ref()), if read_up => {
                    let res = match (r, up.rd.as_mut()) {
                        (Err(e), _) => Err(UpstreamError::Io(e)),
                        (Ok(()), Some(rd)) => {
                            reserve_for_read(&mut self.ubuf);
                            match rd.read_now(&mut self.ubuf) {
                                Ok(Some(0)) => Err(UpstreamError::Closed),
                                Ok(Some(_)) => self.process_upstream(),
                                Ok(None) => Ok(()),
                                Err(e) => Err(UpstreamError::Io(e)),
                            }
                        }
                        (Ok(()), None) => Ok(()),
                    };
                    if let Err(e) = res {
                        self.upstream_failed(up, e);
                    }
                    flush_client(&cwr, &mut self.cout).map_err(ConnError::Client)?;
                }
                r = up_writable(up.wr.as_ref()), if write_up => {
                    let res = r.and_then(|()| match up.wr.as_ref() {
                        Some(w) => flush_upstream(w, &mut self.uout),
                        None => Ok(()),
                    });
                    if let Err(e) = res {
                        self.upstream_failed(up, e.into());
                        flush_client(&cwr, &mut self.cout).map_err(ConnError::Client)?;
                    }
                }
                r = cwr.writable(), if write_client => {
                    r.map_err(ConnError::Client)?;
                    flush_client(&cwr, &mut self.cout).map_err(ConnError::Client)?;
                    if self.charged > 0 {
                        self.charge_output();
                    }
                }
                r = async { match self.mux.as_mut() { Some(m) => m.replies.recv().await, None => std::future::pending().await } }, if self.mux.is_some() || self.pin_wanted => {
                    match r {
                        Some(SharedReply::Frames(b)) => {
                            // What the client left unread of the replies before these, here
                            // and still in the channel.
                            let mut unread = self.cout.len();
                            if let Some(m) = self.mux.as_ref() {
                                let queued = m
                                    .queued
                                    .fetch_sub(b.len(), std::sync::atomic::Ordering::AcqRel);
                                unread += queued.saturating_sub(b.len());
                            }
                            // Shared connections hand over whole replies: scan them where
                            // they are instead of copying them into the read buffer first.
                            let res = if self.ubuf.is_empty() {
                                let (used, res) = self.process_replies(&b);
                                if used < b.len() {
                                    self.ubuf.extend_from_slice(&b[used..]);
                                }
                                res
                            } else {
                                self.ubuf.extend_from_slice(&b);
                                self.process_upstream()
                            };
                            if let Err(e) = res {
                                self.upstream_failed(up, e);
                            }
                            self.check_output(unread);
                        }
                        Some(SharedReply::Failed {
                            kind: multiplex::CLIENT_BUFFER,
                            ..
                        }) => {
                            // The shared connection dropped replies this task did not take
                            // in time: the same limit, noticed there first.
                            self.output_limit(false, 0);
                        }
                        Some(SharedReply::Failed { sent, message, .. }) => {
                            self.shared_failed(sent, &message);
                        }
                        None => self.shared_failed(false, "shared upstream connection ended"),
                    }
                    flush_client(&cwr, &mut self.cout).map_err(ConnError::Client)?;
                }
                (r, rx) = &mut phase => {
                    let now = *rx.borrow();
                    phase.set(next_phase(rx));
                    if r.is_err() || now == crate::listener::ShutdownPhase::Abort {
                        // The grace period is over.
                        return Ok(());
                    }
                    draining = true;
                }
                _ = sleep_until(client_deadline.map(|(at, _)| at)), if client_deadline.is_some() => {
                    if let Some((_, ClientTimeout::Incomplete)) = client_deadline {
                        self.incomplete_timed_out();
                    } else {
                        // Closed without a word, as Redis closes an idle client.
                        self.shared.metrics.timeout_idle.increment(1);
                        tracing::debug!("client idle for idle_timeout; closing");
                        return Ok(());
                    }
                }
                (r, rx) = &mut reload, if reload_open && self.auth.logged_in() => {
                    reload.set(next_reload(rx));
                    reload_open = r.is_ok();
                    self.refresh_policy();
                }
                _ = sleep_until(self.auth_hold.as_ref().map(|h| h.0)), if self.auth_hold.is_some() => {
                    self.release_auth_hold();
                    self.send_batch(up, &cwr).await?;
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.upstream_failed(up, UpstreamError::ReadTimeout(read_timeout.as_millis()));
                    flush_client(&cwr, &mut self.cout).map_err(ConnError::Client)?;
                }
            }
        }
    }

    /// Sends what the last client batch produced: as a job on the shared connection, or on
    /// the dedicated one (connecting it first if needed).
    async fn send_batch(&mut self, up: &mut Up, cwr: &ClientWrite) -> Result<(), ConnError> {
        if let Some(m) = self.mux.as_ref() {
            if !self.uout.is_empty() {
                let first_new = self.pending.len() - self.batch_len();
                let job = Job {
                    bytes: self.uout.split().freeze(),
                    replies: std::mem::take(&mut self.unsent),
                    to: m.reply_tx.clone(),
                    queued: m.queued.clone(),
                };
                if m.jobs.send(job).is_err() {
                    self.shared_failed(false, "shared upstream connection ended");
                } else {
                    self.stamp_sent(first_new);
                }
            }
        } else {
            self.unsent = 0;
            if !self.uout.is_empty() && !up.connected() {
                self.reconnect(up).await;
            }
            if let Some(w) = up.wr.as_ref() {
                let first_new = self.pending.len() - self.batch_len();
                if let Err(e) = flush_upstream(w, &mut self.uout) {
                    self.upstream_failed(up, e.into());
                } else {
                    self.stamp_sent(first_new);
                }
            }
        }
        flush_client(cwr, &mut self.cout).map_err(ConnError::Client)
    }

    /// A shared connection cannot wait for one slow reader without stalling the others, so
    /// what a client leaves unread is bounded instead, as Redis bounds it with
    /// `client-output-buffer-limit`: a client with more than `max_client_output` unread when
    /// more replies arrive, or one whose replies keep arriving unread while all clients
    /// together hold more than `max_total_output`, is disconnected. A single reply of any
    /// size is still delivered: only what is left unread before it counts.
    fn check_output(&mut self, unread: usize) {
        self.charge_output();
        if unread > self.max_output {
            self.output_limit(false, unread);
        } else if unread >= OUTPUT_STEP
            && self
                .shared
                .output_bytes
                .load(std::sync::atomic::Ordering::Relaxed)
                > self.max_total_output
        {
            self.output_limit(true, unread);
        }
    }

    /// Disconnects a client past its own output limit or the process-wide one (`total`).
    fn output_limit(&mut self, total: bool, unread: usize) {
        let m = &self.shared.metrics;
        if total {
            m.output_limit_total.increment(1);
        } else {
            m.output_limit_client.increment(1);
        }
        tracing::warn!(
            unread,
            max_client_output = self.max_output,
            max_total_output = self.max_total_output,
            "client does not read its replies: output limit reached; closing"
        );
        self.abort = true;
    }

    /// Brings this client's share of the process-wide unread total up to date, in steps of
    /// [`OUTPUT_STEP`] so a client that reads its replies costs no shared write at all.
    fn charge_output(&mut self) {
        let held = self.cout.len();
        if held.abs_diff(self.charged) < OUTPUT_STEP && (held > 0 || self.charged == 0) {
            return;
        }
        let total = &self.shared.output_bytes;
        if held > self.charged {
            total.fetch_add(held - self.charged, std::sync::atomic::Ordering::Relaxed);
        } else {
            total.fetch_sub(self.charged - held, std::sync::atomic::Ordering::Relaxed);
        }
        self.charged = held;
    }

    /// A shared connection failed. Commands that never reached Redis get an error and the
    /// client may go on; if they may have, their replies are lost and the client is closed.
    fn shared_failed(&mut self, sent: bool, message: &str) {
        self.unsent = 0;
        self.uout.clear();
        self.fail_pending(message);
        if sent {
            self.closing = true;
        }
    }

    /// How many entries at the back of the queue belong to the batch just processed.
    fn batch_len(&self) -> usize {
        self.pending
            .iter()
            .rev()
            .take_while(|p| p.meta.start == self.batch_start && p.meta.sent.is_none())
            .count()
    }

    /// Marks when the batch went upstream, for the upstream share of the latency.
    fn stamp_sent(&mut self, first_new: usize) {
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

    /// When the client times out, if a timeout applies: its incomplete command has been
    /// arriving too long, or it has been idle (nothing read, no reply owed) too long. As in
    /// Redis, clients waiting for a reply (blocked ones included), subscribers and monitors
    /// are never idle.
    fn client_deadline(&self) -> Option<(tokio::time::Instant, ClientTimeout)> {
        if let Some(since) = self.partial_since {
            if !self.incomplete_timeout.is_zero() {
                let at = tokio::time::Instant::from_std(since + self.incomplete_timeout);
                return Some((at, ClientTimeout::Incomplete));
            }
        }
        if self.idle_timeout.is_zero()
            || !self.pending.is_empty()
            || !self.cout.is_empty()
            || self.monitor
            || self.subs > 0
            || self.shard_subs > 0
        {
            return None;
        }
        let since = self.batch_start.max(self.last_reply_at);
        Some((
            tokio::time::Instant::from_std(since + self.idle_timeout),
            ClientTimeout::Idle,
        ))
    }

    /// A command has not arrived in full within `incomplete_command_timeout` of its first
    /// bytes (a client trickling bytes to hold a connection): the client gets an error after
    /// the replies it is owed and is closed.
    fn incomplete_timed_out(&mut self) {
        self.shared.metrics.timeout_incomplete.increment(1);
        tracing::debug!("command not received in full within incomplete_command_timeout; closing");
        self.partial_since = None;
        self.cbuf.clear();
        self.quiet = false;
        let mut b = BytesMut::new();
        codec::encode_error(
            &mut b,
            &format!(
                "ERR command not received in full within {} ms",
                self.incomplete_timeout.as_millis()
            ),
        );
        self.push_local(b.freeze(), Outcome::Error, None);
        self.closing = true;
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
        if front.meta.blocking {
            return None;
        }
        // Time queued behind earlier replies (a blocking command) does not count.
        let since = front.meta.start.max(self.last_reply_at);
        Some(tokio::time::Instant::from_std(since + timeout))
    }

    fn refresh_policy(&mut self) {
        let gen = self.shared.policy_generation();
        if gen != self.policy_gen {
            self.policy = self.shared.policy();
            self.ns_table = self.shared.namespace_table();
            self.policy_gen = gen;
            if !self.auth.rebind(self.policy.as_deref()) {
                tracing::info!("the client's identity was removed from the policy; closing");
                self.closing = true;
            }
        }
    }

    /// Handles every complete command in the client buffer.
    fn process_client(&mut self) {
        self.batch_start = Instant::now();
        self.now = self.batch_start;
        let buf = std::mem::take(&mut self.cbuf);
        let mut off = 0;
        let mut incomplete = false;
        while off < buf.len() && !self.closing && !self.pin_wanted && self.auth_hold.is_none() {
            let rest = &buf[off..];
            match self
                .reqscan
                .scan(rest, &self.limits, &mut self.spans, &mut self.inline_args)
            {
                Ok(Some(Request::Multibulk { len })) => {
                    let raw = &rest[..len];
                    let spans = std::mem::take(&mut self.spans);
                    let done = self.handle(Argv::new(raw, &spans), raw);
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
                        done = self.handle(Argv::new(&ib, &spans), &ib);
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

    fn protocol_error(&mut self, msg: &str) {
        let mut b = BytesMut::new();
        codec::encode_error(&mut b, msg);
        self.protocol_error_reply(msg, b.freeze());
    }

    /// Answers input Redis would refuse with Redis's own error reply, then closes.
    fn protocol_error_reply(&mut self, msg: &str, reply: Bytes) {
        self.quiet = self.take_quiet();
        self.shared.metrics.protocol_errors.increment(1);
        tracing::debug!(error = msg, "client protocol error; closing");
        self.push_local(reply, Outcome::Error, None);
        self.closing = true;
    }

    /// Queues a reply the proxy makes itself, in order with upstream replies.
    fn push_local(&mut self, bytes: Bytes, outcome: Outcome, cmd: Option<usize>) {
        let mut p = Pending::new(Kind::Local(bytes, outcome), cmd, self.batch_start);
        p.meta.quiet = self.quiet;
        p.meta.ns = self.scratch.namespace;
        p.meta.actions = self.take_actions();
        p.meta.sensitive = self.take_sensitive();
        self.pending.push_back(p);
        self.drain_locals();
    }

    fn push(&mut self, kind: Kind, cmd: Option<usize>, blocking: bool, start: Instant) {
        let mut p = Pending::new(kind, cmd, start);
        p.meta.blocking = blocking;
        self.pending.push_back(p);
        self.unsent += 1;
    }

    fn take_sensitive(&mut self) -> Option<Box<[SensitiveFinding]>> {
        if self.scratch.sensitive.is_empty() {
            None
        } else {
            Some(self.scratch.sensitive.as_slice().into())
        }
    }

    fn take_actions(&mut self) -> Actions {
        match self.scratch.actions.as_slice() {
            [] => Actions::None,
            [one] => Actions::One(*one),
            many => Actions::Many(many.into()),
        }
    }

    /// One command: policy, connection-state tracking, and forwarding. Returns false when
    /// the command must wait: it needs a dedicated connection and shared replies are still
    /// outstanding.
    fn handle(&mut self, argv: Argv<'_>, raw: &[u8]) -> bool {
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
        if self.mux.is_some() && !traits.shareable {
            if traits.special == Special::Quit {
                // Nothing to clean up on a shared connection: answer QUIT here.
                self.scratch.namespace = NS_NONE;
                self.scratch.clear();
                self.quiet = self.take_quiet();
                self.push_local(Bytes::from_static(b"+OK\r\n"), Outcome::Ok, cmd);
                self.closing = true;
                return true;
            }
            if !self.pending.is_empty() || !self.uout.is_empty() {
                // Commands already sent on the shared connection must finish first, so this
                // one runs after them.
                self.pin_wanted = true;
                return false;
            }
            // Pinned: from now on this client has its own upstream connection.
            self.mux = None;
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
            Special::None if self.multi.is_none() && self.filter_keys(spec).is_some() => {
                Kind::KeyFilter(self.filter_keys(spec).unwrap_or_default())
            }
            Special::None | Special::Replication | Special::ClientReply => {
                // Redis answers WATCH inside MULTI at once with an error; it is not queued.
                let queued = spec.is_none_or(|s| s.name != "WATCH");
                if let (Some(layout), true) = (self.multi.as_mut(), queued) {
                    layout.push(Slot::Visible(None));
                }
                Kind::Reply
            }
        };
        let is_reset = matches!(kind, Kind::Reset);
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
        if is_reset {
            // RESET drops the connection's authentication and database: restore the proxy's.
            self.send_handshake(start);
        }
        true
    }

    /// Answers a command the proxy refuses with an error; inside MULTI the transaction then
    /// aborts at EXEC, as it does in Redis after a command it refuses while queueing.
    fn refuse(&mut self, message: &str, cmd: Option<usize>) {
        let mut b = BytesMut::new();
        codec::encode_error(&mut b, message);
        self.push_local(b.freeze(), Outcome::Rejected, cmd);
        if self.multi.is_some() {
            // A command with the wrong number of arguments: Redis refuses it while queueing
            // (no effect, not shown by MONITOR) and flags the transaction, so EXEC, forwarded
            // as the client sent it, gets Redis's own EXECABORT.
            self.send(b"*1\r\n$3\r\nGET\r\n");
            self.push(Kind::Poison, None, false, self.batch_start);
        }
    }

    /// Handles `CLIENT REPLY ON|OFF|SKIP` here (other forms go to Redis for its error).
    /// Redis keeps replying; the proxy drops what the client asked not to get, so replies
    /// the proxy makes itself follow the mode exactly like Redis's.
    fn client_reply(&mut self, argv: &Argv<'_>, cmd: Option<usize>) -> bool {
        if argv.len() != 3 {
            return false;
        }
        let mode = argv.get(2).unwrap_or_default();
        let (next, reply) = if mode.eq_ignore_ascii_case(b"ON") {
            (ReplyMode::On, Some(Bytes::from_static(b"+OK\r\n")))
        } else if mode.eq_ignore_ascii_case(b"OFF") {
            (ReplyMode::Off, None)
        } else if mode.eq_ignore_ascii_case(b"SKIP") {
            (ReplyMode::SkipNext, None)
        } else {
            return false;
        };
        if self.multi.is_some() {
            // Redis would change the mode halfway through building the EXEC reply.
            self.refuse(CLIENT_REPLY_IN_MULTI, cmd);
            return true;
        }
        self.scratch.clear();
        match reply {
            Some(ok) => {
                // Answered even when replies were off.
                self.reply_mode = next;
                self.quiet = false;
                self.push_local(ok, Outcome::Ok, cmd);
            }
            None => {
                // A SKIP while replies are off changes nothing.
                if !(next == ReplyMode::SkipNext && self.reply_mode == ReplyMode::Off) {
                    self.reply_mode = next;
                }
                self.quiet = true;
                self.push_local(Bytes::new(), Outcome::Ok, cmd);
            }
        }
        true
    }

    fn send_handshake(&mut self, start: Instant) {
        let cfg = self.shared.config();
        let hs = handshake_commands(&cfg.upstream);
        if !hs.is_empty() {
            self.send(&hs);
            for _ in 0..handshake_len(&cfg.upstream) {
                self.push(Kind::Hidden, None, false, start);
            }
        }
    }

    /// Whether the client's reply mode suppresses the reply to the next command; `SKIP`
    /// is used up by it.
    fn take_quiet(&mut self) -> bool {
        match self.reply_mode {
            ReplyMode::On => false,
            ReplyMode::Off => true,
            ReplyMode::SkipNext => {
                self.reply_mode = ReplyMode::On;
                true
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.uout.extend_from_slice(bytes);
    }

    /// Connects an upstream that was down; on failure every command of this batch gets the
    /// error, and the client may try again later.
    async fn reconnect(&mut self, up: &mut Up) {
        if self.ever_connected {
            return;
        }
        let cfg = self.shared.config();
        match Upstream::connect(&cfg.upstream, &self.limits).await {
            Ok(u) => {
                self.ever_connected = true;
                up.attach(u);
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
        self.now = Instant::now();
        let msg = format!("ERR {cause}");
        let mut err = BytesMut::new();
        codec::encode_error(&mut err, &msg);
        let err = err.freeze();
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            match p.kind {
                Kind::Local(b, outcome) => {
                    if !p.meta.quiet {
                        self.cout.extend_from_slice(&b);
                    }
                    self.record(&p.meta, outcome, None);
                }
                Kind::Hidden | Kind::Poison => {}
                _ => {
                    if !p.meta.quiet {
                        self.cout.extend_from_slice(&err);
                    }
                    self.record(&p.meta, Outcome::Error, None);
                }
            }
        }
        self.flush_run();
    }

    /// The upstream broke: answer what is outstanding with the error and close the client,
    /// because the connection state it built up is gone.
    fn upstream_failed(&mut self, up: &mut Up, e: UpstreamError) {
        self.shared.metrics.upstream_error(e.kind());
        if self.pending.is_empty() {
            tracing::debug!(error = %e, "upstream closed an idle connection");
        } else {
            tracing::warn!(error = %e, outstanding = self.pending.len(), "upstream failed mid-request");
        }
        up.detach();
        self.uout.clear();
        self.fail_pending(&e.to_string());
        self.closing = true;
    }

    /// Handles every complete reply in the upstream buffer.
    fn process_upstream(&mut self) -> Result<(), UpstreamError> {
        let mut buf = std::mem::take(&mut self.ubuf);
        let (off, result) = self.process_replies(&buf);
        if off >= buf.len() {
            buf.clear();
        } else {
            buf.advance(off);
        }
        self.ubuf = buf;
        result
    }

    /// Pairs every complete reply at the start of `buf` and says how many bytes it used.
    fn process_replies(&mut self, buf: &[u8]) -> (usize, Result<(), UpstreamError>) {
        self.now = Instant::now();
        let mut off = 0;
        // Replies forwarded unchanged are copied to the client buffer in one run.
        let mut run_start = 0;
        let mut result = Ok(());
        while off < buf.len() {
            let rest = &buf[off..];
            let frame = match self.scanner.scan(rest, &self.reply_limits) {
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
            let mut action = self.on_reply(bytes, frame);
            if self.drop_reply {
                // The client asked not to get this reply (`CLIENT REPLY OFF`/`SKIP`).
                self.drop_reply = false;
                action = Action::Drop;
            }
            match action {
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
            self.drain_locals_into_run(buf, &mut run_start, off);
        }
        self.cout.extend_from_slice(&buf[run_start..off]);
        // Metrics are up to date before the client can see these replies.
        self.flush_run();
        (off, result)
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
                meta,
            }) = self.pending.pop_front()
            {
                if !meta.quiet {
                    self.cout.extend_from_slice(&b);
                }
                self.record(&meta, outcome, None);
            }
        }
    }

    /// Pairs one upstream frame and says what the client gets of it.
    fn on_reply(&mut self, bytes: &[u8], f: ReplyFrame) -> Action {
        if self.monitor {
            if self.monitor_owed > 0 {
                // Replies to what was sent before MONITOR (and MONITOR's own) still pair.
                self.monitor_owed -= 1;
            } else {
                if bytes == b"+RESET\r\n" {
                    self.reset_state();
                }
                return Action::Forward;
            }
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
            if let Some(ps) = pubsub_frame(&bytes[f.value_at..], &self.reply_limits) {
                if let PubsubFrame::Confirm { shard, count } = ps {
                    if let Some(c) = count {
                        self.set_subs(shard, c);
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
            if f.kind == b'*' {
                if let Some(PubsubFrame::Confirm { shard, count }) =
                    pubsub_frame(&bytes[f.value_at..], &self.reply_limits)
                {
                    // Subscribed from inside MULTI: Redis now sends pub/sub frames.
                    self.set_subs(shard, count.unwrap_or(1));
                    return Action::Forward;
                }
            }
            // Redis sent a reply nobody asked for: pairing can no longer be trusted.
            tracing::warn!("upstream sent an unexpected reply; closing the connection");
            self.abort = true;
            return Action::Drop;
        };
        self.last_reply_at = self.now;
        self.drop_reply = p.meta.quiet;
        let outcome = if f.kind == b'-' || f.kind == b'!' {
            Outcome::Error
        } else {
            Outcome::Ok
        };
        let forward = match p.kind {
            Kind::Reply | Kind::Pubsub => true,
            Kind::KeyFilter(scan) => {
                if let Some(out) = self.filter_key_reply(bytes, scan) {
                    self.record(&p.meta, outcome, None);
                    return Action::Replace(out);
                }
                true
            }
            Kind::Hidden => {
                if outcome == Outcome::Error {
                    tracing::warn!(
                        reply = %String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).trim_end(),
                        "a command added by the proxy failed"
                    );
                }
                return Action::Drop;
            }
            Kind::Poison => return Action::Drop,
            Kind::Local(..) => {
                // Cannot happen: locals are drained before any upstream reply is paired.
                tracing::warn!("reply pairing lost; closing the connection");
                self.abort = true;
                return Action::Drop;
            }
            Kind::Monitor => {
                if f.kind != b'+' {
                    // Refused: replies pair again.
                    self.monitor = false;
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
            Kind::Mapped(reply) => {
                if outcome == Outcome::Error {
                    true
                } else {
                    self.record(&p.meta, outcome, None);
                    return Action::Replace(BytesMut::from(&reply[..]));
                }
            }
            Kind::Exec(layout, specials) => {
                if !specials.is_empty() && f.count >= 0 {
                    self.apply_exec_specials(bytes, f, &layout, &specials);
                }
                if f.kind == b'*' && f.count > 0 {
                    self.count_exec_reads(bytes, f, &layout);
                }
                if f.kind == b'*'
                    && f.count >= 0
                    && layout.iter().any(|v| !matches!(v, Slot::Visible(_)))
                {
                    match self.filter_exec(bytes, f, &layout) {
                        Some(out) => {
                            self.record(&p.meta, outcome, None);
                            return Action::Replace(out);
                        }
                        None => {
                            tracing::warn!("EXEC reply did not match the queued commands; closing");
                            self.abort = true;
                            return Action::Drop;
                        }
                    }
                }
                true
            }
        };
        self.record(&p.meta, outcome, Some(&bytes[f.value_at..]));
        if forward {
            Action::Forward
        } else {
            Action::Drop
        }
    }

    fn pop_done(&mut self, outcome: Outcome) {
        if let Some(p) = self.pending.pop_front() {
            self.record(&p.meta, outcome, None);
        }
    }

    /// Records one finished command: the single place where a command's metrics are taken,
    /// after its reply. `reply` is the reply value when Redis sent one.
    fn record(&mut self, m: &Meta, outcome: Outcome, reply: Option<&[u8]>) {
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
        for (ns, a) in m.actions.as_slice() {
            match a {
                PolicyAction::TtlDefault | PolicyAction::TtlAppended => t.ttl(*ns, 0),
                PolicyAction::TtlLowered => t.ttl(*ns, 1),
                PolicyAction::TtlRaised => t.ttl(*ns, 2),
                PolicyAction::Rejected(rule) => {
                    if matches!(
                        rule,
                        crate::policy::Rule::Ttl | crate::policy::Rule::Persist
                    ) {
                        t.ttl(*ns, 3);
                    }
                    t.rejection(*ns, rule.label());
                }
            }
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
    fn flush_run(&mut self) {
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

    fn set_subs(&mut self, shard: bool, count: i64) {
        if shard {
            self.shard_subs = count;
        } else {
            self.subs = count;
        }
    }

    fn reset_state(&mut self) {
        self.reply_mode = ReplyMode::On;
        self.resp3 = false;
        self.subs = 0;
        self.shard_subs = 0;
        self.monitor = false;
    }

    /// Applies what queued HELLO, (un)subscribe, MONITOR and QUIT did when EXEC ran them.
    fn apply_exec_specials(
        &mut self,
        bytes: &[u8],
        f: ReplyFrame,
        layout: &[Slot],
        specials: &[(usize, Special)],
    ) {
        let Some(nl) = memchr::memchr(b'\n', &bytes[f.value_at..]) else {
            return;
        };
        let mut pos = f.value_at + nl + 1;
        let mut scanner = ReplyScanner::new();
        let mut elements = Vec::new();
        while pos < bytes.len() {
            let Ok(Some(el)) = scanner.scan(&bytes[pos..], &self.reply_limits) else {
                break;
            };
            elements.push((pos, el));
            pos += el.len;
        }
        // Specials are numbered among the client's own commands: skip the proxy's.
        let sent: Vec<_> = layout
            .iter()
            .filter(|s| !matches!(s, Slot::Local(_)))
            .collect();
        if elements.len() != sent.len() {
            return;
        }
        let visible: Vec<_> = elements
            .into_iter()
            .zip(sent)
            .filter(|(_, slot)| matches!(slot, Slot::Visible(_)))
            .map(|(e, _)| e)
            .collect();
        for (idx, sp) in specials {
            let Some((at, el)) = visible.get(*idx).copied() else {
                continue;
            };
            let value = &bytes[at + el.value_at..at + el.len];
            match sp {
                Special::Hello => match el.kind {
                    b'%' => self.resp3 = true,
                    b'*' => self.resp3 = false,
                    _ => {}
                },
                Special::Pubsub => {
                    if let Some(PubsubFrame::Confirm { shard, count }) =
                        pubsub_frame(value, &self.reply_limits)
                    {
                        self.set_subs(shard, count.unwrap_or(1));
                    }
                }
                Special::Monitor if el.kind == b'+' => self.monitor = true,
                Special::Quit => self.closing = true,
                _ => {}
            }
        }
    }

    /// Counts hits and misses of reads answered inside an EXEC array.
    fn count_exec_reads(&mut self, bytes: &[u8], f: ReplyFrame, layout: &[Slot]) {
        if !layout.iter().any(|s| matches!(s, Slot::Visible(Some(_)))) {
            return;
        }
        let Some(nl) = memchr::memchr(b'\n', &bytes[f.value_at..]) else {
            return;
        };
        let mut pos = f.value_at + nl + 1;
        let mut scanner = ReplyScanner::new();
        let t = self.ns_table.clone();
        for slot in layout {
            if matches!(slot, Slot::Local(_)) {
                continue;
            }
            let Ok(Some(el)) = scanner.scan(&bytes[pos..], &self.reply_limits) else {
                return;
            };
            if let Slot::Visible(Some(info)) = slot {
                let value = &bytes[pos + el.value_at..pos + el.len];
                if el.kind != b'-' && el.kind != b'!' {
                    let mut count =
                        |ns: NsId, r: metrics::Lookup, n: u64| t.lookup(info.cmd, ns, r, n);
                    metrics::count_lookups(
                        &mut count,
                        info.cmd,
                        info.ns,
                        info.key_ns.as_deref(),
                        info.nkeys as usize,
                        value,
                        &self.reply_limits,
                    );
                }
            }
            pos += el.len;
        }
    }

    /// Rebuilds an EXEC array as the client queued it: replies of proxy-added commands
    /// removed, replies the proxy made inserted.
    fn filter_exec(&mut self, bytes: &[u8], f: ReplyFrame, layout: &[Slot]) -> Option<BytesMut> {
        let sent = layout
            .iter()
            .filter(|s| !matches!(s, Slot::Local(_)))
            .count();
        if f.count < 0 || f.count as usize != sent {
            return None;
        }
        let mut pos = f.value_at + memchr::memchr(b'\n', &bytes[f.value_at..])? + 1;
        let visible = layout.iter().filter(|s| !matches!(s, Slot::Hidden)).count();
        let mut out = BytesMut::with_capacity(bytes.len());
        out.extend_from_slice(&bytes[..f.value_at]);
        let mut ib = [0u8; 20];
        out.extend_from_slice(b"*");
        out.extend_from_slice(codec::fmt_int(&mut ib, visible as i64));
        out.extend_from_slice(b"\r\n");
        let mut scanner = ReplyScanner::new();
        for slot in layout {
            if let Slot::Local(b) = slot {
                out.extend_from_slice(b);
                continue;
            }
            let el = scanner.scan(&bytes[pos..], &self.reply_limits).ok()??;
            match slot {
                Slot::Visible(_) => out.extend_from_slice(&bytes[pos..pos + el.len]),
                Slot::Mapped(reply) if el.kind != b'-' => out.extend_from_slice(reply),
                Slot::Mapped(_) => out.extend_from_slice(&bytes[pos..pos + el.len]),
                Slot::Hidden | Slot::Local(_) => {}
            }
            pos += el.len;
        }
        Some(out)
    }
}

/// Waits for the next shutdown phase change; hands the receiver back to wait again.
async fn next_phase(
    mut rx: watch::Receiver<crate::listener::ShutdownPhase>,
) -> (
    Result<(), watch::error::RecvError>,
    watch::Receiver<crate::listener::ShutdownPhase>,
) {
    let r = rx.changed().await;
    (r, rx)
}

async fn next_reload(
    mut rx: watch::Receiver<u64>,
) -> (Result<(), watch::error::RecvError>, watch::Receiver<u64>) {
    let r = rx.changed().await;
    (r, rx)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Writes as much of `out` as the socket takes now (`try_write`); the rest waits for
/// writability. Shared by the client and upstream sockets and the shared connections.
pub(crate) fn write_now(
    out: &mut BytesMut,
    mut try_write: impl FnMut(&[u8]) -> io::Result<usize>,
) -> io::Result<()> {
    while !out.is_empty() {
        match try_write(out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => out.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    shrink(out);
    Ok(())
}

fn flush_upstream(up: &UpWrite, out: &mut BytesMut) -> io::Result<()> {
    write_now(out, |b| up.try_write(b))
}

fn flush_client(client: &ClientWrite, out: &mut BytesMut) -> io::Result<()> {
    write_now(out, |b| client.try_write(b))
}

/// Gives back the memory of a buffer that a large frame grew, once it is empty.
fn shrink(b: &mut BytesMut) {
    if b.is_empty() && b.capacity() > 4 * READ_CHUNK {
        *b = BytesMut::new();
    }
}
