//! Admin HTTP endpoint: `/healthz`, `/readyz` and `/metrics` on their own port.
//!
//! Deliberately tiny (HTTP/1.1, one request per connection, GET only): probes and Prometheus
//! need nothing more, and a full HTTP stack would cost more build time than it saves.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::shared::{Shared, ShutdownPhase};
use crate::upstream::Upstream;

/// Serves admin requests until shutdown.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<ShutdownPhase>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(10), handle(s, shared)).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn handle(mut s: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Read the request head only; bodies are not used by any endpoint.
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 8192 {
            return respond(
                &mut s,
                "431 Request Header Fields Too Large",
                "text/plain",
                "too large\n",
            )
            .await;
        }
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("").split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(&mut s, "405 Method Not Allowed", "text/plain", "GET only\n").await;
    }
    match path {
        "/healthz" | "/livez" => respond(&mut s, "200 OK", "text/plain", "ok\n").await,
        "/readyz" => match ready(&shared).await {
            Ok(()) => respond(&mut s, "200 OK", "text/plain", "ready\n").await,
            Err(e) => {
                let body = format!("not ready: {e}\n");
                respond(&mut s, "503 Service Unavailable", "text/plain", &body).await
            }
        },
        "/metrics" => {
            let body = shared.metrics.render();
            respond(
                &mut s,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
            .await
        }
        _ => respond(&mut s, "404 Not Found", "text/plain", "not found\n").await,
    }
}

/// Ready means the upstream accepts a connection, the handshake, and answers `PING`.
async fn ready(shared: &Shared) -> Result<(), String> {
    let cfg = shared.config();
    let up = Upstream::connect(&cfg.upstream, &cfg.limits)
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(cfg.upstream.connect_timeout, up.ping(&cfg.limits)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("upstream did not answer PING in time".into()),
    }
}

async fn respond(s: &mut TcpStream, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.shutdown().await
}
