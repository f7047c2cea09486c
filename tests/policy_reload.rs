//! Reloading the configuration without a restart, with the real `respguard` binary: a changed
//! file is picked up within seconds, both edited in place and swapped the way Kubernetes updates
//! a mounted ConfigMap (the `..data` symlink); an invalid file keeps the old policy in force,
//! logs every problem and counts `respguard_config_reloads_total{result="error"}`; SIGHUP
//! reloads too; `max_clients` and the request limits follow the reloaded file for connections
//! accepted after it.

#[macro_use]
mod common;

use std::path::Path;
use std::time::Duration;

use common::{bulk, metric, Launch, Raw, RedisServer, Respguard, TempDir};

fn yaml(redis: u16, namespaces: &[&str]) -> String {
    let mut s = format!(
        "upstream:\n  url: redis://127.0.0.1:{redis}\n  connect_timeout: 1s\npolicy:\n  unknown_keys: reject\n  namespaces:\n"
    );
    for ns in namespaces {
        s.push_str(&format!(
            "    {ns}:\n      keys: [\"{ns}:{{id}}\"]\n      ttl: {{ default: 10m, max: 1h }}\n"
        ));
    }
    s
}

async fn start(config: &Path) -> Respguard {
    Respguard::start(Launch::default().arg("--config").arg(config)).await
}

/// Whether `SET key v` through the proxy is accepted, on a fresh connection.
async fn accepted(rg: &Respguard, key: &str) -> bool {
    let mut c = Raw::connect(rg.listen).await;
    let r = c.call(&[b"SET", key.as_bytes(), b"v"]).await;
    match r.first() {
        Some(b'+') => true,
        Some(b'-') if r.starts_with(b"-POLICY") => false,
        _ => panic!("unexpected reply {}", String::from_utf8_lossy(&r)),
    }
}

/// Waits up to 10 s for `key` to become accepted (or refused).
async fn becomes(rg: &Respguard, key: &str, want: bool) -> bool {
    common::eventually(Duration::from_secs(10), || async move {
        accepted(rg, key).await == want
    })
    .await
}

