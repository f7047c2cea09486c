//! One client's router: takes the client's batches in order, sends each command to the
//! node serving it (grouped into one write per node), follows `MOVED`/`ASK`, retries what
//! an unreachable node or a failover in progress refused, merges split commands, and hands
//! the client its replies in the order it sent the commands.
//!
//! A batch is finished before the next one starts, so a client's commands on one key run in
//! the order it sent them, even when a redirection sends some of them to another node.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{self, Argv, Limits, Request, Span};
use crate::command::{self, KeyRef};
use crate::upstream::{Job, SharedReply, CLIENT_BUFFER};

use super::node::NodeReply;
use super::route::{self, Merge, Route};
use super::topology::{NodeAddr, SlotMap};
use super::Inner;

/// First wait before retrying a node that was unreachable or busy; doubled up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(400);
/// `SCAN` cursors carry the primary's position (in slot order) in their low bits: the
/// client's cursor is `node_cursor * SCAN_NODES + position`.
pub const SCAN_NODES: u64 = 1024;

/// Serves one client's batches until the client drops its sender.
pub(crate) async fn serve(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut spans = Vec::new();
    let mut keys = Vec::new();
    while let Some(job) = rx.recv().await {
        let reply = run(&inner, &job.bytes, &mut spans, &mut keys).await;
        deliver(&inner, &job, reply);
    }
}

/// Hands the replies over, unless the client already left more than its limit unread (as
/// the single-node shared connections do).
fn deliver(inner: &Inner, job: &Job, reply: Result<Bytes, String>) {
    const FAILED: usize = usize::MAX / 2;
    let bytes = match reply {
        Ok(b) => b,
        Err(message) => {
            let _ = job.to.send(SharedReply::Failed {
                sent: false,
                kind: "protocol",
                message,
            });
            return;
        }
    };
    let before = job.queued.fetch_add(bytes.len(), Ordering::AcqRel);
    if before >= FAILED / 2 {
        return;
    }
    if before > inner.max_buffered().saturating_mul(2) {
        job.queued.store(FAILED, Ordering::Release);
        let _ = job.to.send(SharedReply::Failed {
            sent: true,
            kind: CLIENT_BUFFER,
            message: "client output buffer limit reached: replies are not being read".into(),
        });
        return;
    }
    let _ = job.to.send(SharedReply::Frames(bytes));
}

/// Where a request goes.
#[derive(Clone, Debug)]
enum Target {
    Slot(u16),
    Any,
    /// The primary at this position of the map, in slot order (whole-keyspace commands).
    Primary(usize),
    /// A node named by a redirection.
    Node(NodeAddr),
}

/// One command as sent to one node.
struct Req {
    bytes: Bytes,
    target: Target,
    /// Where it went first, to go back to after a failover.
    home: Target,
    /// Send `ASKING` first (once).
    asking: bool,
    redirects: u32,
    reply: Option<Bytes>,
}

impl Req {
    fn new(bytes: Bytes, target: Target) -> Req {
        Req {
            bytes,
            home: target.clone(),
            target,
            asking: false,
            redirects: 0,
            reply: None,
        }
    }
}

