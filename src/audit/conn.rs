//! The audit's control-plane connection to Redis: the proxy's own connect and handshake
//! (`AUTH`, `SELECT`), then pipelined batches of commands whose replies are framed by the
//! project's bounded reply scanner, then decoded into `redis-protocol` frames.
//!
//! Commands go in groups: [`Conn::submit`] queues a group for writing and [`Conn::recv`] reads
//! the replies of the oldest group still in flight, in order. Several groups may be in flight,
//! so Redis has the next group to work on while the audit judges the replies of the last one;
//! writing and reading overlap, so a group of thousands of commands never waits on a full
//! socket buffer in either direction. `--rate` is a token bucket charged per command when a
//! group is submitted; its waits end early when the audit is stopped.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame;

use crate::codec::{encode_command, string2ll, Limits, ReplyScanner};
use crate::config::UpstreamConfig;
use crate::upstream::{UpRead, UpWrite, Upstream, UpstreamError};

use super::Stop;

/// Why the audit lost or could not use its connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("upstream sent a reply that is not valid RESP2: {0}")]
    Decode(String),
    #[error("upstream did not reply within {0} ms")]
    Timeout(u128),
    #[error("upstream answered {command} with an unexpected reply: {reply}")]
    Unexpected {
        command: &'static str,
        reply: String,
    },
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        ConnError::Upstream(UpstreamError::Io(e))
    }
}

