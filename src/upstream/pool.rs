//! The shared-connection pool: multiplexed upstream connections for clients that have no
//! connection state yet.
//!
//! A client that has only sent stateless commands (reads, writes, scripts: nothing that
//! selects a database, authenticates, subscribes, blocks, watches or names the connection)
//! cannot tell which Redis connection ran them. Such clients share a few upstream
//! connections: their batches are written together and Redis's replies are split back per
//! client in order. That halves the syscalls per request on the upstream side, which is most
//! of a proxy's cost, and an idle client holds no upstream connection at all.
//!
//! The first command that depends on or changes connection state *pins* the client: it waits
//! until its shared replies are in, gets a dedicated connection, and keeps it for good (see
//! [`super::Link`]). The rule is the command traits' `shareable`
//! ([`crate::command::traits::shareable`]).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::connect::{UpRead, UpWrite, Upstream, UpstreamError};
use super::Env;
use crate::codec::ReplyScanner;

/// What a client receives from a shared connection.
#[derive(Debug)]
pub enum SharedReply {
    /// One or more complete reply frames, in order.
    Frames(Bytes),
    /// The shared connection failed. `sent` says whether the client's commands may have
    /// reached Redis (then it must be disconnected, as its replies are lost) or not.
    Failed {
        sent: bool,
        kind: &'static str,
        message: String,
    },
}

/// [`SharedReply::Failed`] kind of a client that left too many replies in its channel.
pub const CLIENT_BUFFER: &str = "client_buffer";

pub type ReplyTx = mpsc::UnboundedSender<SharedReply>;
pub type ReplyRx = mpsc::UnboundedReceiver<SharedReply>;

/// A batch of one client's commands for a shared connection.
#[derive(Debug)]
pub struct Job {
    pub bytes: Bytes,
    /// How many replies Redis will send for `bytes`.
    pub replies: usize,
    pub to: ReplyTx,
    /// Reply bytes sent to the client and not yet taken by it. A shared connection cannot
    /// wait for one slow reader, so past the client's buffer limit its replies are dropped
    /// and it is told to close.
    pub queued: Arc<AtomicUsize>,
}

/// The shared connections of one proxy.
pub struct Pool {
    conns: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
}

impl Pool {
    /// Starts `n` shared-connection tasks. They hold only a weak reference to the proxy and
    /// end when the pool is dropped.
    pub fn start<E: Env>(n: usize, shared: Weak<E>) -> Pool {
        let conns = (0..n.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(run(rx, shared.clone()));
                tx
            })
            .collect();
        Pool {
            conns,
            next: AtomicUsize::new(0),
        }
    }

    /// A shared connection for a new client (round robin).
    pub fn pick(&self) -> Option<mpsc::UnboundedSender<Job>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len().max(1);
        self.conns.get(i).cloned()
    }
}

struct Waiting {
    remaining: usize,
    to: ReplyTx,
    queued: Arc<AtomicUsize>,
}

/// One shared connection: writes jobs, splits replies back to their clients.
async fn run<E: Env>(mut rx: mpsc::UnboundedReceiver<Job>, shared: Weak<E>) {
    let mut rd: Option<UpRead> = None;
    let mut wr: Option<UpWrite> = None;
    let mut out = BytesMut::new();
    let mut inb = BytesMut::new();
    let mut fifo: VecDeque<Waiting> = VecDeque::new();
    let mut scanner = ReplyScanner::new();
    loop {
        let want_write = wr.is_some() && !out.is_empty();
        tokio::select! {
            job = rx.recv() => {
                let Some(job) = job else { return };
                let Some(sh) = shared.upgrade() else { return };
                if wr.is_none() {
                    let cfg = sh.config();
                    match Upstream::connect(&cfg.upstream, &cfg.limits).await {
                        Ok(u) => {
                            let (r, w) = u.into_split();
                            rd = Some(r);
                            wr = Some(w);
                        }
                        Err(e) => {
                            sh.metrics().upstream_error(e.kind());
                            tracing::warn!(error = %e, "shared upstream connection failed");
                            refuse(job, &e);
                            while let Ok(j) = rx.try_recv() {
                                refuse(j, &e);
                            }
                            continue;
                        }
                    }
                }
                enqueue(job, &mut out, &mut fifo);
                // Everything other clients queued meanwhile goes in the same write.
                while let Ok(j) = rx.try_recv() {
                    enqueue(j, &mut out, &mut fifo);
                }
                if let Some(w) = wr.as_ref() {
                    if let Err(e) = flush(w, &mut out) {
                        fail(&*sh, &mut rd, &mut wr, (&mut out, &mut inb, &mut scanner), &mut fifo, e.into());
                    }
                }
            }
            r = async { match rd.as_ref() { Some(r) => r.readable().await, None => std::future::pending().await } }, if rd.is_some() => {
                let Some(sh) = shared.upgrade() else { return };
                let res = match (r, rd.as_mut()) {
                    (Err(e), _) => Err(UpstreamError::Io(e)),
                    (Ok(()), Some(r)) => {
                        if inb.capacity() - inb.len() < 4096 {
                            inb.reserve(64 * 1024);
                        }
                        match r.read_now(&mut inb) {
                            Ok(Some(0)) => Err(UpstreamError::Closed),
                            Ok(Some(_)) => dispatch(&mut inb, &mut fifo, &mut scanner, &*sh),
                            Ok(None) => Ok(()),
                            Err(e) => Err(UpstreamError::Io(e)),
                        }
                    }
                    (Ok(()), None) => Ok(()),
                };
                if let Err(e) = res {
                    fail(&*sh, &mut rd, &mut wr, (&mut out, &mut inb, &mut scanner), &mut fifo, e);
                }
            }
            r = async { match wr.as_ref() { Some(w) => w.writable().await, None => std::future::pending().await } }, if want_write => {
                let Some(sh) = shared.upgrade() else { return };
                let res = r.and_then(|()| match wr.as_ref() {
                    Some(w) => flush(w, &mut out),
                    None => Ok(()),
                });
                if let Err(e) = res {
                    fail(&*sh, &mut rd, &mut wr, (&mut out, &mut inb, &mut scanner), &mut fifo, e.into());
                }
            }
        }
    }
}

