//! `workers`: the binary runs on that many runtime threads (one: on the main thread), and
//! clients spread over them are served exactly as on one; shared upstream connections default
//! to one per worker.

#[macro_use]
mod common;

use common::{bulk, encode_many, metric_sum, Launch, Raw, RedisServer, Respguard, TempDir};

/// Threads of `pid` named like tokio's runtime workers.
fn runtime_workers(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc/PID/task")
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == "tokio-rt-worker")
        })
        .count()
}

async fn start(redis: &RedisServer, workers: usize) -> (Respguard, TempDir) {
    let dir = TempDir::new("workers");
    let path = dir.write(
        "respguard.yaml",
        &format!(
            "workers: {workers}\npolicy:\n  unknown_keys: allow\n  namespaces:\n    item:\n      keys: [\"item:{{id}}\"]\n      ttl: {{ default: 10m, max: 1h }}\n"
        ),
    );
    let rg = Respguard::start(
        Launch::default()
            .arg("--config")
            .arg(&path)
            .arg("--upstream")
            .arg(redis.url()),
    )
    .await;
    (rg, dir)
}

/// Eight clients at once, each with pipelines of writes and reads of its own keys, through a
/// binary with four workers: every reply is the client's own, in order, every write got the
/// namespace's expiry, and the hit counter counts every read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_serve_concurrent_pipelines_exactly() {
    let redis = RedisServer::start();
    let (rg, _dir) = start(&redis, 4).await;
    assert_eq!(runtime_workers(rg.pid()), 4, "runtime worker threads");
    let mut tasks = Vec::new();
    for client in 0..8 {
        let addr = rg.listen;
        tasks.push(tokio::spawn(async move {
            let mut c = Raw::connect(addr).await;
            for round in 0..20 {
                let keys: Vec<String> = (0..25)
                    .map(|i| format!("item:{client}-{round}-{i}"))
                    .collect();
                let mut cmds: Vec<Vec<&[u8]>> = Vec::new();
                for k in &keys {
                    cmds.push(vec![b"SET", k.as_bytes(), k.as_bytes()]);
                    cmds.push(vec![b"GET", k.as_bytes()]);
                }
                let refs: Vec<&[&[u8]]> = cmds.iter().map(Vec::as_slice).collect();
                c.send(&encode_many(&refs)).await;
                for k in &keys {
                    assert_resp!(c.reply().await, b"+OK\r\n", "client {client} SET {k}");
                    assert_resp!(c.reply().await, bulk(k.as_bytes()), "client {client} GET");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"DBSIZE"]).await, b":4000\r\n");
    let ttl = d.ttl(b"item:7-19-24").await;
    assert!((590..=600).contains(&ttl), "TTL {ttl}");
    let m = common::metrics_at(rg.admin).await;
    assert_eq!(
        metric_sum(
            &m,
            "respguard_cache_hits_total",
            &[("command", "GET"), ("namespace", "item")]
        ),
        Some(4000.0),
        "{}",
        common::metric_lines(&m, "respguard_cache_")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_runs_on_the_main_thread() {
    let redis = RedisServer::start();
    let (rg, _dir) = start(&redis, 1).await;
    assert_eq!(runtime_workers(rg.pid()), 0, "no runtime worker threads");
    let mut c = Raw::connect(rg.listen).await;
    assert_resp!(c.ask(&[b"SET", b"item:1", b"v"]).await, b"+OK\r\n");
    assert_resp!(c.ask(&[b"GET", b"item:1"]).await, bulk(b"v"));
}

/// Shared upstream connections default to one per worker thread.
#[test]
fn shared_connections_default_follows_workers() {
    let up = "redis://127.0.0.1:1";
    let c = common::config("", up);
    assert_eq!((c.workers, c.upstream.shared_connections), (1, 1));
    let c = common::config("workers: 4\n", up);
    assert_eq!((c.workers, c.upstream.shared_connections), (4, 4));
    let c = common::config("workers: 4\nupstream:\n  shared_connections: 0\n", up);
    assert_eq!(c.upstream.shared_connections, 0);
    let c = common::config("upstream:\n  shared_connections: 3\n", up);
    assert_eq!(c.upstream.shared_connections, 3);
    let ov = respguard::config::Overrides {
        listen: Some(("--listen".into(), "127.0.0.1:0".into())),
        upstream: Some(("--upstream".into(), up.into())),
        admin: None,
        upstream_password: None,
    };
    let err =
        respguard::config::Config::parse("upstream:\n  shared_connections: 65\n", "t.yaml", &ov)
            .expect_err("65 shared connections are refused");
    assert!(err.to_string().contains("shared_connections"), "{err}");
}
