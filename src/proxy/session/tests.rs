//! The session's state machine on canned bytes, without sockets: what a client sends goes
//! in as bytes, what Redis answers goes in as bytes, and the bytes for Redis and for the
//! client are compared exactly.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::Session;
use crate::config::{Config, Overrides};
use crate::proxy::shared::Shared;
use crate::upstream::{Handle, Job, Link, SharedReply};

const NO_POLICY: &str = "";

const TTL_POLICY: &str = r#"
policy:
  denied_commands: [KEYS]
  namespaces:
    session:
      keys: ["session:{id}"]
      ttl: { default: 30m, min: 15m, max: 30m }
"#;

fn session(policy: &str, link: Link) -> Session {
    let yaml = format!("listen: 127.0.0.1:0\nupstream:\n  url: redis://127.0.0.1:1\n{policy}");
    let cfg = match Config::parse(&yaml, "t.yaml", &Overrides::default()) {
        Ok(c) => c,
        Err(e) => panic!("test config refused: {e:?}"),
    };
    Session::new(Arc::new(Shared::new(cfg)), link)
}

/// A session whose link has no connection yet: what it sends stays in its upstream buffer.
fn unconnected(policy: &str) -> Session {
    session(policy, Link::Down { retry: true })
}

/// The client sends `bytes` (one read).
fn client(s: &mut Session, bytes: &[u8]) {
    s.cbuf.extend_from_slice(bytes);
    s.on_client_input();
}

/// Redis answers with `bytes` on the session's own connection.
fn redis(s: &mut Session, bytes: &[u8]) {
    s.ubuf.extend_from_slice(bytes);
    if let Err(e) = s.process_upstream() {
        panic!("upstream bytes refused: {e}");
    }
}

/// What the session has for Redis, taken.
fn to_redis(s: &mut Session) -> Vec<u8> {
    s.unsent = 0;
    s.uout.split().to_vec()
}

/// What the session has for the client, taken.
fn to_client(s: &mut Session) -> Vec<u8> {
    s.cout.split().to_vec()
}

fn cmd(args: &[&str]) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    crate::codec::encode_command(&mut b, args.iter().map(|a| a.as_bytes()));
    b.to_vec()
}

fn cmds(list: &[&[&str]]) -> Vec<u8> {
    list.iter().flat_map(|c| cmd(c)).collect()
}

#[test]
fn pushes_between_replies_answer_no_command() {
    let mut s = unconnected(NO_POLICY);
    client(&mut s, &cmds(&[&["GET", "a"], &["GET", "b"]]));
    assert_eq!(to_redis(&mut s), cmds(&[&["GET", "a"], &["GET", "b"]]));
    // An invalidation push before the first reply, a pub/sub message push between the two,
    // all in one read.
    let upstream: &[u8] = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\na\r\n\
        $1\r\n1\r\n\
        >3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n\
        $-1\r\n";
    redis(&mut s, upstream);
    assert_eq!(to_client(&mut s), upstream);
    assert!(s.pending.is_empty());
    assert!(!s.abort);
    // The next reply pairs with the next command.
    client(&mut s, &cmd(&["GET", "c"]));
    assert_eq!(to_redis(&mut s), cmd(&["GET", "c"]));
    redis(&mut s, b"$1\r\n3\r\n");
    assert_eq!(to_client(&mut s), b"$1\r\n3\r\n");
}

#[test]
fn a_reply_nobody_asked_for_closes_the_client() {
    let mut s = unconnected(NO_POLICY);
    client(&mut s, &cmd(&["GET", "a"]));
    redis(&mut s, b"$-1\r\n$-1\r\n");
    assert_eq!(to_client(&mut s), b"$-1\r\n");
    assert!(s.abort);
}

#[test]
fn exec_hides_the_replies_of_appended_expires() {
    let mut s = unconnected(TTL_POLICY);
    client(
        &mut s,
        &cmds(&[
            &["MULTI"],
            &["HSET", "session:1", "f", "v"],
            &["GET", "session:1"],
            &["EXEC"],
        ]),
    );
    assert_eq!(
        to_redis(&mut s),
        cmds(&[
            &["MULTI"],
            &["HSET", "session:1", "f", "v"],
            &["EXPIRE", "session:1", "1800", "NX"],
            &["GET", "session:1"],
            &["EXEC"],
        ])
    );
    redis(
        &mut s,
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n:1\r\n:1\r\n$-1\r\n",
    );
    assert_eq!(
        to_client(&mut s),
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n$-1\r\n"
    );
    assert!(s.pending.is_empty());
    assert!(s.multi.is_none());
}

#[test]
fn exec_after_a_refused_command_gets_redis_execabort() {
    let mut s = unconnected(TTL_POLICY);
    client(
        &mut s,
        &cmds(&[&["MULTI"], &["KEYS", "*"], &["GET", "session:1"], &["EXEC"]]),
    );
    // The refused command is replaced by one Redis refuses while queueing, so that Redis
    // itself aborts the transaction at EXEC.
    assert_eq!(
        to_redis(&mut s),
        cmds(&[&["MULTI"], &["GET"], &["GET", "session:1"], &["EXEC"]])
    );
    let out = to_client(&mut s);
    assert_eq!(out, b"");
    redis(
        &mut s,
        b"+OK\r\n-ERR wrong number of arguments for 'get' command\r\n+QUEUED\r\n\
          -EXECABORT Transaction discarded because of previous errors.\r\n",
    );
    let mut expected = b"+OK\r\n".to_vec();
    expected.extend_from_slice(REFUSED_KEYS);
    expected.extend_from_slice(
        b"+QUEUED\r\n-EXECABORT Transaction discarded because of previous errors.\r\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&to_client(&mut s)),
        String::from_utf8_lossy(&expected)
    );
    assert!(s.pending.is_empty());
}

