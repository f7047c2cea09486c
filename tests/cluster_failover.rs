//! Nodes fail: a primary killed mid-load is replaced by its replica and respguard follows
//! (only commands in flight on it may fail); a dead seed at start is skipped; with every
//! node down clients get clear errors and `/readyz` says 503, and respguard recovers without
//! a restart when the nodes come back.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    cluster_proxy, eventually, http_get, raw_proxy, show, with_cluster, Raw, RedisCluster,
};

const PERMISSIVE: &str = "policy:\n  unknown_keys: allow\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_fails_only_commands_in_flight_and_its_replica_takes_over() {
    let mut cluster = RedisCluster::start();
    let p = cluster_proxy(PERMISSIVE, &cluster).await;
    // A key on the primary that will die.
    let victim = cluster.primaries()[0].clone();
    let key = (0..10_000)
        .map(|i| format!("fo:{i}"))
        .find(|k| {
            let s = respguard::upstream::cluster::route::slot(k.as_bytes());
            victim.slots.iter().any(|&(a, b)| a <= s && s <= b)
        })
        .expect("a key on the victim");
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let oks = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for id in 0..8 {
        let (stop, errors, oks, bad) = (stop.clone(), errors.clone(), oks.clone(), bad.clone());
        let addr = p.local_addr;
        tasks.push(tokio::spawn(async move {
            let mut r = Raw::connect(addr).await;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let k = format!("fo:{id}:{}", n % 100);
                let got = r.call(&[b"SET", k.as_bytes(), b"v"]).await;
                if got == b"+OK\r\n" {
                    oks.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    bad.lock().unwrap().push(show(&got));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = Instant::now();
    cluster.kill_port(victim.port);
    // Time until a command on the dead primary's slots succeeds again.
    let mut r = raw_proxy(&p).await;
    let recovered = loop {
        let got = r.call(&[b"SET", key.as_bytes(), b"after"]).await;
        if got == b"+OK\r\n" {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(20),
            "no recovery within 20 s: {}",
            show(&got)
        );
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("client");
    }
    let bad = bad.lock().unwrap().clone();
    eprintln!(
        "failover: commands on the killed primary's slots succeed again {recovered:?} after SIGKILL; \
         {} ok, {} failed: {bad:?}",
        oks.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
    // Each of the 8 clients had at most one command in flight on the killed node.
    assert!(errors.load(Ordering::Relaxed) <= 8, "{bad:?}");
    assert!(bad.iter().all(|e| e.contains("may have run")), "{bad:?}");
    assert_resp!(
        r.call(&[b"GET", key.as_bytes()]).await,
        b"$5\r\nafter\r\n".to_vec()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_seed_is_skipped_and_all_nodes_down_gives_clear_errors_then_recovers() {
    let mut cluster = RedisCluster::start();
    // The first seed (and the URL's node) is dead before the proxy starts.
    let first = cluster.live_ports()[0];
    let replica_first = cluster
        .topology()
        .into_iter()
        .find(|n| !n.primary)
        .expect("a replica")
        .port;
    cluster.kill_port(replica_first);
    cluster.wait_ok(Duration::from_secs(20));
    let yaml = with_cluster(
        PERMISSIVE,
        &cluster,
        "    retry_timeout: 300ms\n    refresh_interval: 1s\n",
    );
    let url = format!("redis://127.0.0.1:{replica_first}");
    let p = common::proxy(&yaml, &url).await;
    common::wait_cluster_ready(&p).await;
    let admin = p.admin_addr.expect("admin");
    let mut c = raw_proxy(&p).await;
    assert_resp!(c.call(&[b"SET", b"k", b"v"]).await, b"+OK\r\n".to_vec());
    let _ = first;

    cluster.kill_all();
    let got = c.call(&[b"GET", b"k"]).await;
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("-"), "{text}");
    assert!(
        text.contains("unavailable")
            || text.contains("may have run")
            || text.contains("not served"),
        "an error that says why: {text}"
    );
    let not_ready = eventually(Duration::from_secs(10), || async {
        matches!(http_get(admin, "/readyz").await, (503, _))
    })
    .await;
    assert!(not_ready, "/readyz stayed 200 with every node down");

    cluster.restart_all();
    cluster.wait_ok(Duration::from_secs(30));
    let ready = eventually(Duration::from_secs(15), || async {
        matches!(http_get(admin, "/readyz").await, (200, _))
    })
    .await;
    assert!(ready, "/readyz never 200 again");
    // The same client connection works again (the restarted nodes hold no data).
    let back = eventually(Duration::from_secs(10), || async {
        let mut r = raw_proxy(&p).await;
        r.call(&[b"SET", b"k", b"again"]).await == b"+OK\r\n"
    })
    .await;
    assert!(back, "commands never succeeded after the nodes came back");
    assert_resp!(c.call(&[b"GET", b"k"]).await, b"$5\r\nagain\r\n".to_vec());
}
