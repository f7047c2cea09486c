//! A real Redis Cluster of `redis-server` children: 3 primaries with one replica each on free
//! loopback ports (client and bus ports both from [`free_port`]), created with
//! `redis-cli --cluster create`, ready once every node says `cluster_state:ok` and agrees on
//! who serves every slot. The nodes die with the test like every [`RedisServer`].

use std::process::Command;
use std::time::{Duration, Instant};

use super::ports::{free_port, listens};
use super::servers::RedisServer;
use super::tls::{Issued, Pki};

/// `cluster-node-timeout` of the test clusters: a killed primary is failed over about this
/// long after it stops answering.
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// A running cluster. `nodes[i]` is `None` once the test killed it.
pub struct RedisCluster {
    pub nodes: Vec<Option<RedisServer>>,
    /// The cluster bus port of each node, to restart it where it was.
    bus_ports: Vec<u16>,
    /// With TLS: each node's TLS port (beside its plain one, which the harness uses to
    /// manage the cluster), and the TLS options of every node.
    tls_ports: Vec<u16>,
    tls_args: Vec<String>,
}

impl NodeInfo {
    /// Whether this node serves `slot`.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }

    /// Its client address.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub primary: bool,
    pub failed: bool,
    /// Slot ranges, inclusive.
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts 3 primaries and 3 replicas and waits until the cluster serves every slot.
    pub fn start() -> RedisCluster {
        Self::start_with(None)
    }

    /// The same cluster with TLS: every node also listens with TLS (serving `server`'s
    /// certificate, trusting `pki`'s CA), and the cluster bus and replication use TLS.
    pub fn start_tls(pki: &Pki, server: &Issued) -> RedisCluster {
        let path = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_string();
        let tls_args = [
            "--tls-cert-file".to_string(),
            path(&server.cert),
            "--tls-key-file".into(),
            path(&server.key),
            "--tls-ca-cert-file".into(),
            path(&pki.ca_file()),
            "--tls-auth-clients".into(),
            "no".into(),
            "--tls-cluster".into(),
            "yes".into(),
            "--tls-replication".into(),
            "yes".into(),
        ];
        Self::start_with(Some(tls_args.to_vec()))
    }

