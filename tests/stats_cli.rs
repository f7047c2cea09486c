//! `respguard stats` end to end against a canned admin endpoint: a tiny HTTP server in the test
//! serves two different /metrics pages (so the window's rates are not zero), and the rendered
//! view must carry the exact hits, misses and hit rates the pages imply. No Redis and no proxy
//! are needed: the contract under test is "this /metrics text gives this table".

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use respguard::stats::{self, StatsError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// First scrape. Hits and misses come from two commands in `session` so the per-namespace sum
/// is tested too.
const FIRST: &str = r#"# HELP respguard_commands_total Commands by result
# TYPE respguard_commands_total counter
respguard_commands_total{command="GET",namespace="session",result="ok"} 1000
respguard_commands_total{command="MGET",namespace="session",result="ok"} 200
respguard_commands_total{command="GET",namespace="user_profile",result="ok"} 300
respguard_commands_total{command="GET",namespace="user_profile",result="error"} 5
respguard_commands_total{command="SET",namespace="_unmatched",result="rejected"} 7
respguard_commands_total{command="PING",namespace="_none",result="ok"} 50
respguard_cache_hits_total{command="GET",namespace="session"} 800
respguard_cache_misses_total{command="GET",namespace="session"} 200
respguard_cache_hits_total{command="MGET",namespace="session"} 150
respguard_cache_misses_total{command="MGET",namespace="session"} 50
respguard_cache_hits_total{command="GET",namespace="user_profile"} 100
respguard_cache_misses_total{command="GET",namespace="user_profile"} 200
respguard_ttl_enforced_total{namespace="session",action="added"} 10
respguard_ttl_enforced_total{namespace="session",action="clamped"} 0
respguard_policy_rejections_total{namespace="_unmatched",rule="naming"} 7
respguard_sensitive_fields_total{namespace="user_profile",field="pass\"word",action="strip"} 1
respguard_client_connections 12
respguard_client_connections_total 40
respguard_upstream_errors_total{kind="read_timeout"} 1
respguard_config_reloads_total{result="ok"} 2
respguard_config_reloads_total{result="error"} 0
respguard_command_duration_seconds_bucket{command="GET",le="0.0005"} 0
respguard_command_duration_seconds_bucket{command="GET",le="0.001"} 50
respguard_command_duration_seconds_bucket{command="GET",le="0.0025"} 100
respguard_command_duration_seconds_bucket{command="GET",le="+Inf"} 100
respguard_command_duration_seconds_sum{command="GET"} 0.15
respguard_command_duration_seconds_count{command="GET"} 100
respguard_upstream_duration_seconds_bucket{command="GET",le="0.0005"} 50
respguard_upstream_duration_seconds_bucket{command="GET",le="0.001"} 100
respguard_upstream_duration_seconds_bucket{command="GET",le="0.0025"} 100
respguard_upstream_duration_seconds_bucket{command="GET",le="+Inf"} 100
respguard_upstream_duration_seconds_sum{command="GET"} 0.06
respguard_upstream_duration_seconds_count{command="GET"} 100
respguard_build_info{version="9.9.9"} 1
"#;

/// Second scrape: in the window, session read 90 hits / 10 misses (90.0%), user_profile 3 / 7
/// (30.0%, LOW); since start, session 1040 / 260 (80.0%), user_profile 103 / 207 (33.2%).
/// Commands in the window: session 100, user_profile 10 + 1 error, `_unmatched` 2 rejected.
/// Latency in the window (GET only): 200 commands, 100 up to 1 ms and 100 in (1 ms, 2.5 ms];
/// their upstream part 100 up to 0.5 ms and 100 in (0.5 ms, 1 ms]; sums 300 ms and 120 ms.
const SECOND: &str = r#"respguard_commands_total{command="GET",namespace="session",result="ok"} 1080
respguard_commands_total{command="MGET",namespace="session",result="ok"} 220
respguard_commands_total{command="GET",namespace="user_profile",result="ok"} 310
respguard_commands_total{command="GET",namespace="user_profile",result="error"} 6
respguard_commands_total{command="SET",namespace="_unmatched",result="rejected"} 9
respguard_commands_total{command="PING",namespace="_none",result="ok"} 50
respguard_cache_hits_total{command="GET",namespace="session"} 875
respguard_cache_misses_total{command="GET",namespace="session"} 208
respguard_cache_hits_total{command="MGET",namespace="session"} 165
respguard_cache_misses_total{command="MGET",namespace="session"} 52
respguard_cache_hits_total{command="GET",namespace="user_profile"} 103
respguard_cache_misses_total{command="GET",namespace="user_profile"} 207
respguard_ttl_enforced_total{namespace="session",action="added"} 14
respguard_ttl_enforced_total{namespace="session",action="clamped"} 0
respguard_policy_rejections_total{namespace="_unmatched",rule="naming"} 9
respguard_sensitive_fields_total{namespace="user_profile",field="pass\"word",action="strip"} 1
respguard_client_connections 13
respguard_client_connections_total 41
respguard_upstream_errors_total{kind="read_timeout"} 1
respguard_config_reloads_total{result="ok"} 2
respguard_config_reloads_total{result="error"} 1
respguard_command_duration_seconds_bucket{command="GET",le="0.0005"} 0
respguard_command_duration_seconds_bucket{command="GET",le="0.001"} 150
respguard_command_duration_seconds_bucket{command="GET",le="0.0025"} 300
respguard_command_duration_seconds_bucket{command="GET",le="+Inf"} 300
respguard_command_duration_seconds_sum{command="GET"} 0.45
respguard_command_duration_seconds_count{command="GET"} 300
respguard_upstream_duration_seconds_bucket{command="GET",le="0.0005"} 150
respguard_upstream_duration_seconds_bucket{command="GET",le="0.001"} 300
respguard_upstream_duration_seconds_bucket{command="GET",le="0.0025"} 300
respguard_upstream_duration_seconds_bucket{command="GET",le="+Inf"} 300
respguard_upstream_duration_seconds_sum{command="GET"} 0.18
respguard_upstream_duration_seconds_count{command="GET"} 300
respguard_build_info{version="9.9.9"} 1
"#;

/// Serves `pages` in turn (the last one again once they run out) with `status`, HTTP/1.1,
/// one request per connection, as respguard's admin port does.
async fn serve(status: &'static str, pages: Vec<&'static str>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let served = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let n = served.fetch_add(1, Ordering::SeqCst);
            let body = pages[n.min(pages.len() - 1)];
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 512];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                assert!(
                    head.starts_with(b"GET /metrics HTTP/1.1\r\n"),
                    "request: {}",
                    String::from_utf8_lossy(&head)
                );
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(response.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// The cells of the first line whose first cell is `first`, in the section after `section`.
fn row<'t>(text: &'t str, section: &str, first: &str) -> Vec<&'t str> {
    let start = text
        .find(section)
        .unwrap_or_else(|| panic!("no {section:?} in:\n{text}"));
    text[start..]
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_else(|| panic!("no {first:?} row after {section:?} in:\n{text}"))
}