/// How a client command's reply is made from its requests' replies.
enum Out {
    Single,
    Local(&'static [u8]),
    Merge(Merge),
    /// `MGET` split: for each part, the positions of its keys in the client's key list.
    Keys(Vec<Vec<usize>>, usize),
    Scan {
        position: usize,
        primaries: usize,
    },
}

struct Cmd {
    out: Out,
    reqs: std::ops::Range<usize>,
}

/// Runs one batch; its replies, in order.
async fn run(
    inner: &Inner,
    bytes: &Bytes,
    spans: &mut Vec<Span>,
    keys: &mut Vec<KeyRef>,
) -> Result<Bytes, String> {
    let limits = Limits {
        max_bulk_len: usize::MAX >> 1,
        max_inline_len: usize::MAX >> 1,
        ..inner.limits
    };
    let map = inner.map();
    let mut cmds: Vec<Cmd> = Vec::new();
    let mut reqs: Vec<Req> = Vec::new();
    let mut inline = Vec::new();
    let mut off = 0;
    while off < bytes.len() {
        let len = match codec::scan_request(&bytes[off..], &limits, spans, &mut inline) {
            Ok(Some(Request::Multibulk { len })) => len,
            Ok(Some(Request::Skip { len })) => {
                off += len;
                continue;
            }
            // The session sends whole multibulk commands only.
            _ => return Err("cluster router: a batch that is not whole commands".into()),
        };
        let raw = bytes.slice(off..off + len);
        off += len;
        let argv = Argv::new(&raw, spans);
        let spec = command::lookup(&argv);
        let first = reqs.len();
        let out = match route::route(&argv, spec, keys) {
            Route::One(slot) => {
                let target = slot.map_or(Target::Any, Target::Slot);
                reqs.push(Req::new(raw.clone(), target));
                Out::Single
            }
            Route::Local(b) => Out::Local(b),
            Route::AllShards(m) => {
                for i in 0..map.primaries().len().max(1) {
                    reqs.push(Req::new(raw.clone(), Target::Primary(i)));
                }
                Out::Merge(m)
            }
            Route::Split {
                merge,
                group,
                parts,
            } => {
                let mut all: Vec<usize> = parts.iter().flat_map(|(_, k)| k.clone()).collect();
                all.sort_unstable();
                let mut positions = Vec::with_capacity(parts.len());
                for (slot, idx) in &parts {
                    let mut b = BytesMut::new();
                    let args = std::iter::once(argv.get(0).unwrap_or_default()).chain(
                        idx.iter()
                            .flat_map(|&i| (i..i + group).filter_map(|j| argv.get(j))),
                    );
                    let args: Vec<&[u8]> = args.collect();
                    codec::encode_command(&mut b, args.into_iter());
                    reqs.push(Req::new(b.freeze(), Target::Slot(*slot)));
                    positions.push(
                        idx.iter()
                            .filter_map(|i| all.binary_search(i).ok())
                            .collect(),
                    );
                }
                match merge {
                    Merge::KeysInOrder => Out::Keys(positions, all.len()),
                    m => Out::Merge(m),
                }
            }
            Route::Scan => scan_request(&argv, &map, &mut reqs),
        };
        cmds.push(Cmd {
            out,
            reqs: first..reqs.len(),
        });
    }
    execute(inner, &mut reqs).await;
    let mut out = BytesMut::new();
    for c in &cmds {
        let replies = &reqs[c.reqs.clone()];
        merge(&c.out, replies, &mut out);
    }
    Ok(out.freeze())
}

/// `SCAN cursor ...`: the node's own cursor to the primary the client's cursor names.
fn scan_request(argv: &Argv<'_>, map: &SlotMap, reqs: &mut Vec<Req>) -> Out {
    let primaries = map.primaries().len();
    let cursor = argv
        .get(1)
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<u64>().ok());
    let Some(cursor) = cursor else {
        // Any node gives Redis's own error for a bad cursor.
        reqs.push(Req::new(encode(argv, None), Target::Any));
        return Out::Single;
    };
    let position = (cursor % SCAN_NODES) as usize;
    if primaries > 0 && position >= primaries {
        return Out::Local(b"-ERR invalid cursor\r\n");
    }
    let node_cursor = (cursor / SCAN_NODES).to_string();
    reqs.push(Req::new(
        encode(argv, Some((1, node_cursor.as_bytes()))),
        Target::Primary(position),
    ));
    Out::Scan {
        position,
        primaries,
    }
}