    fn start_with(tls: Option<Vec<String>>) -> RedisCluster {
        // The bus port must be free too: the default (port + 10000) may not be.
        let bus_ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
        let tls_ports: Vec<u16> = match &tls {
            Some(_) => (0..6).map(|_| free_port()).collect(),
            None => Vec::new(),
        };
        let tls_args = tls.unwrap_or_default();
        let nodes = bus_ports
            .iter()
            .enumerate()
            .map(|(i, &bus)| {
                let args = node_args(bus, tls_ports.get(i).copied(), &tls_args);
                let n =
                    RedisServer::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
                if let Some(&p) = tls_ports.get(i) {
                    assert!(
                        listens(n.pid(), p),
                        "node {} does not listen with TLS on {p}",
                        n.port
                    );
                }
                Some(n)
            })
            .collect();
        let cluster = RedisCluster {
            nodes,
            bus_ports,
            tls_ports,
            tls_args,
        };
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in cluster.nodes.iter().flatten() {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = create.output().expect("redis-cli on PATH");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    /// `host:port` of every node started (killed ones included: a dead seed is a case).
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flatten()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    /// `host:port` of every node's TLS port (for a cluster started with TLS).
    pub fn tls_seeds(&self) -> Vec<String> {
        self.tls_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// Ports of the nodes still running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes.iter().flatten().map(|n| n.port).collect()
    }

    /// The cluster as a live node sees it.
    pub fn topology(&self) -> Vec<NodeInfo> {
        for port in self.live_ports() {
            if let Some(text) = cli(port, &["CLUSTER", "NODES"]) {
                return parse_nodes(&text);
            }
        }
        panic!("no live node answered CLUSTER NODES");
    }

    /// The running primaries that serve slots, by port. A node created as a replica is a
    /// primary without slots until the cluster has made it a replica: not one of these.
    pub fn primaries(&self) -> Vec<NodeInfo> {
        let live = self.live_ports();
        self.topology()
            .into_iter()
            .filter(|n| n.primary && !n.failed && !n.slots.is_empty() && live.contains(&n.port))
            .collect()
    }

    /// The primary serving `slot`.
    pub fn owner(&self, slot: u16) -> NodeInfo {
        self.primaries()
            .into_iter()
            .find(|n| n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
    }

    /// A key named `prefix` plus a number whose slot `node` serves.
    pub fn key_on(&self, node: &NodeInfo, prefix: &str) -> String {
        (0..100_000)
            .map(|i| format!("{prefix}{i}"))
            .find(|k| node.serves(respguard::upstream::cluster::route::slot(k.as_bytes())))
            .unwrap_or_else(|| panic!("no key of prefix {prefix} on {}", node.port))
    }

    /// Gives `slot` (which must hold no key) to the primary `to` the way a migration ends
    /// (`IMPORTING` on `to`, `MIGRATING` on the owner, then `SETSLOT slot NODE to` on `to`
    /// first, which bumps its epoch so the move wins, then on every other primary), and waits
    /// until every node agrees.
    pub fn give_slot(&self, slot: u16, to: &NodeInfo) {
        let s = slot.to_string();
        let from = self.owner(slot);
        let setslot = |port: u16, args: &[&str]| {
            let mut all = vec!["CLUSTER", "SETSLOT", &s];
            all.extend_from_slice(args);
            let out = cli(port, &all).unwrap_or_default();
            assert!(out.starts_with("OK"), "{all:?} on {port}: {out}");
        };
        setslot(to.port, &["IMPORTING", &from.id]);
        setslot(from.port, &["MIGRATING", &to.id]);
        setslot(to.port, &["NODE", &to.id]);
        setslot(from.port, &["NODE", &to.id]);
        for n in self.primaries() {
            if n.port != to.port && n.port != from.port {
                setslot(n.port, &["NODE", &to.id]);
            }
        }
        self.wait_ok(Duration::from_secs(20));
    }

    /// Kills the node listening on `port` (SIGKILL: no goodbye to the cluster).
    pub fn kill_port(&mut self, port: u16) {
        for slot in &mut self.nodes {
            if slot.as_ref().is_some_and(|n| n.port == port) {
                if let Some(mut n) = slot.take() {
                    n.kill();
                }
            }
        }
    }

    /// Kills every node (SIGKILL), keeping their directories (and cluster configuration).
    pub fn kill_all(&mut self) {
        for n in self.nodes.iter_mut().flatten() {
            n.kill();
        }
    }

    /// Starts every node again where it was, after [`RedisCluster::kill_all`]: they read
    /// their cluster configuration back and form the same cluster (with no data).
    pub fn restart_all(&mut self) {
        for (i, (slot, &bus)) in self.nodes.iter_mut().zip(&self.bus_ports).enumerate() {
            if let Some(old) = slot.as_ref() {
                let port = old.port;
                let args = node_args(bus, self.tls_ports.get(i).copied(), &self.tls_args);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                // The old value's drop would remove the directory the new server uses.
                std::mem::forget(slot.take());
                *slot = Some(RedisServer::start_on(port, &args));
            }
        }
    }

    /// Waits until every live node reports `cluster_state:ok` and all of them agree that
    /// each of the 16384 slots is served by a live primary.
    pub fn wait_ok(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.check_ok() {
                Ok(()) => return,
                Err(why) => last = why,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("cluster not ok within {limit:?}: {last}");
    }

    fn check_ok(&self) -> Result<(), String> {
        let mut views = Vec::new();
        for port in self.live_ports() {
            let info = cli(port, &["CLUSTER", "INFO"]).ok_or(format!("{port} silent"))?;
            if !info.contains("cluster_state:ok") {
                return Err(format!("{port}: not ok"));
            }
            let nodes =
                parse_nodes(&cli(port, &["CLUSTER", "NODES"]).ok_or(format!("{port} silent"))?);
            let mut owners: Vec<(u16, u16, u16)> = nodes
                .iter()
                .filter(|n| n.primary && !n.failed)
                .flat_map(|n| n.slots.iter().map(move |&(a, b)| (a, b, n.port)))
                .collect();
            owners.sort_unstable();
            let covered: u32 = owners.iter().map(|&(a, b, _)| u32::from(b - a) + 1).sum();
            if covered != 16384 {
                return Err(format!("{port}: {covered} slots served"));
            }
            views.push(owners);
        }
        if views.windows(2).any(|w| w[0] != w[1]) {
            return Err("nodes disagree on slot owners".into());
        }
        Ok(())
    }

    /// Moves `slots` slots from the primary on `from` to the one on `to` with
    /// `redis-cli --cluster reshard` (keys migrated with MIGRATE, clients see ASK/MOVED).
    pub fn reshard(&self, from: &NodeInfo, to: &NodeInfo, slots: u32) {
        // Right after a move the nodes' views converge over the cluster bus; `redis-cli`
        // refuses to start while they differ ("Nodes don't agree about configuration"), so
        // wait for agreement and try again while that is the only complaint.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.wait_ok(Duration::from_secs(20));
            let out = Command::new("redis-cli")
                .arg("--cluster")
                .arg("reshard")
                .arg(format!("127.0.0.1:{}", from.port))
                .args(["--cluster-from", &from.id, "--cluster-to", &to.id])
                .args(["--cluster-slots", &slots.to_string()])
                .args(["--cluster-pipeline", "10", "--cluster-yes"])
                .output()
                .expect("redis-cli on PATH");
            if out.status.success() {
                return;
            }
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                text.contains("don't agree about configuration") && Instant::now() < deadline,
                "reshard failed: {text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// `redis-server` options of a cluster node whose bus listens on `bus` (and which listens
/// with TLS on `tls_port`, with `tls_args`, when given).
fn node_args(bus: u16, tls_port: Option<u16>, tls_args: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--cluster-enabled",
        "yes",
        "--cluster-port",
        &bus.to_string(),
        "--cluster-node-timeout",
        &NODE_TIMEOUT_MS.to_string(),
        // A replica may take over however long its link was down.
        "--cluster-replica-validity-factor",
        "0",
        "--cluster-config-file",
        "nodes.conf",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(p) = tls_port {
        args.push("--tls-port".into());
        args.push(p.to_string());
        args.extend(tls_args.iter().cloned());
    }
    args
}

/// Runs `redis-cli -p PORT args...`; its output, or `None` when the node did not answer.
pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
}

/// Parses `CLUSTER NODES` text.
pub fn parse_nodes(text: &str) -> Vec<NodeInfo> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let addr = f.get(1)?;
            let port = addr
                .split(['@', ','])
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            let flags = f.get(2)?;
            let slots = f
                .iter()
                .skip(8)
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|a| (a, a)),
                })
                .collect();
            Some(NodeInfo {
                id: f[0].to_string(),
                port,
                primary: flags.contains("master"),
                failed: flags.contains("fail") && !flags.contains("fail?"),
                slots,
            })
        })
        .collect()
}

