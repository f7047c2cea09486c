//! A client that pipelines reads and never reads the replies holds a bounded amount of the
//! proxy's memory: past `limits.max_client_output`, or with `limits.max_total_output` spent by
//! all such clients, it is disconnected and counted, while other clients go on unaffected. The
//! real binary's resident memory stays bounded under such a client with the default limits.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{bulk, raw_proxy, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const VALUE_LEN: usize = 10 * 1024;

/// Stores a 10 KB value under `big` and returns it.
async fn store_big(redis: &RedisServer) -> Vec<u8> {
    let value = vec![b'x'; VALUE_LEN];
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"SET", b"big", &value]).await, b"+OK\r\n");
    value
}

/// Connects with a small receive buffer, so the kernel absorbs little of what is not read.
async fn small_window(addr: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    s.connect(addr).await.expect("connect")
}

/// Pipelines `n` `GET big` and never reads; the writer stops when the proxy closes.
fn never_read(mut s: TcpStream, n: usize) -> tokio::task::JoinHandle<TcpStream> {
    tokio::spawn(async move {
        let one = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n";
        let batch: Vec<u8> = one.repeat(1000);
        for _ in 0..n / 1000 {
            if s.write_all(&batch).await.is_err() {
                break;
            }
        }
        s
    })
}

/// Reads everything until EOF; `None` if the proxy did not close within `t`.
async fn read_to_close(s: &mut TcpStream, t: Duration) -> Option<usize> {
    let mut total = 0;
    let mut buf = vec![0u8; 256 * 1024];
    let deadline = tokio::time::Instant::now() + t;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(total),
            Ok(Ok(n)) => total += n,
        }
    }
}

async fn limit_count(proxy: &respguard::Proxy, limit: &str) -> f64 {
    let m = common::metrics_text(proxy).await;
    common::metric_sum(
        &m,
        "respguard_client_output_limit_total",
        &[("limit", limit)],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_at_its_limit() {
    let redis = RedisServer::start();
    let value = store_big(&redis).await;
    let proxy = common::proxy(
        "limits:\n  max_client_output: 1mb\n  max_total_output: 256mb\n",
        &redis.url(),
    )
    .await;
    let mut bystander = raw_proxy(&proxy).await;
    assert_resp!(bystander.ask(&[b"GET", b"big"]).await, bulk(&value));
    let writer = never_read(small_window(proxy.local_addr).await, 100_000);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // The other client is served meanwhile.
        assert_resp!(bystander.ask(&[b"GET", b"big"]).await, bulk(&value));
        if limit_count(&proxy, "client").await >= 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client that does not read was not cut off"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut s = writer.await.expect("writer");
    let got = read_to_close(&mut s, Duration::from_secs(10))
        .await
        .expect("the proxy closed the connection");
    assert!(
        got < 100_000 * VALUE_LEN / 10,
        "{got} bytes delivered: the client was not cut off early"
    );
    assert_eq!(limit_count(&proxy, "total").await, 0.0);
    assert_resp!(bystander.ask(&[b"GET", b"big"]).await, bulk(&value));
    assert_eq!(
        proxy
            .shared
            .output_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "unread bytes are released when the client goes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_cut_off_when_the_total_is_spent() {
    let redis = RedisServer::start();
    let value = store_big(&redis).await;
    let proxy = common::proxy(
        "limits:\n  max_client_output: 64mb\n  max_total_output: 2mb\n",
        &redis.url(),
    )
    .await;
    let mut bystander = raw_proxy(&proxy).await;
    let mut writers = Vec::new();
    for _ in 0..3 {
        writers.push(never_read(small_window(proxy.local_addr).await, 50_000));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert_resp!(bystander.ask(&[b"GET", b"big"]).await, bulk(&value));
        if limit_count(&proxy, "total").await >= 3.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "clients past the process-wide budget were not cut off"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(limit_count(&proxy, "client").await, 0.0);
    for w in writers {
        let mut s = w.await.expect("writer");
        assert!(read_to_close(&mut s, Duration::from_secs(10))
            .await
            .is_some());
    }
    assert_resp!(bystander.ask(&[b"GET", b"big"]).await, bulk(&value));
}

/// Kills the child on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A figure in kB from /proc/PID/status (`VmRSS`, `VmHWM`).
fn proc_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| {
            v.trim_start_matches(':')
                .trim()
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .expect("field in /proc/PID/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_stays_small_under_a_client_that_never_reads() {
    let redis = RedisServer::start();
    let value = store_big(&redis).await;
    let port = common::free_port();
    let admin = common::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_respguard"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--upstream", &redis.url()])
        .env_remove("RESPGUARD_UPSTREAM_PASSWORD")
        .env("RESPGUARD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn respguard");
    let running = Running(child);
    let pid = running.0.id();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let up = common::eventually(Duration::from_secs(5), || async move {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
    assert!(up, "respguard did not start");
    let mut bystander = common::Raw::connect(addr).await;
    assert_resp!(bystander.ask(&[b"GET", b"big"]).await, bulk(&value));
    let writer = never_read(small_window(addr).await, 200_000);
    let admin_addr: SocketAddr = ([127, 0, 0, 1], admin).into();
    // The proxy stops reading the client once its replies pile up: wait until it has
    // answered more than it lets one client on a shared connection have in flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert_resp!(bystander.ask(&[b"GET", b"big"]).await, bulk(&value));
        let (_, m) = common::http_get(admin_addr, "/metrics").await;
        let gets = common::metric_sum(&m, "respguard_commands_total", &[("command", "GET")]);
        if gets.unwrap_or(0.0) >= 2000.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy did not answer the pipelined GETs"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rss_mb = proc_kb(pid, "VmRSS") / 1024;
    let peak_mb = proc_kb(pid, "VmHWM") / 1024;
    eprintln!("proxy RSS {rss_mb} MB, peak {peak_mb} MB");
    // 4 MB of unread replies, 1024 replies in flight, and the proxy itself.
    assert!(peak_mb < 64, "peak RSS {peak_mb} MB");
    writer.abort();
    assert_resp!(bystander.ask(&[b"GET", b"big"]).await, bulk(&value));
}