#[tokio::test]
async fn once_prints_namespace_hit_rates_from_two_scrapes() {
    let addr = serve("200 OK", vec![FIRST, SECOND]).await;
    let interval = Duration::from_millis(200);
    let mut out = Vec::new();
    stats::run(addr, interval, true, &mut out)
        .await
        .expect("stats run");
    let text = String::from_utf8(out).expect("utf-8");

    assert!(text.contains("version 9.9.9"), "{text}");

    // NAMESPACE OPS/S HITS MISSES HIT% HIT%-TOTAL [LOW]
    let session = row(&text, "NAMESPACES", "session");
    assert_eq!(session[2..], ["90", "10", "90.0%", "80.0%"], "{text}");
    let profile = row(&text, "NAMESPACES", "user_profile");
    assert_eq!(profile[2..], ["3", "7", "30.0%", "33.2%", "LOW"], "{text}");
    // No reads at all: no hit rate rather than 0%.
    let none = row(&text, "NAMESPACES", "_none");
    assert_eq!(none[1..], ["0.0", "0", "0", "-", "-"], "{text}");
    let unmatched = row(&text, "NAMESPACES", "_unmatched");
    assert_eq!(unmatched[2..], ["0", "0", "-", "-"], "{text}");

    // Configured namespaces first, alphabetically, then respguard's own.
    let order: Vec<usize> = ["session", "user_profile", "_none", "_unmatched"]
        .iter()
        .map(|ns| {
            text.find(&format!("\n  {ns} "))
                .unwrap_or_else(|| panic!("{ns} row"))
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");

    // Ops/s: the window is measured, so just bounded: 100 commands in a bit over 200 ms.
    let ops: f64 = session[1].parse().expect("ops/s");
    assert!((100.0..=500.0).contains(&ops), "session ops/s {ops}");

    // COMMAND OPS/S ERRORS REJECTED TOTAL ERRORS-TOTAL REJECTED-TOTAL: GET is busiest.
    let get = row(&text, "COMMANDS", "GET");
    assert_eq!(get[2..], ["1", "0", "1396", "6", "0"], "{text}");
    let set = row(&text, "COMMANDS", "SET");
    assert_eq!(set[2..], ["0", "2", "9", "0", "9"], "{text}");

    // COMMAND COUNT TOTAL-P50 TOTAL-P99 UPSTREAM-P50 UPSTREAM-P99 PROXY-P50 PROXY-P99 PROXY-MEAN:
    // p99 total = 1 ms + 98% of 1.5 ms, upstream 0.5 ms + 98% of 0.5 ms; mean proxy share =
    // (300 - 120) ms / 200.
    let expected = [
        "200", "1.00ms", "2.47ms", "500us", "990us", "500us", "1.48ms", "900us",
    ];
    assert_eq!(row(&text, "LATENCY", "ALL")[1..], expected, "{text}");
    assert_eq!(row(&text, "LATENCY", "GET")[1..], expected, "{text}");

    // Policy actions and the rest: window, then total; zero series are left out.
    assert_eq!(
        row(&text, "TTL enforced", "session"),
        ["session", "added", "4", "14"]
    );
    assert!(!text.contains("clamped"), "{text}");
    assert_eq!(
        row(&text, "Rejections", "_unmatched"),
        ["_unmatched", "naming", "2", "9"]
    );
    assert_eq!(
        row(&text, "Sensitive fields", "user_profile"),
        ["user_profile", "pass\"word", "strip", "0", "1"],
        "escaped label value"
    );
    assert!(
        text.contains("open 13  accepted 1 (total 41)"),
        "connections: {text}"
    );
    assert_eq!(
        row(&text, "UPSTREAM ERRORS", "read_timeout"),
        ["read_timeout", "0", "1"]
    );
    assert_eq!(row(&text, "CONFIG RELOADS", "error"), ["error", "1", "1"]);
    assert_eq!(row(&text, "CONFIG RELOADS", "ok"), ["ok", "0", "2"]);
}

#[tokio::test]
async fn non_200_is_an_error_with_the_status() {
    let addr = serve("503 Service Unavailable", vec!["not ready\n"]).await;
    let mut out = Vec::new();
    let err = stats::run(addr, Duration::from_millis(10), true, &mut out)
        .await
        .expect_err("503 must fail");
    assert!(
        matches!(&err, StatsError::Status { status, body, .. }
            if status == "503 Service Unavailable" && body == "not ready"),
        "{err:?}"
    );
    assert!(out.is_empty());
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    // Bind then drop: the port is free, so the connection is refused.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let mut out = Vec::new();
    let err = stats::run(addr, Duration::from_millis(10), true, &mut out)
        .await
        .expect_err("refused must fail");
    assert!(matches!(err, StatsError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn zero_interval_is_refused() {
    let addr = SocketAddr::from(([127, 0, 0, 1], 9));
    let mut out = Vec::new();
    let err = stats::run(addr, Duration::ZERO, true, &mut out)
        .await
        .expect_err("zero interval");
    assert!(matches!(err, StatsError::ZeroInterval), "{err:?}");
}
