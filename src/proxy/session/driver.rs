//! The session's task: the only place that touches sockets. One `select!` waits on the
//! client's halves, the [`Link`], the shutdown phase and the timeouts, and hands what
//! arrives to the state machine.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::watch;

use super::limits::ClientTimeout;
use super::{Session, SessionError, HIGH_WATER, MAX_PENDING, SHARED_MAX_PENDING};
use crate::net::io::{read_now, reserve_for_read, write_now};
use crate::net::stream::{ClientStream, ClientWrite};
use crate::policy::auth::{ClientAuth, PeerInfo};
use crate::proxy::shared::{Shared, ShutdownPhase};
use crate::upstream::{Handle, Link, Ready, UpstreamError};

/// Serves one accepted client until it disconnects, the upstream fails, or shutdown drains it.
pub async fn serve(
    client: ClientStream,
    peer: PeerInfo,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<ShutdownPhase>,
) {
    let _ = client.set_nodelay();
    let cfg = shared.config();
    let link = match shared.cluster() {
        // A router of its own, behind the same handle as a shared connection.
        Some(c) => Link::Shared(Handle::new(c.client())),
        None => Link::open(shared.pool(), &cfg.upstream, &cfg.limits, &shared.metrics).await,
    };
    let mut conn = Session::new(shared, link);
    conn.auth = ClientAuth::new(peer.addr, peer.cert_names, conn.shared.policy().as_deref());
    let read_timeout = cfg.upstream.read_timeout;
    drop(cfg);
    if let Err(e) = conn.run(client, &mut shutdown, read_timeout).await {
        tracing::debug!(error = %e, "connection ended");
    }
    conn.cout = BytesMut::new();
    conn.charge_output();
    conn.flush_run();
}

/// Waits for the next shutdown phase change; hands the receiver back to wait again.
async fn next_phase(
    mut rx: watch::Receiver<ShutdownPhase>,
) -> (
    Result<(), watch::error::RecvError>,
    watch::Receiver<ShutdownPhase>,
) {
    let r = rx.changed().await;
    (r, rx)
}

/// Waits for the next reload; hands the receiver back to wait again.
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

fn flush_client(client: &ClientWrite, out: &mut BytesMut) -> io::Result<()> {
    write_now(out, |b| client.try_write(b))
}