fn enqueue(job: Job, out: &mut BytesMut, fifo: &mut VecDeque<Waiting>) {
    if job.replies == 0 {
        return;
    }
    out.extend_from_slice(&job.bytes);
    fifo.push_back(Waiting {
        remaining: job.replies,
        to: job.to,
        queued: job.queued,
    });
}

fn refuse(job: Job, e: &UpstreamError) {
    let _ = job.to.send(SharedReply::Failed {
        sent: false,
        kind: e.kind(),
        message: e.to_string(),
    });
}

/// The connection broke: every client with commands in flight loses them.
fn fail(
    sh: &impl Env,
    rd: &mut Option<UpRead>,
    wr: &mut Option<UpWrite>,
    (out, inb, scanner): (&mut BytesMut, &mut BytesMut, &mut ReplyScanner),
    fifo: &mut VecDeque<Waiting>,
    e: UpstreamError,
) {
    sh.metrics().upstream_error(e.kind());
    tracing::warn!(error = %e, clients = fifo.len(), "shared upstream connection failed");
    *rd = None;
    *wr = None;
    out.clear();
    // A partial reply of the broken connection must not precede the next connection's.
    inb.clear();
    scanner.reset();
    for w in fifo.drain(..) {
        let _ = w.to.send(SharedReply::Failed {
            sent: true,
            kind: e.kind(),
            message: e.to_string(),
        });
    }
}

/// Splits complete replies in `inb` among the waiting clients, in order.
fn dispatch(
    inb: &mut BytesMut,
    fifo: &mut VecDeque<Waiting>,
    scanner: &mut ReplyScanner,
    sh: &impl Env,
) -> Result<(), UpstreamError> {
    // A shared connection carries many clients' replies: nothing is bounded here (the
    // scanner's stack grows with the reply's bytes, not by recursion); each client applies its
    // own limits, nesting included, when it receives its frames, so a reply over a limit fails
    // only the client that asked for it.
    let limits = crate::codec::Limits {
        max_bulk_len: usize::MAX >> 1,
        max_inline_len: usize::MAX >> 1,
        max_depth: usize::MAX,
        ..sh.config().limits
    };
    // The client's task applies `max_client_output` to what it takes from its channel; this
    // bound only guards against a task that does not take its replies at all.
    let max_buffered = sh.config().max_client_output.saturating_mul(2);
    let mut off = 0;
    let mut chunk_start = 0;
    let mut result = Ok(());
    loop {
        let Some(front) = fifo.front_mut() else {
            if off < inb.len() {
                // Redis replied to nothing we sent: never guess whose reply it is.
                result = Err(UpstreamError::Protocol(
                    crate::codec::ProtocolError::InvalidLine,
                ));
            }
            break;
        };
        let frame = match scanner.scan(&inb[off..], &limits) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                result = Err(e.into());
                break;
            }
        };
        off += frame.len;
        front.remaining -= 1;
        if front.remaining == 0 {
            let chunk = inb.split_to(off - chunk_start).freeze();
            off = 0;
            chunk_start = 0;
            deliver(front, chunk, max_buffered);
            fifo.pop_front();
        }
    }
    if off > chunk_start {
        // Part of a client's replies: send what is complete now.
        let chunk = inb.split_to(off - chunk_start).freeze();
        if let Some(front) = fifo.front() {
            deliver(front, chunk, max_buffered);
        }
    }
    result
}

/// Hands replies to their client, unless it already has more than its limit waiting: then
/// they are dropped and the client is told its replies are lost (it closes).
fn deliver(w: &Waiting, chunk: Bytes, max_buffered: usize) {
    // Marks a client already told; its replies from then on are dropped.
    const FAILED: usize = usize::MAX / 2;
    let before = w.queued.fetch_add(chunk.len(), Ordering::AcqRel);
    if before >= FAILED / 2 {
        return;
    }
    if before > max_buffered {
        w.queued.store(FAILED, Ordering::Release);
        let _ = w.to.send(SharedReply::Failed {
            sent: true,
            kind: CLIENT_BUFFER,
            message: "client output buffer limit reached: replies are not being read".into(),
        });
        return;
    }
    let _ = w.to.send(SharedReply::Frames(chunk));
}

fn flush(w: &UpWrite, out: &mut BytesMut) -> io::Result<()> {
    crate::net::io::write_now(out, |b| w.try_write(b))
}
