//! MULTI/EXEC: what the proxy added to or answered in a transaction, and the EXEC reply
//! rebuilt as the client queued it.

use bytes::{Bytes, BytesMut};

use super::modes::{pubsub_frame, PubsubFrame};
use super::{Session, Special};
use crate::codec::{self, ReplyFrame};
use crate::metrics;
use crate::policy::NsId;

/// One queued command of a transaction, in order, for rebuilding the EXEC reply.
#[derive(Debug, Clone)]
pub(super) enum Slot {
    /// The client's command: its element of the EXEC array is the client's. Reads carry what
    /// hit/miss counting needs, as their real reply only comes inside the EXEC array.
    Visible(Option<Box<ReadInfo>>),
    /// Added by the proxy: its element is removed.
    Hidden,
    /// Answered by the proxy (never sent): this element is inserted.
    Local(Bytes),
    /// A probe for a command the policy made a no-op: its element becomes this reply unless
    /// it is an error.
    Mapped(Bytes),
}

/// What a read queued in MULTI needs for hit/miss counting when EXEC answers it.
#[derive(Debug, Clone)]
pub(super) struct ReadInfo {
    pub(super) cmd: Option<usize>,
    pub(super) ns: NsId,
    pub(super) key_ns: Option<Box<[NsId]>>,
    pub(super) nkeys: u32,
}

impl Session {
    /// Applies what queued HELLO, (un)subscribe, MONITOR and QUIT did when EXEC ran them.
    pub(super) fn apply_exec_specials(
        &mut self,
        bytes: &[u8],
        f: ReplyFrame,
        layout: &[Slot],
        specials: &[(usize, Special)],
    ) {
        if memchr::memchr(b'\n', &bytes[f.value_at..]).is_none() {
            return;
        }
        let elements: Vec<_> = codec::elements(&bytes[f.value_at..], &self.reply_limits).collect();
        // Specials are numbered among the client's own commands: skip the proxy's.
        let sent: Vec<_> = layout
            .iter()
            .filter(|s| !matches!(s, Slot::Local(_)))
            .collect();
        if elements.len() != sent.len() {
            return;
        }
        let visible: Vec<_> = elements
            .into_iter()
            .zip(sent)
            .filter(|(_, slot)| matches!(slot, Slot::Visible(_)))
            .map(|(e, _)| e)
            .collect();
        for (idx, sp) in specials {
            let Some(el) = visible.get(*idx) else {
                continue;
            };
            let value = el.value();
            match sp {
                Special::Hello => match el.frame.kind {
                    b'%' => self.resp3 = true,
                    b'*' => self.resp3 = false,
                    _ => {}
                },
                Special::Pubsub => {
                    if let Some(PubsubFrame::Confirm { shard, count }) =
                        pubsub_frame(value, &self.reply_limits)
                    {
                        self.set_subs(shard, count.unwrap_or(1));
                    }
                }
                Special::Monitor if el.frame.kind == b'+' => self.monitor = true,
                Special::Quit => self.closing = true,
                _ => {}
            }
        }
    }

    /// Counts hits and misses of reads answered inside an EXEC array.
    pub(super) fn count_exec_reads(&mut self, bytes: &[u8], f: ReplyFrame, layout: &[Slot]) {
        if !layout.iter().any(|s| matches!(s, Slot::Visible(Some(_)))) {
            return;
        }
        if memchr::memchr(b'\n', &bytes[f.value_at..]).is_none() {
            return;
        }
        let mut elements = codec::elements(&bytes[f.value_at..], &self.reply_limits);
        let t = self.ns_table.clone();
        for slot in layout {
            if matches!(slot, Slot::Local(_)) {
                continue;
            }
            let Some(el) = elements.next() else {
                return;
            };
            if let Slot::Visible(Some(info)) = slot {
                let value = el.value();
                if !codec::is_error(el.frame.kind) {
                    let mut count =
                        |ns: NsId, r: metrics::Lookup, n: u64| t.lookup(info.cmd, ns, r, n);
                    metrics::count_lookups(
                        &mut count,
                        info.cmd,
                        info.ns,
                        info.key_ns.as_deref(),
                        info.nkeys as usize,
                        value,
                        &self.reply_limits,
                    );
                }
            }
        }
    }

    /// Rebuilds an EXEC array as the client queued it: replies of proxy-added commands
    /// removed, replies the proxy made inserted.
    pub(super) fn filter_exec(
        &mut self,
        bytes: &[u8],
        f: ReplyFrame,
        layout: &[Slot],
    ) -> Option<BytesMut> {
        let sent = layout
            .iter()
            .filter(|s| !matches!(s, Slot::Local(_)))
            .count();
        if f.count < 0 || f.count as usize != sent {
            return None;
        }
        memchr::memchr(b'\n', &bytes[f.value_at..])?;
        let visible = layout.iter().filter(|s| !matches!(s, Slot::Hidden)).count();
        let mut out = BytesMut::with_capacity(bytes.len());
        out.extend_from_slice(&bytes[..f.value_at]);
        let mut ib = [0u8; 20];
        out.extend_from_slice(b"*");
        out.extend_from_slice(codec::fmt_int(&mut ib, visible as i64));
        out.extend_from_slice(b"\r\n");
        let mut elements = codec::elements(&bytes[f.value_at..], &self.reply_limits);
        for slot in layout {
            if let Slot::Local(b) = slot {
                out.extend_from_slice(b);
                continue;
            }
            let el = elements.next()?;
            match slot {
                Slot::Visible(_) => out.extend_from_slice(el.bytes),
                Slot::Mapped(reply) if !codec::is_error(el.frame.kind) => {
                    out.extend_from_slice(reply)
                }
                Slot::Mapped(_) => out.extend_from_slice(el.bytes),
                Slot::Hidden | Slot::Local(_) => {}
            }
        }
        Some(out)
    }
}
