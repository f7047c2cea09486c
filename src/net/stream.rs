//! The client side's byte streams: TCP, or a Unix socket (a Unix listener, or the plain end
//! of a TLS client's bridge, see [`crate::net::tls`]). The session reads and writes them by
//! readiness and never learns which one it has.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// An accepted client connection.
#[derive(Debug)]
pub enum ClientStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Reading half of a client connection.
#[derive(Debug)]
pub enum ClientRead {
    Tcp(tokio::net::tcp::OwnedReadHalf),
    Unix(tokio::net::unix::OwnedReadHalf),
}

/// Writing half of a client connection.
#[derive(Debug)]
pub enum ClientWrite {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    Unix(tokio::net::unix::OwnedWriteHalf),
}

impl ClientStream {
    /// Latency matters more than packet count for a request/reply protocol; Unix sockets
    /// have no Nagle to turn off.
    pub fn set_nodelay(&self) -> io::Result<()> {
        match self {
            ClientStream::Tcp(s) => s.set_nodelay(true),
            ClientStream::Unix(_) => Ok(()),
        }
    }

    pub fn into_split(self) -> (ClientRead, ClientWrite) {
        match self {
            ClientStream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ClientRead::Tcp(r), ClientWrite::Tcp(w))
            }
            ClientStream::Unix(s) => {
                let (r, w) = s.into_split();
                (ClientRead::Unix(r), ClientWrite::Unix(w))
            }
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl ClientRead {
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            ClientRead::Tcp(s) => s.readable().await,
            ClientRead::Unix(s) => s.readable().await,
        }
    }
}

impl AsyncRead for ClientRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientRead::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientRead::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl ClientWrite {
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            ClientWrite::Tcp(s) => s.writable().await,
            ClientWrite::Unix(s) => s.writable().await,
        }
    }

    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientWrite::Tcp(s) => s.try_write(buf),
            ClientWrite::Unix(s) => s.try_write(buf),
        }
    }
}