async fn reloads(rg: &Respguard, result: &str) -> f64 {
    let body = common::metrics_at(rg.admin).await;
    metric(
        &body,
        &format!("respguard_config_reloads_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Waits up to 10 s until `respguard_config_reloads_total{result}` exceeds `above`.
async fn reloaded(rg: &Respguard, result: &str, above: f64) -> bool {
    common::eventually(Duration::from_secs(10), || async move {
        reloads(rg, result).await > above
    })
    .await
}

/// Replaces `link` with a symlink to `target` atomically (write a new link, rename over).
fn swap_symlink(dir: &Path, target: &str, link: &str) {
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join(link)).expect("rename symlink");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_file_applies_and_invalid_file_keeps_the_old_policy() {
    let redis = RedisServer::start();
    let dir = TempDir::new("reload-edit");
    let path = dir.write("respguard.yaml", &yaml(redis.port, &["a"]));
    let rg = start(&path).await;
    assert!(accepted(&rg, "a:1").await);
    assert!(!accepted(&rg, "b:1").await);

    // A connection opened before the change sees the new policy too.
    let mut early = Raw::connect(rg.listen).await;
    std::fs::write(&path, yaml(redis.port, &["a", "b"])).expect("write");
    assert!(becomes(&rg, "b:1", true).await, "new policy not applied");
    assert_eq!(early.call(&[b"SET", b"b:2", b"v"]).await, b"+OK\r\n");
    assert!(reloads(&rg, "ok").await >= 1.0);

    // An invalid file: the old policy stays, every problem is logged, the error is counted.
    let broken = yaml(redis.port, &["a"])
        .replace("default: 10m, max: 1h", "default: 2h, max: 1h")
        .replace("unknown_keys: reject", "unknown_keys: sometimes");
    std::fs::write(&path, broken).expect("write");
    assert!(
        reloaded(&rg, "error", 0.0).await,
        "invalid config not counted"
    );
    assert!(
        accepted(&rg, "b:3").await,
        "old policy (with b) must stay in force"
    );
    assert!(!accepted(&rg, "c:1").await);
    let log = rg.log_text();
    assert!(log.contains("policy.unknown_keys"), "{log}");
    assert!(log.contains("policy.namespaces.a.ttl.default"), "{log}");

    // Fixed again: applies.
    std::fs::write(&path, yaml(redis.port, &["c"])).expect("write");
    assert!(becomes(&rg, "c:1", true).await);
    assert!(!accepted(&rg, "b:4").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_style_symlink_swap_applies() {
    let redis = RedisServer::start();
    let dir = TempDir::new("reload-k8s");
    let dir = dir.path();
    // Like a ConfigMap volume: config.yaml -> ..data/config.yaml, ..data -> ..v1
    for (v, ns) in [
        ("..v1", &["a"][..]),
        ("..v2", &["a", "b"]),
        ("..v3", &["z"]),
    ] {
        std::fs::create_dir_all(dir.join(v)).expect("dir");
        std::fs::write(dir.join(v).join("config.yaml"), yaml(redis.port, ns)).expect("write");
    }
    std::fs::create_dir_all(dir.join("..bad")).expect("dir");
    std::fs::write(dir.join("..bad/config.yaml"), "policy: [not, a, map\n").expect("write");
    swap_symlink(dir, "..v1", "..data");
    std::os::unix::fs::symlink("..data/config.yaml", dir.join("config.yaml")).expect("symlink");

    let rg = start(&dir.join("config.yaml")).await;
    assert!(!accepted(&rg, "b:1").await);
    swap_symlink(dir, "..v2", "..data");
    assert!(
        becomes(&rg, "b:1", true).await,
        "swapped ConfigMap not applied"
    );

    swap_symlink(dir, "..bad", "..data");
    assert!(
        reloaded(&rg, "error", 0.0).await,
        "invalid config not counted"
    );
    assert!(accepted(&rg, "b:2").await, "old policy must stay in force");

    swap_symlink(dir, "..v3", "..data");
    assert!(becomes(&rg, "z:1", true).await);
    assert!(!accepted(&rg, "a:1").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_file_and_applies_the_change() {
    let redis = RedisServer::start();
    let dir = TempDir::new("reload-hup");
    let path = dir.write("respguard.yaml", &yaml(redis.port, &["a"]));
    let rg = start(&path).await;
    assert!(!accepted(&rg, "b:1").await);
    // Content unchanged: only the signal can cause this reload.
    let before = reloads(&rg, "ok").await;
    rg.signal("HUP");
    assert!(
        reloaded(&rg, "ok", before).await,
        "SIGHUP did not reload an unchanged file"
    );
    assert!(accepted(&rg, "a:1").await);
    assert!(!accepted(&rg, "b:1").await);
    // A changed file and a signal: the change is in force, and the signal was acted on.
    let before = reloads(&rg, "ok").await;
    std::fs::write(&path, yaml(redis.port, &["b"])).expect("write");
    rg.signal("HUP");
    assert!(becomes(&rg, "b:1", true).await, "changed file not applied");
    assert!(!accepted(&rg, "a:2").await, "the old namespace is gone");
    assert!(reloads(&rg, "ok").await > before);
    let log = rg.wait_log("SIGHUP: reloading configuration").await;
    assert!(log.is_ok(), "no SIGHUP reload logged: {log:?}");
}

/// `max_clients` follows a reloaded file for connections accepted after it; the request limits
/// apply to connections opened after it, while an open connection keeps the limits it started
/// with (README, "Reload").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_and_limits_follow_a_reloaded_file_for_new_connections() {
    let redis = RedisServer::start();
    let dir = TempDir::new("reload-limits");
    let base = yaml(redis.port, &["a"]);
    let with = |clients: u32, bulk_len: &str| {
        format!("{base}limits:\n  max_clients: {clients}\n  max_bulk_len: {bulk_len}\n")
    };
    let path = dir.write("respguard.yaml", &with(2, "1kb"));
    let rg = start(&path).await;
    let big = vec![b'x'; 4096];
    let mut first = Raw::connect(rg.listen).await;
    assert_resp!(first.ask(&[b"PING"]).await, b"+PONG\r\n");
    let mut second = Raw::connect(rg.listen).await;
    assert_resp!(second.ask(&[b"PING"]).await, b"+PONG\r\n");
    let mut third = Raw::connect(rg.listen).await;
    assert_resp!(
        third.reply().await,
        &b"-ERR max number of clients reached\r\n"[..]
    );
    drop(third);
    drop(second);
    // Wait until the proxy has seen the second client leave (one client left).
    let admin = rg.admin;
    assert!(
        common::eventually(Duration::from_secs(10), || async move {
            let m = common::metrics_at(admin).await;
            metric(&m, "respguard_client_connections") == Some(1.0)
        })
        .await,
        "the proxy never saw the second client leave"
    );

    let before = reloads(&rg, "ok").await;
    std::fs::write(&path, with(3, "1mb")).expect("write");
    assert!(
        reloaded(&rg, "ok", before).await,
        "file change not reloaded"
    );
    // Three clients now fit, and the third gets the new bulk limit.
    let mut second = Raw::connect(rg.listen).await;
    assert_resp!(second.ask(&[b"PING"]).await, b"+PONG\r\n");
    let mut third = Raw::connect(rg.listen).await;
    assert_resp!(third.ask(&[b"SET", b"a:1", &big]).await, b"+OK\r\n");
    assert_resp!(third.ask(&[b"GET", b"a:1"]).await, bulk(&big));
    let mut fourth = Raw::connect(rg.listen).await;
    assert_resp!(
        fourth.reply().await,
        &b"-ERR max number of clients reached\r\n"[..]
    );
    // The connection opened before the reload keeps the 1 KB bulk limit it started with.
    first.cmd(&[b"SET", b"a:2", &big]).await;
    assert_resp!(
        first.reply().await,
        &b"-ERR Protocol error: invalid bulk length\r\n"[..]
    );
}

/// A reload that adds a namespace while a client keeps pipelines in flight: every reply stays
/// paired with its command (a marker after each write comes back in place), the new namespace
/// applies from one command on and never goes back, and the new namespace's metric series
/// appear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adding_a_namespace_under_pipelines_keeps_pairing() {
    let redis = RedisServer::start();
    let dir = TempDir::new("reload-pipeline");
    let path = dir.write("respguard.yaml", &yaml(redis.port, &["a"]));
    let rg = start(&path).await;
    let mut c = Raw::connect(rg.listen).await;
    assert_resp!(c.ask(&[b"SET", b"a:1", b"va"]).await, b"+OK\r\n");
    let (first_tx, first) = tokio::sync::oneshot::channel::<()>();
    let client = tokio::spawn(async move {
        let mut first_tx = Some(first_tx);
        let mut switched_at = None;
        for round in 0..10_000usize {
            let keys: Vec<String> = (0..50).map(|i| format!("b:{round}-{i}")).collect();
            let marks: Vec<String> = (0..50).map(|i| format!("{round}-{i}")).collect();
            let mut cmds: Vec<Vec<&[u8]>> = Vec::new();
            for (k, m) in keys.iter().zip(&marks) {
                cmds.push(vec![b"SET", k.as_bytes(), b"vb"]);
                cmds.push(vec![b"ECHO", m.as_bytes()]);
                cmds.push(vec![b"GET", b"a:1"]);
            }
            let refs: Vec<&[&[u8]]> = cmds.iter().map(Vec::as_slice).collect();
            c.send(&common::encode_many(&refs)).await;
            for (k, m) in keys.iter().zip(&marks) {
                let set = c.reply().await;
                if set == b"+OK\r\n" {
                    switched_at.get_or_insert(round);
                } else {
                    assert!(
                        set.starts_with(b"-POLICY") && switched_at.is_none(),
                        "SET {k} after the switch in round {switched_at:?}: {}",
                        common::show(&set)
                    );
                }
                assert_resp!(c.reply().await, bulk(m.as_bytes()), "marker after SET {k}");
                assert_resp!(c.reply().await, bulk(b"va"), "GET after SET {k}");
            }
            if let Some(tx) = first_tx.take() {
                let _ = tx.send(());
            }
            if let Some(s) = switched_at.filter(|s| round >= s + 20) {
                return (c, s);
            }
        }
        panic!("the new namespace never applied");
    });
    first.await.expect("the first pipeline was answered");
    std::fs::write(&path, yaml(redis.port, &["a", "b"])).expect("write");
    let (mut c, switched) = client.await.expect("pipelining client");
    assert!(
        switched > 0,
        "the first pipeline was answered before the reload"
    );
    let key = format!("b:{}-0", switched + 1);
    assert_resp!(c.ask(&[b"GET", key.as_bytes()]).await, bulk(b"vb"));
    let ttl = c.ttl(key.as_bytes()).await;
    assert!((590..=600).contains(&ttl), "TTL {ttl}");
    let m = common::metrics_at(rg.admin).await;
    for (name, labels) in [
        ("respguard_cache_hits_total", &[("namespace", "b")][..]),
        (
            "respguard_ttl_enforced_total",
            &[("namespace", "b"), ("action", "added")],
        ),
        ("respguard_commands_total", &[("namespace", "b")]),
    ] {
        assert!(
            common::metric_sum(&m, name, labels).is_some_and(|v| v >= 1.0),
            "{name}{labels:?}:\n{}",
            common::metric_lines(&m, name)
        );
    }
}
