//! Reply pairing: every complete upstream frame is matched with the pending command it
//! answers (or recognised as answering none), and the client gets it, a replacement, or
//! nothing.

use std::time::Instant;

use bytes::{Buf, BytesMut};

use super::modes::{pubsub_frame, PubsubFrame};
use super::{Action, Kind, Pending, Session, Slot};
use crate::codec::{self, ReplyFrame};
use crate::metrics::Outcome;
use crate::upstream::{self, SharedReply, UpstreamError};

impl Session {
    /// Takes what a task-backed upstream delivered: replies to pair, or a failure.
    pub(super) fn on_delivery(&mut self, r: Option<SharedReply>) {
        match r {
            Some(SharedReply::Frames(b)) => {
                // What the client left unread of the replies before these, here and still in
                // the channel.
                let mut unread = self.cout.len();
                if let Some(h) = self.link.handle() {
                    unread += h.taken(b.len());
                }
                // Shared connections hand over whole replies: scan them where they are
                // instead of copying them into the read buffer first.
                let res = if self.ubuf.is_empty() {
                    let (used, res) = self.process_replies(&b);
                    if used < b.len() {
                        self.ubuf.extend_from_slice(&b[used..]);
                    }
                    res
                } else {
                    self.ubuf.extend_from_slice(&b);
                    self.process_upstream()
                };
                if let Err(e) = res {
                    self.upstream_failed(e);
                }
                self.check_output(unread);
            }
            Some(SharedReply::Failed {
                kind: upstream::CLIENT_BUFFER,
                ..
            }) => {
                // The shared connection dropped replies this task did not take in time: the
                // same limit, noticed there first.
                self.output_limit(false, 0);
            }
            Some(SharedReply::Failed { sent, message, .. }) => {
                self.shared_failed(sent, &message);
            }
            None => self.shared_failed(false, "shared upstream connection ended"),
        }
    }

    /// Handles every complete reply in the upstream buffer.
    pub(super) fn process_upstream(&mut self) -> Result<(), UpstreamError> {
        let mut buf = std::mem::take(&mut self.ubuf);
        let (off, result) = self.process_replies(&buf);
        if off >= buf.len() {
            buf.clear();
        } else {
            buf.advance(off);
        }
        self.ubuf = buf;
        result
    }