/// Commands per second, refilled continuously; a batch larger than the bucket borrows and
/// the next one waits for the debt to be paid.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        TokenBucket {
            rate,
            tokens: rate,
            at: Instant::now(),
        }
    }

    /// How long to wait before `n` more commands may go.
    fn charge(&mut self, n: usize) -> Duration {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.at = now;
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// One connection to one node, with groups of commands in flight.
#[derive(Debug)]
pub struct Conn {
    read: UpRead,
    write: UpWrite,
    inbuf: BytesMut,
    /// The group being built.
    out: BytesMut,
    pending: usize,
    /// Submitted and not yet written.
    wbuf: BytesMut,
    /// Commands per submitted group whose replies are not all read, oldest first.
    groups: VecDeque<usize>,
    /// A write error met while submitting, reported by the next [`Conn::recv`].
    broken: Option<io::Error>,
    scanner: ReplyScanner,
    limits: Limits,
    timeout: Duration,
    bucket: Option<TokenBucket>,
    /// Commands sent so far.
    pub commands: u64,
}

impl Conn {
    /// Connects the way the proxy does, with the same handshake.
    pub async fn connect(
        cfg: &UpstreamConfig,
        limits: &Limits,
        rate: Option<u32>,
    ) -> Result<Conn, ConnError> {
        let up = Upstream::connect(cfg, limits).await?;
        let (read, write) = up.into_split();
        Ok(Conn {
            read,
            write,
            inbuf: BytesMut::with_capacity(64 * 1024),
            out: BytesMut::with_capacity(64 * 1024),
            pending: 0,
            wbuf: BytesMut::with_capacity(64 * 1024),
            groups: VecDeque::new(),
            broken: None,
            scanner: ReplyScanner::new(),
            limits: *limits,
            // A pipelined batch takes longer than one command; the configured read timeout
            // bounds the time without any progress, not the whole batch.
            timeout: cfg.read_timeout.max(Duration::from_secs(5)),
            bucket: rate.map(TokenBucket::new),
            commands: 0,
        })
    }

    /// Adds one command to the group being built.
    pub fn push<'a, I>(&mut self, args: I)
    where
        I: IntoIterator<Item = &'a [u8]>,
        I::IntoIter: ExactSizeIterator,
    {
        encode_command(&mut self.out, args.into_iter());
        self.pending += 1;
    }

    /// Closes the group being built and queues it for writing (after the `--rate` wait);
    /// [`Conn::recv`] writes it while it reads. Returns whether there was a group: an empty
    /// one is not submitted.
    pub async fn submit(&mut self, stop: &Stop) -> bool {
        let n = std::mem::take(&mut self.pending);
        if n == 0 {
            return false;
        }
        if let Some(bucket) = &mut self.bucket {
            let wait = bucket.charge(n);
            if !wait.is_zero() {
                // Stopping only shortens the wait: the group is still sent and answered, so
                // the report never counts a half-answered batch.
                stop.sleep(wait).await;
            }
        }
        self.commands += n as u64;
        if self.wbuf.is_empty() {
            std::mem::swap(&mut self.wbuf, &mut self.out);
        } else {
            self.wbuf.extend_from_slice(&self.out);
            self.out.clear();
        }
        self.groups.push_back(n);
        // Start writing now: Redis works on this group while the caller is busy.
        if let Err(e) = self.write_now() {
            self.broken = Some(e);
        }
        true
    }

    /// Writes what the socket takes without waiting; returns whether anything was written.
    fn write_now(&mut self) -> io::Result<bool> {
        let mut wrote = false;
        while !self.wbuf.is_empty() {
            match self.write.try_write(&self.wbuf) {
                Ok(0) => break,
                Ok(k) => {
                    self.wbuf.advance(k);
                    wrote = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(wrote)
    }

    /// Submits the group being built and reads its replies (nothing else may be in flight).
    pub async fn send(
        &mut self,
        replies: &mut Vec<BytesFrame>,
        stop: &Stop,
    ) -> Result<(), ConnError> {
        if self.submit(stop).await {
            self.recv(replies).await?;
        }
        Ok(())
    }

    /// Appends the replies of the oldest group in flight to `replies`, in order, writing
    /// what is queued meanwhile. Error replies are returned as [`BytesFrame::Error`] for the
    /// caller to judge.
    pub async fn recv(&mut self, replies: &mut Vec<BytesFrame>) -> Result<(), ConnError> {
        if let Some(e) = self.broken.take() {
            return Err(e.into());
        }
        let Some(n) = self.groups.pop_front() else {
            return Ok(());
        };
        let mut got = 0;
        loop {
            let mut progressed = self.write_now()?;
            while got < n {
                let Some(frame) = self
                    .scanner
                    .scan(&self.inbuf, &self.limits)
                    .map_err(UpstreamError::from)?
                else {
                    break;
                };
                let bytes = self.inbuf.split_to(frame.len).freeze();
                let mut at = 0;
                replies.push(decode(&bytes, &mut at)?);
                got += 1;
            }
            if got == n {
                self.write_now()?;
                return Ok(());
            }
            if self.inbuf.capacity() - self.inbuf.len() < 16 * 1024 {
                self.inbuf.reserve(64 * 1024);
            }
            match self.read.read_now(&mut self.inbuf)? {
                Some(0) => return Err(UpstreamError::Closed.into()),
                Some(_) => progressed = true,
                None => {}
            }
            if progressed {
                continue;
            }
            let wait = async {
                // A TLS stream may hold sealed records after a write: they need writability.
                if !self.wbuf.is_empty() || self.write.has_pending_output() {
                    tokio::select! {
                        r = self.read.readable() => r,
                        w = self.write.writable() => w,
                    }
                } else {
                    self.read.readable().await
                }
            };
            match tokio::time::timeout(self.timeout, wait).await {
                Err(_) => return Err(ConnError::Timeout(self.timeout.as_millis())),
                Ok(r) => r?,
            }
        }
    }
}

/// Decodes the reply at `at` in a frame the reply scanner has checked, so its line ends and
/// lengths are known to be there; values are slices of `buf`, not copies.
fn decode(buf: &Bytes, at: &mut usize) -> Result<BytesFrame, ConnError> {
    let bad = || ConnError::Decode("malformed reply".into());
    let start = *at + 1;
    let end = start + memchr::memchr(b'\r', buf.get(start..).ok_or_else(bad)?).ok_or_else(bad)?;
    let line = &buf[start..end];
    let kind = buf[*at];
    *at = end + 2;
    Ok(match kind {
        b'+' => BytesFrame::SimpleString(buf.slice(start..end)),
        b'-' => BytesFrame::Error(String::from_utf8_lossy(line).into_owned().into()),
        b':' => BytesFrame::Integer(string2ll(line).ok_or_else(bad)?),
        b'$' | b'*' => {
            let n = string2ll(line).ok_or_else(bad)?;
            let Ok(n) = usize::try_from(n) else {
                return Ok(BytesFrame::Null);
            };
            if kind == b'$' {
                let v = buf.get(*at..*at + n).ok_or_else(bad)?;
                let v = buf.slice_ref(v);
                *at += n + 2;
                BytesFrame::BulkString(v)
            } else {
                // The scanner bounded the count by the frame's length.
                let mut items = Vec::with_capacity(n.min(buf.len() / 4));
                for _ in 0..n {
                    items.push(decode(buf, at)?);
                }
                BytesFrame::Array(items)
            }
        }
        _ => return Err(bad()),
    })
}

/// The text of a reply for error messages: errors and simple strings as they are, other
/// kinds by name (never a value).
pub fn describe(f: &BytesFrame) -> String {
    match f {
        BytesFrame::Error(s) => s.to_string(),
        BytesFrame::SimpleString(s) => String::from_utf8_lossy(s).into_owned(),
        BytesFrame::Integer(i) => i.to_string(),
        BytesFrame::BulkString(_) => "a bulk string".into(),
        BytesFrame::Array(a) => format!("an array of {}", a.len()),
        BytesFrame::Null => "nil".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_nested_arrays_nulls_errors_and_integers_as_slices() {
        let buf = Bytes::from_static(
            b"*2\r\n$1\r\n0\r\n*3\r\n$4\r\na\r\nb\r\n$-1\r\n:-2\r\n-WRONGTYPE x\r\n+string\r\n*-1\r\n",
        );
        let mut at = 0;
        let f = decode(&buf, &mut at).unwrap();
        let BytesFrame::Array(parts) = f else {
            panic!("{f:?}")
        };
        assert_eq!(parts[0], BytesFrame::BulkString(Bytes::from_static(b"0")));
        assert_eq!(
            parts[1],
            BytesFrame::Array(vec![
                BytesFrame::BulkString(Bytes::from_static(b"a\r\nb")),
                BytesFrame::Null,
                BytesFrame::Integer(-2),
            ])
        );
        assert!(
            matches!(decode(&buf, &mut at).unwrap(), BytesFrame::Error(e) if &*e == "WRONGTYPE x")
        );
        assert_eq!(
            decode(&buf, &mut at).unwrap(),
            BytesFrame::SimpleString(Bytes::from_static(b"string"))
        );
        assert_eq!(decode(&buf, &mut at).unwrap(), BytesFrame::Null);
        assert_eq!(at, buf.len());
        let mut at = 0;
        assert!(decode(&Bytes::from_static(b"?x\r\n"), &mut at).is_err());
    }

    #[test]
    fn bucket_lets_a_burst_through_then_spaces_batches_at_the_rate() {
        let mut b = TokenBucket::new(1000);
        assert_eq!(b.charge(1000), Duration::ZERO);
        let wait = b.charge(500);
        assert!(
            wait > Duration::from_millis(450) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
    }
}
