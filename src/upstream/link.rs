//! [`Link`]: how one session reaches Redis, in one value.
//!
//! A session starts on a shared connection when the pool has one (its commands are
//! stateless so far), otherwise on a dedicated connection. The first command that needs
//! connection state pins it: the link waits for the shared replies still owed
//! ([`Link::Pinning`]), then continues on a dedicated connection, for good with one Redis. (A
//! cluster client comes back to its router once its connection state is clean:
//! [`Link::share`].) A dedicated
//! connection that could not be made yet is retried with the next batch; one that was lost
//! is not (the client's connection state went with it, so the session closes).
//!
//! Whatever carries the link, the session hands it complete commands with the number of
//! replies they produce and receives reply bytes in order. A task-backed upstream (the
//! shared connections of [`super::pool`], or any other upstream run as a task, such as a
//! cluster router) plugs in through [`Handle`]: it takes [`Job`]s and answers with
//! [`SharedReply`]s in job order.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::connect::{UpRead, UpWrite, Upstream, UpstreamError};
use super::pool::{Job, Pool, ReplyRx, ReplyTx, SharedReply};
use crate::codec::Limits;
use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::net::io::write_now;

/// One session's connection to Redis.
pub enum Link {
    /// On a task-backed upstream (a shared connection): batches go as jobs, replies come
    /// back through the handle.
    Shared(Handle),
    /// A command needs a dedicated connection: the replies still owed on the shared one
    /// are awaited (and new commands held back) before [`Link::unshare`].
    Pinning(Handle),
    /// A connection of its own, driven by readiness.
    Dedicated(Dedicated),
    /// No connection of its own. `retry`: none was ever made, so the next batch tries to
    /// connect; otherwise it was lost, and with it the client's connection state.
    Down { retry: bool },
}

/// What [`Link::ready`] waited for.
#[derive(Debug)]
pub enum Ready {
    /// The dedicated connection has data (or an error): read it with [`Link::read_now`].
    Readable(io::Result<()>),
    /// The dedicated connection takes more: write with [`Link::flush`].
    Writable(io::Result<()>),
    /// A task-backed upstream delivered replies or a failure; `None`: the task ended.
    Delivered(Option<SharedReply>),
}

/// The halves of a session's dedicated connection.
pub struct Dedicated {
    pub rd: UpRead,
    pub wr: UpWrite,
}

/// A session's end of a task-backed upstream: complete commands in, replies out in order.
pub struct Handle {
    jobs: mpsc::UnboundedSender<Job>,
    reply_tx: ReplyTx,
    replies: ReplyRx,
    /// Reply bytes the task has delivered and the session has not taken yet.
    queued: Arc<AtomicUsize>,
}

impl Handle {
    /// A handle on the task that receives `jobs`.
    pub fn new(jobs: mpsc::UnboundedSender<Job>) -> Handle {
        let (reply_tx, replies) = mpsc::unbounded_channel();
        Handle {
            jobs,
            reply_tx,
            replies,
            queued: Arc::default(),
        }
    }

    /// Hands over complete commands: `bytes` holds commands answered by `replies` replies.
    /// False when the task behind the handle has ended.
    pub fn send(&self, bytes: Bytes, replies: usize) -> bool {
        let job = Job {
            bytes,
            replies,
            to: self.reply_tx.clone(),
            queued: self.queued.clone(),
        };
        self.jobs.send(job).is_ok()
    }

    /// The next delivery; `None` once the task has ended.
    pub async fn recv(&mut self) -> Option<SharedReply> {
        self.replies.recv().await
    }

    /// Records that `n` delivered bytes were taken; returns how many delivered bytes still
    /// wait behind them.
    pub fn taken(&self, n: usize) -> usize {
        self.queued.fetch_sub(n, Ordering::AcqRel).saturating_sub(n)
    }
}

impl Link {
    /// A new session's link: a shared connection if the pool has one, else a dedicated
    /// connection. A failed connect is counted and logged; the link is then down and the
    /// next batch retries.
    pub async fn open(
        pool: Option<&Pool>,
        cfg: &UpstreamConfig,
        limits: &Limits,
        metrics: &Metrics,
    ) -> Link {
        if let Some(jobs) = pool.and_then(|p| p.pick()) {
            return Link::Shared(Handle::new(jobs));
        }
        let mut link = Link::Down { retry: true };
        if let Err(e) = link.connect(cfg, limits).await {
            metrics.upstream_error(e.kind());
            tracing::warn!(error = %e, "upstream connect failed; commands will get errors until it is back");
        }
        link
    }

    /// Connects a link that is down and was never connected; does nothing otherwise. On
    /// failure the link stays down and may be retried.
    pub async fn connect(
        &mut self,
        cfg: &UpstreamConfig,
        limits: &Limits,
    ) -> Result<(), UpstreamError> {
        if !matches!(self, Link::Down { retry: true }) {
            return Ok(());
        }
        let (rd, wr) = Upstream::connect(cfg, limits).await?.into_split();
        *self = Link::Dedicated(Dedicated { rd, wr });
        Ok(())
    }

    /// On a shared connection, pinning or not.
    pub fn is_shared(&self) -> bool {
        matches!(self, Link::Shared(_) | Link::Pinning(_))
    }

    /// Waiting for shared replies before continuing on a dedicated connection.
    pub fn is_pinning(&self) -> bool {
        matches!(self, Link::Pinning(_))
    }

    /// Whether replies can arrive: a shared or dedicated connection is there.
    pub fn is_up(&self) -> bool {
        !matches!(self, Link::Down { .. })
    }

