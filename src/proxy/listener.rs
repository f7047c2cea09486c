//! The listener: accepts clients, enforces the client limit, spawns a session per
//! client, and drains them on shutdown. [`Proxy`] is the running proxy's handle, used by
//! `main` and by the integration tests alike.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::admin;
use super::shared::{Shared, ShutdownPhase};
use crate::config::Config;
use crate::net::stream::ClientStream;
use crate::net::tls::certificate_names;
use crate::policy::auth::PeerInfo;
use crate::upstream::{cluster, Pool};

/// A client accepted by a listener other than the plain TCP one (Unix socket, TLS after its
/// handshake), with a description of where it came from for the log, and its client slot if
/// it took one before being handed over (a TLS client, for its handshake), and what is known
/// of the peer for client identities (its address, its certificate's names).
type Incoming = (ClientStream, String, Option<Slot>, PeerInfo);

/// One client's place under `max_clients`, given back when dropped.
pub struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes a client slot if `max_clients` leaves one.
fn take_slot(shared: &Arc<Shared>) -> Option<Slot> {
    let max = shared.max_clients();
    let n = shared.clients.fetch_add(1, Ordering::AcqRel);
    if n >= max {
        shared.clients.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    Some(Slot(shared.clone()))
}

/// Descriptors kept for the process itself (listeners, the runtime, logs, admin requests),
/// as Redis keeps 32 beyond `maxclients`.
pub const RESERVED_FDS: u64 = 32;

/// The most clients `open_files` descriptors allow: each client may hold two (its socket and
/// a dedicated upstream connection), after [`RESERVED_FDS`] and the shared connections.
pub fn clients_for_descriptors(open_files: u64, shared_connections: usize) -> usize {
    let spare = open_files.saturating_sub(RESERVED_FDS + shared_connections as u64);
    usize::try_from(spare / 2).unwrap_or(usize::MAX).max(1)
}

/// Binds the client listener with `backlog` pending connections (std's default is 128, which
/// a burst of reconnecting clients overflows; Redis uses 511).
fn bind_listener(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// A running proxy.
pub struct Proxy {
    pub local_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    /// The TLS listener's address, if one is configured.
    pub tls_addr: Option<SocketAddr>,
    /// The Unix socket's path, if one is configured.
    pub unix_path: Option<PathBuf>,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<ShutdownPhase>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Binds the listeners and starts serving. Fails only if binding fails.
    pub async fn start(config: Config) -> std::io::Result<Proxy> {
        let listener = bind_listener(config.listen, config.tcp_backlog)?;
        let local_addr = listener.local_addr()?;
        let admin_listener = match config.admin {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
        let unix = match &config.unix_socket {
            Some(u) => Some((bind_unix(&u.path, u.mode)?, u.path.clone())),
            None => None,
        };
        let unix_path = unix.as_ref().map(|(_, p)| p.clone());
        let tls = match &config.tls {
            Some(t) => Some((TcpListener::bind(t.listen).await?, t.clone())),
            None => None,
        };
        let tls_addr = tls.as_ref().and_then(|(l, _)| l.local_addr().ok());
        let shared_conns = config.upstream.shared_connections;
        let requested = config.max_clients;
        let shared = Arc::new(Shared::new(config));
        if let Ok((open_files, _)) = rlimit::Resource::NOFILE.get() {
            let cap = clients_for_descriptors(open_files, shared_conns);
            shared.client_cap.store(cap, Ordering::Relaxed);
            if requested > cap {
                tracing::warn!(
                    requested,
                    open_files,
                    max_clients = cap,
                    "max_clients reduced to {cap} to fit the open file limit of {open_files} \
                     (two descriptors per client, {RESERVED_FDS} kept for the proxy); \
                     raise `ulimit -n` for more"
                );
            }
        }
        let cfg = shared.config();
        if let Some(c) = &cfg.upstream.cluster {
            let metrics = cluster::metrics::Recorded::new(shared.metrics.registry());
            let _ = shared.cluster.set(cluster::Cluster::start(
                c.clone(),
                cfg.upstream.clone(),
                cfg.limits,
                cfg.max_client_output,
                Arc::new(metrics),
            ));
        } else if shared_conns > 0 {
            let _ = shared
                .pool
                .set(Pool::start(shared_conns, Arc::downgrade(&shared)));
        }
        let (shutdown, rx) = watch::channel(ShutdownPhase::Running);
        tokio::spawn(super::reload::watch_tls(
            Arc::downgrade(&shared),
            Duration::from_secs(2),
        ));
        if let Some(l) = admin_listener {
            tokio::spawn(admin::serve(l, shared.clone(), rx.clone()));
        }
        // Other listeners hand their clients to the accept loop, which admits them all alike.
        let (incoming_tx, incoming) = mpsc::channel::<Incoming>(64);
        if let Some((l, path)) = unix {
            tokio::spawn(accept_unix(l, path, incoming_tx.clone(), rx.clone()));
        }
        if let Some((l, t)) = tls {
            tokio::spawn(accept_tls(
                l,
                t,
                shared.clone(),
                incoming_tx.clone(),
                rx.clone(),
            ));
        }
        drop(incoming_tx);
        let task = tokio::spawn(accept_loop(listener, incoming, shared.clone(), rx));
        tracing::info!(%local_addr, admin = ?admin_addr, tls = ?tls_addr, unix = ?unix_path, "respguard listening");
        Ok(Proxy {
            local_addr,
            admin_addr,
            tls_addr,
            unix_path,
            shared,
            shutdown,
            task,
        })
    }

    /// Stops accepting, lets connections deliver their outstanding replies, and returns once
    /// they are done or `grace` has passed.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(ShutdownPhase::Draining);
        let mut task = self.task;
        match tokio::time::timeout(grace, &mut task).await {
            Ok(_) => tracing::info!("all connections drained"),
            Err(_) => {
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "grace period over; closing remaining connections"
                );
                let _ = self.shutdown.send(ShutdownPhase::Abort);
                // Connections exit at their next poll; give them a moment to close sockets.
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut task).await;
            }
        }
    }
}

