//! Test harness: real `redis-server` instances on free loopback ports, respguard in front of
//! them, and a raw RESP client for what client crates hide.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use respguard::codec::{Limits, ReplyScanner};
use respguard::config::{Config, Overrides};
use respguard::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A free loopback port (never 6379: the OS hands out ephemeral ports).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Whether process `pid` holds the listening socket on loopback `port` (Linux: the socket
/// inode listed for the port in /proc/net/tcp is one of the process's descriptors).
fn listens(pid: u32, port: u16) -> bool {
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode: LISTEN is state 0A.
            (f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A"))
                .then(|| f.get(9).map(|i| format!("socket:[{i}]")))
                .flatten()
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

/// A `redis-server` child process, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Child,
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
        let child = Command::new("redis-server")
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
            .stderr(Stdio::null())
            .spawn()
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
            if !matches!(self.child.try_wait(), Ok(None)) {
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

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A direct (proxy-less) client, for checking what reached Redis.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Builds a config from YAML text plus the proxy's and upstream's addresses.
pub fn config(yaml: &str, upstream: &str) -> Config {
    let ov = Overrides {
        listen: Some(("--listen".into(), "127.0.0.1:0".into())),
        upstream: Some(("--upstream".into(), upstream.into())),
        admin: Some(("--admin".into(), "127.0.0.1:0".into())),
        upstream_password: None,
    };
    Config::parse(yaml, "test.yaml", &ov).unwrap_or_else(|e| panic!("test config invalid: {e}"))
}

/// Starts respguard in this process in front of `upstream`.
pub async fn proxy(yaml: &str, upstream: &str) -> Proxy {
    Proxy::start(config(yaml, upstream))
        .await
        .expect("proxy starts")
}

pub fn proxy_url(p: &Proxy) -> String {
    format!("redis://{}", p.local_addr)
}

pub async fn proxy_conn(p: &Proxy) -> redis::aio::MultiplexedConnection {
    redis::Client::open(proxy_url(p))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect through the proxy")
}

/// A raw RESP connection: send bytes, read whole replies.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    scanner: ReplyScanner,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: BytesMut::new(),
            scanner: ReplyScanner::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Sends one command as a multibulk.
    pub async fn cmd(&mut self, args: &[&[u8]]) {
        let mut b = BytesMut::new();
        respguard::codec::encode_command(&mut b, args.iter().copied());
        self.send(&b).await;
    }

    /// Reads the next complete reply frame (raw bytes), or panics after 10 s.
    pub async fn read(&mut self) -> Vec<u8> {
        self.read_timeout(Duration::from_secs(10))
            .await
            .expect("a reply within 10 s")
    }

    /// The next reply, or `None` on timeout or EOF.
    pub async fn read_timeout(&mut self, t: Duration) -> Option<Vec<u8>> {
        let limits = Limits::default();
        let deadline = tokio::time::Instant::now() + t;
        loop {
            if let Ok(Some(f)) = self.scanner.scan(&self.buf, &limits) {
                return Some(self.buf.split_to(f.len).to_vec());
            }
            self.buf.reserve(64 * 1024);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Sends a command and returns its reply.
    pub async fn call(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.cmd(args).await;
        self.read().await
    }

    /// True when the server closed the connection (EOF within `t`).
    pub async fn closed_within(&mut self, t: Duration) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(t, self.stream.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// Fetches an admin endpoint: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("admin connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The value of one sample line in Prometheus text, e.g. `respguard_commands_total{command="GET",result="ok"}`.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name_and_labels).then(|| v.parse().ok()).flatten()
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers for the proxy_* integration tests (additive).

impl RedisServer {
    /// The server's socket address, for raw (proxy-less) connections.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A raw connection straight to Redis.
    pub async fn raw(&self) -> Raw {
        Raw::connect(self.addr()).await
    }
}

/// A raw connection to the proxy's client port.
pub async fn raw_proxy(p: &Proxy) -> Raw {
    Raw::connect(p.local_addr).await
}

/// A real Redis with respguard in front of it (configured by `yaml`) and a raw connection to
/// each: `c` through the proxy (what the client sees), `d` straight to Redis (what was stored).
pub struct PolicyEnv {
    pub redis: RedisServer,
    pub proxy: Proxy,
    pub c: Raw,
    pub d: Raw,
}

pub async fn policy_env(yaml: &str) -> PolicyEnv {
    let redis = RedisServer::start();
    let proxy = proxy(yaml, &redis.url()).await;
    let c = raw_proxy(&proxy).await;
    let d = redis.raw().await;
    PolicyEnv { redis, proxy, c, d }
}

/// A RESP2 bulk string frame.
pub fn bulk(b: &[u8]) -> Vec<u8> {
    let mut v = format!("${}\r\n", b.len()).into_bytes();
    v.extend_from_slice(b);
    v.extend_from_slice(b"\r\n");
    v
}

/// A RESP2 array of bulk strings.
pub fn bulk_array(items: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", items.len()).into_bytes();
    for i in items {
        v.extend_from_slice(&bulk(i));
    }
    v
}

/// A RESP3 push frame of bulk strings (`>n`).
pub fn bulk_push(items: &[&[u8]]) -> Vec<u8> {
    let mut v = bulk_array(items);
    v[0] = b'>';
    v
}

/// Several commands as multibulks in one buffer (for one write).
pub fn encode_many(cmds: &[&[&[u8]]]) -> Vec<u8> {
    let mut b = BytesMut::new();
    for c in cmds {
        respguard::codec::encode_command(&mut b, c.iter().copied());
    }
    b.to_vec()
}

/// Shows a reply readably in assertion messages.
pub fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).escape_debug().to_string()
}

/// Polls `f` every 10 ms until it is true or `timeout` passes; returns the last answer.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (up to 5 s) until Redis reports at least `n` clients blocked in a blocking command.
pub async fn wait_blocked(redis: &RedisServer, n: usize) {
    let addr = redis.addr();
    let ok = eventually(Duration::from_secs(5), || async move {
        let mut r = Raw::connect(addr).await;
        let info = r.call(&[b"INFO", b"clients"]).await;
        let text = String::from_utf8_lossy(&info).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("blocked_clients:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .is_some_and(|v| v >= n)
    })
    .await;
    assert!(ok, "redis never reported {n} blocked client(s)");
}

/// Fetches `/metrics` from a proxy's admin port.
pub async fn metrics_text(p: &Proxy) -> String {
    let (code, body) = http_get(p.admin_addr.expect("admin address"), "/metrics").await;
    assert_eq!(code, 200, "/metrics status");
    body
}

/// Panics, showing both sides as escaped text, when two RESP byte strings differ.
#[track_caller]
pub fn check_resp<G, W>(got: &G, want: &W, what: std::fmt::Arguments<'_>)
where
    G: AsRef<[u8]> + ?Sized,
    W: AsRef<[u8]> + ?Sized,
{
    let (g, w) = (got.as_ref(), want.as_ref());
    if g != w {
        let brief = |b: &[u8]| {
            if b.len() <= 300 {
                format!("\"{}\"", show(b))
            } else {
                format!(
                    "\"{}\" ... \"{}\" ({} bytes)",
                    show(&b[..200]),
                    show(&b[b.len() - 40..]),
                    b.len()
                )
            }
        };
        panic!("{what}\n   got: {}\n  want: {}", brief(g), brief(w));
    }
}

/// `assert_eq!` for RESP bytes: shows both sides as escaped text, not as byte arrays.
/// Use with `#[macro_use] mod common;`.
#[allow(unused_macros)]
macro_rules! assert_resp {
    ($got:expr, $want:expr $(,)?) => {
        $crate::common::check_resp(&$got, &$want, format_args!("reply mismatch"))
    };
    ($got:expr, $want:expr, $($arg:tt)+) => {
        $crate::common::check_resp(&$got, &$want, format_args!($($arg)+))
    };
}

impl Raw {
    /// The next reply frame, like [`Raw::read`], but a failure says what happened: the
    /// connection closed, an I/O error, an invalid frame, or nothing within 10 s.
    #[track_caller]
    pub fn reply(&mut self) -> impl std::future::Future<Output = Vec<u8>> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            let limits = Limits::default();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                match self.scanner.scan(&self.buf, &limits) {
                    Ok(Some(f)) => return self.buf.split_to(f.len).to_vec(),
                    Ok(None) => {}
                    Err(e) => panic!("{caller}: invalid reply ({e}): \"{}\"", show(&self.buf)),
                }
                self.buf.reserve(64 * 1024);
                let partial = self.buf.len();
                match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                    Ok(Ok(0)) => panic!(
                        "{caller}: connection closed before a reply ({partial} bytes of a partial frame)"
                    ),
                    Ok(Err(e)) => panic!("{caller}: connection error before a reply: {e}"),
                    Err(_) => panic!(
                        "{caller}: no reply within 10 s ({partial} bytes of a partial frame)"
                    ),
                    Ok(Ok(_)) => {}
                }
            }
        }
    }

    /// Sends a command and returns its reply, failing like [`Raw::reply`].
    #[track_caller]
    pub fn ask<'a>(
        &'a mut self,
        args: &'a [&'a [u8]],
    ) -> impl std::future::Future<Output = Vec<u8>> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            self.cmd(args).await;
            match self.read_timeout(Duration::from_secs(10)).await {
                Some(r) => r,
                None => panic!(
                    "{caller}: no reply to {} (closed or 10 s timeout)",
                    show(args[0])
                ),
            }
        }
    }
}

/// A raw connection to any proxy address (e.g. the real binary's).
pub async fn raw_proxy_addr(addr: SocketAddr) -> Raw {
    Raw::connect(addr).await
}

/// Sum of every sample of metric `name` whose labels include all of `labels` (other labels,
/// such as ones added later, are ignored). `None` when no sample matches.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric_name, label_text) = match key.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (key, ""),
        };
        if metric_name != name {
            continue;
        }
        let has = |k: &str, v: &str| {
            label_text
                .split(',')
                .any(|pair| pair == format!("{k}=\"{v}\""))
        };
        if labels.iter().all(|(k, v)| has(k, v)) {
            if let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

/// The lines of `text` for metric `name`, for assertion messages.
pub fn metric_lines(text: &str, name: &str) -> String {
    text.lines()
        .filter(|l| l.starts_with(name))
        .collect::<Vec<_>>()
        .join("\n")
}
