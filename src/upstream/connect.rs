//! Connecting to Redis: TCP or Unix socket with the configured timeout, TLS when the URL is
//! `rediss://` (see [`crate::net::tls`]: a TLS connection reaches the session as the plain end
//! of a bridge, so nothing past this module knows), the proxy's own handshake (`AUTH`,
//! `SELECT`) before any client byte is forwarded, and one-off calls (readiness `PING`, the
//! audit's questions). The halves of a connected socket ([`UpRead`], [`UpWrite`]) are what the
//! session's dedicated connection and the shared connections drive by readiness.

use std::io;

use bytes::BytesMut;
use tokio::net::{TcpStream, UnixStream};

use crate::codec::{encode_command, Limits, ReplyScanner};
use crate::config::{UpstreamAddr, UpstreamConfig};

/// Reading half of a connected upstream.
#[derive(Debug)]
pub enum UpRead {
    Tcp(tokio::net::tcp::OwnedReadHalf),
    Unix(tokio::net::unix::OwnedReadHalf),
}

/// Writing half of a connected upstream.
#[derive(Debug)]
pub enum UpWrite {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    Unix(tokio::net::unix::OwnedWriteHalf),
}

impl UpRead {
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            UpRead::Tcp(s) => s.readable().await,
            UpRead::Unix(s) => s.readable().await,
        }
    }

    /// Reads what is available now without waiting; `Ok(None)` when nothing is.
    pub fn read_now(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        match self {
            UpRead::Tcp(s) => crate::net::io::read_now(s, buf),
            UpRead::Unix(s) => crate::net::io::read_now(s, buf),
        }
    }
}

impl UpWrite {
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            UpWrite::Tcp(s) => s.writable().await,
            UpWrite::Unix(s) => s.writable().await,
        }
    }

    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            UpWrite::Tcp(s) => s.try_write(buf),
            UpWrite::Unix(s) => s.try_write(buf),
        }
    }
}

/// Why the upstream could not be used. Tagged as the upstream's fault in metrics.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {addr} unavailable: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("upstream {addr} unavailable: connect timed out after {ms} ms")]
    ConnectTimeout { addr: String, ms: u128 },
    #[error("upstream {addr} unavailable: TLS: {cause}")]
    Tls { addr: String, cause: String },
    #[error("upstream {addr} refused the proxy's handshake: {reply}")]
    Handshake { addr: String, reply: String },
    #[error("upstream connection lost: {0}")]
    Io(#[from] io::Error),
    #[error("upstream sent an invalid reply: {0}")]
    Protocol(#[from] crate::codec::ProtocolError),
    #[error("upstream closed the connection")]
    Closed,
    #[error("upstream did not reply within {0} ms")]
    ReadTimeout(u128),
}

impl UpstreamError {
    /// Bounded label for `respguard_upstream_errors_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::ConnectTimeout { .. } => "connect_timeout",
            UpstreamError::Tls { .. } => "tls",
            UpstreamError::Handshake { .. } => "handshake",
            UpstreamError::Io(_) => "io",
            UpstreamError::Protocol(_) => "protocol",
            UpstreamError::Closed => "closed",
            UpstreamError::ReadTimeout(_) => "read_timeout",
        }
    }
}

