//! A client of a Redis Cluster upstream whose commands need connection state (a transaction,
//! WATCHed keys, a blocking command, subscriptions): it leaves its shared router for a
//! connection of its own to the one node that state belongs to, and comes back to the router
//! once the state is gone.
//!
//! - Which node: the primary serving the slot of the first key (`WATCH`'s keys, the first
//!   keyed command queued after `MULTI`, a blocking command's keys, `SSUBSCRIBE`'s shard
//!   channels), or any primary when no key says (`SUBSCRIBE`/`PSUBSCRIBE`, since the cluster
//!   propagates `PUBLISH` to every node; a transaction with only keyless commands; `WAIT`).
//! - A transaction (and `WATCH`) is bound to one slot, as in Redis Cluster: a command with a
//!   key of another slot is refused with Redis Cluster's `CROSSSLOT`, and inside `MULTI` the
//!   transaction is flagged so that `EXEC` answers `EXECABORT`, as a node does. A transaction
//!   begun with keyless commands on another node than its first key's moves there: the
//!   connection is closed (which discards it) and what was queued is sent again.
//! - Commands after a blocking command, `EXEC`, `DISCARD`, `UNWATCH`, `RESET` or a pub/sub
//!   command wait until it is answered: then the state is known, and if it is clean the
//!   client is back on its router, where those commands route by slot again.
//! - `MOVED`/`ASK` on the connection never reach the client: a blocking command's is followed
//!   once on a new connection to the named node (a redirected command has not run);
//!   otherwise the reply becomes an error saying the slot moved and what did not run, and the
//!   slot map learns the move.
//!
//! - The last connection of its own is kept when the client goes back to its router, clean,
//!   and used again for the next command that needs one on the same node (a worker looping
//!   on `BRPOP` does not open and close a connection per command).
//!
//! Nothing here runs for a client on the router (the hot path), nor with one Redis.

use std::io;

use bytes::{Bytes, BytesMut};

use super::{Action, Kind, Pending, Session, Slot, Special};
use crate::codec::{self, Argv};
use crate::command::{CommandSpec, Traits};
use crate::config::UpstreamConfig;
use crate::metrics::Outcome;
use crate::policy::{Verdict, NS_NONE};
use crate::upstream::cluster::route::{self, Redirect, Route};
use crate::upstream::cluster::NodeAddr;
use crate::upstream::{Dedicated, Handle, UpstreamError};

/// A queued command's slot moved: the node flagged the transaction.
const QUEUED_MOVED: &str = "TRYAGAIN The key's hash slot moved to another cluster node while \
    the transaction was queued: EXEC will discard the transaction (respguard)";
/// `EXEC` found the slot moved: the node discarded the transaction.
const EXEC_MOVED: &str = "TRYAGAIN The transaction's hash slot moved to another cluster node: \
    the transaction was discarded, not run (respguard)";
/// Any other command on the client's own connection.
const MOVED: &str = "TRYAGAIN The key's hash slot moved to another cluster node: the command \
    was not run (respguard)";
/// A shard channel of another node than the client's subscriptions.
const OTHER_NODE: &str = "ERR this connection is subscribed on another cluster node than the \
    one serving this shard channel's slot: unsubscribe from everything first, or use another \
    connection (respguard)";
/// A transaction begun with more keyless commands than respguard keeps to move it.
const TOO_LARGE_TO_MOVE: &str = "ERR the keyless commands queued before this transaction's \
    first key are more than max_buffered_bytes, too many to move the transaction to the key's \
    cluster node: queue a keyed command first (respguard)";
/// `HELLO 3`: the routers merge RESP2 replies, and a client must keep one protocol.
const NOPROTO: &str =
    "NOPROTO unsupported protocol version (respguard speaks RESP2 to a Redis Cluster upstream)";