    /// Pairs every complete reply at the start of `buf` and says how many bytes it used.
    pub(super) fn process_replies(&mut self, buf: &[u8]) -> (usize, Result<(), UpstreamError>) {
        self.now = Instant::now();
        let mut off = 0;
        // Replies forwarded unchanged are copied to the client buffer in one run.
        let mut run_start = 0;
        let mut result = Ok(());
        while off < buf.len() {
            let rest = &buf[off..];
            let frame = match self.scanner.scan(rest, &self.reply_limits) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    if rest.len() > self.max_buffered {
                        result = Err(UpstreamError::Protocol(
                            codec::ProtocolError::InvalidBulkLength,
                        ));
                    }
                    break;
                }
                Err(e) => {
                    result = Err(UpstreamError::Protocol(e));
                    break;
                }
            };
            let bytes = &rest[..frame.len];
            let mut action = self.on_reply(bytes, frame);
            if self.drop_reply {
                // The client asked not to get this reply (`CLIENT REPLY OFF`/`SKIP`).
                self.drop_reply = false;
                action = Action::Drop;
            }
            match action {
                Action::Forward => {}
                Action::Drop => {
                    self.cout.extend_from_slice(&buf[run_start..off]);
                    run_start = off + frame.len;
                }
                Action::Replace(out) => {
                    self.cout.extend_from_slice(&buf[run_start..off]);
                    self.cout.extend_from_slice(&out);
                    run_start = off + frame.len;
                }
            }
            off += frame.len;
            self.drain_locals_into_run(buf, &mut run_start, off);
        }
        self.cout.extend_from_slice(&buf[run_start..off]);
        // Metrics are up to date before the client can see these replies.
        self.flush_run();
        (off, result)
    }

    /// Emits proxy-made replies that have reached the front, keeping the copy run in order.
    pub(super) fn drain_locals_into_run(&mut self, buf: &[u8], run_start: &mut usize, off: usize) {
        if matches!(
            self.pending.front(),
            Some(Pending {
                kind: Kind::Local(..),
                ..
            })
        ) {
            self.cout.extend_from_slice(&buf[*run_start..off]);
            *run_start = off;
            self.drain_locals();
        }
    }

    pub(super) fn drain_locals(&mut self) {
        while let Some(Pending {
            kind: Kind::Local(..),
            ..
        }) = self.pending.front()
        {
            if let Some(Pending {
                kind: Kind::Local(b, outcome),
                meta,
            }) = self.pending.pop_front()
            {
                if !meta.quiet {
                    self.cout.extend_from_slice(&b);
                }
                self.record(&meta, outcome, None);
            }
        }
    }

    /// Pairs one upstream frame and says what the client gets of it.
    pub(super) fn on_reply(&mut self, bytes: &[u8], f: ReplyFrame) -> Action {
        if self.monitor {
            if self.monitor_owed > 0 {
                // Replies to what was sent before MONITOR (and MONITOR's own) still pair.
                self.monitor_owed -= 1;
            } else {
                if bytes == b"+RESET\r\n" {
                    self.reset_state();
                }
                return Action::Forward;
            }
        }
        let front_pubsub = matches!(
            self.pending.front(),
            Some(Pending {
                kind: Kind::Pubsub,
                ..
            })
        );
        let maybe_pubsub = f.kind == b'>'
            || (f.kind == b'*'
                && !self.resp3
                && (front_pubsub || self.subs > 0 || self.shard_subs > 0));
        if maybe_pubsub {
            if let Some(ps) = pubsub_frame(&bytes[f.value_at..], &self.reply_limits) {
                if let PubsubFrame::Confirm { shard, count } = ps {
                    if let Some(c) = count {
                        self.set_subs(shard, c);
                    }
                    if front_pubsub {
                        self.pop_done(Outcome::Ok);
                    }
                }
                return Action::Forward;
            }
            if f.kind == b'>' {
                // Other pushes (client-side caching invalidations) answer no command.
                return Action::Forward;
            }
        }
        let Some(p) = self.pending.pop_front() else {
            if f.kind == b'*' {
                if let Some(PubsubFrame::Confirm { shard, count }) =
                    pubsub_frame(&bytes[f.value_at..], &self.reply_limits)
                {
                    // Subscribed from inside MULTI: Redis now sends pub/sub frames.
                    self.set_subs(shard, count.unwrap_or(1));
                    return Action::Forward;
                }
            }
            // Redis sent a reply nobody asked for: pairing can no longer be trusted.
            tracing::warn!("upstream sent an unexpected reply; closing the connection");
            self.abort = true;
            return Action::Drop;
        };
        self.last_reply_at = self.now;
        self.drop_reply = p.meta.quiet;
        let p = if f.kind == b'-' && self.cpin.is_some() {
            match self.cluster_redirect(bytes, p) {
                Ok(p) => p,
                Err(action) => return action,
            }
        } else {
            p
        };
        let outcome = if codec::is_error(f.kind) {
            Outcome::Error
        } else {
            Outcome::Ok
        };
        let forward = match p.kind {
            Kind::Reply | Kind::Pubsub => true,
            Kind::Watch(mark) => {
                if f.kind == b'+' {
                    self.cluster_watched(mark);
                }
                true
            }
            Kind::KeyFilter(scan) => {
                if let Some(out) = self.filter_key_reply(bytes, scan) {
                    self.record(&p.meta, outcome, None);
                    return Action::Replace(out);
                }
                true
            }
            Kind::Hidden => {
                if outcome == Outcome::Error {
                    tracing::warn!(
                        reply = %String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).trim_end(),
                        "a command added by the proxy failed"
                    );
                }
                return Action::Drop;
            }
            Kind::Poison => return Action::Drop,
            Kind::Local(..) => {
                // Cannot happen: locals are drained before any upstream reply is paired.
                tracing::warn!("reply pairing lost; closing the connection");
                self.abort = true;
                return Action::Drop;
            }
            Kind::Monitor => {
                if f.kind != b'+' {
                    // Refused: replies pair again.
                    self.monitor = false;
                }
                true
            }
            Kind::Hello => {
                match f.kind {
                    b'%' => self.resp3 = true,
                    b'*' => self.resp3 = false,
                    _ => {}
                }
                true
            }
            Kind::Reset => {
                if f.kind == b'+' {
                    self.reset_state();
                }
                true
            }
            Kind::Quit => {
                self.closing = true;
                true
            }
            Kind::Mapped(reply) => {
                if outcome == Outcome::Error {
                    true
                } else {
                    self.record(&p.meta, outcome, None);
                    return Action::Replace(BytesMut::from(&reply[..]));
                }
            }
            Kind::Exec(layout, specials) => {
                if !specials.is_empty() && f.count >= 0 {
                    self.apply_exec_specials(bytes, f, &layout, &specials);
                }
                if f.kind == b'*' && f.count > 0 {
                    self.count_exec_reads(bytes, f, &layout);
                }
                if f.kind == b'*'
                    && f.count >= 0
                    && layout.iter().any(|v| !matches!(v, Slot::Visible(_)))
                {
                    match self.filter_exec(bytes, f, &layout) {
                        Some(out) => {
                            self.record(&p.meta, outcome, None);
                            return Action::Replace(out);
                        }
                        None => {
                            tracing::warn!("EXEC reply did not match the queued commands; closing");
                            self.abort = true;
                            return Action::Drop;
                        }
                    }
                }
                true
            }
        };
        self.record(&p.meta, outcome, Some(&bytes[f.value_at..]));
        if forward {
            Action::Forward
        } else {
            Action::Drop
        }
    }

    pub(super) fn pop_done(&mut self, outcome: Outcome) {
        if let Some(p) = self.pending.pop_front() {
            self.record(&p.meta, outcome, None);
        }
    }

    /// Answers every outstanding command with an error naming the cause.
    pub(super) fn fail_pending(&mut self, cause: &str) {
        self.now = Instant::now();
        let msg = format!("ERR {cause}");
        let mut err = BytesMut::new();
        codec::encode_error(&mut err, &msg);
        let err = err.freeze();
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            match p.kind {
                Kind::Local(b, outcome) => {
                    if !p.meta.quiet {
                        self.cout.extend_from_slice(&b);
                    }
                    self.record(&p.meta, outcome, None);
                }
                Kind::Hidden | Kind::Poison => {}
                _ => {
                    if !p.meta.quiet {
                        self.cout.extend_from_slice(&err);
                    }
                    self.record(&p.meta, Outcome::Error, None);
                }
            }
        }
        self.flush_run();
    }

    /// The upstream broke: answer what is outstanding with the error and close the client,
    /// because the connection state it built up is gone.
    pub(super) fn upstream_failed(&mut self, e: UpstreamError) {
        self.shared.metrics.upstream_error(e.kind());
        if self.pending.is_empty() {
            tracing::debug!(error = %e, "upstream closed an idle connection");
        } else {
            tracing::warn!(error = %e, outstanding = self.pending.len(), "upstream failed mid-request");
        }
        self.link.lost();
        self.uout.clear();
        self.fail_pending(&e.to_string());
        self.closing = true;
    }

    /// A shared connection failed. Commands that never reached Redis get an error and the
    /// client may go on; if they may have, their replies are lost and the client is closed.
    pub(super) fn shared_failed(&mut self, sent: bool, message: &str) {
        self.unsent = 0;
        self.uout.clear();
        self.fail_pending(message);
        if sent {
            self.closing = true;
        }
    }
}
