//! A raw RESP connection, for what client crates hide: send exact bytes, read whole reply
//! frames as bytes.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use respguard::codec::{Limits, ReplyScanner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::resp::show;

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

    /// What the connection holds after the frames read so far: every remaining frame until
    /// the server closes it, then `Ok(frames)`; `Err(frames)` when it stays open for `t`
    /// after the last frame. Bytes of a frame cut short by the close are dropped.
    pub async fn rest_until_closed(&mut self, t: Duration) -> Result<Vec<Vec<u8>>, Vec<Vec<u8>>> {
        let limits = Limits::default();
        let mut frames = Vec::new();
        loop {
            if let Ok(Some(f)) = self.scanner.scan(&self.buf, &limits) {
                frames.push(self.buf.split_to(f.len).to_vec());
                continue;
            }
            self.buf.reserve(64 * 1024);
            match tokio::time::timeout(t, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(frames),
                Err(_) => return Err(frames),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// `TTL key` as a number. Assert a range ending at the expected value: a second may turn
    /// between the write and this read on a loaded machine.
    #[track_caller]
    pub fn ttl<'a>(&'a mut self, key: &'a [u8]) -> impl std::future::Future<Output = i64> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            self.cmd(&[b"TTL", key]).await;
            let r = self.read().await;
            show(&r)
                .strip_prefix(':')
                .and_then(|v| v.strip_suffix("\\r\\n"))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{caller}: TTL {}: {}", show(key), show(&r)))
        }
    }

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

/// A raw connection to the in-process proxy's client port.
pub async fn raw_proxy(p: &respguard::Proxy) -> Raw {
    Raw::connect(p.local_addr).await
}

/// A raw connection to any proxy address (e.g. the real binary's).
pub async fn raw_proxy_addr(addr: SocketAddr) -> Raw {
    Raw::connect(addr).await
}
