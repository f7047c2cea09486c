//! Client listeners next to the plain TCP one: a Unix socket with its file mode, and TLS
//! with `client_auth` none, optional or required, checked with `redis-cli --tls` and a Rust
//! TLS client; a client that never finishes its handshake delays nobody and is cut off at
//! the handshake timeout.

#[macro_use]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{call_on, metric, metrics_text, raw_proxy, tls_connect, Pki, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_answers_as_tcp_does_with_its_file_mode() {
    let redis = RedisServer::start();
    let pki = Pki::new("unix");
    let path = pki.dir.join("respguard.sock");
    let yaml = format!(
        "unix_socket:\n  path: unix://{}\n  mode: \"0600\"\n",
        path.display()
    );
    let proxy = common::proxy(&yaml, &redis.url()).await;
    assert_eq!(proxy.unix_path.as_deref(), Some(path.as_path()));
    let mode = std::fs::metadata(&path)
        .expect("socket file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let mut u = tokio::net::UnixStream::connect(&path)
        .await
        .expect("unix connect");
    let mut t = raw_proxy(&proxy).await;
    for args in [
        &[&b"SET"[..], b"app:user:1", b"v"][..],
        &[b"GET", b"app:user:1"],
        &[b"INCR", b"app:user:1"],
        &[b"GET", b"app:user:2"],
    ] {
        let over_unix = call_on(&mut u, args).await.expect("unix reply");
        let over_tcp = t.call(args).await;
        assert_resp!(
            over_unix,
            over_tcp,
            "{:?}",
            String::from_utf8_lossy(args[0])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_over_tls_while_plain_clients_keep_working() {
    let redis = RedisServer::start();
    let pki = Pki::new("cli");
    let server = pki.issue("proxy", &["127.0.0.1"]);
    let yaml = common::tls_listener_yaml(&server, &[]);
    let proxy = common::proxy(&yaml, &redis.url()).await;
    let tls_port = proxy.tls_addr.expect("tls listener").port().to_string();
    let ca = pki.ca_file();
    let out = tokio::process::Command::new("redis-cli")
        .args(["--tls", "--cacert", ca.to_str().expect("utf-8")])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &tls_port,
            "SET",
            "app:user:1",
            "over-tls",
        ])
        .output()
        .await
        .expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK", "{out:?}");
    let mut plain = raw_proxy(&proxy).await;
    assert_resp!(
        plain.call(&[b"GET", b"app:user:1"]).await,
        b"$8\r\nover-tls\r\n"
    );
    // A large value and a long pipeline through TLS on the client side.
    let mut c = tls_connect(proxy.tls_addr.unwrap(), &pki, None)
        .await
        .expect("tls");
    let big = vec![b'v'; 5_000_000];
    assert_resp!(
        call_on(&mut c, &[b"SET", b"app:big:1", &big])
            .await
            .unwrap(),
        b"+OK\r\n"
    );
    let got = call_on(&mut c, &[b"GET", b"app:big:1"]).await.unwrap();
    let mut want = format!("${}\r\n", big.len()).into_bytes();
    want.extend_from_slice(&big);
    want.extend_from_slice(b"\r\n");
    assert!(
        got == want,
        "the 5 MB value came back changed ({} bytes)",
        got.len()
    );
}

fn auth_yaml(pki: &Pki, server: &common::Issued, auth: &str) -> String {
    let ca = pki.ca_file().display().to_string();
    common::tls_listener_yaml(
        server,
        &[
            ("ca_file", &ca),
            ("client_auth", auth),
            ("handshake_timeout", "300ms"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_auth_refuses_a_client_without_certificate() {
    let redis = RedisServer::start();
    let pki = Pki::new("required");
    let server = pki.issue("proxy", &["127.0.0.1"]);
    let client = pki.issue("client", &["app"]);
    let proxy = common::proxy(&auth_yaml(&pki, &server, "required"), &redis.url()).await;
    let addr = proxy.tls_addr.expect("tls");

    let mut good = tls_connect(addr, &pki, Some(&client))
        .await
        .expect("with certificate");
    assert_resp!(call_on(&mut good, &[b"PING"]).await.unwrap(), b"+PONG\r\n");

    // TLS 1.3: the client's side of the handshake completes; the refusal comes on first use.
    let refused = match tls_connect(addr, &pki, None).await {
        Err(_) => true,
        Ok(mut s) => call_on(&mut s, &[b"PING"]).await.is_err(),
    };
    assert!(refused, "a client without a certificate was served");
    let ok = common::eventually(Duration::from_secs(5), || async {
        let m = metrics_text(&proxy).await;
        metric(
            &m,
            "respguard_client_tls_failures_total{reason=\"no_certificate\"}",
        ) == Some(1.0)
    })
    .await;
    assert!(ok, "{}", metrics_text(&proxy).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_auth_accepts_clients_with_and_without_certificate() {
    let redis = RedisServer::start();
    let pki = Pki::new("optional");
    let server = pki.issue("proxy", &["127.0.0.1"]);
    let client = pki.issue("client", &["app"]);
    let proxy = common::proxy(&auth_yaml(&pki, &server, "optional"), &redis.url()).await;
    let addr = proxy.tls_addr.expect("tls");
    let mut with = tls_connect(addr, &pki, Some(&client)).await.expect("with");
    let mut without = tls_connect(addr, &pki, None).await.expect("without");
    assert_resp!(call_on(&mut with, &[b"PING"]).await.unwrap(), b"+PONG\r\n");
    assert_resp!(
        call_on(&mut without, &[b"PING"]).await.unwrap(),
        b"+PONG\r\n"
    );
    // A certificate from another CA is refused even though one is optional.
    let stranger = Pki::new("optional-stranger");
    let foreign = stranger.issue("client", &["app"]);
    let refused = match tls_connect(addr, &pki, Some(&foreign)).await {
        Err(_) => true,
        Ok(mut s) => call_on(&mut s, &[b"PING"]).await.is_err(),
    };
    assert!(refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_delays_no_one_and_ends_at_the_timeout() {
    let redis = RedisServer::start();
    let pki = Pki::new("stall");
    let server = pki.issue("proxy", &["127.0.0.1"]);
    let proxy = common::proxy(&auth_yaml(&pki, &server, "none"), &redis.url()).await;
    let addr = proxy.tls_addr.expect("tls");
    // Connected, silent: the handshake never starts.
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let started = Instant::now();
    let mut c = tls_connect(addr, &pki, None).await.expect("tls");
    assert_resp!(call_on(&mut c, &[b"PING"]).await.unwrap(), b"+PONG\r\n");
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    let mut b = [0u8; 1];
    use tokio::io::AsyncReadExt;
    let closed = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut b)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    let m = metrics_text(&proxy).await;
    assert_eq!(
        metric(
            &m,
            "respguard_client_tls_failures_total{reason=\"timeout\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_in_progress_count_against_max_clients() {
    let redis = RedisServer::start();
    let pki = Pki::new("flood");
    let server = pki.issue("proxy", &["127.0.0.1"]);
    let yaml = format!(
        "limits:\n  max_clients: 2\n{}",
        common::tls_listener_yaml(&server, &[("handshake_timeout", "5s")])
    );
    let proxy = common::proxy(&yaml, &redis.url()).await;
    let addr = proxy.tls_addr.expect("tls");
    // Two connections that never start their handshake hold both client slots.
    let silent = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let _silent2 = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let shared = proxy.shared.clone();
    assert!(
        common::eventually(Duration::from_secs(2), || {
            let shared = shared.clone();
            async move { shared.client_count() == 2 }
        })
        .await,
        "handshakes in progress are not counted: {} clients",
        proxy.shared.client_count()
    );
    // A third TLS client is closed before any handshake work, a plain one told why.
    let started = Instant::now();
    assert!(
        tls_connect(addr, &pki, None).await.is_err(),
        "a TLS handshake beyond max_clients went ahead"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    let mut plain = raw_proxy(&proxy).await;
    assert_resp!(
        plain.read().await,
        b"-ERR max number of clients reached\r\n"
    );
    // A slot freed by a handshake that ends is taken by the next client.
    drop(silent);
    assert!(
        common::eventually(Duration::from_secs(2), || {
            let shared = shared.clone();
            async move { shared.client_count() == 1 }
        })
        .await,
        "the slot of an abandoned handshake was not given back"
    );
    let mut c = tls_connect(addr, &pki, None).await.expect("tls");
    assert_resp!(call_on(&mut c, &[b"PING"]).await.unwrap(), b"+PONG\r\n");
    let m = metrics_text(&proxy).await;
    assert_eq!(
        metric(&m, "respguard_client_connections_refused_total"),
        Some(2.0),
        "{m}"
    );
}
