//! `CLIENT REPLY OFF|SKIP|ON` applies to every reply the client would get, including the ones
//! respguard makes itself (policy refusals, the answer to an all-sensitive `HSET`, refused
//! `SYNC`): each sequence is replayed against Redis directly, with the refused commands
//! replaced by commands Redis answers the same way, and the replies compared byte for byte.
//! A transaction aborted by a refusal ends with the client's own `EXEC`, which Redis answers
//! with `EXECABORT`, as `MONITOR` shows.

#[macro_use]
mod common;

use std::time::Duration;

use common::{encode_many, raw_proxy, show, Raw, RedisServer};

const POLICY: &str = r#"
policy:
  unknown_keys: reject
  sensitive:
    fields: [password]
    action: strip
  namespaces:
    session:
      keys: ["session:{id}"]
"#;

/// One command as sent through the proxy and its stand-in sent to Redis directly.
type Step = (&'static [&'static [u8]], &'static [&'static [u8]]);

/// The same command both ways.
macro_rules! same {
    ($($a:expr),+) => {
        (&[$($a as &[u8]),+], &[$($a as &[u8]),+])
    };
}

/// Refused by the policy (an unknown key); directly, an arity error stands in for it.
const REFUSED: Step = (&[b"GET", b"nokey"], &[b"GET"]);
/// Answered `:0` by the proxy (every field sensitive); directly, a field that already exists.
const LOCAL_ZERO: Step = (
    &[b"HSET", b"session:h", b"password", b"x"],
    &[b"HSET", b"known", b"f", b"v"],
);
/// Refused by the proxy as not supported; directly, an arity error stands in for it.
const SYNC: Step = (&[b"SYNC"], &[b"GET"]);

/// Sends the steps in one write, then `ECHO end`, and returns every reply up to it. Error
/// texts are reduced to their first word's kind, as the stand-ins' texts differ.
async fn replies(c: &mut Raw, steps: &[&[&[u8]]]) -> Vec<String> {
    let mut cmds: Vec<&[&[u8]]> = steps.to_vec();
    cmds.push(&[b"ECHO", b"end"]);
    c.send(&encode_many(&cmds)).await;
    let mut out = Vec::new();
    loop {
        let r = c
            .read_timeout(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("no reply after {:?}", out));
        if r == b"$3\r\nend\r\n" {
            return out;
        }
        let text = if r.starts_with(b"-POLICY") || r.starts_with(b"-ERR") {
            "<error>".to_string()
        } else {
            show(&r)
        };
        out.push(text);
    }
}

async fn compare(redis: &RedisServer, proxy: &respguard::Proxy, steps: &[Step]) {
    let mut c = raw_proxy(proxy).await;
    let mut d = redis.raw().await;
    let through: Vec<&[&[u8]]> = steps.iter().map(|s| s.0).collect();
    let direct: Vec<&[&[u8]]> = steps.iter().map(|s| s.1).collect();
    let got = replies(&mut c, &through).await;
    let want = replies(&mut d, &direct).await;
    assert_eq!(got, want, "replies through the proxy differ from Redis's");
    // Both connections are still paired.
    assert_resp!(c.ask(&[b"PING", b"after"]).await, b"$5\r\nafter\r\n");
}