/// A cluster client on a connection of its own.
#[derive(Default)]
pub(super) struct ClusterPin {
    /// The node of the connection; `None` until a key decides (any primary at connect).
    node: Option<NodeAddr>,
    /// The slot a transaction or `WATCH` bound the connection to.
    slot: Option<u16>,
    /// A `WATCH` succeeded and no EXEC, DISCARD, UNWATCH or RESET came since.
    watching: bool,
    /// Counts the commands that end watching, so that the success of a `WATCH` sent before
    /// one of them (and answered after it was sent) counts for nothing.
    unwatched: u32,
    /// The client's next commands wait until every reply is in.
    hold: bool,
    /// While a transaction has no key yet: what was sent since `MULTI`, and how many replies
    /// it makes, to send again on the node of its first key.
    replay: Option<(BytesMut, usize)>,
    /// The transaction moves to this node once every reply is in.
    moving: Option<NodeAddr>,
    /// The blocking command outstanding, as sent (with what the policy appended).
    blocked: Option<Blocked>,
    /// Its `MOVED`/`ASK`, to follow once every reply is in.
    follow: Option<Follow>,
    /// The router the client leaves, to come back to.
    parked: Option<Handle>,
}

struct Blocked {
    bytes: Bytes,
    replies: usize,
    followed: bool,
}

struct Follow {
    entry: Pending,
    to: NodeAddr,
    asking: bool,
}

/// Whether a kept connection has nothing to read: neither data nor the end of the stream
/// (a node that closed it, a timeout).
fn quiet(d: &mut Dedicated) -> bool {
    let mut probe = BytesMut::with_capacity(64);
    matches!(d.rd.read_now(&mut probe), Ok(None))
}

/// What a cluster client's command that cannot go through its router needs.
enum Need {
    /// A connection of its own to the owner of this slot (`None`: any primary).
    Pin(Option<u16>),
    /// Nothing of the kind: it goes through the router (or is answered by the session).
    Router,
    /// Refused with this reply.
    Refuse(Bytes),
    /// `CLIENT SETNAME` (`true`) or `CLIENT GETNAME`, answered by respguard.
    Name(bool),
}

fn error(msg: &str) -> Bytes {
    let mut b = BytesMut::new();
    codec::encode_error(&mut b, msg);
    b.freeze()
}

/// `HELLO`: `None` when it may run as it is (protocol 2, no option); otherwise the refusal.
fn hello_refusal(argv: &Argv<'_>, spec: Option<&'static CommandSpec>) -> Option<Bytes> {
    match argv.get(1) {
        None => None,
        Some(b"2") if argv.len() == 2 => None,
        Some(b"3") => Some(error(NOPROTO)),
        _ => Some(route::stateful_reply(argv, spec)),
    }
}

/// What a command that is not shareable needs with a cluster upstream.
fn need(argv: &Argv<'_>, spec: Option<&'static CommandSpec>, traits: &Traits) -> Need {
    let by_key = || {
        let mut keys = Vec::new();
        match route::route(argv, spec, &mut keys) {
            Route::One(slot) => Need::Pin(slot),
            Route::Local(b) => Need::Refuse(Bytes::from_static(b)),
            Route::Split { .. } => Need::Refuse(Bytes::from_static(route::CROSSSLOT)),
            Route::AllShards(_) | Route::Scan => Need::Pin(None),
        }
    };
    if let route::Tip::ClientName { set } = traits.cluster {
        return Need::Name(set);
    }
    match traits.special {
        Special::Multi
        | Special::Exec
        | Special::Discard
        | Special::Unwatch
        | Special::Reset
        | Special::Quit => Need::Pin(None),
        Special::Watch | Special::Pubsub => by_key(),
        Special::ClientReply => Need::Router,
        Special::Hello => match hello_refusal(argv, spec) {
            None => Need::Router,
            Some(b) => Need::Refuse(b),
        },
        _ if traits.blocking => by_key(),
        _ => Need::Refuse(route::stateful_reply(argv, spec)),
    }
}

impl Session {
    /// A command from a cluster client on its router that the router cannot carry.
    /// `Some(done)` when it was dealt with here (refused; or `false`: it waits for the
    /// replies still owed on the router); `None` when the client is now on a connection of
    /// its own (or stays on the router) and the command goes on as usual.
    pub(super) fn cluster_pin(
        &mut self,
        argv: &Argv<'_>,
        spec: Option<&'static CommandSpec>,
        traits: &Traits,
        cmd: Option<usize>,
    ) -> Option<bool> {
        let slot = match self.cluster_answer_here(need(argv, spec, traits), argv, spec, cmd) {
            Err(done) => return Some(done),
            Ok(Need::Pin(slot)) => slot,
            Ok(_) => return None,
        };
        let node = match (self.shared.cluster(), slot) {
            (Some(c), Some(s)) => c.owner(s),
            _ => None,
        };
        self.cpin = Some(Box::new(ClusterPin {
            node,
            ..ClusterPin::default()
        }));
        if !self.pending.is_empty() || !self.uout.is_empty() {
            // What was sent through the router is answered first.
            self.link.pin();
            return Some(false);
        }
        self.cluster_leave_router();
        None
    }

