//! `limits.idle_timeout` closes a client that has been idle that long, as Redis's `timeout`
//! does (blocked clients, subscribers and monitors are exempt); `limits.incomplete_command_
//! timeout` closes a client whose command has not arrived in full that long after its first
//! bytes (one byte at a time holds a connection forever otherwise), with an error.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{bulk, raw_proxy, RedisServer};

async fn timeouts(proxy: &respguard::Proxy, kind: &str) -> f64 {
    let m = common::metrics_text(proxy).await;
    common::metric_sum(&m, "respguard_client_timeouts_total", &[("kind", kind)]).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_closed_and_waiting_ones_are_not() {
    let redis = RedisServer::start();
    let proxy = common::proxy("limits:\n  idle_timeout: 1s\n", &redis.url()).await;
    let mut blocked = raw_proxy(&proxy).await;
    blocked.cmd(&[b"BLPOP", b"q", b"0"]).await;
    let mut subscriber = raw_proxy(&proxy).await;
    assert_resp!(
        subscriber.ask(&[b"SUBSCRIBE", b"ch"]).await,
        b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    let mut monitor = raw_proxy(&proxy).await;
    assert_resp!(monitor.ask(&[b"MONITOR"]).await, b"+OK\r\n");
    let mut active = raw_proxy(&proxy).await;
    let mut idle = raw_proxy(&proxy).await;
    assert_resp!(idle.ask(&[b"PING"]).await, b"+PONG\r\n");
    let started = Instant::now();
    // The active client keeps sending commands while the idle one waits to be closed.
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(5) {
        assert_resp!(active.ask(&[b"PING"]).await, b"+PONG\r\n");
        if idle.closed_within(Duration::from_millis(200)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "the idle client was not closed");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );
    assert_eq!(timeouts(&proxy, "idle").await, 1.0);
    // Longer than the timeout has passed: the others are still there.
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"RPUSH", b"q", b"x"]).await, b":1\r\n");
    assert_resp!(blocked.reply().await, b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n");
    assert_resp!(d.ask(&[b"PUBLISH", b"ch", b"hi"]).await, b":1\r\n");
    assert_resp!(
        subscriber.reply().await,
        b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
    );
    let seen = monitor.reply().await;
    assert!(!seen.is_empty());
    assert_resp!(active.ask(&[b"ECHO", b"alive"]).await, bulk(b"alive"));
    assert_eq!(timeouts(&proxy, "idle").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_is_off_by_default() {
    let redis = RedisServer::start();
    let proxy = common::proxy("limits:\n  incomplete_command_timeout: 1s\n", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    let mut witness = raw_proxy(&proxy).await;
    witness.send(b"*1\r\n$4\r\nPI").await;
    // The client with an incomplete command is closed after a second; the idle one is not.
    assert_resp!(
        witness.reply().await,
        &b"-ERR command not received in full within 1000 ms\r\n"[..]
    );
    assert!(witness.closed_within(Duration::from_secs(2)).await);
    assert!(!a.closed_within(Duration::from_millis(500)).await);
    assert_resp!(a.ask(&[b"PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_trickling_in_is_cut_off() {
    let redis = RedisServer::start();
    let proxy = common::proxy("limits:\n  incomplete_command_timeout: 1s\n", &redis.url()).await;
    let mut slow = raw_proxy(&proxy).await;
    // A complete command first: its reply is delivered before the error.
    slow.send(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$5\r\n")
        .await;
    assert_resp!(slow.reply().await, b"+PONG\r\n");
    let started = Instant::now();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(5) {
        // One byte every 200 ms: progress, but the command never completes.
        if slow.stream.try_write(b"k").is_err() {
            cut = true;
            break;
        }
        if let Some(r) = slow.read_timeout(Duration::from_millis(200)).await {
            assert_resp!(
                r,
                &b"-ERR command not received in full within 1000 ms\r\n"[..]
            );
            cut = true;
            break;
        }
    }
    assert!(cut, "the trickling client was not cut off");
    let after = started.elapsed();
    assert!(after >= Duration::from_millis(800), "cut after {after:?}");
    assert!(slow.closed_within(Duration::from_secs(2)).await);
    assert_eq!(timeouts(&proxy, "incomplete_command").await, 1.0);
    assert_eq!(timeouts(&proxy, "idle").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_complete_commands_and_a_large_value_in_time_pass() {
    let redis = RedisServer::start();
    let proxy = common::proxy("limits:\n  incomplete_command_timeout: 1s\n", &redis.url()).await;
    let mut c = raw_proxy(&proxy).await;
    // Complete commands spread over more than the timeout.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        assert_resp!(c.ask(&[b"PING"]).await, b"+PONG\r\n");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A 1 MB value sent in four parts within the timeout.
    let value = vec![b'v'; 1 << 20];
    let mut cmd = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", value.len()).into_bytes();
    cmd.extend_from_slice(&value);
    cmd.extend_from_slice(b"\r\n");
    for part in cmd.chunks(cmd.len() / 4 + 1) {
        c.send(part).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_resp!(c.reply().await, b"+OK\r\n");
    assert_resp!(c.ask(&[b"STRLEN", b"k"]).await, b":1048576\r\n");
    assert_eq!(timeouts(&proxy, "incomplete_command").await, 0.0);
}
