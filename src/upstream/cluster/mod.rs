//! A Redis Cluster upstream: the client keeps talking to one Redis (respguard), and respguard
//! routes each command to the primary serving its key's slot.
//!
//! - [`route`]: where a command goes (slot, split by slot, every primary, answered here).
//! - [`topology`]: the slot map, from `CLUSTER SHARDS` or `CLUSTER SLOTS`.
//! - [`node`]: one shared connection per node.
//! - [`router`]: a client's batches in, its replies out in order; redirections followed.
//!
//! The contract towards the session is the one of the single-node shared connections: a
//! batch of one client's commands goes in as a [`crate::upstream::Job`], the replies come
//! back in the client's order. `MOVED` and `ASK` never reach the client. A client whose
//! commands need connection state (a transaction, a blocking command, subscriptions) is given
//! what it needs to connect to one node itself ([`Cluster::owner`], [`Cluster::any_primary`],
//! [`Cluster::node_config`]) and reports the redirections it meets there ([`Cluster::moved`]).
//!
//! The topology is refreshed by one task: every `refresh_interval`, and early when a
//! `MOVED` or an unreachable node says the map is stale, at most once a second
//! ([`MIN_REFRESH_GAP`]); requests while a refresh runs or waits are folded into it.

pub mod metrics;
pub mod node;
pub mod route;
pub mod router;
pub mod topology;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{mpsc, Notify};

use crate::codec::Limits;
use crate::config::UpstreamConfig;
use crate::upstream::Job;
use crate::upstream::Upstream;

pub use crate::config::NodeAddr;
pub use topology::SlotMap;

pub use crate::config::ClusterConfig;
/// Refreshes of the slot map are at least this far apart.
pub use crate::config::MIN_REFRESH_GAP;

/// Counters of the cluster upstream; the node label is bounded by the cluster's size (nodes
/// that leave the topology are forgotten).
pub trait ClusterMetrics: Send + Sync {
    /// A redirection followed: `moved`, `ask`, `tryagain`, `clusterdown`, `unreachable`.
    fn redirect(&self, kind: &'static str);
    /// A topology refresh and its result: `ok` or `error`.
    fn refresh(&self, ok: bool);
    /// A batch answered by `node`, how long it took, and whether the node failed it.
    fn node_batch(&self, node: &str, latency: Duration, failed: bool);
    /// A connection to `node` opened for one client's connection state.
    fn dedicated(&self, _node: &str) {}
    /// The nodes in the topology now: figures of any other node are no longer recorded.
    fn forget_except(&self, _keep: &[String]) {}
}

/// Metrics that go nowhere (unit tests, benchmarks of the router alone).
pub struct NoMetrics;

impl ClusterMetrics for NoMetrics {
    fn redirect(&self, _: &'static str) {}
    fn refresh(&self, _: bool) {}
    fn node_batch(&self, _: &str, _: Duration, _: bool) {}
}

/// The cluster upstream of one proxy. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    cfg: ClusterConfig,
    upstream: UpstreamConfig,
    limits: Limits,
    /// Bound on replies buffered for a client that does not read them.
    max_buffered: usize,
    map: RwLock<Arc<SlotMap>>,
    nodes: DashMap<String, node::NodeConn>,
    refresh_wanted: Arc<Notify>,
    /// Whether the last topology refresh succeeded; `/readyz` reports ready only while it has.
    healthy: AtomicBool,
    last_error: RwLock<String>,
    /// Rotates keyless commands over the primaries.
    next_any: AtomicUsize,
    metrics: Arc<dyn ClusterMetrics>,
}

impl Cluster {
    /// Starts the topology task and returns at once; commands sent before the first map is
    /// known wait for it (up to `retry_timeout`).
    pub fn start(
        cfg: ClusterConfig,
        upstream: UpstreamConfig,
        limits: Limits,
        max_buffered: usize,
        metrics: Arc<dyn ClusterMetrics>,
    ) -> Cluster {
        let inner = Arc::new(Inner {
            cfg,
            upstream,
            limits,
            max_buffered,
            map: RwLock::new(Arc::new(SlotMap::empty())),
            nodes: DashMap::new(),
            refresh_wanted: Arc::new(Notify::new()),
            healthy: AtomicBool::new(false),
            last_error: RwLock::new("topology not read yet".into()),
            next_any: AtomicUsize::new(0),
            metrics,
        });
        tokio::spawn(refresh_loop(
            Arc::downgrade(&inner),
            inner.refresh_wanted.clone(),
        ));
        inner.refresh_wanted.notify_one();
        Cluster { inner }
    }

