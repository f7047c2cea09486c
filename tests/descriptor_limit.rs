//! Started under a low open file limit, the binary raises its soft limit to the hard one,
//! lowers `max_clients` to what the descriptors allow (two per client, a reserve for the proxy)
//! with a log line, refuses the extra clients with Redis's error and keeps `/healthz`
//! answering. The client listener's backlog is `limits.tcp_backlog` (511 by default).

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Raw, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_respguard");

/// Kills the child on drop; removes its log file.
struct Running {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Running {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Runs the binary under `prlimit --nofile=SOFT:HARD`, logging to a file.
async fn start(
    redis: &RedisServer,
    nofile: &str,
    extra: &[&str],
) -> (Running, SocketAddr, SocketAddr) {
    let port = common::free_port();
    let admin = common::free_port();
    let log = std::env::temp_dir().join(format!("respguard-fd-{}-{port}.log", std::process::id()));
    let file = std::fs::File::create(&log).expect("log file");
    let child = Command::new("prlimit")
        .arg(format!("--nofile={nofile}"))
        .arg("--")
        .arg(BIN)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--upstream", &redis.url()])
        .args(extra)
        .env_remove("RESPGUARD_UPSTREAM_PASSWORD")
        .env("RESPGUARD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .expect("spawn prlimit respguard");
    let running = Running { child, log };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let up = common::eventually(Duration::from_secs(5), || async move {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    assert!(up, "respguard did not start: {}", running.log_text());
    (running, addr, ([127, 0, 0, 1], admin).into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_is_capped_by_the_open_file_limit() {
    let redis = RedisServer::start();
    let (running, addr, admin) = start(&redis, "64:128", &[]).await;
    // The port accepts connections once bound, a moment before the limits are logged.
    let logged = common::eventually(Duration::from_secs(10), || {
        let text = running.log_text();
        async move { text.contains("max_clients reduced") }
    })
    .await;
    let log = running.log_text();
    assert!(logged, "{log}");
    assert!(
        log.contains("open file limit raised") && log.contains("from=64") && log.contains("to=128"),
        "{log}"
    );
    // (128 - 32 reserved - 1 shared connection) / 2 descriptors per client.
    let cap = 47;
    assert!(
        log.contains(&format!(
            "max_clients reduced to {cap} to fit the open file limit of 128"
        )),
        "{log}"
    );
    // Every admitted client pins a dedicated upstream connection: two descriptors each.
    let mut clients = Vec::new();
    for i in 0..cap {
        let mut c = Raw::connect(addr).await;
        let name = format!("c{i}");
        assert_resp!(
            c.ask(&[b"CLIENT", b"SETNAME", name.as_bytes()]).await,
            b"+OK\r\n"
        );
        clients.push(c);
    }
    for _ in 0..3 {
        let mut extra = Raw::connect(addr).await;
        assert_resp!(
            extra.reply().await,
            &b"-ERR max number of clients reached\r\n"[..]
        );
        assert!(extra.closed_within(Duration::from_secs(2)).await);
    }
    let (code, body) = common::http_get(admin, "/healthz").await;
    assert_eq!(code, 200, "{body}");
    let (_, metrics) = common::http_get(admin, "/metrics").await;
    assert_eq!(
        common::metric(&metrics, "respguard_client_connections_refused_total"),
        Some(3.0)
    );
    for c in clients.iter_mut() {
        assert_resp!(c.ask(&[b"PING"]).await, b"+PONG\r\n");
    }
    // A slot frees up when a client leaves.
    drop(clients.pop());
    let admitted = common::eventually(Duration::from_secs(5), || async {
        let mut c = Raw::connect(addr).await;
        c.cmd(&[b"PING"]).await;
        c.read_timeout(Duration::from_secs(2)).await.as_deref() == Some(&b"+PONG\r\n"[..])
    })
    .await;
    assert!(admitted);
}

/// The backlog of the socket listening on `port` (`ss` shows it as Send-Q).
fn backlog(port: u16) -> Option<u32> {
    let out = Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("run ss");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace().nth(2)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listen_backlog_is_redis_s_and_configurable() {
    let redis = RedisServer::start();
    let (_running, addr, _) = start(&redis, "4096:4096", &[]).await;
    assert_eq!(backlog(addr.port()), Some(511));
    let dir = std::env::temp_dir().join(format!("respguard-backlog-{}.yaml", addr.port()));
    std::fs::write(&dir, "limits:\n  tcp_backlog: 1000\n").expect("config");
    let (_running, addr, _) = start(
        &redis,
        "4096:4096",
        &["--config", dir.to_str().expect("path")],
    )
    .await;
    assert_eq!(backlog(addr.port()), Some(1000));
    let _ = std::fs::remove_file(&dir);
}
