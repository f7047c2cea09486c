//! Bounds on a client: idle and incomplete-command timeouts, the upstream read timeout, and
//! the output limits that keep a client that does not read from holding memory.

use std::time::Duration;

use bytes::BytesMut;

use super::{Kind, Outcome, Session, OUTPUT_STEP};
use crate::codec;

/// Which client timeout a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ClientTimeout {
    Idle,
    Incomplete,
}

impl Session {
    /// A shared connection cannot wait for one slow reader without stalling the others, so
    /// what a client leaves unread is bounded instead, as Redis bounds it with
    /// `client-output-buffer-limit`: a client with more than `max_client_output` unread when
    /// more replies arrive, or one whose replies keep arriving unread while all clients
    /// together hold more than `max_total_output`, is disconnected. A single reply of any
    /// size is still delivered: only what is left unread before it counts.
    pub(super) fn check_output(&mut self, unread: usize) {
        self.charge_output();
        if unread > self.max_output {
            self.output_limit(false, unread);
        } else if unread >= OUTPUT_STEP
            && self
                .shared
                .output_bytes
                .load(std::sync::atomic::Ordering::Relaxed)
                > self.max_total_output
        {
            self.output_limit(true, unread);
        }
    }

    /// Disconnects a client past its own output limit or the process-wide one (`total`).
    pub(super) fn output_limit(&mut self, total: bool, unread: usize) {
        let m = &self.shared.metrics;
        if total {
            m.output_limit_total.increment(1);
        } else {
            m.output_limit_client.increment(1);
        }
        tracing::warn!(
            unread,
            max_client_output = self.max_output,
            max_total_output = self.max_total_output,
            "client does not read its replies: output limit reached; closing"
        );
        self.abort = true;
    }

    /// Brings this client's share of the process-wide unread total up to date, in steps of
    /// [`OUTPUT_STEP`] so a client that reads its replies costs no shared write at all.
    pub(super) fn charge_output(&mut self) {
        let held = self.cout.len();
        if held.abs_diff(self.charged) < OUTPUT_STEP && (held > 0 || self.charged == 0) {
            return;
        }
        let total = &self.shared.output_bytes;
        if held > self.charged {
            total.fetch_add(held - self.charged, std::sync::atomic::Ordering::Relaxed);
        } else {
            total.fetch_sub(self.charged - held, std::sync::atomic::Ordering::Relaxed);
        }
        self.charged = held;
    }

    /// When the client times out, if a timeout applies: its incomplete command has been
    /// arriving too long, or it has been idle (nothing read, no reply owed) too long. As in
    /// Redis, clients waiting for a reply (blocked ones included), subscribers and monitors
    /// are never idle.
    pub(super) fn client_deadline(&self) -> Option<(tokio::time::Instant, ClientTimeout)> {
        if let Some(since) = self.partial_since {
            if !self.incomplete_timeout.is_zero() {
                let at = tokio::time::Instant::from_std(since + self.incomplete_timeout);
                return Some((at, ClientTimeout::Incomplete));
            }
        }
        if self.idle_timeout.is_zero()
            || !self.pending.is_empty()
            || !self.cout.is_empty()
            || self.monitor
            || self.subs > 0
            || self.shard_subs > 0
        {
            return None;
        }
        let since = self.batch_start.max(self.last_reply_at);
        Some((
            tokio::time::Instant::from_std(since + self.idle_timeout),
            ClientTimeout::Idle,
        ))
    }

    /// A command has not arrived in full within `incomplete_command_timeout` of its first
    /// bytes (a client trickling bytes to hold a connection): the client gets an error after
    /// the replies it is owed and is closed.
    pub(super) fn incomplete_timed_out(&mut self) {
        self.shared.metrics.timeout_incomplete.increment(1);
        tracing::debug!("command not received in full within incomplete_command_timeout; closing");
        self.partial_since = None;
        self.cbuf.clear();
        self.quiet = false;
        let mut b = BytesMut::new();
        codec::encode_error(
            &mut b,
            &format!(
                "ERR command not received in full within {} ms",
                self.incomplete_timeout.as_millis()
            ),
        );
        self.push_local(b.freeze(), Outcome::Error, None);
        self.closing = true;
    }

    /// When the oldest outstanding non-blocking command times out, if a timeout is set.
    pub(super) fn read_deadline(
        &self,
        timeout: Duration,
        connected: bool,
    ) -> Option<tokio::time::Instant> {
        if timeout.is_zero() || !connected || self.monitor || self.subs > 0 || self.shard_subs > 0 {
            return None;
        }
        let front = self
            .pending
            .iter()
            .find(|p| !matches!(p.kind, Kind::Local(..)))?;
        if front.meta.blocking {
            return None;
        }
        // Time queued behind earlier replies (a blocking command) does not count.
        let since = front.meta.start.max(self.last_reply_at);
        Some(tokio::time::Instant::from_std(since + timeout))
    }
}