    /// A link for one client: its batches go in, replies come back on each job's channel.
    /// The client's router task ends when the sender is dropped.
    pub fn client(&self) -> mpsc::UnboundedSender<Job> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(router::serve(self.inner.clone(), rx));
        tx
    }

    /// Ready when the latest topology refresh succeeded and covers every slot.
    pub fn ready(&self) -> Result<(), String> {
        if self.inner.healthy.load(Ordering::Acquire) {
            return Ok(());
        }
        Err(read(&self.inner.last_error).clone())
    }

    /// The current slot map.
    pub fn slot_map(&self) -> Arc<SlotMap> {
        self.inner.map()
    }

    /// The primary serving `slot` now, as far as the map knows.
    pub fn owner(&self, slot: u16) -> Option<NodeAddr> {
        self.inner.map().owner(slot).cloned()
    }

    /// A primary for a connection that needs no particular slot, in turn.
    pub fn any_primary(&self) -> Option<NodeAddr> {
        self.inner.any_primary(&self.inner.map())
    }

    /// The upstream settings (auth, TLS, timeouts) for a connection of its own to `addr`,
    /// for a client whose connection state must live on one node.
    pub fn node_config(&self, addr: &NodeAddr) -> UpstreamConfig {
        node_config(&self.inner.upstream, addr)
    }

    /// A node answered `MOVED slot to` outside the routers: the map learns it, and a refresh
    /// of the whole map is asked for.
    pub fn moved(&self, slot: u16, to: &NodeAddr) {
        self.inner.metrics().redirect("moved");
        self.inner.moved(slot, to);
    }

    /// A connection of its own to `node` was opened for a client with connection state.
    pub fn dedicated_opened(&self, node: &NodeAddr) {
        self.inner.metrics().dedicated(&node.to_string());
    }

    /// A node answered `ASK`: nothing changes in the map, but the slot is migrating.
    pub fn asked(&self) {
        self.inner.metrics().redirect("ask");
    }
}

