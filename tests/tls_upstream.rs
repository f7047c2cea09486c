//! `rediss://` upstreams: commands, pipelines, transactions, blocking commands and pub/sub
//! through a TLS connection to a real Redis answer byte for byte what Redis answers on its
//! plain port; client certificates for `tls-auth-clients yes`; and every way the TLS
//! connection can fail (unknown CA, wrong name, expired certificate, no TLS at all, no
//! client certificate) named to the client, on `/readyz` and in the metrics.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{http_get, metric, metrics_text, raw_proxy, show, Pki, Raw, RedisServer, TlsRedis};

fn tls_yaml(lines: &[(&str, &std::path::Path)]) -> String {
    let mut y = String::from("upstream:\n  connect_timeout: 2s\n  tls:\n");
    for (k, v) in lines {
        y.push_str(&format!("    {k}: {}\n", v.display()));
    }
    y
}

/// Runs the same commands on `c` and returns every reply, in order.
async fn script(c: &mut Raw, other: &mut Raw) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    out.push(c.call(&[b"SET", b"app:user:1", b"v1"]).await);
    out.push(c.call(&[b"GET", b"app:user:1"]).await);
    out.push(c.call(&[b"GET", b"app:user:missing"]).await);
    // A pipeline of 1000 commands in one write.
    let cmds: Vec<Vec<Vec<u8>>> = (0..1000)
        .map(|i| {
            if i % 2 == 0 {
                vec![
                    b"SET".to_vec(),
                    format!("app:p:{i}").into_bytes(),
                    format!("{i}").repeat(i % 50 + 1).into_bytes(),
                ]
            } else {
                vec![b"GET".to_vec(), format!("app:p:{}", i - 1).into_bytes()]
            }
        })
        .collect();
    let mut bytes = bytes::BytesMut::new();
    for cmd in &cmds {
        respguard::codec::encode_command(&mut bytes, cmd.iter().map(|a| a.as_slice()));
    }
    c.send(&bytes).await;
    for _ in 0..cmds.len() {
        out.push(c.read().await);
    }
    // A value larger than a TLS record.
    let big = vec![b'x'; 300_000];
    out.push(c.call(&[b"SET", b"app:big:1", &big]).await);
    out.push(c.call(&[b"GET", b"app:big:1"]).await);
    out.push(c.call(&[b"MULTI"]).await);
    out.push(c.call(&[b"INCR", b"app:n:1"]).await);
    out.push(c.call(&[b"INCR", b"app:n:1"]).await);
    out.push(c.call(&[b"EXEC"]).await);
    out.push(c.call(&[b"BLPOP", b"app:q:1", b"0.05"]).await);
    out.push(c.call(&[b"SUBSCRIBE", b"chan"]).await);
    let published = other.call(&[b"PUBLISH", b"chan", b"hello"]).await;
    out.push(published);
    out.push(c.read().await);
    out.push(c.call(&[b"UNSUBSCRIBE", b"chan"]).await);
    out.push(c.call(&[b"PING"]).await);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_through_tls_match_redis_byte_for_byte() {
    let pki = Pki::new("main");
    let server = pki.issue("server", &["localhost", "127.0.0.1"]);
    let redis = TlsRedis::start(&pki, &server, "no");
    let proxy = common::proxy(&tls_yaml(&[("ca_file", &pki.ca_file())]), &redis.tls_url()).await;

    let mut c = raw_proxy(&proxy).await;
    let mut other = redis.redis.raw().await;
    let through = script(&mut c, &mut other).await;

    let mut d = redis.redis.raw().await;
    assert_eq!(d.call(&[b"FLUSHALL"]).await, b"+OK\r\n");
    let direct = script(&mut d, &mut other).await;

    assert_eq!(through.len(), direct.len());
    for (i, (t, d)) in through.iter().zip(&direct).enumerate() {
        assert_resp!(t, d, "reply {i} through TLS differs from Redis");
    }
    // The published message reached the subscriber through TLS.
    assert_eq!(through[through.len() - 4], b":1\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_reaches_redis_that_requires_one() {
    let pki = Pki::new("mtls");
    let server = pki.issue("server", &["127.0.0.1"]);
    let client = pki.issue("client", &["respguard"]);
    let redis = TlsRedis::start(&pki, &server, "yes");

    let without = common::proxy(&tls_yaml(&[("ca_file", &pki.ca_file())]), &redis.tls_url()).await;
    let mut c = raw_proxy(&without).await;
    let reply = c.call(&[b"GET", b"app:user:1"]).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with("-ERR upstream")
            && text.contains("TLS: ")
            && text.contains("client certificate"),
        "without a client certificate: {text}"
    );

    let with = common::proxy(
        &tls_yaml(&[
            ("ca_file", &pki.ca_file()),
            ("cert_file", &client.cert),
            ("key_file", &client.key),
        ]),
        &redis.tls_url(),
    )
    .await;
    let mut c = raw_proxy(&with).await;
    assert_resp!(c.call(&[b"SET", b"app:user:1", b"v"]).await, b"+OK\r\n");
    assert_resp!(c.call(&[b"GET", b"app:user:1"]).await, b"$1\r\nv\r\n");
    let (code, body) = http_get(with.admin_addr.expect("admin"), "/readyz").await;
    assert_eq!((code, body.as_str()), (200, "ready\n"));
}

