//! Connection modes that change what replies are: pub/sub (frames that answer no command),
//! MONITOR (a stream instead of replies), RESP3, and `CLIENT REPLY` (replies the client asked
//! not to get are dropped here, so the proxy's own replies follow the mode too).

use bytes::Bytes;

use super::{Outcome, Session};
use crate::codec::{self, Argv, Limits};

/// The answer to `CLIENT REPLY ON|OFF|SKIP` queued in MULTI.
pub(super) const CLIENT_REPLY_IN_MULTI: &str =
    "ERR CLIENT REPLY inside MULTI is not supported through respguard";

/// Whether Redis answers the client's commands (`CLIENT REPLY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReplyMode {
    On,
    Off,
    SkipNext,
}

/// Kinds of pub/sub frames Redis sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PubsubFrame {
    Message,
    /// Confirmation of (un)subscribing; `shard` for the `S` family; the subscription count.
    Confirm {
        shard: bool,
        count: Option<i64>,
    },
}

/// Recognises a pub/sub frame: an array or push whose first element names its kind.
pub(super) fn pubsub_frame(frame: &[u8], limits: &Limits) -> Option<PubsubFrame> {
    memchr::memchr(b'\n', frame)?;
    let mut elements = codec::elements(frame, limits);
    let first = elements.next()?;
    if first.frame.kind != b'$' && first.frame.kind != b'+' {
        return None;
    }
    let fb = first.bytes;
    let name_start = memchr::memchr(b'\n', fb)? + 1;
    let name = fb.get(name_start..fb.len().saturating_sub(2))?;
    let lower = |s: &[u8], t: &str| s.eq_ignore_ascii_case(t.as_bytes());
    if lower(name, "message") || lower(name, "pmessage") || lower(name, "smessage") {
        return Some(PubsubFrame::Message);
    }
    let shard = lower(name, "ssubscribe") || lower(name, "sunsubscribe");
    let confirm = shard
        || lower(name, "subscribe")
        || lower(name, "psubscribe")
        || lower(name, "unsubscribe")
        || lower(name, "punsubscribe");
    if !confirm {
        return None;
    }
    // The count is the third element: skip the channel, read the integer.
    elements.next()?;
    let count = match elements.next() {
        Some(third) if third.bytes.first() == Some(&b':') => codec::header_int(third.bytes),
        _ => None,
    };
    Some(PubsubFrame::Confirm { shard, count })
}

impl Session {
    /// Handles `CLIENT REPLY ON|OFF|SKIP` here (other forms go to Redis for its error).
    /// Redis keeps replying; the proxy drops what the client asked not to get, so replies
    /// the proxy makes itself follow the mode exactly like Redis's.
    pub(super) fn client_reply(&mut self, argv: &Argv<'_>, cmd: Option<usize>) -> bool {
        if argv.len() != 3 {
            return false;
        }
        let mode = argv.get(2).unwrap_or_default();
        let (next, reply) = if mode.eq_ignore_ascii_case(b"ON") {
            (ReplyMode::On, Some(Bytes::from_static(b"+OK\r\n")))
        } else if mode.eq_ignore_ascii_case(b"OFF") {
            (ReplyMode::Off, None)
        } else if mode.eq_ignore_ascii_case(b"SKIP") {
            (ReplyMode::SkipNext, None)
        } else {
            return false;
        };
        if self.multi.is_some() {
            // Redis would change the mode halfway through building the EXEC reply.
            self.refuse(CLIENT_REPLY_IN_MULTI, cmd);
            return true;
        }
        self.scratch.clear();
        match reply {
            Some(ok) => {
                // Answered even when replies were off.
                self.reply_mode = next;
                self.quiet = false;
                self.push_local(ok, Outcome::Ok, cmd);
            }
            None => {
                // A SKIP while replies are off changes nothing.
                if !(next == ReplyMode::SkipNext && self.reply_mode == ReplyMode::Off) {
                    self.reply_mode = next;
                }
                self.quiet = true;
                self.push_local(Bytes::new(), Outcome::Ok, cmd);
            }
        }
        true
    }

    /// Whether the client's reply mode suppresses the reply to the next command; `SKIP`
    /// is used up by it.
    pub(super) fn take_quiet(&mut self) -> bool {
        match self.reply_mode {
            ReplyMode::On => false,
            ReplyMode::Off => true,
            ReplyMode::SkipNext => {
                self.reply_mode = ReplyMode::On;
                true
            }
        }
    }

    pub(super) fn set_subs(&mut self, shard: bool, count: i64) {
        if shard {
            self.shard_subs = count;
        } else {
            self.subs = count;
        }
    }

    pub(super) fn reset_state(&mut self) {
        self.reply_mode = ReplyMode::On;
        self.resp3 = false;
        self.subs = 0;
        self.shard_subs = 0;
        self.monitor = false;
    }
}
