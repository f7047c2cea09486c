//! The real `respguard` binary: `--check-config` exits 64 listing every
//! problem with its line, and 0 on a valid file; a running proxy serves through the binary and
//! exits 0 on SIGTERM, at once when idle and within the grace period when a client is blocked.

#[macro_use]
mod common;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use common::{raw_proxy_addr, respguard_command, Launch, RedisServer, Respguard};

/// A temporary config file, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "respguard-bin-{}-{}-{name}",
            std::process::id(),
            common::free_port()
        ));
        std::fs::write(&path, text).expect("write config");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn check_config(path: &PathBuf) -> Output {
    respguard_command()
        .arg("--check-config")
        .arg(path)
        .output()
        .expect("run respguard --check-config")
}

#[test]
fn check_config_lists_every_problem_with_its_line() {
    let file = TempFile::new(
        "bad.yaml",
        "listen: nowhere\n\
         admin: 127.0.0.1:9090\n\
         upstream:\n  \
           url: redis://x:99999\n  \
           connect_timeout: 5 parsecs\n\
         limits:\n  \
           max_bulk_len: huge\n  \
           max_clients: 0\n",
    );
    let out = check_config(&file.0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr: {stderr}");
    let name = file.0.display().to_string();
    for (line, field) in [
        (1, "listen"),
        (4, "upstream.url"),
        (5, "upstream.connect_timeout"),
        (7, "limits.max_bulk_len"),
        (8, "limits.max_clients"),
    ] {
        let want = format!("{name}:{line}: {field}: ");
        assert!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
    }
    assert!(stderr.contains("5 configuration problem(s)"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn check_config_accepts_a_valid_file() {
    let file = TempFile::new(
        "good.yaml",
        "listen: 127.0.0.1:0\n\
         admin: 127.0.0.1:0\n\
         upstream:\n  \
           url: redis://127.0.0.1:6390/1\n  \
           connect_timeout: 250ms\n  \
           read_timeout: 2s\n\
         limits:\n  \
           max_clients: 100\n  \
           max_bulk_len: 1mb\n  \
           max_multibulk_len: 1000\n  \
           max_buffered_bytes: 64kb\n\
         shutdown_grace: 5s\n",
    );
    let out = check_config(&file.0);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "configuration OK\n");
    // A file that is not there is a configuration problem too.
    let out = check_config(&PathBuf::from("/nonexistent/respguard.yaml"));
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

/// Starts the binary in front of `redis` with `grace`; returns it once `/readyz` is 200.
async fn start_binary(redis: &RedisServer, grace: &str) -> (Respguard, TempFile) {
    let file = TempFile::new(
        "run.yaml",
        &format!(
            "upstream:\n  url: {}\nshutdown_grace: {grace}\n",
            redis.url()
        ),
    );
    let rg = Respguard::start(Launch::default().arg("--config").arg(&file.0)).await;
    (rg, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_and_exits_0_on_sigterm() {
    let redis = RedisServer::start();
    let (mut running, _file) = start_binary(&redis, "30s").await;
    let addr = running.listen;
    let mut c = raw_proxy_addr(addr).await;
    assert_resp!(c.ask(&[b"SET", b"k", b"via-binary"]).await, b"+OK\r\n");
    assert_resp!(c.ask(&[b"GET", b"k"]).await, common::bulk(b"via-binary"));
    // An idle client does not hold up the exit.
    running.signal("TERM");
    let (status, took) = running
        .exit_within(Duration::from_secs(20))
        .await
        .expect("respguard exits long before the 30 s grace period");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(took < Duration::from_secs(20), "idle exit took {took:?}");
    assert!(c.closed_within(Duration::from_secs(1)).await);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_exits_0_after_the_grace_period_with_a_blocked_client() {
    let redis = RedisServer::start();
    let (mut running, _file) = start_binary(&redis, "1s").await;
    let addr = running.listen;
    let mut c = raw_proxy_addr(addr).await;
    assert_resp!(c.ask(&[b"PING"]).await, b"+PONG\r\n");
    c.cmd(&[b"BLPOP", b"never", b"0"]).await;
    common::wait_blocked(&redis, 1).await;
    running.signal("TERM");
    let (status, took) = running
        .exit_within(Duration::from_secs(4))
        .await
        .expect("respguard exits after the grace period");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "exit took {took:?} with a 1 s grace period"
    );
    assert!(c.closed_within(Duration::from_secs(1)).await);
}