async fn setup() -> (RedisServer, respguard::Proxy) {
    let redis = RedisServer::start();
    let proxy = common::proxy(POLICY, &redis.url()).await;
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"HSET", b"known", b"f", b"v"]).await, b":1\r\n");
    (redis, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_suppresses_a_reply_the_proxy_makes() {
    let (redis, proxy) = setup().await;
    compare(
        &redis,
        &proxy,
        &[
            same!(b"CLIENT", b"REPLY", b"SKIP"),
            LOCAL_ZERO,
            same!(b"PING", b"b"),
            same!(b"PING", b"c"),
        ],
    )
    .await;
    compare(
        &redis,
        &proxy,
        &[
            same!(b"CLIENT", b"REPLY", b"SKIP"),
            REFUSED,
            same!(b"PING", b"b"),
            same!(b"PING", b"c"),
        ],
    )
    .await;
    compare(
        &redis,
        &proxy,
        &[
            same!(b"CLIENT", b"REPLY", b"SKIP"),
            SYNC,
            same!(b"PING", b"b"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_on_and_skip_mixed_with_local_replies_stay_paired() {
    let (redis, proxy) = setup().await;
    compare(
        &redis,
        &proxy,
        &[
            same!(b"CLIENT", b"REPLY", b"OFF"),
            REFUSED,
            LOCAL_ZERO,
            same!(b"PING", b"a"),
            same!(b"GET"),
            same!(b"CLIENT", b"REPLY", b"SKIP"),
            same!(b"CLIENT", b"REPLY", b"ON"),
            same!(b"PING", b"b"),
            REFUSED,
            LOCAL_ZERO,
            same!(b"CLIENT", b"REPLY", b"SKIP"),
            REFUSED,
            same!(b"PING", b"c"),
            same!(b"CLIENT", b"REPLY", b"SKIP"),
            same!(b"CLIENT", b"REPLY", b"SKIP"),
            LOCAL_ZERO,
            same!(b"PING", b"d"),
            same!(b"CLIENT", b"REPLY", b"SKIP"),
            same!(b"SET", b"session:1", b"v"),
            same!(b"CLIENT", b"REPLY", b"SKIP"),
            same!(b"MULTI"),
            same!(b"SET", b"session:1", b"w"),
            REFUSED,
            same!(b"EXEC"),
            same!(b"CLIENT", b"REPLY", b"OFF"),
            same!(b"MULTI"),
            same!(b"GET", b"session:1"),
            same!(b"EXEC"),
            same!(b"CLIENT", b"REPLY", b"ON"),
            same!(b"GET", b"session:1"),
            same!(b"CLIENT", b"REPLY", b"FOO"),
            same!(b"CLIENT", b"REPLY", b"SKIP"),
            same!(b"CLIENT", b"REPLY", b"FOO"),
            same!(b"PING", b"e"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_command_uses_up_a_skip() {
    let (redis, proxy) = setup().await;
    for target in [proxy.local_addr, redis.addr()] {
        let mut c = Raw::connect(target).await;
        c.send(b"CLIENT REPLY SKIP\r\n\r\nPING a\r\n").await;
        assert_resp!(c.reply().await, b"$1\r\na\r\n", "at {target}");
    }
}

/// What a MONITOR connection to Redis shows until `marker` is sent.
async fn monitor_until(mon: &mut Raw, marker: &str) -> String {
    let mut seen = String::new();
    loop {
        let line = mon.read().await;
        let text = String::from_utf8_lossy(&line).into_owned();
        if text.contains(marker) {
            return seen;
        }
        seen.push_str(&text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_inside_multi_aborts_at_the_clients_own_exec() {
    let (redis, proxy) = setup().await;
    let mut mon = redis.raw().await;
    assert_resp!(mon.ask(&[b"MONITOR"]).await, b"+OK\r\n");
    let mut c = raw_proxy(&proxy).await;
    assert_resp!(c.ask(&[b"MULTI"]).await, b"+OK\r\n");
    assert_resp!(c.ask(&[b"SET", b"session:tx", b"v"]).await, b"+QUEUED\r\n");
    let refused = c.ask(&[b"GET", b"nokey"]).await;
    assert!(refused.starts_with(b"-POLICY"), "{}", show(&refused));
    assert_resp!(
        c.ask(&[b"EXEC"]).await,
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_resp!(c.ask(&[b"ECHO", b"marker-1"]).await, b"$8\r\nmarker-1\r\n");
    let seen = monitor_until(&mut mon, "marker-1").await;
    assert!(seen.contains("\"EXEC\""), "MONITOR showed: {seen}");
    assert!(!seen.contains("DISCARD"), "MONITOR showed: {seen}");
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"EXISTS", b"session:tx"]).await, b":0\r\n");
    // DISCARD after a refusal is the client's own, answered by Redis.
    assert_resp!(c.ask(&[b"MULTI"]).await, b"+OK\r\n");
    let refused = c.ask(&[b"SYNC"]).await;
    assert!(
        refused.starts_with(b"-ERR replication"),
        "{}",
        show(&refused)
    );
    assert_resp!(c.ask(&[b"DISCARD"]).await, b"+OK\r\n");
    assert_resp!(c.ask(&[b"PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reply_inside_multi_is_refused_and_aborts() {
    let (_redis, proxy) = setup().await;
    let mut c = raw_proxy(&proxy).await;
    assert_resp!(c.ask(&[b"MULTI"]).await, b"+OK\r\n");
    assert_resp!(
        c.ask(&[b"CLIENT", b"REPLY", b"OFF"]).await,
        b"-ERR CLIENT REPLY inside MULTI is not supported through respguard\r\n"
    );
    assert_resp!(
        c.ask(&[b"EXEC"]).await,
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_resp!(c.ask(&[b"PING"]).await, b"+PONG\r\n");
}