/// A connected upstream socket. Readiness-based I/O through `&self` lets the session
/// wait on reading and writing both sockets in one `select!` without splitting them.
#[derive(Debug)]
pub enum Upstream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Upstream {
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Upstream::Tcp(s) => s.readable().await,
            Upstream::Unix(s) => s.readable().await,
        }
    }

    pub async fn writable(&self) -> io::Result<()> {
        match self {
            Upstream::Tcp(s) => s.writable().await,
            Upstream::Unix(s) => s.writable().await,
        }
    }

    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Upstream::Tcp(s) => s.try_read_buf(buf),
            Upstream::Unix(s) => s.try_read_buf(buf),
        }
    }

    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Upstream::Tcp(s) => s.try_write(buf),
            Upstream::Unix(s) => s.try_write(buf),
        }
    }

    /// Splits into halves a session or shared connection can wait on independently.
    pub fn into_split(self) -> (UpRead, UpWrite) {
        match self {
            Upstream::Tcp(s) => {
                let (r, w) = s.into_split();
                (UpRead::Tcp(r), UpWrite::Tcp(w))
            }
            Upstream::Unix(s) => {
                let (r, w) = s.into_split();
                (UpRead::Unix(r), UpWrite::Unix(w))
            }
        }
    }

    /// Connects and runs the proxy's handshake.
    pub async fn connect(cfg: &UpstreamConfig, limits: &Limits) -> Result<Upstream, UpstreamError> {
        let addr = cfg.addr.to_string();
        let started = tokio::time::Instant::now();
        let connecting = async {
            match &cfg.addr {
                UpstreamAddr::Tcp { host, port } => {
                    let s = TcpStream::connect((host.as_str(), *port)).await?;
                    // Latency matters more than packet count for a request/reply protocol.
                    s.set_nodelay(true)?;
                    Ok::<_, io::Error>(Upstream::Tcp(s))
                }
                UpstreamAddr::Unix(p) => Ok(Upstream::Unix(UnixStream::connect(p).await?)),
            }
        };
        let up = match tokio::time::timeout(cfg.connect_timeout, connecting).await {
            Err(_) => {
                return Err(UpstreamError::ConnectTimeout {
                    addr,
                    ms: cfg.connect_timeout.as_millis(),
                })
            }
            Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
            Ok(Ok(up)) => up,
        };
        let up = match (up, &cfg.tls) {
            (Upstream::Tcp(s), Some(tls)) => {
                // One budget for TCP and TLS together: connect_timeout is what a client waits.
                let left = cfg.connect_timeout.saturating_sub(started.elapsed());
                match tls.connect(s, left).await {
                    Ok(u) => Upstream::Unix(u),
                    Err(cause) => return Err(UpstreamError::Tls { addr, cause }),
                }
            }
            (up, _) => up,
        };
        let hs = handshake_commands(cfg);
        if !hs.is_empty() {
            let n = handshake_len(cfg);
            match tokio::time::timeout(cfg.connect_timeout, up.exchange(&hs, n, limits)).await {
                Err(_) => {
                    return Err(UpstreamError::ConnectTimeout {
                        addr,
                        ms: cfg.connect_timeout.as_millis(),
                    })
                }
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Some(reply))) => return Err(UpstreamError::Handshake { addr, reply }),
                Ok(Ok(None)) => {}
            }
        }
        Ok(up)
    }

    /// Sends `PING` and checks the answer, for readiness probes.
    pub async fn ping(&self, limits: &Limits) -> Result<(), UpstreamError> {
        match self.exchange(b"*1\r\n$4\r\nPING\r\n", 1, limits).await? {
            None => Ok(()),
            Some(reply) => Err(UpstreamError::Handshake {
                addr: "upstream".into(),
                reply,
            }),
        }
    }

    /// Writes `req` (`n` commands) and returns their `n` replies, each a whole RESP frame.
    /// For the proxy's own one-off questions to Redis, not for client traffic.
    pub async fn call(
        &self,
        req: &[u8],
        n: usize,
        limits: &Limits,
    ) -> Result<Vec<BytesMut>, UpstreamError> {
        let mut off = 0;
        while off < req.len() {
            self.writable().await?;
            match self.try_write(&req[off..]) {
                Ok(k) => off += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut buf = BytesMut::with_capacity(256);
        let mut scanner = ReplyScanner::new();
        let mut replies = Vec::with_capacity(n);
        while replies.len() < n {
            if let Some(f) = scanner.scan(&buf, limits)? {
                replies.push(buf.split_to(f.len));
                continue;
            }
            self.readable().await?;
            buf.reserve(4096);
            match self.try_read_buf(&mut buf) {
                Ok(0) => return Err(UpstreamError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(replies)
    }

    /// Writes `req` and reads `n` replies; returns the first error reply's text, if any.
    async fn exchange(
        &self,
        req: &[u8],
        n: usize,
        limits: &Limits,
    ) -> Result<Option<String>, UpstreamError> {
        let replies = self.call(req, n, limits).await?;
        Ok(replies
            .iter()
            .find(|r| r.first().copied().is_some_and(crate::codec::is_error))
            .map(|r| String::from_utf8_lossy(&r[1..r.len().saturating_sub(2)]).into_owned()))
    }
}

/// The commands the proxy sends on a fresh upstream connection (and again after a client's
/// `RESET`, which drops authentication and the selected database).
pub fn handshake_commands(cfg: &UpstreamConfig) -> BytesMut {
    let mut out = BytesMut::new();
    if let Some(pw) = &cfg.password {
        match &cfg.username {
            Some(u) => encode_command(
                &mut out,
                [&b"AUTH"[..], u.as_bytes(), pw.0.as_bytes()].into_iter(),
            ),
            None => encode_command(&mut out, [&b"AUTH"[..], pw.0.as_bytes()].into_iter()),
        }
    }
    if cfg.db != 0 {
        let db = cfg.db.to_string();
        encode_command(&mut out, [&b"SELECT"[..], db.as_bytes()].into_iter());
    }
    out
}

/// How many replies [`handshake_commands`] produces.
pub fn handshake_len(cfg: &UpstreamConfig) -> usize {
    usize::from(cfg.password.is_some()) + usize::from(cfg.db != 0)
}
