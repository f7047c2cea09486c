//! The cluster upstream's figures on the proxy's recorder: redirections by kind, topology
//! refreshes by result, and per node the batches that failed, how long batches took, and the
//! connections opened for clients with connection state.
//! The node label is bounded by the cluster's size: connections to nodes that leave the
//! topology are forgotten, and their series stop growing.

use std::time::Duration;

use dashmap::DashMap;
use metrics::{Counter, Histogram};

use crate::metrics::Registry;

use super::ClusterMetrics;

const REDIRECT_KINDS: [&str; 5] = ["moved", "ask", "tryagain", "clusterdown", "unreachable"];

struct NodeFigures {
    errors: Counter,
    duration: Histogram,
    dedicated: Counter,
}

/// [`ClusterMetrics`] on a proxy's recorder.
pub struct Recorded {
    registry: Registry,
    redirects: Vec<(&'static str, Counter)>,
    refresh_ok: Counter,
    refresh_error: Counter,
    nodes: DashMap<String, NodeFigures>,
}

impl Recorded {
    pub fn new(registry: Registry) -> Recorded {
        registry.describe_counter(
            "respguard_cluster_redirects_total",
            "Cluster redirections and retries followed, by kind (moved, ask, tryagain, clusterdown, unreachable).",
        );
        registry.describe_counter(
            "respguard_cluster_topology_refreshes_total",
            "Reads of the cluster's slot map, by result (ok, error).",
        );
        registry.describe_counter(
            "respguard_cluster_node_errors_total",
            "Batches a cluster node failed (unreachable or connection lost), by node.",
        );
        registry.describe_counter(
            "respguard_cluster_dedicated_connections_total",
            "Connections opened to a cluster node for one client's connection state (transaction, WATCH, blocking command, subscriptions), by node.",
        );
        registry.describe_histogram(
            "respguard_cluster_node_duration_seconds",
            "Time from a batch written to a cluster node to its last reply read, by node.",
        );
        let redirects = REDIRECT_KINDS
            .iter()
            .map(|k| {
                (
                    *k,
                    registry.counter(
                        "respguard_cluster_redirects_total",
                        &[("kind", k.to_string())],
                    ),
                )
            })
            .collect();
        let refresh = |r: &str| {
            registry.counter(
                "respguard_cluster_topology_refreshes_total",
                &[("result", r.to_string())],
            )
        };
        Recorded {
            redirects,
            refresh_ok: refresh("ok"),
            refresh_error: refresh("error"),
            nodes: DashMap::new(),
            registry,
        }
    }
}

impl Recorded {
    /// The figures of `node`, registered on first use.
    fn with_node(&self, node: &str, f: impl FnOnce(&NodeFigures)) {
        if !self.nodes.contains_key(node) {
            let label = [("node", node.to_string())];
            let r = &self.registry;
            self.nodes.insert(
                node.to_string(),
                NodeFigures {
                    errors: r.counter("respguard_cluster_node_errors_total", &label),
                    duration: r.histogram("respguard_cluster_node_duration_seconds", &label),
                    dedicated: r.counter("respguard_cluster_dedicated_connections_total", &label),
                },
            );
        }
        if let Some(n) = self.nodes.get(node) {
            f(&n);
        }
    }
}

impl ClusterMetrics for Recorded {
    fn redirect(&self, kind: &'static str) {
        if let Some((_, c)) = self.redirects.iter().find(|(k, _)| *k == kind) {
            c.increment(1);
        }
    }

    fn refresh(&self, ok: bool) {
        if ok {
            self.refresh_ok.increment(1);
        } else {
            self.refresh_error.increment(1);
        }
    }

    fn node_batch(&self, node: &str, latency: Duration, failed: bool) {
        self.with_node(node, |f| {
            if failed {
                f.errors.increment(1);
            } else {
                f.duration.record(latency.as_secs_f64());
            }
        });
    }

    fn dedicated(&self, node: &str) {
        self.with_node(node, |f| f.dedicated.increment(1));
    }

    fn forget_except(&self, keep: &[String]) {
        self.nodes.retain(|k, _| keep.contains(k));
    }
}