    pub fn is_dedicated(&self) -> bool {
        matches!(self, Link::Dedicated(_))
    }

    /// A command needs a dedicated connection but shared replies are still owed.
    pub fn pin(&mut self) {
        if !matches!(self, Link::Shared(_)) {
            return;
        }
        if let Link::Shared(h) = std::mem::replace(self, Link::Down { retry: true }) {
            *self = Link::Pinning(h);
        }
    }

    /// Leaves the shared connection; the next batch connects a dedicated one. Returns the
    /// handle left, for a caller that may come back to it ([`Link::share`]).
    pub fn unshare(&mut self) -> Option<Handle> {
        if !self.is_shared() {
            return None;
        }
        match std::mem::replace(self, Link::Down { retry: true }) {
            Link::Shared(h) | Link::Pinning(h) => Some(h),
            _ => None,
        }
    }

    /// Back from a dedicated connection to the task-backed upstream behind `h`: for a
    /// cluster client whose connection state is clean again. Returns the dedicated
    /// connection, which the caller may keep for later or drop (closing it).
    pub fn share(&mut self, h: Handle) -> Option<Dedicated> {
        match std::mem::replace(self, Link::Shared(h)) {
            Link::Dedicated(d) => Some(d),
            _ => None,
        }
    }

    /// Continues on `d`, a dedicated connection kept from before, when the link is down
    /// and was never connected; hands `d` back otherwise.
    pub fn adopt(&mut self, d: Dedicated) -> Result<(), Dedicated> {
        if !matches!(self, Link::Down { retry: true }) {
            return Err(d);
        }
        *self = Link::Dedicated(d);
        Ok(())
    }

    /// Closes the dedicated connection, if any; the next batch connects a new one (to
    /// another cluster node, when the connection's state has to move).
    pub fn reopen(&mut self) {
        *self = Link::Down { retry: true };
    }

    /// The dedicated connection failed: it is gone for good.
    pub fn lost(&mut self) {
        if self.is_dedicated() {
            *self = Link::Down { retry: false };
        }
    }

    /// The task-backed upstream's handle, when on one.
    pub fn handle(&self) -> Option<&Handle> {
        match self {
            Link::Shared(h) | Link::Pinning(h) => Some(h),
            _ => None,
        }
    }

    /// Whether the dedicated connection has something to write: `unsent` bytes the session
    /// queued, or sealed TLS records the socket did not take yet (a shared link takes its
    /// batches at once and never waits for writability).
    pub fn wants_write(&self, unsent: bool) -> bool {
        match self {
            Link::Dedicated(d) => unsent || d.wr.has_pending_output(),
            _ => false,
        }
    }

    /// Waits for what the link has for the session: readiness of the dedicated connection
    /// (reading when `read`, writing when `write`), or a delivery from a task-backed
    /// upstream. Never resolves when there is nothing to wait for.
    pub async fn ready(&mut self, read: bool, write: bool) -> Ready {
        match self {
            Link::Dedicated(d) => tokio::select! {
                r = d.rd.readable(), if read => Ready::Readable(r),
                r = d.wr.writable(), if write => Ready::Writable(r),
                else => std::future::pending().await,
            },
            Link::Shared(h) | Link::Pinning(h) => Ready::Delivered(h.recv().await),
            Link::Down { .. } => std::future::pending().await,
        }
    }

    /// Reads what the dedicated connection has now; `Ok(None)` when nothing is there or
    /// there is no dedicated connection.
    pub fn read_now(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        match self {
            Link::Dedicated(d) => d.rd.read_now(buf),
            _ => Ok(None),
        }
    }

    /// Writes what the dedicated connection takes now of `out`.
    pub fn flush(&self, out: &mut BytesMut) -> io::Result<()> {
        match self {
            Link::Dedicated(d) => write_now(out, |b| d.wr.try_write(b)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_link_pins_then_leaves_for_a_dedicated_connection() {
        let (jobs, _rx) = mpsc::unbounded_channel();
        let mut link = Link::Shared(Handle::new(jobs));
        assert!(link.is_shared() && link.is_up() && !link.is_pinning());
        link.pin();
        assert!(link.is_shared() && link.is_pinning());
        let h = link.unshare();
        assert!(h.is_some() && matches!(link, Link::Down { retry: true }));
        assert!(link.unshare().is_none());
        // Nothing to lose, nothing to pin: a down link stays as it is.
        link.lost();
        link.pin();
        assert!(matches!(link, Link::Down { retry: true }));
        assert!(!link.wants_write(true));
        // A cluster client goes back to its handle once its connection state is clean.
        if let Some(h) = h {
            assert!(link.share(h).is_none());
        }
        assert!(link.is_shared() && !link.is_pinning());
        link.reopen();
        assert!(matches!(link, Link::Down { retry: true }));
    }

    #[test]
    fn a_handle_sends_whole_batches_with_their_reply_count() {
        let (jobs, mut rx) = mpsc::unbounded_channel();
        let h = Handle::new(jobs);
        assert!(h.send(Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"), 1));
        let job = match rx.try_recv() {
            Ok(j) => j,
            Err(e) => panic!("no job: {e}"),
        };
        assert_eq!(&job.bytes[..], b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(job.replies, 1);
        // The task counts what it delivers; the session takes it off.
        job.queued.fetch_add(7 + 5, Ordering::AcqRel);
        assert_eq!(h.taken(7), 5);
        assert_eq!(h.taken(5), 0);
        drop(rx);
        assert!(!h.send(Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"), 1));
    }
}