/// `yaml` with `upstream.cluster` naming every node of `cluster` as a seed (plus
/// `extra`, `key: value` lines under `upstream.cluster`). `yaml` must have an `upstream:`
/// section or none.
pub fn with_cluster(yaml: &str, cluster: &RedisCluster, extra: &str) -> String {
    let seeds = cluster
        .seeds()
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let block = format!("  cluster:\n    seeds: [{seeds}]\n{extra}");
    if yaml.contains("\nupstream:\n") {
        yaml.replacen("\nupstream:\n", &format!("\nupstream:\n{block}"), 1)
    } else {
        format!("{yaml}\nupstream:\n{block}")
    }
}

/// respguard in this process in front of `cluster` (seeded with every node), configured by
/// `yaml`; waits until it has read the cluster's topology.
pub async fn cluster_proxy(yaml: &str, cluster: &RedisCluster) -> respguard::Proxy {
    let url = format!("redis://{}", cluster.seeds()[0]);
    let p = super::inproc::proxy(&with_cluster(yaml, cluster, ""), &url).await;
    wait_cluster_ready(&p).await;
    p
}

/// respguard in this process in front of `cluster` (started with TLS), seeded with every
/// node's TLS port through `rediss://`, trusting `pki`'s CA; `yaml` has no `upstream:`
/// section. Waits until it has read the cluster's topology.
pub async fn cluster_proxy_tls(yaml: &str, cluster: &RedisCluster, pki: &Pki) -> respguard::Proxy {
    let seeds = cluster
        .tls_seeds()
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = format!(
        "{yaml}\nupstream:\n  tls:\n    ca_file: {}\n  cluster:\n    seeds: [{seeds}]\n",
        pki.ca_file().display()
    );
    let url = format!("rediss://{}", cluster.tls_seeds()[0]);
    let p = super::inproc::proxy(&yaml, &url).await;
    wait_cluster_ready(&p).await;
    p
}

/// Waits (up to 10 s) until the proxy's cluster upstream has a complete slot map.
pub async fn wait_cluster_ready(p: &respguard::Proxy) {
    let ok = super::eventually(Duration::from_secs(10), || async {
        p.shared.cluster().is_some_and(|c| c.ready().is_ok())
    })
    .await;
    assert!(ok, "the proxy never read the cluster's topology");
}

/// The example policy (config/example.yaml).
pub fn example_yaml() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml");
    std::fs::read_to_string(path).expect("config/example.yaml")
}
