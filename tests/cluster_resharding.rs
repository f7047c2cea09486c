//! Slots move between primaries (`redis-cli --cluster reshard`, keys migrated with `MIGRATE`)
//! while 20 clients pipeline writes and reads of known values through respguard: the clients
//! see no error and no wrong reply, and every acknowledged write is readable afterwards.
//! `ASK` and `MOVED` are followed inside the proxy.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{cluster_proxy, show, Raw, RedisCluster};

const PERMISSIVE: &str = "policy:\n  unknown_keys: allow\n";
const CLIENTS: usize = 20;
const KEYS_PER_CLIENT: usize = 50;
const PIPELINE: usize = 8;

/// One client: rounds of `PIPELINE` SETs of fresh values then GETs of the same keys, each
/// reply checked. Returns the last acknowledged value per key, and what went wrong.
async fn client(
    addr: std::net::SocketAddr,
    id: usize,
    stop: Arc<AtomicBool>,
) -> (HashMap<String, String>, Vec<String>) {
    let mut r = Raw::connect(addr).await;
    let mut acked = HashMap::new();
    let mut wrong = Vec::new();
    let mut round = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let keys: Vec<String> = (0..PIPELINE)
            .map(|i| format!("rs:{id}:{}", (round * PIPELINE + i) % KEYS_PER_CLIENT))
            .collect();
        let values: Vec<String> = keys.iter().map(|k| format!("{k}@{round}")).collect();
        let mut batch = bytes::BytesMut::new();
        for (k, v) in keys.iter().zip(&values) {
            respguard::codec::encode_command(
                &mut batch,
                [b"SET".as_ref(), k.as_bytes(), v.as_bytes()].into_iter(),
            );
        }
        for k in &keys {
            respguard::codec::encode_command(
                &mut batch,
                [b"GET".as_ref(), k.as_bytes()].into_iter(),
            );
        }
        r.send(&batch).await;
        for (k, v) in keys.iter().zip(&values) {
            let got = r.read().await;
            if got == b"+OK\r\n" {
                acked.insert(k.clone(), v.clone());
            } else {
                wrong.push(format!("SET {k}: {}", show(&got)));
            }
        }
        for (k, v) in keys.iter().zip(&values) {
            let got = r.read().await;
            let want = format!("${}\r\n{v}\r\n", v.len());
            if got != want.as_bytes() {
                wrong.push(format!("GET {k}: {} (want {v})", show(&got)));
            }
        }
        round += 1;
    }
    (acked, wrong)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_under_pipelined_load_loses_nothing_and_leaks_no_redirection() {
    let cluster = Arc::new(RedisCluster::start());
    let p = cluster_proxy(PERMISSIVE, &cluster).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client(p.local_addr, id, stop.clone())))
        .collect();
    // Load first, so the slots carry keys when they move.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = cluster.clone();
    let moved = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let prim = c.primaries();
        // Two moves, so the second primary both receives and gives slots while clients run.
        c.reshard(&prim[0], &prim[1], 500);
        c.reshard(&prim[1], &prim[2], 300);
        started.elapsed()
    })
    .await
    .expect("reshard");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = HashMap::new();
    let mut wrong = Vec::new();
    for t in tasks {
        let (a, w) = t.await.expect("client task");
        acked.extend(a);
        wrong.extend(w);
    }
    eprintln!(
        "resharding of 800 slots took {moved:?}; {} keys acknowledged; {} wrong replies",
        acked.len(),
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "{} wrong replies, first: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(
        acked.len() >= CLIENTS * KEYS_PER_CLIENT / 2,
        "too little load: {}",
        acked.len()
    );
    // Every acknowledged write is readable, through the proxy, on the new owners.
    let mut r = Raw::connect(p.local_addr).await;
    for (k, v) in &acked {
        let got = r.call(&[b"GET", k.as_bytes()]).await;
        assert_resp!(got, format!("${}\r\n{v}\r\n", v.len()).into_bytes(), "{k}");
    }
    let metrics = p.shared.metrics.render();
    assert!(
        metrics.contains("respguard_cluster_redirects_total{kind=\"moved\"}")
            || metrics.contains("respguard_cluster_redirects_total{kind=\"ask\"}"),
        "no redirection counted:\n{metrics}"
    );
}
