//! The admin port over HTTP, and Prometheus text read with the crate's own parser
//! (`respguard::stats::parse`, the one `respguard stats` uses), so the tests and the terminal
//! view cannot disagree on what a page says.

use std::net::SocketAddr;
use std::time::Duration;

use respguard::stats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Fetches an admin endpoint: (status code, body). Panics when the whole exchange takes more
/// than 10 s (a hung admin port fails the test rather than the suite's timeout).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    tokio::time::timeout(Duration::from_secs(10), try_http_get(addr, path))
        .await
        .unwrap_or_else(|_| panic!("GET {path} on {addr}: no complete answer within 10 s"))
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

/// Like [`http_get`], but an unreachable port or a hang is an `Err`, for readiness polls.
pub async fn try_http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 10 s")
        })??;
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
    Ok((code, body))
}

/// Fetches `/metrics` from an in-process proxy's admin port.
pub async fn metrics_text(p: &respguard::Proxy) -> String {
    metrics_at(p.admin_addr.expect("admin address")).await
}

/// Fetches `/metrics` from an admin address; every line must be a comment or a sample.
pub async fn metrics_at(admin: SocketAddr) -> String {
    let (code, body) = http_get(admin, "/metrics").await;
    assert_eq!(code, 200, "/metrics status");
    let skipped = stats::parse(&body).skipped;
    assert_eq!(
        skipped, 0,
        "/metrics has {skipped} unreadable line(s):\n{body}"
    );
    body
}

/// The value of one series given as it is written on the page, e.g.
/// `respguard_commands_total{command="GET",result="ok"}` (label order does not matter).
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    let wanted = stats::parse(&format!("{name_and_labels} 0"));
    let (name, series) = wanted.metrics.iter().next()?;
    let labels = series.keys().next()?;
    stats::parse(text).get(name, labels)
}

/// Sum of every series of metric `name` whose labels include all of `labels` (other labels,
/// such as ones added later, are ignored). `None` when no series matches.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let page = stats::parse(text);
    let mut found = None;
    for (set, value) in page.series(name) {
        if labels.iter().all(|(k, v)| stats::label(set, k) == Some(*v)) {
            *found.get_or_insert(0.0) += value;
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
