//! State shared by every task of one proxy: the configuration and policy in force (swapped
//! by reloads), metrics, the client count, the shared upstream connections, and the shutdown
//! phase the tasks watch.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use crate::config::Config;
use crate::metrics::{Metrics, NsTable};
use crate::policy::Policy;
use crate::upstream::cluster::Cluster;
use crate::upstream::{Env, Pool};

/// Where the proxy is in its life; connections watch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownPhase {
    Running,
    /// Stop reading commands; deliver outstanding replies, then close.
    Draining,
    /// The grace period is over: close now.
    Abort,
}

/// State shared by every connection of one proxy.
pub struct Shared {
    config: RwLock<Arc<Config>>,
    policy: RwLock<Option<Arc<Policy>>>,
    /// Bumped on every reload; connections compare it (one atomic load per read) to pick up a
    /// new policy between batches, so a switch is atomic per command.
    policy_gen: AtomicU64,
    pub metrics: Metrics,
    /// The namespace handle table of the current policy generation, built once per reload.
    ns_table: Mutex<Option<(u64, Arc<NsTable>)>>,
    pub(super) clients: AtomicUsize,
    /// Reply bytes held for clients that have not read them, for `max_total_output`.
    /// Connections update it in steps, not per reply.
    pub output_bytes: AtomicUsize,
    /// Shared upstream connections for clients without connection state, if enabled.
    pub(super) pool: OnceLock<Pool>,
    /// The cluster upstream, when the upstream is a Redis Cluster.
    pub(super) cluster: OnceLock<Cluster>,
    /// The most clients the open file limit allows (see [`super::listener::clients_for_descriptors`]).
    pub(super) client_cap: AtomicUsize,
    /// Failed logins per client address (`policy.clients`).
    pub auth_failures: crate::policy::auth::Failures,
    /// Told the policy generation on every reload, so a session whose identity was removed
    /// closes at once rather than at its next command.
    policy_changed: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    pub fn new(config: Config) -> Shared {
        let policy = config.policy.clone();
        Shared {
            config: RwLock::new(Arc::new(config)),
            policy: RwLock::new(policy),
            policy_gen: AtomicU64::new(0),
            metrics: Metrics::new(),
            ns_table: Mutex::new(None),
            pool: OnceLock::new(),
            cluster: OnceLock::new(),
            clients: AtomicUsize::new(0),
            output_bytes: AtomicUsize::new(0),
            client_cap: AtomicUsize::new(usize::MAX),
            auth_failures: crate::policy::auth::Failures::default(),
            policy_changed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        match self.config.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn policy(&self) -> Option<Arc<Policy>> {
        match self.policy.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn policy_generation(&self) -> u64 {
        self.policy_gen.load(Ordering::Acquire)
    }

    /// Installs a new, already validated configuration. Addresses and limits that need a
    /// restart keep their old values; the policy switches for commands read from now on.
    pub fn install(&self, new: Config) {
        let old = self.config();
        if new.listen != old.listen
            || new.admin != old.admin
            || new.upstream != old.upstream
            || new.unix_socket != old.unix_socket
            || new
                .tls
                .as_ref()
                .map(|t| (t.listen, &t.files, t.client_auth))
                != old
                    .tls
                    .as_ref()
                    .map(|t| (t.listen, &t.files, t.client_auth))
        {
            tracing::warn!("listen, unix_socket, tls, admin and upstream changes take effect only after a restart");
        }
        let policy = new.policy.clone();
        let mut merged = new;
        merged.listen = old.listen;
        merged.admin = old.admin;
        merged.upstream = old.upstream.clone();
        // The TLS material in force is replaced only by the certificate watcher.
        merged.unix_socket = old.unix_socket.clone();
        merged.tls = old.tls.clone();
        match self.config.write() {
            Ok(mut g) => *g = Arc::new(merged),
            Err(p) => *p.into_inner() = Arc::new(merged),
        }
        match self.policy.write() {
            Ok(mut g) => *g = policy,
            Err(p) => *p.into_inner() = policy,
        }
        let gen = self.policy_gen.fetch_add(1, Ordering::AcqRel) + 1;
        self.policy_changed.send_replace(gen);
    }

    /// A receiver told of every reload.
    pub fn policy_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.policy_changed.subscribe()
    }

    /// Per-namespace metric handles for the policy in force.
    pub fn namespace_table(&self) -> Arc<NsTable> {
        let mut guard = match self.ns_table.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let gen = self.policy_generation();
        if let Some((g, t)) = guard.as_ref() {
            if *g == gen {
                return t.clone();
            }
        }
        let names: Vec<String> = self
            .policy()
            .map(|p| p.namespace_names().to_vec())
            .unwrap_or_default();
        let t = self.metrics.namespace_table(&names);
        *guard = Some((gen, t.clone()));
        t
    }

    pub fn pool(&self) -> Option<&Pool> {
        self.pool.get()
    }

    /// The cluster upstream, when `upstream.cluster` is configured.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.get()
    }

    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// `limits.max_clients`, lowered to what the open file limit allows.
    pub fn max_clients(&self) -> usize {
        self.config()
            .max_clients
            .min(self.client_cap.load(Ordering::Relaxed))
    }
}

/// What the upstream side reads of the running proxy: the configuration in force and the
/// metrics. Shared connections hold it weakly and end with the proxy.
impl Env for Shared {
    fn config(&self) -> Arc<Config> {
        Shared::config(self)
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