/// The policy's refusal of a denied command.
const REFUSED_KEYS: &[u8] = b"-POLICY KEYS is disabled here: use SCAN\r\n";

#[test]
fn client_reply_off_and_skip_drop_replies_here() {
    let mut s = unconnected(NO_POLICY);
    client(
        &mut s,
        &cmds(&[
            &["CLIENT", "REPLY", "SKIP"],
            &["GET", "a"],
            &["GET", "b"],
            &["CLIENT", "REPLY", "OFF"],
            &["GET", "c"],
            &["CLIENT", "REPLY", "SKIP"],
            &["GET", "d"],
            &["CLIENT", "REPLY", "ON"],
            &["GET", "e"],
        ]),
    );
    // CLIENT REPLY is applied by the proxy, never sent.
    assert_eq!(
        to_redis(&mut s),
        cmds(&[
            &["GET", "a"],
            &["GET", "b"],
            &["GET", "c"],
            &["GET", "d"],
            &["GET", "e"]
        ])
    );
    redis(
        &mut s,
        b"$1\r\nA\r\n$1\r\nB\r\n$1\r\nC\r\n$1\r\nD\r\n$1\r\nE\r\n",
    );
    assert_eq!(to_client(&mut s), b"$1\r\nB\r\n+OK\r\n$1\r\nE\r\n");
    assert!(s.pending.is_empty());
}

#[test]
fn an_empty_command_uses_up_a_skip() {
    let mut s = unconnected(NO_POLICY);
    client(&mut s, &cmd(&["CLIENT", "REPLY", "SKIP"]));
    client(&mut s, b"\r\n");
    client(&mut s, &cmd(&["GET", "a"]));
    redis(&mut s, b"$1\r\nA\r\n");
    assert_eq!(to_client(&mut s), b"$1\r\nA\r\n");
}

#[test]
fn a_stateful_command_pins_after_the_shared_replies() {
    let (jobs, mut shared_conn) = mpsc::unbounded_channel::<Job>();
    let mut s = session(NO_POLICY, Link::Shared(Handle::new(jobs)));
    client(
        &mut s,
        &cmds(&[&["GET", "a"], &["SELECT", "1"], &["GET", "b"]]),
    );
    // GET a goes to the shared connection; SELECT waits for its reply.
    assert!(s.hand_over());
    let job = match shared_conn.try_recv() {
        Ok(j) => j,
        Err(e) => panic!("no job for the shared connection: {e}"),
    };
    assert_eq!(&job.bytes[..], &cmd(&["GET", "a"])[..]);
    assert_eq!(job.replies, 1);
    assert!(s.link.is_pinning());
    assert!(!s.finish_pinning());
    assert_eq!(s.uout.len(), 0);
    // The shared connection delivers the reply (and counts it, as the pool does).
    let reply = Bytes::from_static(b"$1\r\nA\r\n");
    job.queued
        .fetch_add(reply.len(), std::sync::atomic::Ordering::AcqRel);
    s.on_delivery(Some(SharedReply::Frames(reply)));
    assert_eq!(to_client(&mut s), b"$1\r\nA\r\n");
    // Now the held commands go to a dedicated connection, which the driver connects.
    assert!(s.finish_pinning());
    assert!(matches!(s.link, Link::Down { retry: true }));
    assert!(!s.hand_over());
    assert_eq!(to_redis(&mut s), cmds(&[&["SELECT", "1"], &["GET", "b"]]));
    assert!(shared_conn.try_recv().is_err());
    redis(&mut s, b"+OK\r\n$-1\r\n");
    assert_eq!(to_client(&mut s), b"+OK\r\n$-1\r\n");
    assert!(s.pending.is_empty());
}

#[test]
fn quit_on_a_shared_connection_is_answered_here() {
    let (jobs, mut shared_conn) = mpsc::unbounded_channel::<Job>();
    let mut s = session(NO_POLICY, Link::Shared(Handle::new(jobs)));
    client(&mut s, &cmds(&[&["QUIT"], &["GET", "a"]]));
    assert!(s.hand_over());
    assert!(shared_conn.try_recv().is_err());
    assert_eq!(to_client(&mut s), b"+OK\r\n");
    assert!(s.closing);
    assert!(s.link.is_shared());
}

#[test]
fn subscribe_run_by_exec_turns_pubsub_on() {
    let mut s = unconnected(NO_POLICY);
    client(
        &mut s,
        &cmds(&[&["MULTI"], &["SUBSCRIBE", "ch"], &["EXEC"]]),
    );
    assert_eq!(
        to_redis(&mut s),
        cmds(&[&["MULTI"], &["SUBSCRIBE", "ch"], &["EXEC"]])
    );
    let exec: &[u8] = b"+OK\r\n+QUEUED\r\n*1\r\n*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
    redis(&mut s, exec);
    assert_eq!(to_client(&mut s), exec);
    assert_eq!(s.subs, 1);
    // A message now answers no command: it passes, and nothing is owed.
    let message: &[u8] = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n";
    redis(&mut s, message);
    assert_eq!(to_client(&mut s), message);
    assert!(s.pending.is_empty());
    assert!(!s.abort);
}