/// Starts a proxy with `yaml` in front of `url` and checks that a command, `/readyz` and the
/// metrics all name `cause`, within the connect timeout.
async fn failure_is_named(yaml: &str, url: &str, cause: &str) {
    let proxy = common::proxy(yaml, url).await;
    let mut c = raw_proxy(&proxy).await;
    let started = Instant::now();
    let reply = c.call(&[b"GET", b"app:user:1"]).await;
    let text = String::from_utf8_lossy(&reply).into_owned();
    assert!(
        text.starts_with("-ERR upstream ") && text.contains(&format!("TLS: {cause}")),
        "client got {}",
        show(&reply)
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let (code, body) = http_get(proxy.admin_addr.expect("admin"), "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(&format!("TLS: {cause}")), "/readyz: {body}");
    let m = metrics_text(&proxy).await;
    let n = metric(&m, "respguard_upstream_errors_total{kind=\"tls\"}").unwrap_or(0.0);
    assert!(n >= 1.0, "tls errors counted: {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_authority_is_named() {
    let pki = Pki::new("real");
    let stranger = Pki::new("stranger");
    let server = pki.issue("server", &["127.0.0.1"]);
    let redis = TlsRedis::start(&pki, &server, "no");
    failure_is_named(
        &tls_yaml(&[("ca_file", &stranger.ca_file())]),
        &redis.tls_url(),
        "certificate signed by unknown authority",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_mismatch_is_named() {
    let pki = Pki::new("names");
    let server = pki.issue("server", &["redis.example"]);
    let redis = TlsRedis::start(&pki, &server, "no");
    failure_is_named(
        &tls_yaml(&[("ca_file", &pki.ca_file())]),
        &redis.tls_url(),
        "certificate name mismatch: not valid for 127.0.0.1",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_name_setting_verifies_and_sends_that_name() {
    let pki = Pki::new("sni");
    let server = pki.issue("server", &["redis.example"]);
    let redis = TlsRedis::start(&pki, &server, "no");
    let yaml = format!(
        "{}    server_name: redis.example\n",
        tls_yaml(&[("ca_file", &pki.ca_file())])
    );
    let proxy = common::proxy(&yaml, &redis.tls_url()).await;
    let mut c = raw_proxy(&proxy).await;
    assert_resp!(c.call(&[b"PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_is_named() {
    let pki = Pki::new("expired");
    let server = pki.issue_expired("server", &["127.0.0.1"]);
    let redis = TlsRedis::start(&pki, &server, "no");
    failure_is_named(
        &tls_yaml(&[("ca_file", &pki.ca_file())]),
        &redis.tls_url(),
        "certificate has expired",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_redis_behind_rediss_fails_within_connect_timeout() {
    let pki = Pki::new("plain");
    let redis = RedisServer::start();
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    // Redis reads the TLS hello as an inline command and answers in plain text, or waits for
    // the rest of a line: either way the handshake ends with a named cause in time.
    let proxy = common::proxy(&tls_yaml(&[("ca_file", &pki.ca_file())]), &url).await;
    let mut c = raw_proxy(&proxy).await;
    let started = Instant::now();
    let reply = c.call(&[b"GET", b"app:user:1"]).await;
    let text = String::from_utf8_lossy(&reply).into_owned();
    assert!(
        text.starts_with("-ERR upstream ")
            && (text.contains("TLS: the server does not speak TLS")
                || text.contains("TLS: handshake timed out")
                || text.contains("TLS: the server closed the connection")),
        "client got {text}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn unreadable_and_mismatched_key_files_are_located() {
    let pki = Pki::new("files");
    let a = pki.issue("a", &["127.0.0.1"]);
    let b = pki.issue("b", &["127.0.0.1"]);
    let yaml = format!(
        "upstream:\n  url: rediss://127.0.0.1:1\n  tls:\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n",
        pki.ca_file().display(),
        a.cert.display(),
        b.key.display()
    );
    let err = respguard::Config::parse(&yaml, "t.yaml", &Default::default()).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    let p = &err.0[0];
    assert_eq!(
        (p.line, p.field.as_str()),
        (Some(6), "upstream.tls.key_file"),
        "{err}"
    );
    assert!(p.message.contains("does not belong"), "{err}");
    assert!(!p.message.contains("PRIVATE KEY"), "{err}");

    // A valid configuration prints its paths, never the key.
    let yaml = format!(
        "upstream:\n  url: rediss://127.0.0.1:1\n  tls:\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n",
        pki.ca_file().display(),
        a.cert.display(),
        a.key.display()
    );
    let cfg = respguard::Config::parse(&yaml, "t.yaml", &Default::default()).expect("valid");
    let shown = format!("{cfg:?}");
    let key_pem = std::fs::read_to_string(&a.key).expect("key");
    let key_body = key_pem.lines().nth(1).expect("key body");
    assert!(shown.contains(&a.key.display().to_string()), "{shown}");
    assert!(
        !shown.contains(key_body) && !shown.contains("PRIVATE"),
        "{shown}"
    );

    let yaml = format!(
        "upstream:\n  url: rediss://127.0.0.1:1\n  tls:\n    ca_file: {}/missing.pem\n",
        pki.dir.display()
    );
    let err = respguard::Config::parse(&yaml, "t.yaml", &Default::default()).unwrap_err();
    let p = &err.0[0];
    assert_eq!(
        (p.line, p.field.as_str()),
        (Some(4), "upstream.tls.ca_file"),
        "{err}"
    );

    let err = respguard::Config::parse(
        "upstream:\n  url: redis://127.0.0.1:1\n  tls:\n    server_name: x\n",
        "t.yaml",
        &Default::default(),
    )
    .unwrap_err();
    assert_eq!(err.0[0].field, "upstream.tls", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64mb_value_and_a_10k_pipeline_cross_tls_on_both_sides() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new("both");
    let server = pki.issue("server", &["127.0.0.1"]);
    let redis = TlsRedis::start(&pki, &server, "no");
    let yaml = format!(
        "{}{}",
        tls_yaml(&[("ca_file", &pki.ca_file())]),
        common::tls_listener_yaml(&server, &[])
    );
    let proxy = common::proxy(&yaml, &redis.tls_url()).await;
    let mut c = common::tls_connect(proxy.tls_addr.expect("tls"), &pki, None)
        .await
        .expect("tls client");

    let big: Vec<u8> = (0..64 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    assert_resp!(
        common::call_on(&mut c, &[b"SET", b"app:big:1", &big])
            .await
            .unwrap(),
        b"+OK\r\n"
    );
    let got = common::call_on(&mut c, &[b"GET", b"app:big:1"])
        .await
        .unwrap();
    let head = format!("${}\r\n", big.len());
    assert!(
        got.len() == head.len() + big.len() + 2
            && got.starts_with(head.as_bytes())
            && got[head.len()..head.len() + big.len()] == big[..],
        "the 64 MB value came back changed ({} bytes)",
        got.len()
    );
    let mut d = redis.redis.raw().await;
    assert_eq!(d.call(&[b"STRLEN", b"app:big:1"]).await, b":67108864\r\n");

    let mut pipeline = bytes::BytesMut::new();
    let mut want = Vec::new();
    for i in 0..10_000 {
        let key = format!("app:n:{}", i % 100);
        respguard::codec::encode_command(&mut pipeline, [&b"INCR"[..], key.as_bytes()].into_iter());
        want.extend_from_slice(format!(":{}\r\n", i / 100 + 1).as_bytes());
    }
    c.write_all(&pipeline).await.expect("write pipeline");
    c.flush().await.expect("flush");
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(30), c.read_exact(&mut got))
        .await
        .expect("10k replies within 30 s")
        .expect("read replies");
    assert!(
        got == want,
        "10k pipelined replies differ from the expected counts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_policy_applies_through_tls_as_on_plain_tcp() {
    let pki = Pki::new("policy");
    let server = pki.issue("server", &["127.0.0.1"]);
    let redis = TlsRedis::start(&pki, &server, "no");
    let example = std::fs::read_to_string("config/example.yaml").expect("example policy");
    let policy = &example[example.find("\npolicy:").expect("policy section") + 1..];
    let yaml = format!("{}{policy}", tls_yaml(&[("ca_file", &pki.ca_file())]));
    let proxy = common::proxy(&yaml, &redis.tls_url()).await;
    let mut c = raw_proxy(&proxy).await;
    let mut d = redis.redis.raw().await;

    // TTL added by the namespace default, sensitive member stripped, unknown key refused.
    assert_resp!(
        c.call(&[
            b"SET",
            b"user_profile:42",
            br#"{"name":"a","password":"p"}"#
        ])
        .await,
        b"+OK\r\n"
    );
    assert_resp!(
        d.call(&[b"GET", b"user_profile:42"]).await,
        b"$12\r\n{\"name\":\"a\"}\r\n"
    );
    let ttl = d.ttl(b"user_profile:42").await;
    assert!((3590..=3600).contains(&ttl), "ttl {ttl}");
    let refused = c.call(&[b"SET", b"nowhere:1", b"v"]).await;
    assert!(refused.starts_with(b"-"), "{}", show(&refused));
    assert_eq!(d.call(&[b"EXISTS", b"nowhere:1"]).await, b":0\r\n");

    let m = metrics_text(&proxy).await;
    let added = common::metric_sum(&m, "respguard_ttl_enforced_total", &[("action", "added")]);
    assert_eq!(added, Some(1.0), "{m}");
}

/// A TCP relay between the proxy and Redis's TLS port that passes bytes unchanged until
/// `corrupt` is set; then it flips one bit of the next bytes Redis sends, as a faulty network
/// device would. Each accepted connection gets its own connection to Redis.
async fn corrupting_relay(
    redis: std::net::SocketAddr,
    corrupt: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::net::SocketAddr {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("relay bind");
    let addr = listener.local_addr().expect("relay addr");
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            let corrupt = corrupt.clone();
            tokio::spawn(async move {
                let Ok(up) = tokio::net::TcpStream::connect(redis).await else {
                    return;
                };
                let (mut dr, mut dw) = down.into_split();
                let (mut ur, mut uw) = up.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut dr, &mut uw).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match ur.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if corrupt.swap(false, Ordering::AcqRel) {
                        // The last byte of a record is part of its authentication tag.
                        buf[n - 1] ^= 0x01;
                    }
                    if dw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_failure_on_an_established_connection_is_named_and_counted_as_tls() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let pki = Pki::new("broken");
    let server = pki.issue("server", &["127.0.0.1"]);
    let redis = TlsRedis::start(&pki, &server, "no");
    let corrupt = std::sync::Arc::new(AtomicBool::new(false));
    let relay = corrupting_relay(
        format!("127.0.0.1:{}", redis.tls_port)
            .parse()
            .expect("addr"),
        corrupt.clone(),
    )
    .await;
    // Dedicated upstream connections, then shared ones.
    for shared in [0, 2] {
        let yaml = format!(
            "upstream:\n  connect_timeout: 2s\n  shared_connections: {shared}\n  tls:\n    ca_file: {}\n",
            pki.ca_file().display()
        );
        let proxy = common::proxy(&yaml, &format!("rediss://{relay}")).await;
        let mut c = raw_proxy(&proxy).await;
        assert_resp!(c.call(&[b"SET", b"app:user:1", b"v"]).await, b"+OK\r\n");
        corrupt.store(true, Ordering::Release);
        let reply = c.call(&[b"GET", b"app:user:1"]).await;
        let text = String::from_utf8_lossy(&reply).into_owned();
        assert!(
            text.starts_with("-ERR upstream connection lost: TLS: "),
            "shared_connections {shared}: client got {}",
            show(&reply)
        );
        assert!(
            c.closed_within(Duration::from_secs(2)).await,
            "shared_connections {shared}: the client stays open after its upstream state was lost"
        );
        let m = metrics_text(&proxy).await;
        let n = metric(&m, "respguard_upstream_errors_total{kind=\"tls\"}").unwrap_or(0.0);
        assert_eq!(
            n,
            1.0,
            "shared_connections {shared}: tls errors counted\n{}",
            common::metric_lines(&m, "respguard_upstream_errors_total")
        );
    }
}