    /// The router's replies are all in: the client leaves it (keeping it to come back).
    pub(super) fn cluster_leave_router(&mut self) {
        let h = self.link.unshare();
        if let Some(cp) = self.cpin.as_mut() {
            cp.parked = h;
        }
    }

    /// `CLIENT SETNAME name` / `CLIENT GETNAME`, answered as Redis answers them, with the
    /// name kept here (a node's `CLIENT LIST` does not show it).
    fn cluster_client_name(
        &mut self,
        argv: &Argv<'_>,
        spec: Option<&'static CommandSpec>,
        set: bool,
    ) -> Bytes {
        if let Some(s) = spec.filter(|s| !s.check_arity(argv.len())) {
            return error(&format!(
                "ERR wrong number of arguments for '{}' command",
                s.name.to_ascii_lowercase()
            ));
        }
        if !set {
            let mut b = BytesMut::new();
            match &self.cluster_name {
                Some(n) => codec::encode_args(&mut b, std::iter::once(&n[..])),
                None => b.extend_from_slice(b"$-1\r\n"),
            }
            return b.freeze();
        }
        let name = argv.get(2).unwrap_or_default();
        if name.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
            return error(
                "ERR Client names cannot contain spaces, newlines or special characters.",
            );
        }
        self.cluster_name = (!name.is_empty()).then(|| Bytes::copy_from_slice(name));
        Bytes::from_static(b"+OK\r\n")
    }

    /// The policy's verdict first, as on one node; then respguard's own answer (a refusal,
    /// or `CLIENT SETNAME`'s effect and answer), made only if the policy let it through.
    fn cluster_after_policy(
        &mut self,
        argv: &Argv<'_>,
        spec: Option<&'static CommandSpec>,
        cmd: Option<usize>,
        reply: impl FnOnce(&mut Session) -> Bytes,
    ) -> bool {
        self.quiet = self.take_quiet();
        let verdict = match &self.policy {
            Some(p) => p.check(argv, spec, &mut self.scratch),
            None => Verdict::Forward,
        };
        match verdict {
            Verdict::Reject(r) => {
                self.refuse(&r.message, cmd);
                return true;
            }
            Verdict::Respond(bytes) => {
                self.cluster_local(bytes, cmd);
                return true;
            }
            _ => {}
        }
        self.scratch.namespace = NS_NONE;
        self.scratch.clear();
        let reply = reply(self);
        self.cluster_local(reply, cmd);
        true
    }

    /// Answers a command here; an error inside MULTI flags the transaction (EXECABORT), a
    /// success is its element of the EXEC reply.
    fn cluster_local(&mut self, reply: Bytes, cmd: Option<usize>) {
        if reply.first() == Some(&b'-') {
            self.push_local(reply, Outcome::Error, cmd);
            if self.multi.is_some() {
                self.send(super::intake::POISON);
                self.push(Kind::Poison, None, false, self.batch_start);
            }
        } else if let Some(layout) = self.multi.as_mut() {
            layout.push(Slot::Local(reply));
            self.push_local(Bytes::from_static(b"+QUEUED\r\n"), Outcome::Ok, cmd);
        } else {
            self.push_local(reply, Outcome::Ok, cmd);
        }
    }

    /// Answers here what `need` says respguard answers (a refusal, `CLIENT SETNAME`/`GETNAME`):
    /// `Err(done)`; any other need is handed back.
    fn cluster_answer_here(
        &mut self,
        need: Need,
        argv: &Argv<'_>,
        spec: Option<&'static CommandSpec>,
        cmd: Option<usize>,
    ) -> Result<Need, bool> {
        match need {
            Need::Refuse(reply) => Err(self.cluster_after_policy(argv, spec, cmd, |_| reply)),
            Need::Name(set) => Err(self
                .cluster_after_policy(argv, spec, cmd, |s| s.cluster_client_name(argv, spec, set))),
            other => Ok(other),
        }
    }

    /// A command of a cluster client on a connection of its own. `Some(done)` when dealt with
    /// here (`false`: it waits); `None` to go on as usual.
    pub(super) fn cluster_pinned(
        &mut self,
        argv: &Argv<'_>,
        spec: Option<&'static CommandSpec>,
        traits: &Traits,
        cmd: Option<usize>,
    ) -> Option<bool> {
        if self.cluster_held() {
            return Some(false);
        }
        if !traits.shareable {
            if let Err(done) = self.cluster_answer_here(need(argv, spec, traits), argv, spec, cmd) {
                return Some(done);
            }
        }
        if traits.special == Special::Reset {
            self.cluster_name = None;
        }
        let in_multi = self.multi.is_some();
        let cp = self.cpin.as_mut()?;
        match traits.special {
            Special::Unwatch | Special::Reset => {
                cp.watching = false;
                cp.unwatched = cp.unwatched.wrapping_add(1);
                cp.hold = true;
            }
            Special::Exec | Special::Discard if in_multi => {
                cp.watching = false;
                cp.unwatched = cp.unwatched.wrapping_add(1);
                cp.replay = None;
                cp.hold = true;
            }
            Special::Multi if !in_multi && cp.slot.is_none() => {
                // What the node of the first key must be sent if it is another: MULTI, then
                // what follows it (recorded as it is sent).
                cp.replay = Some((BytesMut::from(&b"*1\r\n$5\r\nMULTI\r\n"[..]), 1));
            }
            Special::Pubsub => cp.hold = true,
            _ if traits.blocking && !in_multi => cp.hold = true,
            _ => {}
        }
        let binds = in_multi || cp.watching || traits.special == Special::Watch;
        let shard =
            traits.special == Special::Pubsub && traits.cluster == route::Tip::ShardChannels;
        if !binds
            && !shard
            && !matches!(
                traits.cluster,
                route::Tip::NotCluster | route::Tip::SelectZeroOnly
            )
        {
            return None;
        }
        let mut keys = Vec::new();
        let slot = match route::route(argv, spec, &mut keys) {
            Route::One(Some(s)) => s,
            Route::One(None) | Route::AllShards(_) | Route::Scan => return None,
            Route::Local(b) => {
                self.cluster_answer(Bytes::from_static(b), cmd);
                return Some(true);
            }
            Route::Split { .. } => {
                self.cluster_answer(Bytes::from_static(route::CROSSSLOT), cmd);
                return Some(true);
            }
        };
        let owner = self.shared.cluster().and_then(|c| c.owner(slot));
        let connected = self.link.is_dedicated();
        let cp = self.cpin.as_mut()?;
        if !binds {
            // A shard channel must be served by the node the subscriptions are on.
            if cp.node.is_some() && owner.is_some() && cp.node != owner {
                self.cluster_answer(error(OTHER_NODE), cmd);
                return Some(true);
            }
            return None;
        }
        match cp.slot {
            Some(bound) if bound == slot => None,
            Some(_) => {
                self.cluster_answer(Bytes::from_static(route::CROSSSLOT), cmd);
                Some(true)
            }
            None if !connected || cp.node.is_none() || cp.node == owner || owner.is_none() => {
                // The first key: the connection's node is (or becomes) its slot's owner.
                if owner.is_some() {
                    cp.node = owner;
                }
                cp.slot = Some(slot);
                cp.replay = None;
                None
            }
            None if in_multi && cp.replay.is_some() && !cp.watching => {
                // Begun with keyless commands on another node: the transaction moves.
                cp.moving = owner;
                cp.hold = true;
                Some(false)
            }
            None => {
                // Subscribed on another node, or too much to move: the state cannot move.
                let msg = if in_multi {
                    TOO_LARGE_TO_MOVE
                } else {
                    OTHER_NODE
                };
                self.cluster_answer(error(msg), cmd);
                Some(true)
            }
        }
    }

    /// Answers the command being handled here (see [`Session::cluster_local`]).
    fn cluster_answer(&mut self, reply: Bytes, cmd: Option<usize>) {
        self.quiet = self.take_quiet();
        self.scratch.namespace = NS_NONE;
        self.scratch.clear();
        self.cluster_local(reply, cmd);
    }

    /// Whether the client's commands wait (a blocking command, the end of a state, a move).
    pub(super) fn cluster_held(&self) -> bool {
        self.cpin
            .as_ref()
            .is_some_and(|c| c.hold || c.moving.is_some() || c.follow.is_some())
    }

    /// Whether what a command sends is recorded: a transaction has no key yet. Then
    /// [`Session::cluster_record`] records what it sent (`mark`: the
    /// upstream buffer's length before it, `before`: the replies owed before it).
    pub(super) fn cluster_recording(&self) -> bool {
        self.cpin.as_ref().is_some_and(|c| c.replay.is_some())
    }

    /// See [`Session::cluster_recording`].
    pub(super) fn cluster_record(&mut self, mark: usize, before: usize) {
        let sent = self.unsent.saturating_sub(before);
        let max = self.max_buffered;
        let Some(cp) = self.cpin.as_mut() else {
            return;
        };
        if let (Some((buf, n)), Some(b)) = (cp.replay.as_mut(), self.uout.get(mark..)) {
            if buf.len() + b.len() > max {
                // Kept no further: the transaction stays where it began.
                cp.replay = None;
                return;
            }
            buf.extend_from_slice(b);
            *n += sent;
        }
    }

    /// A blocking command went out as `uout[mark..]` (`replies` replies): kept to send again
    /// if its slot turns out to have moved.
    pub(super) fn cluster_blocking_sent(&mut self, mark: usize, replies: usize) {
        let Some(bytes) = self.uout.get(mark..).map(Bytes::copy_from_slice) else {
            return;
        };
        if let Some(cp) = self.cpin.as_mut() {
            cp.blocked = Some(Blocked {
                bytes,
                replies,
                followed: false,
            });
        }
    }

    /// The mark a `WATCH` sent now carries ([`Kind::Watch`]).
    pub(super) fn cluster_watch_mark(&self) -> u32 {
        self.cpin.as_ref().map_or(0, |c| c.unwatched)
    }

    /// A `WATCH` carrying `mark` succeeded: the keys are watched unless a command that ends
    /// watching was sent after it.
    pub(super) fn cluster_watched(&mut self, mark: u32) {
        if let Some(cp) = self.cpin.as_mut() {
            if cp.unwatched == mark {
                cp.watching = true;
            }
        }
    }

    /// An error reply on the client's own connection: `MOVED`/`ASK` never reach the client.
    /// `Ok(entry)` for any other error (paired as usual).
    pub(super) fn cluster_redirect(&mut self, reply: &[u8], p: Pending) -> Result<Pending, Action> {
        let Some(redirect) = route::redirect(reply) else {
            return Ok(p);
        };
        let (to, asking) = match redirect {
            Redirect::Moved(slot, to) => {
                if let Some(c) = self.shared.cluster() {
                    c.moved(slot, &to);
                }
                (to, false)
            }
            Redirect::Ask(_, to) => {
                if let Some(c) = self.shared.cluster() {
                    c.asked();
                }
                (to, true)
            }
        };
        let Some(cp) = self.cpin.as_mut() else {
            return Ok(p);
        };
        if p.meta.blocking && cp.blocked.as_ref().is_some_and(|b| !b.followed) {
            // Not run: sent again to the named node once the replies before are in.
            cp.follow = Some(Follow {
                entry: p,
                to,
                asking,
            });
            return Err(Action::Drop);
        }
        let msg = match p.kind {
            Kind::Hidden | Kind::Poison => return Err(Action::Drop),
            Kind::Exec(..) => EXEC_MOVED,
            _ if p.meta.queued => QUEUED_MOVED,
            _ => MOVED,
        };
        let mut out = BytesMut::new();
        codec::encode_error(&mut out, msg);
        self.record(&p.meta, Outcome::Error, None);
        Err(Action::Replace(out))
    }

    /// Moves a cluster client on once every reply is in: follows a blocking command's
    /// redirection, moves a transaction to its first key's node, ends a hold, and brings the
    /// client back to its router when its connection state is clean. True when there is a
    /// batch to send.
    pub(super) fn cluster_step(&mut self) -> bool {
        if !self.pending.is_empty() || !self.uout.is_empty() || self.closing {
            return false;
        }
        let start = self.batch_start;
        let Some(cp) = self.cpin.as_mut() else {
            return false;
        };
        if let Some(f) = cp.follow.take() {
            let Some(b) = cp.blocked.as_mut() else {
                return false;
            };
            b.followed = true;
            let (bytes, replies) = (b.bytes.clone(), b.replies);
            cp.node = Some(f.to);
            self.link.reopen();
            if f.asking {
                self.send(b"*1\r\n$6\r\nASKING\r\n");
                self.push(Kind::Hidden, None, false, start);
            }
            self.send(&bytes);
            self.pending.push_back(f.entry);
            self.unsent += 1;
            for _ in 1..replies {
                self.push(Kind::Hidden, None, false, start);
            }
            return true;
        }
        if let Some(to) = cp.moving.take() {
            let (replay, n) = cp.replay.take().unwrap_or_default();
            cp.node = Some(to);
            cp.hold = false;
            // Closing the connection discards the transaction begun there.
            self.link.reopen();
            self.send(&replay);
            for _ in 0..n {
                self.push(Kind::Hidden, None, false, start);
            }
            self.process_client();
            return true;
        }
        let held = std::mem::take(&mut cp.hold);
        if held {
            cp.blocked = None;
            if self.multi.is_none() && !cp.watching {
                cp.slot = None;
            }
        }
        if self.cluster_clean() {
            self.cluster_unpin();
        }
        if held {
            self.process_client();
            return true;
        }
        false
    }

    /// No connection state left that the router could not carry.
    fn cluster_clean(&self) -> bool {
        let Some(cp) = &self.cpin else {
            return false;
        };
        self.multi.is_none()
            && !cp.watching
            && cp.follow.is_none()
            && cp.moving.is_none()
            && self.subs <= 0
            && self.shard_subs <= 0
            && !self.monitor
            && !self.resp3
            && self.ubuf.is_empty()
            && self.pending.is_empty()
            && self.uout.is_empty()
    }

    /// Back to the router; the connection of its own is kept for the next time (its state
    /// is clean).
    fn cluster_unpin(&mut self) {
        let Some(cp) = self.cpin.take() else {
            return;
        };
        let cp = *cp;
        let h = match (cp.parked, self.shared.cluster()) {
            (Some(h), _) => h,
            (None, Some(c)) => Handle::new(c.client()),
            (None, None) => return,
        };
        self.cluster_spare = match (self.link.share(h), cp.node) {
            (Some(d), Some(node)) => Some(Box::new((node, d))),
            _ => None,
        };
        self.scanner.reset();
    }

    /// The settings for the connection of its own, when the client is a cluster client that
    /// needs one: its node's, or any primary's. `Ok(None)` when the connection kept from
    /// before (to the same node, and still quiet) is used again.
    pub(super) fn cluster_node_config(
        &mut self,
    ) -> Option<Result<Option<UpstreamConfig>, UpstreamError>> {
        let cp = self.cpin.as_mut()?;
        let cluster = self.shared.cluster()?;
        if cp.node.is_none() {
            cp.node = cluster.any_primary();
        }
        let Some(node) = &cp.node else {
            return Some(Err(UpstreamError::Connect {
                addr: "cluster".into(),
                source: io::Error::other("no cluster node known yet (the topology was not read)"),
            }));
        };
        if let Some(spare) = self.cluster_spare.take() {
            let (at, mut d) = *spare;
            if at == *node && quiet(&mut d) && self.link.adopt(d).is_ok() {
                return Some(Ok(None));
            }
        }
        Some(Ok(Some(cluster.node_config(node))))
    }

    /// The connection of its own was made (counted by node).
    pub(super) fn cluster_connected(&self) {
        if let (Some(cp), Some(c)) = (&self.cpin, self.shared.cluster()) {
            if let Some(n) = &cp.node {
                c.dedicated_opened(n);
            }
        }
    }

    /// The connection of its own could not be made: every command waiting for it got the
    /// error; the client goes back to its router.
    pub(super) fn cluster_connect_failed(&mut self) {
        if let Some(cp) = self.cpin.as_mut() {
            cp.watching = false;
            cp.hold = false;
            cp.moving = None;
            cp.follow = None;
            cp.replay = None;
            cp.blocked = None;
        }
        if self.pending.is_empty() {
            self.cluster_unpin();
        }
    }
}