impl Session {
    pub(super) async fn run(
        &mut self,
        client: ClientStream,
        shutdown: &mut watch::Receiver<ShutdownPhase>,
        read_timeout: Duration,
    ) -> Result<(), SessionError> {
        let (mut crd, cwr) = client.into_split();
        let mut draining = *shutdown.borrow() != ShutdownPhase::Running;
        // Kept across iterations: a fresh `changed()` per wakeup would register with and
        // leave the shutdown signal's waiter list every time.
        let mut phase = std::pin::pin!(next_phase(shutdown.clone()));
        // A reload can end only a logged-in or subscribed client's connection; the others
        // pick up a new policy at their next command.
        let mut reload = std::pin::pin!(next_reload(self.shared.policy_watch()));
        let mut reload_open = true;
        let mut client_eof = false;
        loop {
            // Metrics are current whenever the task waits.
            self.flush_run();
            if self.finish_pinning() {
                self.send_batch(&cwr).await?;
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
                && !cwr.has_pending_output()
            {
                // Everything owed was delivered (a half-closed client still gets its replies).
                return Ok(());
            }
            let read_client = !client_eof
                && !draining
                && self.auth_hold.is_none()
                && (self.closing
                    || (!self.link.is_pinning()
                        && (!self.cluster_held() || self.cbuf.len() < HIGH_WATER)
                        && self.uout.len() < HIGH_WATER
                        && self.cout.len() < HIGH_WATER
                        && self.pending.len()
                            < if self.link.is_shared() {
                                SHARED_MAX_PENDING
                            } else {
                                MAX_PENDING
                            }));
            let read_up = self.link.is_dedicated() && self.cout.len() < HIGH_WATER;
            let write_up = self.link.wants_write(!self.uout.is_empty());
            // A TLS stream may hold sealed records after a write: they need writability too.
            let write_client = !self.cout.is_empty() || cwr.has_pending_output();
            let deadline = self.read_deadline(read_timeout, self.link.is_up());
            let client_deadline = if read_client {
                self.client_deadline()
            } else {
                None
            };

            tokio::select! {
                r = crd.readable(), if read_client => {
                    r.map_err(SessionError::Client)?;
                    reserve_for_read(&mut self.cbuf);
                    match read_now(&mut crd, &mut self.cbuf) {
                        Ok(Some(0)) => client_eof = true,
                        Ok(Some(_)) if self.closing => {
                            // Nothing more is read after QUIT or a protocol error, but the
                            // socket is still watched so a disconnect is noticed.
                            self.cbuf.clear();
                        }
                        Ok(Some(_)) => {
                            self.on_client_input();
                            self.send_batch(&cwr).await?;
                        }
                        Ok(None) => {}
                        Err(e) => return Err(SessionError::Client(e)),
                    }
                }
                ev = self.link.ready(read_up, write_up), if read_up || write_up || self.link.is_shared() => {
                    match ev {
                        Ready::Readable(r) => {
                            let res = match r {
                                Err(e) => Err(UpstreamError::Io(e)),
                                Ok(()) => {
                                    reserve_for_read(&mut self.ubuf);
                                    match self.link.read_now(&mut self.ubuf) {
                                        Ok(Some(0)) => Err(UpstreamError::Closed),
                                        Ok(Some(_)) => self.process_upstream(),
                                        Ok(None) => Ok(()),
                                        Err(e) => Err(UpstreamError::Io(e)),
                                    }
                                }
                            };
                            if let Err(e) = res {
                                self.upstream_failed(e);
                            }
                            flush_client(&cwr, &mut self.cout).map_err(SessionError::Client)?;
                        }
                        Ready::Writable(r) => {
                            let res = r.and_then(|()| self.link.flush(&mut self.uout));
                            if let Err(e) = res {
                                self.upstream_failed(e.into());
                                flush_client(&cwr, &mut self.cout).map_err(SessionError::Client)?;
                            }
                        }
                        Ready::Delivered(r) => {
                            self.on_delivery(r);
                            flush_client(&cwr, &mut self.cout).map_err(SessionError::Client)?;
                        }
                    }
                }
                r = cwr.writable(), if write_client => {
                    r.map_err(SessionError::Client)?;
                    flush_client(&cwr, &mut self.cout).map_err(SessionError::Client)?;
                    if self.charged > 0 {
                        self.charge_output();
                    }
                }
                (r, rx) = &mut phase => {
                    let now = *rx.borrow();
                    phase.set(next_phase(rx));
                    if r.is_err() || now == ShutdownPhase::Abort {
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
                (r, rx) = &mut reload, if reload_open && self.auth.bound_by_reloads() => {
                    reload.set(next_reload(rx));
                    reload_open = r.is_ok();
                    self.refresh_policy();
                }
                _ = sleep_until(self.auth_hold.as_ref().map(|h| h.0)), if self.auth_hold.is_some() => {
                    self.release_auth_hold();
                    self.send_batch(&cwr).await?;
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.upstream_failed(UpstreamError::ReadTimeout(read_timeout.as_millis()));
                    flush_client(&cwr, &mut self.cout).map_err(SessionError::Client)?;
                }
            }
        }
    }

    /// Sends what the last client batch produced: as a job on the shared connection, or on
    /// the dedicated one (connecting it first if needed).
    pub(super) async fn send_batch(&mut self, cwr: &ClientWrite) -> Result<(), SessionError> {
        if !self.hand_over() {
            self.unsent = 0;
            if !self.uout.is_empty() && !self.link.is_up() {
                self.reconnect().await;
            }
            if self.link.is_dedicated() {
                let first_new = self.pending.len() - self.batch_len();
                if let Err(e) = self.link.flush(&mut self.uout) {
                    self.upstream_failed(e.into());
                } else {
                    self.stamp_sent(first_new);
                }
            }
        }
        flush_client(cwr, &mut self.cout).map_err(SessionError::Client)
    }

    /// Connects an upstream that was down; on failure every command of this batch gets the
    /// error, and the client may try again later.
    pub(super) async fn reconnect(&mut self) {
        let cfg = self.shared.config();
        let res = match self.cluster_node_config() {
            None => self.link.connect(&cfg.upstream, &self.limits).await,
            // The connection kept from before, to the same node.
            Some(Ok(None)) => Ok(()),
            Some(Ok(Some(node))) => {
                let r = self.link.connect(&node, &self.limits).await;
                if r.is_ok() {
                    self.cluster_connected();
                }
                r
            }
            Some(Err(e)) => Err(e),
        };
        if let Err(e) = res {
            self.shared.metrics.upstream_error(e.kind());
            tracing::warn!(error = %e, "upstream unavailable");
            self.uout.clear();
            self.multi = None;
            self.fail_pending(&e.to_string());
            if self.cpin.is_some() {
                self.cluster_connect_failed();
            }
        }
    }
}