/// Binds a Unix socket at `path` with file mode `mode`, replacing a socket left by an
/// earlier run (a stale socket file makes `bind` fail, and nothing listens on it).
fn bind_unix(path: &std::path::Path, mode: u32) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(l)
}

async fn accept_unix(
    listener: UnixListener,
    path: PathBuf,
    to: mpsc::Sender<Incoming>,
    mut shutdown: watch::Receiver<ShutdownPhase>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    if to.send((ClientStream::Unix(s), format!("unix:{}", path.display()), None, PeerInfo::default())).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the Unix socket failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let _ = std::fs::remove_file(&path);
}

/// Accepts TLS clients; each handshake runs in a task of its own, bounded by the handshake
/// timeout, so a slow or failing client never holds up another. A handshake in progress
/// holds a client slot: a flood of handshakes is bounded by `max_clients`, and a connection
/// beyond it is closed before any handshake work (no reply can reach it before TLS).
async fn accept_tls(
    listener: TcpListener,
    tls: crate::net::tls::ListenerTls,
    shared: Arc<Shared>,
    to: mpsc::Sender<Incoming>,
    mut shutdown: watch::Receiver<ShutdownPhase>,
) {
    let tls = Arc::new(tls);
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, peer)) => {
                    let Some(slot) = take_slot(&shared) else {
                        shared.metrics.connections_refused.increment(1);
                        tracing::debug!(%peer, "max clients reached; TLS connection closed");
                        continue;
                    };
                    let (tls, shared, to) = (tls.clone(), shared.clone(), to.clone());
                    tokio::spawn(async move {
                        match tls.accept(s).await {
                            Ok(u) => {
                                let cert_names = u
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .map(|c| certificate_names(c))
                                    .unwrap_or_default();
                                let info = PeerInfo { addr: Some(peer.ip()), cert_names };
                                let _ = to.send((ClientStream::Tls(Box::new(u)), format!("tls:{peer}"), Some(slot), info)).await;
                            }
                            Err(f) => {
                                shared.metrics.client_tls_failure(f.reason);
                                tracing::info!(%peer, reason = f.reason, detail = %f.detail, "client TLS handshake failed");
                            }
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the TLS listener failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    mut incoming: mpsc::Receiver<Incoming>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<ShutdownPhase>,
) {
    // Every session holds a sender; when all are dropped, draining is complete.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let upkeep = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                shared.metrics.upkeep();
            }
        })
    };
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let info = PeerInfo { addr: Some(peer.ip()), cert_names: Vec::new() };
                    admit(ClientStream::Tcp(stream), peer, None, info, &shared, &shutdown, &done_tx)
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some((stream, peer, slot, info)) = incoming.recv() => admit(stream, peer, slot, info, &shared, &shutdown, &done_tx),
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    drop(incoming);
    drop(done_tx);
    tracing::info!(
        clients = shared.client_count(),
        "shutting down: draining connections"
    );
    let _ = done_rx.recv().await;
    upkeep.abort();
}

fn admit(
    mut stream: ClientStream,
    peer: impl fmt::Display,
    slot: Option<Slot>,
    info: PeerInfo,
    shared: &Arc<Shared>,
    shutdown: &watch::Receiver<ShutdownPhase>,
    done: &mpsc::Sender<()>,
) {
    let Some(slot) = slot.or_else(|| take_slot(shared)) else {
        shared.metrics.connections_refused.increment(1);
        tracing::debug!(peer = %peer, "max clients reached");
        tokio::spawn(async move {
            let _ = stream
                .write_all(b"-ERR max number of clients reached\r\n")
                .await;
            let _ = stream.shutdown().await;
        });
        return;
    };
    shared.metrics.connections_total.increment(1);
    shared.metrics.client_connections.increment(1.0);
    let shared = shared.clone();
    let shutdown = shutdown.clone();
    let done = done.clone();
    tokio::spawn(async move {
        super::session::serve(stream, info, shared.clone(), shutdown).await;
        drop(slot);
        shared.metrics.client_connections.decrement(1.0);
        drop(done);
    });
}
