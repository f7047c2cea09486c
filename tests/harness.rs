//! The test harness itself (tests/common): ports are never handed out twice or mistaken for
//! another process's, and every process a test starts dies with the test, however it ends.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, listens, Launch, RedisServer, Respguard};

/// A port that another Redis already serves is not taken for a new server's (its PONG would
/// be), so concurrent tests never share a Redis and its keys.
#[test]
fn never_mistakes_another_servers_port_for_its_own() {
    let first = RedisServer::start();
    let taken = std::panic::catch_unwind(|| RedisServer::start_on(first.port, &[]));
    assert!(
        taken.is_err(),
        "start_on accepted a port held by another redis-server"
    );
    let second = RedisServer::start();
    assert_ne!(second.port, first.port);
}

#[test]
fn free_port_never_returns_a_port_twice() {
    let mut seen = HashSet::new();
    for _ in 0..500 {
        let p = free_port();
        assert!(seen.insert(p), "port {p} handed out twice");
        assert_ne!(p, 6379);
    }
}

#[test]
fn port_ownership_is_checked_per_process() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let redis = RedisServer::start();
    assert!(listens(std::process::id(), port), "our own listener");
    assert!(!listens(redis.pid(), port), "not redis's");
    assert!(listens(redis.pid(), redis.port));
    assert!(!listens(std::process::id(), redis.port));
}

/// Where the spawner below writes the pids of what it started.
const PIDFILE: &str = "HARNESS_TEST_PIDFILE";

/// Not a test of its own: run by `children_die_with_a_killed_test_process` in a child process
/// (it does nothing otherwise). Starts a Redis and the respguard binary, says their pids,
/// then waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by children_die_with_a_killed_test_process in a process of its own"]
async fn spawner_starts_children_then_waits_to_be_killed() {
    let Ok(pidfile) = std::env::var(PIDFILE) else {
        return;
    };
    let redis = RedisServer::start();
    let rg = Respguard::start(Launch::default().arg("--upstream").arg(redis.url())).await;
    let tmp = format!("{pidfile}.tmp");
    std::fs::write(&tmp, format!("{} {}", redis.pid(), rg.pid())).expect("pidfile");
    std::fs::rename(&tmp, &pidfile).expect("pidfile");
    tokio::time::sleep(Duration::from_secs(120)).await;
}

/// Whether `pid` is still a live (not zombie) process running `comm`.
fn alive(pid: u32, comm: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((name, rest)) = stat.split_once(") ") else {
        return false;
    };
    name.ends_with(comm) && !rest.starts_with('Z')
}

/// A test process killed with SIGKILL runs no destructor; its redis-server and respguard
/// children must die anyway (their watcher sees the test process's pipe close).
#[test]
fn children_die_with_a_killed_test_process() {
    let dir = common::TempDir::new("harness");
    let pidfile = dir.path().join("pids");
    let mut spawner = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "spawner_starts_children_then_waits_to_be_killed",
            "--exact",
            "--ignored",
        ])
        .env(PIDFILE, &pidfile)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run the spawner");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let pids = loop {
        if let Ok(text) = std::fs::read_to_string(&pidfile) {
            break text;
        }
        assert!(
            spawner.try_wait().expect("spawner status").is_none(),
            "spawner exited before starting its children"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "spawner never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let (redis, rg) = pids.split_once(' ').expect("two pids");
    let (redis, rg): (u32, u32) = (redis.parse().expect("pid"), rg.parse().expect("pid"));
    assert!(alive(redis, "redis-server") && alive(rg, "respguard"));
    spawner.kill().expect("SIGKILL the spawner");
    spawner.wait().expect("reap the spawner");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while alive(redis, "redis-server") || alive(rg, "respguard") {
        assert!(
            std::time::Instant::now() < deadline,
            "children outlived the killed test process: redis-server {}, respguard {}",
            alive(redis, "redis-server"),
            alive(rg, "respguard")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