/// The single-node upstream's settings with `addr` as the address (cluster nodes all serve
/// database 0).
pub(crate) fn node_config(upstream: &UpstreamConfig, addr: &NodeAddr) -> UpstreamConfig {
    let mut cfg = upstream.clone();
    cfg.addr = crate::config::UpstreamAddr::Tcp {
        host: addr.host.clone(),
        port: addr.port,
    };
    cfg.db = 0;
    cfg
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    pub(crate) fn map(&self) -> Arc<SlotMap> {
        read(&self.map).clone()
    }

    /// Asks for a refresh soon (folded into one already waiting).
    pub(crate) fn stale(&self) {
        self.refresh_wanted.notify_one();
    }

    /// A `MOVED` answer: the slot's new owner is known now; the rest of the map may be stale.
    pub(crate) fn moved(&self, slot: u16, to: &NodeAddr) {
        {
            let mut m = write(&self.map);
            if m.owner(slot) != Some(to) {
                *m = Arc::new(m.with_moved(slot, to));
            }
        }
        self.stale();
    }

    /// The shared connection to `addr`, started on first use.
    pub(crate) fn node(&self, addr: &NodeAddr) -> node::NodeConn {
        let key = addr.to_string();
        if let Some(n) = self.nodes.get(&key) {
            return n.clone();
        }
        self.nodes
            .entry(key)
            .or_insert_with(|| node::NodeConn::start(addr, &self.upstream, self.limits))
            .clone()
    }

    pub(crate) fn cfg(&self) -> &ClusterConfig {
        &self.cfg
    }

    pub(crate) fn metrics(&self) -> &dyn ClusterMetrics {
        &*self.metrics
    }

    pub(crate) fn max_buffered(&self) -> usize {
        self.max_buffered
    }

    /// A primary for a keyless command, in turn.
    pub(crate) fn any_primary(&self, map: &SlotMap) -> Option<NodeAddr> {
        let p = map.primaries();
        if p.is_empty() {
            return None;
        }
        let i = self.next_any.fetch_add(1, Ordering::Relaxed) % p.len();
        p.get(i).cloned()
    }

    /// Reads the topology from the first node that answers: known primaries, then replicas,
    /// then the seeds.
    async fn refresh(&self) -> Result<SlotMap, String> {
        let map = self.map();
        let mut candidates: Vec<NodeAddr> = map.primaries().to_vec();
        candidates.extend(map.replicas().iter().cloned());
        for s in &self.cfg.seeds {
            if !candidates.contains(s) {
                candidates.push(s.clone());
            }
        }
        let mut last = String::from("no node to ask");
        for addr in candidates {
            match self.ask_topology(&addr).await {
                Ok(m) if m.covered() == topology::SLOTS => return Ok(m),
                Ok(m) => {
                    last = format!(
                        "{addr}: {} of {} slots served: the cluster is down",
                        m.covered(),
                        topology::SLOTS
                    );
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(format!(
            "no cluster node gave a usable topology (last: {last})"
        ))
    }

    async fn ask_topology(&self, addr: &NodeAddr) -> Result<SlotMap, String> {
        let cfg = node_config(&self.upstream, addr);
        let tls = cfg.tls.is_some();
        let limits = Limits {
            max_bulk_len: usize::MAX >> 1,
            max_inline_len: usize::MAX >> 1,
            ..self.limits
        };
        let up = Upstream::connect(&cfg, &limits)
            .await
            .map_err(|e| e.to_string())?;
        let call = |req: &'static [u8]| {
            let up = &up;
            async move {
                tokio::time::timeout(
                    cfg.connect_timeout.max(Duration::from_secs(1)),
                    up.call(req, 1, &limits),
                )
                .await
                .map_err(|_| "no topology reply in time".to_string())?
                .map_err(|e| e.to_string())?
                .pop()
                .ok_or_else(|| "no reply".to_string())
            }
        };
        let reply = call(b"*2\r\n$7\r\nCLUSTER\r\n$6\r\nSHARDS\r\n").await?;
        match topology::parse_shards(&reply, tls, &addr.host) {
            Ok(m) => Ok(m),
            // Before Redis 7 (or a proxy in between that lacks it).
            Err(topology::TopologyError::Refused(_)) => {
                let reply = call(b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n").await?;
                topology::parse_slots(&reply, &addr.host).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Installs a new map and forgets connections to nodes no longer in it (so the node
    /// label of the metrics stays bounded by the cluster's size).
    fn install(&self, map: SlotMap) {
        let keep: Vec<String> = map
            .primaries()
            .iter()
            .chain(map.replicas())
            .map(|a| a.to_string())
            .collect();
        self.nodes.retain(|k, _| keep.contains(k));
        self.metrics.forget_except(&keep);
        *write(&self.map) = Arc::new(map);
    }
}

/// Holds the cluster only while refreshing: it ends once the proxy dropped the cluster.
async fn refresh_loop(inner: Weak<Inner>, wanted: Arc<Notify>) {
    let mut last: Option<Instant> = None;
    let Some(interval) = inner.upgrade().map(|i| i.cfg.refresh_interval) else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = wanted.notified() => {}
        }
        if let Some(at) = last {
            let since = at.elapsed();
            if since < MIN_REFRESH_GAP {
                tokio::time::sleep(MIN_REFRESH_GAP - since).await;
            }
        }
        let Some(i) = inner.upgrade() else { return };
        last = Some(Instant::now());
        match i.refresh().await {
            Ok(map) => {
                i.install(map);
                i.healthy.store(true, Ordering::Release);
                i.metrics.refresh(true);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster topology refresh failed");
                i.healthy.store(false, Ordering::Release);
                *write(&i.last_error) = e;
                i.metrics.refresh(false);
                // Keep trying at the fastest pace while nothing works.
                i.stale();
            }
        }
    }
}