/// `argv` re-encoded, with one argument replaced.
fn encode(argv: &Argv<'_>, replace: Option<(usize, &[u8])>) -> Bytes {
    let args: Vec<&[u8]> = (0..argv.len())
        .map(|i| match replace {
            Some((at, with)) if at == i => with,
            _ => argv.get(i).unwrap_or_default(),
        })
        .collect();
    let mut b = BytesMut::new();
    codec::encode_command(&mut b, args.into_iter());
    b.freeze()
}

/// What a node's reply to a request means for routing.
enum Verdict {
    Done,
    Moved(u16, NodeAddr),
    Ask(NodeAddr),
    /// `TRYAGAIN`, `CLUSTERDOWN`: wait and retry at home.
    Busy(&'static str),
}

fn verdict(reply: &[u8]) -> Verdict {
    if reply.first() != Some(&b'-') {
        return Verdict::Done;
    }
    match route::redirect(reply) {
        Some(route::Redirect::Moved(slot, to)) => return Verdict::Moved(slot, to),
        Some(route::Redirect::Ask(_, to)) => return Verdict::Ask(to),
        None => {}
    }
    let word = reply[1..]
        .split(|&b| b == b' ' || b == b'\r')
        .next()
        .unwrap_or_default();
    match word {
        b"TRYAGAIN" => Verdict::Busy("tryagain"),
        b"CLUSTERDOWN" => Verdict::Busy("clusterdown"),
        _ => Verdict::Done,
    }
}

fn error_reply(msg: &str) -> Bytes {
    let mut b = BytesMut::new();
    codec::encode_error(&mut b, msg);
    b.freeze()
}

/// Sends every request until each has a reply for the client.
async fn execute(inner: &Inner, reqs: &mut [Req]) {
    let cfg = inner.cfg();
    let deadline = Instant::now() + cfg.retry_timeout;
    let mut todo: Vec<usize> = (0..reqs.len()).collect();
    let mut backoff = FIRST_BACKOFF;
    while !todo.is_empty() {
        let map = inner.map();
        // One write per node; `ASKING` goes right before the command it is for.
        let mut groups: Vec<(NodeAddr, BytesMut, usize, Vec<usize>)> = Vec::new();
        let mut unrouted = Vec::new();
        for &i in &todo {
            let r = &reqs[i];
            let node = match &r.target {
                Target::Slot(s) => map.owner(*s).cloned(),
                Target::Any => inner.any_primary(&map),
                Target::Primary(p) => map.primaries().get(*p).cloned(),
                Target::Node(n) => Some(n.clone()),
            };
            let Some(node) = node else {
                unrouted.push(i);
                continue;
            };
            let g = match groups.iter().position(|g| g.0 == node) {
                Some(g) => g,
                None => {
                    groups.push((node, BytesMut::new(), 0, Vec::new()));
                    groups.len() - 1
                }
            };
            let g = &mut groups[g];
            if r.asking {
                g.1.extend_from_slice(b"*1\r\n$6\r\nASKING\r\n");
                g.2 += 1;
            }
            g.1.extend_from_slice(&r.bytes);
            g.2 += 1;
            g.3.push(i);
        }
        let mut waits: Vec<(String, Instant, oneshot::Receiver<NodeReply>, Vec<usize>)> =
            Vec::with_capacity(groups.len());
        for (node, bytes, n, idx) in groups {
            let rx = inner.node(&node).submit(bytes.freeze(), n);
            waits.push((node.to_string(), Instant::now(), rx, idx));
        }
        let mut retry: Vec<usize> = Vec::new();
        let mut wait_before_retry = false;
        let now_expired = |at: Instant| at >= deadline;
        if !unrouted.is_empty() {
            // No map yet, or a slot nobody serves: the map is stale.
            inner.stale();
            for i in unrouted {
                if now_expired(Instant::now()) {
                    reqs[i].reply = Some(error_reply(
                        "CLUSTERDOWN Hash slot not served (no cluster node reachable by respguard)",
                    ));
                } else {
                    retry.push(i);
                    wait_before_retry = true;
                }
            }
        }
        for (node, sent_at, rx, idx) in waits {
            let reply = rx
                .await
                .unwrap_or_else(|_| NodeReply::Lost("node connection ended".into()));
            match reply {
                NodeReply::Frames(frames) => {
                    inner.metrics().node_batch(&node, sent_at.elapsed(), false);
                    let mut frames = frames.into_iter();
                    for i in idx {
                        let r = &mut reqs[i];
                        if r.asking {
                            // `ASKING`'s own `+OK`.
                            frames.next();
                            r.asking = false;
                        }
                        let Some(f) = frames.next() else {
                            r.reply = Some(error_reply("ERR upstream sent too few replies"));
                            continue;
                        };
                        match verdict(&f) {
                            Verdict::Done => r.reply = Some(f),
                            Verdict::Moved(slot, to) => {
                                inner.metrics().redirect("moved");
                                inner.moved(slot, &to);
                                r.redirects += 1;
                                if r.redirects > cfg.max_redirects {
                                    r.reply = Some(too_many(cfg.max_redirects));
                                } else {
                                    r.target = Target::Node(to);
                                    retry.push(i);
                                }
                            }
                            Verdict::Ask(to) => {
                                inner.metrics().redirect("ask");
                                r.redirects += 1;
                                if r.redirects > cfg.max_redirects {
                                    r.reply = Some(too_many(cfg.max_redirects));
                                } else {
                                    r.target = Target::Node(to);
                                    r.asking = true;
                                    retry.push(i);
                                }
                            }
                            Verdict::Busy(kind) => {
                                inner.metrics().redirect(kind);
                                if now_expired(Instant::now()) {
                                    r.reply = Some(f);
                                } else {
                                    if kind == "clusterdown" {
                                        inner.stale();
                                    }
                                    r.target = r.home.clone();
                                    retry.push(i);
                                    wait_before_retry = true;
                                }
                            }
                        }
                    }
                }
                NodeReply::NotSent(why) => {
                    inner.metrics().node_batch(&node, sent_at.elapsed(), true);
                    inner.metrics().redirect("unreachable");
                    inner.stale();
                    for i in idx {
                        let r = &mut reqs[i];
                        if now_expired(Instant::now()) {
                            r.reply = Some(error_reply(&format!("ERR {why}")));
                        } else {
                            // Back to the slot's owner: the map will name the new one.
                            r.target = r.home.clone();
                            r.asking = false;
                            retry.push(i);
                            wait_before_retry = true;
                        }
                    }
                }
                NodeReply::Lost(why) => {
                    inner.metrics().node_batch(&node, sent_at.elapsed(), true);
                    inner.stale();
                    for i in idx {
                        reqs[i].reply = Some(error_reply(&format!(
                            "ERR {why} (the command may have run)"
                        )));
                    }
                }
            }
        }
        if wait_before_retry {
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        retry.sort_unstable();
        todo = retry;
    }
}

fn too_many(max: u32) -> Bytes {
    error_reply(&format!(
        "ERR the key's slot was redirected more than {max} times \
         (upstream.cluster.max_redirects): the cluster is changing faster than respguard follows"
    ))
}

/// Limits for walking node replies: only frame boundaries matter here (the session applies
/// the client's limits to what it receives).
fn walk_limits() -> Limits {
    Limits {
        max_bulk_len: usize::MAX >> 1,
        max_inline_len: usize::MAX >> 1,
        max_depth: usize::MAX,
        ..Limits::default()
    }
}

/// An array reply's element count and the offset of its first element, when the reply holds
/// exactly as many complete elements as its header says.
fn array(frame: &[u8], limits: &Limits) -> Option<(usize, usize)> {
    if frame.first() != Some(&b'*') {
        return None;
    }
    let n = usize::try_from(codec::header_int(frame)?).ok()?;
    let start = memchr::memchr(b'\n', frame)? + 1;
    let (mut count, mut end) = (0, start);
    for e in codec::elements(frame, limits) {
        count += 1;
        end = e.at + e.bytes.len();
    }
    (count == n && end == frame.len()).then_some((n, start))
}

fn integer(frame: &[u8]) -> Option<i64> {
    if frame.first() != Some(&b':') {
        return None;
    }
    codec::header_int(frame)
}

fn is_error(f: &[u8]) -> bool {
    f.first().is_some_and(|&k| codec::is_error(k))
}

fn is_nil(f: &[u8]) -> bool {
    f == b"$-1\r\n" || f == b"*-1\r\n" || f == b"_\r\n"
}

const NO_REPLY: &[u8] = b"-ERR no reply\r\n";
const NOT_ARRAY: &[u8] = b"-ERR a node did not answer with an array\r\n";

fn reply_of(r: &Req) -> &[u8] {
    r.reply.as_deref().unwrap_or(NO_REPLY)
}

/// Builds a client command's reply from its requests' replies.
fn merge(out: &Out, reqs: &[Req], into: &mut BytesMut) {
    match out {
        Out::Local(b) => return into.extend_from_slice(b),
        Out::Single => return into.extend_from_slice(reqs.first().map_or(NO_REPLY, reply_of)),
        _ => {}
    }
    let replies = || reqs.iter().map(reply_of);
    if let Some(e) = replies().find(|r| is_error(r)) {
        into.extend_from_slice(e);
        return;
    }
    let limits = walk_limits();
    let mut ib = [0u8; 20];
    match out {
        Out::Local(_) | Out::Single => {}
        Out::Merge(Merge::Sum) => {
            let sum: Option<i64> = replies().map(integer).sum();
            match sum {
                Some(s) => {
                    into.extend_from_slice(b":");
                    into.extend_from_slice(codec::fmt_int(&mut ib, s));
                    into.extend_from_slice(b"\r\n");
                }
                None => into.extend_from_slice(b"-ERR a node did not answer with an integer\r\n"),
            }
        }
        Out::Merge(Merge::AllSucceeded) => {
            into.extend_from_slice(replies().next().unwrap_or(b"+OK\r\n"));
        }
        Out::Merge(Merge::AnyNonNil) => {
            let r = replies()
                .find(|r| !is_nil(r))
                .or_else(|| replies().next())
                .unwrap_or(b"$-1\r\n");
            into.extend_from_slice(r);
        }
        Out::Merge(Merge::Concat) | Out::Merge(Merge::KeysInOrder) => {
            // Checked first, then copied: every reply's elements follow its header at once.
            let mut n = 0;
            for r in replies() {
                match array(r, &limits) {
                    Some((k, _)) => n += k,
                    None => return into.extend_from_slice(NOT_ARRAY),
                }
            }
            into.extend_from_slice(b"*");
            into.extend_from_slice(codec::fmt_int(&mut ib, n as i64));
            into.extend_from_slice(b"\r\n");
            for r in replies() {
                if let Some((_, start)) = array(r, &limits) {
                    into.extend_from_slice(&r[start..]);
                }
            }
        }
        Out::Keys(positions, n) => {
            let mut slots: Vec<&[u8]> = vec![b"$-1\r\n"; *n];
            for (r, pos) in replies().zip(positions) {
                if array(r, &limits).is_none_or(|(k, _)| k != pos.len()) {
                    into.extend_from_slice(NOT_ARRAY);
                    return;
                }
                for (e, &p) in codec::elements(r, &limits).zip(pos) {
                    if let Some(s) = slots.get_mut(p) {
                        *s = e.bytes;
                    }
                }
            }
            into.extend_from_slice(b"*");
            into.extend_from_slice(codec::fmt_int(&mut ib, *n as i64));
            into.extend_from_slice(b"\r\n");
            for s in slots {
                into.extend_from_slice(s);
            }
        }
        Out::Scan {
            position,
            primaries,
        } => {
            let Some(r) = replies().next() else { return };
            let parsed = array(r, &limits).filter(|&(k, _)| k == 2).and_then(|_| {
                let mut el = codec::elements(r, &limits);
                let cursor = elements_bulk(el.next()?.bytes)?;
                Some((cursor, el.next()?.bytes))
            });
            let Some((node_cursor, keys)) = parsed else {
                into.extend_from_slice(r);
                return;
            };
            let next = if node_cursor == 0 {
                if position + 1 < *primaries {
                    Some((position + 1) as u64)
                } else {
                    Some(0)
                }
            } else {
                node_cursor
                    .checked_mul(SCAN_NODES)
                    .map(|c| c + *position as u64)
            };
            let Some(next) = next else {
                into.extend_from_slice(b"-ERR a node's SCAN cursor is too large to carry\r\n");
                return;
            };
            let c = next.to_string();
            into.extend_from_slice(format!("*2\r\n${}\r\n{c}\r\n", c.len()).as_bytes());
            into.extend_from_slice(keys);
        }
    }
}

/// The number in a bulk string reply (`SCAN`'s cursor).
fn elements_bulk(f: &[u8]) -> Option<u64> {
    if f.first() != Some(&b'$') {
        return None;
    }
    let nl = memchr::memchr(b'\n', f)?;
    std::str::from_utf8(f.get(nl + 1..f.len().saturating_sub(2))?)
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    //! Error paths against a fake node (a real cluster cannot be made to redirect forever).

    use std::sync::Arc;
    use std::time::Duration;

    use bytes::{Bytes, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::super::{Cluster, NoMetrics};
    use crate::codec::{self, Limits, Request};
    use crate::config::{Config, Overrides};
    use crate::upstream::{Job, SharedReply};

    /// A node that serves every slot itself in `CLUSTER SHARDS` and answers every other
    /// command with `reply` (`{port}` replaced by its own port).
    async fn fake_node(reply: &'static str) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = BytesMut::new();
                    let (mut spans, mut inline) = (Vec::new(), Vec::new());
                    loop {
                        if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut out = Vec::new();
                        while let Ok(Some(Request::Multibulk { len })) =
                            codec::scan_request(&buf, &Limits::default(), &mut spans, &mut inline)
                        {
                            let cmd = buf.split_to(len);
                            let shards = b"SHARDS";
                            if cmd.windows(shards.len()).any(|w| w == shards) {
                                out.extend_from_slice(format!(
                                    "*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n$5\r\nnodes\r\n*1\r\n\
                                     *6\r\n$4\r\nport\r\n:{port}\r\n$8\r\nendpoint\r\n$9\r\n127.0.0.1\r\n\
                                     $4\r\nrole\r\n$6\r\nmaster\r\n"
                                ).as_bytes());
                            } else if cmd.ends_with(b"ASKING\r\n") {
                                out.extend_from_slice(b"+OK\r\n");
                            } else {
                                out.extend_from_slice(
                                    reply.replace("{port}", &port.to_string()).as_bytes(),
                                );
                            }
                        }
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    async fn cluster_on(port: u16, extra: &str) -> Cluster {
        let yaml = format!("upstream:\n  url: redis://127.0.0.1:{port}\n  cluster:\n{extra}");
        let cfg = Config::parse(&yaml, "t.yaml", &Overrides::default()).expect("config");
        let cc = cfg.upstream.cluster.clone().expect("cluster");
        let c = Cluster::start(
            cc,
            cfg.upstream.clone(),
            cfg.limits,
            1 << 20,
            Arc::new(NoMetrics),
        );
        for _ in 0..200 {
            if c.ready().is_ok() {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fake topology never read: {:?}", c.ready());
    }

    async fn ask(c: &Cluster, cmd: &[u8]) -> Bytes {
        let jobs = c.client();
        let (to, mut rx) = mpsc::unbounded_channel();
        jobs.send(Job {
            bytes: Bytes::copy_from_slice(cmd),
            replies: 1,
            to,
            queued: Arc::default(),
        })
        .expect("router running");
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(SharedReply::Frames(b))) => b,
            other => panic!("no reply: {other:?}"),
        }
    }

    #[tokio::test]
    async fn endless_moved_ends_in_an_error_naming_max_redirects_not_a_leaked_moved() {
        let port = fake_node("-MOVED 3999 127.0.0.1:{port}\r\n").await;
        let c = cluster_on(port, "    max_redirects: 2\n").await;
        let got = ask(&c, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").await;
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("-ERR ") && text.contains("more than 2 times"),
            "{text}"
        );
        assert!(!text.contains("MOVED"), "{text}");
    }

    #[tokio::test]
    async fn endless_ask_is_followed_with_asking_then_bounded() {
        let port = fake_node("-ASK 3999 127.0.0.1:{port}\r\n").await;
        let c = cluster_on(port, "    max_redirects: 3\n").await;
        let got = ask(&c, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").await;
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.contains("more than 3 times") && !text.contains("ASK "),
            "{text}"
        );
    }

    #[tokio::test]
    async fn clusterdown_is_retried_until_retry_timeout_then_passed_on() {
        let port = fake_node("-CLUSTERDOWN The cluster is down\r\n").await;
        let c = cluster_on(port, "    retry_timeout: 300ms\n").await;
        let started = std::time::Instant::now();
        let got = ask(&c, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").await;
        assert_eq!(&got[..], b"-CLUSTERDOWN The cluster is down\r\n");
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
    }
}

#[cfg(test)]
mod merge_tests {
    //! Merging node replies, including replies that do not hold what their header says.

    use super::*;

    fn reqs(replies: &[&[u8]]) -> Vec<Req> {
        replies
            .iter()
            .map(|r| {
                let mut q = Req::new(Bytes::new(), Target::Any);
                q.reply = Some(Bytes::copy_from_slice(r));
                q
            })
            .collect()
    }

    fn merged(out: Out, replies: &[&[u8]]) -> Vec<u8> {
        let mut b = BytesMut::new();
        merge(&out, &reqs(replies), &mut b);
        b.to_vec()
    }

    #[test]
    fn arrays_are_concatenated_and_keys_put_back_in_the_clients_order() {
        assert_eq!(
            merged(
                Out::Merge(Merge::Concat),
                &[b"*2\r\n$1\r\na\r\n$1\r\nb\r\n", b"*0\r\n", b"*1\r\n:1\r\n"]
            ),
            b"*3\r\n$1\r\na\r\n$1\r\nb\r\n:1\r\n"
        );
        assert_eq!(
            merged(
                Out::Keys(vec![vec![0, 2], vec![1]], 3),
                &[b"*2\r\n$1\r\na\r\n$-1\r\n", b"*1\r\n$1\r\nb\r\n"]
            ),
            b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n"
        );
        assert_eq!(
            merged(Out::Merge(Merge::Sum), &[b":2\r\n", b":40\r\n"]),
            b":42\r\n"
        );
        assert_eq!(
            merged(Out::Merge(Merge::Sum), &[b":2\r\n", b"-ERR x\r\n"]),
            b"-ERR x\r\n"
        );
    }

    #[test]
    fn an_array_that_does_not_hold_what_its_header_says_is_an_error_not_a_wrong_reply() {
        for bad in [
            &b"*3\r\n$1\r\na\r\n$1\r\nb\r\n"[..],
            b"*1\r\n$1\r\na\r\n$1\r\nb\r\n",
            b"*x\r\n",
            b"+OK\r\n",
        ] {
            assert_eq!(
                merged(Out::Merge(Merge::Concat), &[b"*0\r\n", bad]),
                NOT_ARRAY,
                "{bad:?}"
            );
            assert_eq!(merged(Out::Keys(vec![vec![0, 1]], 2), &[bad]), NOT_ARRAY);
        }
    }
}
