//! Malformed and unusual request framing: respguard reads every length and line exactly as
//! Redis does. Input Redis refuses gets Redis's own error, byte for byte, and closes only the
//! client that sent it (never the upstream connection other clients share); odd input Redis
//! accepts is framed identically and answered as Redis answers it.

#[macro_use]
mod common;

use std::time::Duration;

use common::{bulk, raw_proxy, show, Raw, RedisServer};

/// One shared upstream connection, so every stateless client rides the same one.
const SHARED: &str = "upstream:\n  shared_connections: 1\n";

/// A script that keeps Redis busy for ~300 ms: a command in flight on the shared connection.
const BUSY: &[u8] = b"local s = redis.call('TIME') local t0 = s[1] * 1000000 + s[2] \
while true do local t = redis.call('TIME') if t[1] * 1000000 + t[2] - t0 > 300000 then break end end \
return 'done'";

/// What a connection got for `input`: every byte until it went quiet or closed, and whether
/// it closed.
async fn answer(c: &mut Raw, input: &[u8]) -> (Vec<u8>, bool) {
    c.send(input).await;
    let mut got = Vec::new();
    // The first reply may wait behind another client's slow command; later ones do not.
    let mut wait = Duration::from_secs(2);
    while let Some(frame) = c.read_timeout(wait).await {
        got.extend_from_slice(&frame);
        wait = Duration::from_millis(300);
    }
    let closed = c.closed_within(Duration::from_millis(200)).await;
    (got, closed)
}

