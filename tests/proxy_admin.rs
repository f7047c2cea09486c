//! Proxy core, admin endpoint: `/healthz` is 200, `/readyz` is 200 with Redis up and
//! 503 with it down (or refusing the proxy's credentials), `/metrics` exports the client gauge,
//! exact per-command counts after a known sequence, build info and upstream errors by kind,
//! and never shows a password, whatever the clients and the upstream URL contain.

#[macro_use]
mod common;

use std::time::Duration;

use common::{
    bulk, encode_many, metric, metric_lines, metric_sum, metrics_text, raw_proxy, RedisServer,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_follow_redis() {
    let mut redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let admin = proxy.admin_addr.expect("admin address");
    assert_eq!(
        common::http_get(admin, "/healthz").await,
        (200, "ok\n".to_string())
    );
    assert_eq!(
        common::http_get(admin, "/readyz").await,
        (200, "ready\n".to_string())
    );
    assert_eq!(common::http_get(admin, "/nope").await.0, 404);
    redis.kill();
    let (code, body) = common::http_get(admin, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with(&format!(
            "not ready: upstream 127.0.0.1:{} unavailable:",
            redis.port
        )),
        "{body}"
    );
    // Liveness does not depend on Redis.
    assert_eq!(common::http_get(admin, "/healthz").await.0, 200);
    let _back = RedisServer::start_on(redis.port, &[]);
    assert_eq!(common::http_get(admin, "/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_checks_the_proxys_credentials() {
    let redis = RedisServer::start_with(&["--requirepass", "rightpw"]);
    let good = common::proxy("", &format!("redis://:rightpw@127.0.0.1:{}", redis.port)).await;
    let bad = common::proxy("", &format!("redis://:wrongpw@127.0.0.1:{}", redis.port)).await;
    let (code, body) = common::http_get(good.admin_addr.expect("admin"), "/readyz").await;
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    let (code, body) = common::http_get(bad.admin_addr.expect("admin"), "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("refused the proxy's handshake"), "{body}");
    assert!(body.contains("WRONGPASS"), "{body}");
    assert!(!body.contains("wrongpw"), "the password leaked: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_sequence_exactly() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let m = metrics_text(&proxy).await;
    assert_eq!(
        metric_sum(
            &m,
            "respguard_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0),
        "{}",
        metric_lines(&m, "respguard_build_info")
    );
    assert_eq!(
        metric(&m, "respguard_client_connections"),
        Some(0.0),
        "{}",
        metric_lines(&m, "respguard_client_connections")
    );
    let mut c = raw_proxy(&proxy).await;
    assert_resp!(c.ask(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_resp!(c.ask(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    for _ in 0..3 {
        assert_resp!(c.ask(&[b"GET", b"k"]).await, bulk(b"v"));
    }
    assert_resp!(c.ask(&[b"GET", b"missing"]).await, b"$-1\r\n");
    assert_resp!(c.ask(&[b"LPUSH", b"l", b"x"]).await, b":1\r\n");
    let wrongtype = c.ask(&[b"GET", b"l"]).await;
    assert!(wrongtype.starts_with(b"-WRONGTYPE"));
    let unknown = c.ask(&[b"NOSUCHCMD"]).await;
    assert!(unknown.starts_with(b"-ERR unknown command"));
    let gets: Vec<&[&[u8]]> = vec![&[b"GET", b"k"]; 10];
    c.send(&encode_many(&gets)).await;
    for _ in 0..10 {
        assert_resp!(c.reply().await, bulk(b"v"));
    }
    // A second client, so the gauge has something to count.
    let mut c2 = raw_proxy(&proxy).await;
    assert_resp!(c2.ask(&[b"PING"]).await, b"+PONG\r\n");
    let m = metrics_text(&proxy).await;
    let total = metric_lines(&m, "respguard_commands_total");
    let count = |command: &str, result: &str| {
        metric_sum(
            &m,
            "respguard_commands_total",
            &[("command", command), ("result", result)],
        )
    };
    assert_eq!(count("GET", "ok"), Some(14.0), "{total}");
    assert_eq!(count("GET", "error"), Some(1.0), "{total}");
    assert_eq!(count("SET", "ok"), Some(2.0), "{total}");
    assert_eq!(count("LPUSH", "ok"), Some(1.0), "{total}");
    assert_eq!(count("PING", "ok"), Some(1.0), "{total}");
    assert_eq!(count("_other", "error"), Some(1.0), "{total}");
    assert_eq!(count("GET", "rejected").unwrap_or(0.0), 0.0, "{total}");
    let gauge = metric_lines(&m, "respguard_client_connections");
    assert_eq!(
        metric(&m, "respguard_client_connections"),
        Some(2.0),
        "{gauge}"
    );
    assert_eq!(
        metric(&m, "respguard_client_connections_total"),
        Some(2.0),
        "{gauge}"
    );
    assert!(
        m.contains("respguard_command_duration_seconds_bucket{command=\"GET\","),
        "{}",
        metric_lines(&m, "respguard_command_duration_seconds_bucket")
    );
    drop(c);
    drop(c2);
    let gone = common::eventually(Duration::from_secs(2), || async {
        metric(&metrics_text(&proxy).await, "respguard_client_connections") == Some(0.0)
    })
    .await;
    assert!(gone, "the client gauge returns to 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_upstream_connect_errors() {
    let port = common::free_port();
    let proxy = common::proxy("", &format!("redis://127.0.0.1:{port}")).await;
    let mut c = raw_proxy(&proxy).await;
    let e = c.ask(&[b"PING"]).await;
    assert!(e.starts_with(b"-ERR upstream"), "{}", common::show(&e));
    let m = metrics_text(&proxy).await;
    let errors = metric_lines(&m, "respguard_upstream_errors_total");
    let kind = |k: &str| metric_sum(&m, "respguard_upstream_errors_total", &[("kind", k)]);
    assert!(kind("connect").is_some_and(|n| n >= 1.0), "{errors}");
    assert_eq!(kind("read_timeout"), Some(0.0), "{errors}");
    assert_eq!(
        metric_sum(
            &m,
            "respguard_commands_total",
            &[("command", "PING"), ("result", "error")]
        ),
        Some(1.0),
        "{}",
        metric_lines(&m, "respguard_commands_total")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_appear_in_admin_output() {
    let secret = "Sup3r-S3cret-PW";
    let client_secret = "client-side-pw-77";
    let redis = RedisServer::start_with(&["--requirepass", secret]);
    let url = format!("redis://:{secret}@127.0.0.1:{}", redis.port);
    let proxy = common::proxy("", &url).await;
    let mut c = raw_proxy(&proxy).await;
    assert_resp!(c.ask(&[b"PING"]).await, b"+PONG\r\n");
    assert_resp!(c.ask(&[b"AUTH", secret.as_bytes()]).await, b"+OK\r\n");
    let wrong = c.ask(&[b"AUTH", client_secret.as_bytes()]).await;
    assert!(wrong.starts_with(b"-WRONGPASS"), "{}", common::show(&wrong));
    assert_resp!(
        c.ask(&[b"SET", secret.as_bytes(), client_secret.as_bytes()])
            .await,
        b"+OK\r\n"
    );
    assert_resp!(
        c.ask(&[b"CONFIG", b"SET", b"requirepass", secret.as_bytes()])
            .await,
        b"+OK\r\n"
    );
    let admin = proxy.admin_addr.expect("admin");
    let (_, ready) = common::http_get(admin, "/readyz").await;
    let m = metrics_text(&proxy).await;
    assert!(m.contains("respguard_commands_total"), "{m}");
    for text in [&m, &ready] {
        assert!(!text.contains(secret), "upstream password leaked:\n{text}");
        assert!(
            !text.contains(client_secret),
            "client password leaked:\n{text}"
        );
    }
    // Also when the upstream is down and the error text names the upstream.
    let down = common::proxy(
        "",
        &format!("redis://user:{secret}@127.0.0.1:{}", common::free_port()),
    )
    .await;
    let mut d = raw_proxy(&down).await;
    let e = d.ask(&[b"PING"]).await;
    assert!(
        !String::from_utf8_lossy(&e).contains(secret),
        "{}",
        common::show(&e)
    );
    let (code, ready) = common::http_get(down.admin_addr.expect("admin"), "/readyz").await;
    assert_eq!(code, 503);
    let m = metrics_text(&down).await;
    for text in [&m, &ready] {
        assert!(!text.contains(secret), "upstream password leaked:\n{text}");
    }
}
