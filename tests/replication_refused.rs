//! `SYNC` and `PSYNC` get a clear error at once instead of a replication stream the proxy
//! cannot pair: `redis-cli --rdb` and `--replica` stop with the error, a raw client can go on
//! using its connection, and other clients are unaffected.

#[macro_use]
mod common;

use std::time::Duration;

use common::{bulk, encode_many, raw_proxy, RedisServer};

const REFUSED: &[u8] = b"-ERR replication through respguard is not supported: connect replicas and 'redis-cli --rdb' or '--replica' to Redis directly\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_psync_are_refused_and_the_connection_goes_on() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut other = raw_proxy(&proxy).await;
    assert_resp!(other.ask(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    let mut c = raw_proxy(&proxy).await;
    assert_resp!(c.ask(&[b"SYNC"]).await, REFUSED);
    assert_resp!(c.ask(&[b"PSYNC", b"?", b"-1"]).await, REFUSED);
    // Inline, as redis-cli sends it, and pipelined with other commands.
    c.send(b"SYNC\r\nPING\r\n").await;
    assert_resp!(c.reply().await, REFUSED);
    assert_resp!(c.reply().await, b"+PONG\r\n");
    c.send(&encode_many(&[
        &[b"GET", b"k"],
        &[b"PSYNC", b"?", b"-1"],
        &[b"GET", b"k"],
    ]))
    .await;
    assert_resp!(c.reply().await, bulk(b"v"));
    assert_resp!(c.reply().await, REFUSED);
    assert_resp!(c.reply().await, bulk(b"v"));
    assert_resp!(other.ask(&[b"GET", b"k"]).await, bulk(b"v"));
    // Redis saw no replica.
    let mut d = redis.raw().await;
    let info = d.ask(&[b"INFO", b"replication"]).await;
    assert!(
        String::from_utf8_lossy(&info).contains("connected_slaves:0"),
        "{}",
        common::show(&info)
    );
}

async fn redis_cli(port: u16, args: &[&str]) -> std::process::Output {
    let child = tokio::process::Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-cli runs");
    tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("redis-cli ends within 10 s instead of hanging")
        .expect("redis-cli output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_rdb_and_replica_stop_with_the_error() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut other = raw_proxy(&proxy).await;
    let dir = std::env::temp_dir().join(format!("respguard-rdb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("dump.rdb");
    let port = proxy.local_addr.port();
    for args in [
        vec!["--rdb", file.to_str().expect("utf-8 path")],
        vec!["--replica"],
    ] {
        let out = redis_cli(port, &args).await;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{args:?}: {text}");
        assert!(
            text.contains("replication through respguard is not supported"),
            "{args:?}: {text}"
        );
        assert_resp!(other.ask(&[b"PING"]).await, b"+PONG\r\n");
    }
    assert!(!file.exists() || std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) == 0);
    let _ = std::fs::remove_dir_all(&dir);
}
