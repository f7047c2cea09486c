//! Non-blocking reads and writes on readiness-driven sockets, and the buffer sizing they
//! share: the session, the shared upstream connections and the upstream halves all do IO
//! this way (wait for readiness in a `select!`, then read or write what the socket takes
//! without waiting).

use std::future::Future;
use std::io;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Read size; larger frames grow the buffer as needed.
pub const READ_CHUNK: usize = 16 * 1024;

/// Polls a read once without waiting: `Ok(None)` when no data is there.
///
/// Reading through `AsyncRead` (rather than `try_read`) lets tokio clear the readiness flag on
/// a short read, which saves the extra `recv` returning `EAGAIN` that would otherwise follow
/// every read: one syscall less per request and direction.
pub fn read_now<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut) -> io::Result<Option<usize>> {
    let mut cx = Context::from_waker(Waker::noop());
    let fut = std::pin::pin!(r.read_buf(buf));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(n)) => Ok(Some(n)),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => Ok(None),
    }
}

/// Leaves room for one read without growing an idle connection's buffer before data arrives.
///
/// Starts small (most commands and replies are short, and an idle client's memory is mostly
/// these buffers) and doubles while a large frame is arriving, so a 64 MB value still needs
/// only a few dozen reads.
pub fn reserve_for_read(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 8 {
        buf.reserve(buf.len().max(READ_CHUNK / 4));
    }
}

/// Writes as much of `out` as the socket takes now (`try_write`); the rest waits for
/// writability. Shared by the client and upstream sockets and the shared connections.
pub fn write_now(
    out: &mut BytesMut,
    mut try_write: impl FnMut(&[u8]) -> io::Result<usize>,
) -> io::Result<()> {
    while !out.is_empty() {
        match try_write(out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => out.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    shrink(out);
    Ok(())
}

/// Gives back the memory of a buffer that a large frame grew, once it is empty.
pub fn shrink(b: &mut BytesMut) {
    if b.is_empty() && b.capacity() > 4 * READ_CHUNK {
        *b = BytesMut::new();
    }
}
