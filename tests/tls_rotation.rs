//! Certificate rotation without a restart: when the listener's certificate file changes,
//! new handshakes present the new certificate while connections made before keep working;
//! a broken replacement leaves the certificate in force and is counted. A replaced upstream
//! CA file is trusted by the next upstream connection.

#[macro_use]
mod common;

use std::time::Duration;

use common::{call_on, metric, metrics_text, tls_connect, Pki, RedisServer};

async fn presented(addr: std::net::SocketAddr, pki: &Pki) -> Vec<u8> {
    let s = tls_connect(addr, pki, None).await.expect("tls");
    let certs = s
        .get_ref()
        .1
        .peer_certificates()
        .expect("peer certificates");
    certs[0].as_ref().to_vec()
}

async fn reloads(proxy: &respguard::Proxy, result: &str) -> f64 {
    let m = metrics_text(proxy).await;
    metric(
        &m,
        &format!("respguard_tls_reloads_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_handshakes_present_a_rotated_certificate_and_old_connections_continue() {
    let redis = RedisServer::start();
    let pki = Pki::new("rotate");
    let server = pki.issue("proxy", &["127.0.0.1"]);
    let yaml = common::tls_listener_yaml(&server, &[]);
    let proxy = common::proxy(&yaml, &redis.url()).await;
    let addr = proxy.tls_addr.expect("tls");
    let first = presented(addr, &pki).await;
    let mut old = tls_connect(addr, &pki, None).await.expect("tls");
    assert_resp!(
        call_on(&mut old, &[b"SET", b"app:user:1", b"a"])
            .await
            .unwrap(),
        b"+OK\r\n"
    );

    let second = pki.reissue(&server, "proxy-rotated", &["127.0.0.1"]);
    assert_ne!(first, second);
    let rotated = common::eventually(Duration::from_secs(10), || async {
        presented(addr, &pki).await == second
    })
    .await;
    assert!(rotated, "new handshakes still present the old certificate");
    assert_eq!(reloads(&proxy, "ok").await, 1.0);
    assert_resp!(
        call_on(&mut old, &[b"GET", b"app:user:1"]).await.unwrap(),
        b"$1\r\na\r\n"
    );

    // A broken replacement: refused, counted, the rotated certificate stays in force.
    std::fs::write(&server.cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("write");
    let counted = common::eventually(Duration::from_secs(10), || async {
        reloads(&proxy, "error").await >= 1.0
    })
    .await;
    assert!(counted, "the broken file was not counted");
    assert_eq!(presented(addr, &pki).await, second);
    assert_resp!(call_on(&mut old, &[b"PING"]).await.unwrap(), b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_upstream_ca_file_is_used_for_new_upstream_connections() {
    let pki = Pki::new("upstream-rotate");
    let stranger = Pki::new("upstream-stranger");
    let server = pki.issue("server", &["127.0.0.1"]);
    let redis = common::TlsRedis::start(&pki, &server, "no");
    let ca = pki.dir.join("trusted.pem");
    std::fs::copy(stranger.ca_file(), &ca).expect("copy");
    let yaml = format!("upstream:\n  tls:\n    ca_file: {}\n", ca.display());
    let proxy = common::proxy(&yaml, &redis.tls_url()).await;
    let mut c = common::raw_proxy(&proxy).await;
    let reply = c.call(&[b"PING"]).await;
    assert!(
        String::from_utf8_lossy(&reply).contains("unknown authority"),
        "{}",
        common::show(&reply)
    );

    std::fs::copy(pki.ca_file(), &ca).expect("copy");
    let reloaded = common::eventually(Duration::from_secs(10), || async {
        reloads(&proxy, "ok").await >= 1.0
    })
    .await;
    assert!(reloaded);
    let mut c = common::raw_proxy(&proxy).await;
    assert_resp!(c.call(&[b"PING"]).await, b"+PONG\r\n");
}
