//! One client's session: reads commands, runs the policy, forwards them over its
//! [`Link`] to Redis, and pairs every reply with the command it answers.
//!
//! The session is a state machine over four buffers (client in/out, upstream in/out); only
//! [`driver`] touches sockets, in one `select!` over both sides. Everything already buffered
//! is handled in one pass, so a pipeline of hundreds of commands costs one read and one write
//! each way, not one syscall per command.
//!
//! Pairing is a FIFO of [`Pending`] entries, one per command sent upstream (plus entries the
//! proxy answers itself, kept in the same FIFO so replies stay in order). Frames that answer no
//! command (RESP3 pushes, RESP2 pub/sub messages, `MONITOR` output) are recognised and passed
//! through without consuming an entry. If pairing could ever be wrong (the upstream breaks
//! mid-request), the client is disconnected rather than sent a reply for another command.
//!
//! By concern:
//! - [`intake`]: the client's commands, one by one: policy, connection-state tracking,
//!   forwarding, pinning.
//! - [`pairing`]: upstream replies matched with pending commands.
//! - [`transaction`]: MULTI/EXEC: the EXEC reply rebuilt as the client queued it.
//! - [`modes`]: pub/sub, MONITOR, RESP3 and `CLIENT REPLY`.
//! - [`cluster`]: a cluster client's connection of its own to one node, and back.
//! - [`record`]: metrics per finished command, batched per run of identical results.
//! - [`limits`]: client timeouts, upstream read timeout, output limits.
//! - [`driver`]: the task: sockets, `select!`, connecting.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::shared::Shared;
use crate::codec::{self, Limits, ReplyScanner, Span};
use crate::command::CommandSpec;
use crate::metrics::{NsTable, Outcome};
use crate::policy::auth::ClientAuth;
use crate::policy::{NsId, Policy, Scratch, NS_NONE};
use crate::upstream::{Link, UpstreamError};

mod cluster;
mod driver;
mod identity;
mod intake;
mod limits;
mod modes;
mod pairing;
mod record;
mod transaction;

#[cfg(test)]
mod tests;

use crate::command::traits::Special;
pub use driver::serve;
use modes::ReplyMode;
use record::{Actions, Run, SensitiveFinding};
use transaction::Slot;

/// Stop reading more commands while this much is waiting to be written either way.
const HIGH_WATER: usize = 4 * 1024 * 1024;

/// Stop reading more commands while this many replies are outstanding.
const MAX_PENDING: usize = 64 * 1024;

/// The same on a shared connection, where other clients' replies queue behind this client's:
/// what one client has in flight there delays the others and is the most a client that
/// stops reading can still have coming to it.
const SHARED_MAX_PENDING: usize = 1024;

/// Granularity of a client's share in the process-wide unread reply total.
const OUTPUT_STEP: usize = 256 * 1024;

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
    /// `WATCH` from a cluster client on a connection of its own: it stays there while
    /// the keys are watched. Carries how many commands that end watching were sent before.
    Watch(u32),
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

/// What the client gets of one upstream frame.
enum Action {
    Forward,
    Drop,
    Replace(BytesMut),
}

/// Why the connection loop ended, for logs.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client i/o: {0}")]
    Client(#[source] io::Error),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// Per-connection state. Sockets live outside it so `select!` can borrow them while the
/// handlers mutate the state.
struct Session {
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
    /// How the client reaches Redis: shared, pinning, dedicated or down.
    link: Link,
    /// Replies expected for what is in `uout` (the size of the next shared job).
    unsent: usize,
    /// A cluster client on a connection of its own to one node (see [`cluster`]).
    /// Boxed, like the spare connection below: most sessions never need them.
    cpin: Option<Box<cluster::ClusterPin>>,
    /// A cluster client's `CLIENT SETNAME`, kept by the proxy (it has no connection to name).
    cluster_name: Option<Bytes>,
    /// A cluster client's last connection of its own, clean, and its node: used again when
    /// the next command that needs one goes to the same node.
    cluster_spare: Option<
        Box<(
            crate::upstream::cluster::NodeAddr,
            crate::upstream::Dedicated,
        )>,
    >,
    /// The client's identity (`policy.clients`).
    auth: ClientAuth,
    /// A failed login's answer, held until its delay is over; no command is read meanwhile.
    auth_hold: Option<(tokio::time::Instant, Bytes, Option<usize>)>,
}

impl Session {
    /// A session for one client, reaching Redis over `link`, with the limits of the
    /// configuration in force.
    pub fn new(shared: Arc<Shared>, link: Link) -> Session {
        let cfg = shared.config();
        let limits = cfg.limits;
        Session {
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
            link,
            unsent: 0,
            cpin: None,
            cluster_name: None,
            cluster_spare: None,
            auth: ClientAuth::default(),
            auth_hold: None,
            shared,
        }
    }
}
