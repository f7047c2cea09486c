//! One shared connection per cluster node: batches of many clients' commands are written
//! together, and the replies are split back, in order, to whoever sent them.
//!
//! A writer task owns the socket's writing half and a reader task its reading half; the
//! writer hands each batch's reply count to the reader *before* writing it, so the reader
//! always knows whose reply comes next. A broken connection fails what is in flight (those
//! commands may have run) and the next batch connects again; a batch that could not be
//! written at all is reported as never sent, so the router may retry it elsewhere.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{Limits, ReplyScanner};
use crate::config::UpstreamConfig;
use crate::upstream::{UpRead, UpWrite, Upstream, UpstreamError};

use super::topology::NodeAddr;

/// What a node did with a batch.
#[derive(Debug)]
pub enum NodeReply {
    /// One frame per command, in order.
    Frames(Vec<Bytes>),
    /// The batch never reached the node (it was unreachable): safe to send elsewhere.
    NotSent(String),
    /// The connection broke with the batch in flight: the commands may have run.
    Lost(String),
}

/// A batch of commands for one node.
pub struct NodeJob {
    pub bytes: Bytes,
    pub replies: usize,
    pub to: oneshot::Sender<NodeReply>,
}

/// The handle to a node's shared connection; the tasks end when every handle is dropped.
#[derive(Clone)]
pub struct NodeConn {
    tx: mpsc::UnboundedSender<NodeJob>,
}

impl NodeConn {
    /// Starts the node's connection task. It connects on the first batch, with the single-node
    /// upstream's settings (auth, TLS, timeouts) and this node's address.
    pub fn start(addr: &NodeAddr, upstream: &UpstreamConfig, limits: Limits) -> NodeConn {
        let (tx, rx) = mpsc::unbounded_channel();
        let cfg = super::node_config(upstream, addr);
        tokio::spawn(write_loop(rx, cfg, limits));
        NodeConn { tx }
    }

    /// Queues `bytes` (`replies` commands); the receiver gets the replies, or why there are
    /// none. Batches queued for several nodes run at the same time.
    pub fn submit(&self, bytes: Bytes, replies: usize) -> oneshot::Receiver<NodeReply> {
        let (to, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = self.tx.send(NodeJob { bytes, replies, to }) {
            let _ = job
                .to
                .send(NodeReply::NotSent("node connection closed".into()));
        }
        rx
    }
}

struct Waiter {
    left: usize,
    frames: Vec<Bytes>,
    to: oneshot::Sender<NodeReply>,
}

async fn write_loop(mut rx: mpsc::UnboundedReceiver<NodeJob>, cfg: UpstreamConfig, limits: Limits) {
    let addr = cfg.addr.to_string();
    let mut conn: Option<(UpWrite, mpsc::UnboundedSender<Waiter>)> = None;
    let mut out = BytesMut::new();
    while let Some(job) = rx.recv().await {
        let mut jobs = vec![job];
        // What other clients queued meanwhile goes in the same write.
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
        }
        if conn.as_ref().is_some_and(|(_, fifo)| fifo.is_closed()) {
            conn = None;
        }
        if conn.is_none() {
            match Upstream::connect(&cfg, &limits).await {
                Ok(up) => {
                    let (rd, wr) = up.into_split();
                    let (ftx, frx) = mpsc::unbounded_channel();
                    tokio::spawn(read_loop(rd, frx, limits, cfg.read_timeout));
                    conn = Some((wr, ftx));
                }
                Err(e) => {
                    let msg = e.to_string();
                    tracing::debug!(node = %addr, error = %msg, "cluster node unreachable");
                    for j in jobs {
                        let _ = j.to.send(NodeReply::NotSent(msg.clone()));
                    }
                    continue;
                }
            }
        }
        let Some((wr, fifo)) = conn.as_ref() else {
            continue;
        };
        out.clear();
        for j in jobs {
            if j.replies == 0 {
                let _ = j.to.send(NodeReply::Frames(Vec::new()));
                continue;
            }
            out.extend_from_slice(&j.bytes);
            let w = Waiter {
                left: j.replies,
                frames: Vec::with_capacity(j.replies),
                to: j.to,
            };
            if let Err(mpsc::error::SendError(w)) = fifo.send(w) {
                let _ =
                    w.to.send(NodeReply::NotSent("node connection closed".into()));
            }
        }
        if let Err(e) = write_all(wr, &out).await {
            tracing::debug!(node = %addr, error = %e, "cluster node write failed");
            // The reader fails the waiters when it sees the socket closed.
            conn = None;
        }
    }
}

async fn write_all(w: &UpWrite, mut b: &[u8]) -> io::Result<()> {
    while !b.is_empty() {
        w.writable().await?;
        match w.try_write(b) {
            Ok(n) => b = &b[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn read_loop(
    mut rd: UpRead,
    mut fifo: mpsc::UnboundedReceiver<Waiter>,
    limits: Limits,
    read_timeout: Duration,
) {
    // Each client applies its own limits to what it receives; here only frame boundaries
    // matter (as on the single-node shared connections).
    let limits = Limits {
        max_bulk_len: usize::MAX >> 1,
        max_inline_len: usize::MAX >> 1,
        max_depth: usize::MAX,
        ..limits
    };
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut scanner = ReplyScanner::new();
    let mut front: Option<Waiter> = None;
    let err = loop {
        // Complete frames first.
        loop {
            if front.is_none() {
                front = fifo.try_recv().ok();
            }
            let Some(w) = front.as_mut() else { break };
            match scanner.scan(&buf, &limits) {
                Ok(Some(f)) => {
                    w.frames.push(buf.split_to(f.len).freeze());
                    w.left -= 1;
                    if w.left == 0 {
                        if let Some(w) = front.take() {
                            let _ = w.to.send(NodeReply::Frames(w.frames));
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => return fail(front, fifo, &UpstreamError::from(e).to_string()),
            }
        }
        if front.is_none() {
            if !buf.is_empty() {
                break "the node replied to nothing sent".to_string();
            }
            // Idle: wait for the next batch (or the writer's end).
            match fifo.recv().await {
                Some(w) => {
                    front = Some(w);
                    continue;
                }
                None => return,
            }
        }
        let readable = rd.readable();
        let r = if read_timeout.is_zero() {
            readable.await
        } else {
            match tokio::time::timeout(read_timeout, readable).await {
                Ok(r) => r,
                Err(_) => break UpstreamError::ReadTimeout(read_timeout.as_millis()).to_string(),
            }
        };
        if let Err(e) = r {
            break e.to_string();
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        match rd.read_now(&mut buf) {
            Ok(Some(0)) => break UpstreamError::Closed.to_string(),
            Ok(_) => {}
            Err(e) => break e.to_string(),
        }
    };
    fail(front, fifo, &err);
}

/// Fails every batch in flight: their commands may have run.
fn fail(front: Option<Waiter>, mut fifo: mpsc::UnboundedReceiver<Waiter>, why: &str) {
    fifo.close();
    let lost = || NodeReply::Lost(format!("upstream connection lost: {why}"));
    if let Some(w) = front {
        let _ = w.to.send(lost());
    }
    while let Ok(w) = fifo.try_recv() {
        let _ = w.to.send(lost());
    }
}
