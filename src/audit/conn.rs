//! The audit's control-plane connection to Redis: the proxy's own connect and handshake
//! (`AUTH`, `SELECT`), then pipelined batches of commands whose replies are framed by the
//! project's bounded reply scanner and decoded with `redis-protocol`.
//!
//! Writing and reading overlap, so a batch of thousands of commands never waits on a full
//! socket buffer in either direction. `--rate` is a token bucket charged per command before a
//! batch is sent; its waits end early when the audit is stopped.

use std::io;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use redis_protocol::resp2::types::BytesFrame;

use crate::codec::{encode_command, Limits, ReplyScanner};
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

/// One connection, used strictly batch by batch.
#[derive(Debug)]
pub struct Conn {
    read: UpRead,
    write: UpWrite,
    inbuf: BytesMut,
    out: BytesMut,
    pending: usize,
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
            scanner: ReplyScanner::new(),
            limits: *limits,
            // A pipelined batch takes longer than one command; the configured read timeout
            // bounds the time without any progress, not the whole batch.
            timeout: cfg.read_timeout.max(Duration::from_secs(5)),
            bucket: rate.map(TokenBucket::new),
            commands: 0,
        })
    }

    /// Queues one command for the next [`Conn::send`].
    pub fn push<'a, I>(&mut self, args: I)
    where
        I: IntoIterator<Item = &'a [u8]>,
        I::IntoIter: ExactSizeIterator,
    {
        encode_command(&mut self.out, args.into_iter());
        self.pending += 1;
    }

    /// Commands queued and not yet sent.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Sends the queued commands and appends their replies to `replies`, in order. Error
    /// replies are returned as [`BytesFrame::Error`] for the caller to judge.
    pub async fn send(
        &mut self,
        replies: &mut Vec<BytesFrame>,
        stop: &Stop,
    ) -> Result<(), ConnError> {
        let n = std::mem::take(&mut self.pending);
        if n == 0 {
            return Ok(());
        }
        if let Some(bucket) = &mut self.bucket {
            let wait = bucket.charge(n);
            if !wait.is_zero() {
                // Stopping only shortens the wait: the batch is still sent and answered, so
                // the report never counts a half-answered batch.
                stop.sleep(wait).await;
            }
        }
        self.commands += n as u64;
        let out = self.out.split().freeze();
        let mut off = 0;
        let mut got = 0;
        loop {
            while got < n {
                let Some(frame) = self
                    .scanner
                    .scan(&self.inbuf, &self.limits)
                    .map_err(UpstreamError::from)?
                else {
                    break;
                };
                let bytes = self.inbuf.split_to(frame.len).freeze();
                match redis_protocol::resp2::decode::decode_bytes(&bytes) {
                    Ok(Some((f, _))) => replies.push(f),
                    Ok(None) => return Err(ConnError::Decode("incomplete frame".into())),
                    Err(e) => return Err(ConnError::Decode(e.to_string())),
                }
                got += 1;
            }
            if got == n {
                return Ok(());
            }
            let mut progressed = false;
            if off < out.len() {
                match self.write.try_write(&out[off..]) {
                    Ok(k) => {
                        off += k;
                        progressed = k > 0;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
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
                if off < out.len() || self.write.has_pending_output() {
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
