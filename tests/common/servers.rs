//! Real `redis-server` processes on free loopback ports, one per test that asks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::ports::{free_port, listens};
use super::process::{self, Guarded};
use super::raw::Raw;

/// A Lua script that runs until `SCRIPT KILL`: while it runs, Redis answers other connections
/// `-BUSY` (past `busy-reply-threshold`) and reads nothing more from the connection that sent
/// it. A barrier that holds as long as the test needs, unlike a sleep.
pub const ENDLESS_SCRIPT: &[u8] = b"while true do end";

/// `redis-server` options for tests that use [`ENDLESS_SCRIPT`]: `-BUSY` after 10 ms.
pub const BUSY_AFTER_10MS: &[&str] = &["--busy-reply-threshold", "10"];

/// A `redis-server` child process, killed on drop or when the test process dies.
pub struct RedisServer {
    pub port: u16,
    child: Guarded,
    dir: PathBuf,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts redis-server with extra `--option value` arguments.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        // A port from `free_port` is free only until someone takes it: another test's Redis
        // (whose PONG would then be taken for ours, and whose keys would mix with ours) or an
        // outgoing connection's source port. A server that is not ours is retried elsewhere.
        for _ in 0..5 {
            if let Some(server) = Self::try_start_on(free_port(), extra) {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts redis-server on `port` (for tests that restart it where it was).
    pub fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        Self::try_start_on(port, extra).unwrap_or_else(|| {
            panic!("redis-server did not start on port {port} (taken by another process?)")
        })
    }

    /// `None` when the server exited (the port was taken) or another process answers there.
    fn try_start_on(port: u16, extra: &[&str]) -> Option<RedisServer> {
        let dir =
            std::env::temp_dir().join(format!("respguard-test-{}-{}", std::process::id(), port));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let child = process::spawn(
            process::command("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--dir", dir.to_str().expect("utf-8 temp dir")])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("redis-server on PATH (run scripts/ensure-redis)");
        // Dropped (killed, directory removed) unless it is returned.
        let mut server = RedisServer { port, child, dir };
        (server.wait_ready() && listens(server.child.id(), port)).then_some(server)
    }

    /// Waits until something answers PING on the port; false if our child exited first or
    /// nothing answered within 10 s.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !self.child.running() {
                return false;
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                if s.write_all(b"PING\r\n").is_ok() {
                    let mut b = [0u8; 64];
                    if let Ok(n) = s.read(&mut b) {
                        if b[..n].starts_with(b"+PONG") || b[..n].starts_with(b"-NOAUTH") {
                            return true;
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's socket address, for raw (proxy-less) connections.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A direct (proxy-less) client, for checking what reached Redis.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }

    /// A raw connection straight to Redis.
    pub async fn raw(&self) -> Raw {
        Raw::connect(self.addr()).await
    }

    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Waits (up to 10 s) until Redis answers `-BUSY`: a script is running.
    pub async fn wait_busy(&self) {
        let addr = self.addr();
        let busy = super::eventually(Duration::from_secs(10), || async move {
            let mut r = Raw::connect(addr).await;
            r.call(&[b"PING"]).await.starts_with(b"-BUSY")
        })
        .await;
        assert!(busy, "redis never answered -BUSY");
    }

    /// Ends the running script (`SCRIPT KILL` on a connection of its own).
    pub async fn kill_script(&self) {
        let mut r = self.raw().await;
        let reply = r.call(&[b"SCRIPT", b"KILL"]).await;
        assert_eq!(reply, b"+OK\r\n", "SCRIPT KILL: {}", super::show(&reply));
    }

    /// Bytes that clients have sent and Redis has not read yet (the receive queues of Redis's
    /// end of its connections, from /proc/net/tcp). While a script runs, what the connection
    /// running it sends next waits there.
    pub fn unread_bytes(&self) -> usize {
        let tcp = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        let local = format!("0100007F:{:04X}", self.port);
        tcp.lines()
            .skip(1)
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                // sl local_address rem_address st tx_queue:rx_queue; ESTABLISHED is 01.
                if f.get(1) != Some(&local.as_str()) || f.get(3) != Some(&"01") {
                    return None;
                }
                let (_, rx) = f.get(4)?.split_once(':')?;
                usize::from_str_radix(rx, 16).ok()
            })
            .sum()
    }

    /// Waits (up to 10 s) until at least `n` bytes sent to Redis wait unread.
    pub async fn wait_unread(&self, n: usize) {
        let ok = super::eventually(Duration::from_secs(10), || async move {
            self.unread_bytes() >= n
        })
        .await;
        assert!(
            ok,
            "never {n} unread bytes at redis (now {})",
            self.unread_bytes()
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Redis's `INFO clients` field `name` (e.g. `connected_clients`, `blocked_clients`).
pub async fn info_clients(redis: &RedisServer, name: &str) -> Option<usize> {
    let mut r = Raw::connect(redis.addr()).await;
    let info = r.call(&[b"INFO", b"clients"]).await;
    let text = String::from_utf8_lossy(&info).into_owned();
    let prefix = format!("{name}:");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse::<usize>().ok())
}

/// Waits (up to 10 s) until Redis reports at least `n` clients blocked in a blocking command.
pub async fn wait_blocked(redis: &RedisServer, n: usize) {
    let ok = super::eventually(Duration::from_secs(10), || async move {
        info_clients(redis, "blocked_clients")
            .await
            .is_some_and(|v| v >= n)
    })
    .await;
    assert!(ok, "redis never reported {n} blocked client(s)");
}