/// Sends `input` to Redis directly and through respguard while another client has commands
/// in flight on the shared upstream connection; the replies must be identical and the other
/// client must get all of its replies and keep its connection.
async fn same_as_redis(redis: &RedisServer, proxy: &respguard::Proxy, input: &[u8]) {
    let mut direct = redis.raw().await;
    let want = answer(&mut direct, input).await;

    let mut bystander = raw_proxy(proxy).await;
    assert_resp!(bystander.ask(&[b"PING"]).await, b"+PONG\r\n");
    bystander
        .send(&common::encode_many(&[
            &[b"EVAL", BUSY, b"0"],
            &[b"INCR", b"bystander:n"],
        ]))
        .await;
    // Let the script start, so the offender's bytes would queue behind it upstream.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut offender = raw_proxy(proxy).await;
    let got = answer(&mut offender, input).await;
    assert_resp!(got.0, want.0, "reply to {}", show(input));
    assert_eq!(got.1, want.1, "closed after {}?", show(input));

    assert_resp!(
        bystander.reply().await,
        bulk(b"done"),
        "after {}",
        show(input)
    );
    let n = bystander.reply().await;
    assert!(
        n.starts_with(b":"),
        "INCR after {}: {}",
        show(input),
        show(&n)
    );
    assert_resp!(bystander.ask(&[b"PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lengths_redis_refuses_get_its_error_and_close_only_the_sender() {
    let redis = RedisServer::start();
    let proxy = common::proxy(SHARED, &redis.url()).await;
    let mut cases: Vec<Vec<u8>> = [
        &b"*+1\r\n$4\r\nPING\r\n"[..],
        b"*01\r\n$4\r\nPING\r\n",
        b"*-0\r\n$4\r\nPING\r\n",
        b"* 1\r\n$4\r\nPING\r\n",
        b"*1 \r\n$4\r\nPING\r\n",
        b"*2147483648\r\n",
        b"*99999999999999999999\r\n",
        b"*1\r\n$04\r\nPING\r\n",
        b"*1\r\n$+4\r\nPING\r\n",
        b"*1\r\n$-0\r\nPING\r\n",
        b"*1\r\n$-1\r\n",
        b"*1\r\n$\r\n",
        b"*1\r\n$536870913\r\n",
        b"*1\r\nx4\r\nPING\r\n",
        b"*1\r\n\xff4\r\nPING\r\n",
        b"*1\r\n\r4\r\nPING\r\n",
        b"*2\r\n$4\r\nECHO\r\n:4\r\nPING\r\n",
        b"PING \"a\"b\r\n",
        b"PING 'a\r\n",
    ]
    .iter()
    .map(|c| c.to_vec())
    .collect();
    // Lines with no end within Redis's inline limit (64 KB).
    let mut long = b"*1".to_vec();
    long.resize(70_000, b'1');
    cases.push(long);
    let mut long = b"*1\r\n$4".to_vec();
    long.resize(70_000, b'4');
    cases.push(long);
    let mut long = b"PING ".to_vec();
    long.resize(70_000, b'x');
    cases.push(long);
    for input in &cases {
        same_as_redis(&redis, &proxy, input).await;
    }
    // Spot-check the texts, so the comparison is not trusted blindly.
    let mut c = raw_proxy(&proxy).await;
    assert_resp!(
        answer(&mut c, b"*+1\r\n$4\r\nPING\r\n").await.0,
        b"-ERR Protocol error: invalid multibulk length\r\n"
    );
    let mut c = raw_proxy(&proxy).await;
    assert_resp!(
        answer(&mut c, b"*1\r\n$-0\r\n").await.0,
        b"-ERR Protocol error: invalid bulk length\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_redis_accepts_is_framed_the_same_way() {
    let redis = RedisServer::start();
    let proxy = common::proxy(SHARED, &redis.url()).await;
    for input in [
        // Redis takes any byte after a header's CR as the LF, and skips two bytes after
        // bulk data without looking at them.
        &b"*1\rX$4\r\nPING\r\n"[..],
        b"*1\r\n$4\rXPINGxy*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n",
        b"*2\r\n$4\r\nECHO\r\n$3\r\nabc--*1\r\n$4\r\nPING\r\n",
        // Counts Redis skips.
        b"*0\r\n*-5\r\nPING\r\n",
        // Inline lines: CR ends an unquoted argument, an empty line is skipped.
        b"PING\rPING\n",
        b"\r\n\n  \r\nECHO \"a\\x41\\n\"\r\n",
    ] {
        same_as_redis(&redis, &proxy, input).await;
    }
    // The same odd header on a command the policy extends (a default TTL appended to SET):
    // the appended arguments follow the header Redis sees, not a guessed line end.
    let policy = "policy:\n  unknown_keys: allow\n  namespaces:\n    session:\n      keys: [\"session:{id}\"]\n      ttl: { default: 30m, min: 1m, max: 1h }\n";
    let proxy = common::proxy(&format!("{SHARED}{policy}"), &redis.url()).await;
    let mut c = raw_proxy(&proxy).await;
    c.send(b"*3\rX$3\r\nSET\r\n$9\r\nsession:1\r\n$1\r\nv\r\n")
        .await;
    assert_resp!(c.reply().await, b"+OK\r\n");
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"TTL", b"session:1"]).await, b":1800\r\n");
    assert_resp!(c.ask(&[b"GET", b"session:1"]).await, bulk(b"v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_hides_the_line_end_as_in_redis() {
    let redis = RedisServer::start();
    let proxy = common::proxy(SHARED, &redis.url()).await;
    // Redis finds line ends with strchr: after a NUL it waits for more, answering nothing.
    for input in [
        &b"PING\0\r\n"[..],
        b"*1\0\r\n$4\r\nPING\r\n",
        b"*1\r\n$4\0\r\nPING\r\n",
    ] {
        let mut direct = redis.raw().await;
        direct.send(input).await;
        assert_eq!(direct.read_timeout(Duration::from_millis(300)).await, None);
        let mut c = raw_proxy(&proxy).await;
        c.send(input).await;
        assert_eq!(
            c.read_timeout(Duration::from_millis(300)).await,
            None,
            "{}",
            show(input)
        );
        // ... until the line is too long, like any line.
        let filler = vec![b'x'; 70_000];
        let want = answer(&mut direct, &filler).await;
        let got = answer(&mut c, &filler).await;
        assert_resp!(got.0, want.0, "after {}", show(input));
        assert_eq!(got.1, want.1);
    }
}
