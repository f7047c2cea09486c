//! Deeply nested replies: what Redis returns passes through at any depth, byte for byte, and
//! an operator's `limits.max_depth` fails only the client whose reply is too deep, never the
//! upstream connection other clients share.

#[macro_use]
mod common;

use std::time::Duration;

use common::{bulk, raw_proxy, show, RedisServer};

const SHARED: &str = "upstream:\n  shared_connections: 1\n";

/// A script that keeps Redis busy for ~300 ms: a command in flight on the shared connection.
const BUSY: &[u8] = b"local s = redis.call('TIME') local t0 = s[1] * 1000000 + s[2] \
while true do local t = redis.call('TIME') if t[1] * 1000000 + t[2] - t0 > 300000 then break end end \
return 'done'";

fn nested(depth: usize) -> Vec<u8> {
    format!("local t = 1 for i = 1, {depth} do t = {{t}} end return t").into_bytes()
}

/// Redis's own test of a table that contains itself: nested arrays ending in an error.
const RECURSIVE: &[u8] = b"local a = {} local b = {a} a[1] = b return a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_script_replies_pass_at_any_depth() {
    let redis = RedisServer::start();
    let proxy = common::proxy(SHARED, &redis.url()).await;
    let mut direct = redis.raw().await;
    let mut bystander = raw_proxy(&proxy).await;
    let mut c = raw_proxy(&proxy).await;
    for script in [
        nested(200),
        nested(1000),
        nested(20_000),
        RECURSIVE.to_vec(),
    ] {
        let want = direct.ask(&[b"EVAL", &script, b"0"]).await;
        bystander
            .send(&common::encode_many(&[
                &[b"EVAL", BUSY, b"0"],
                &[b"INCR", b"bystander:n"],
            ]))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = c.ask(&[b"EVAL", &script, b"0"]).await;
        assert_resp!(got, want, "{}", show(&script));
        assert_resp!(bystander.reply().await, bulk(b"done"));
        assert!(bystander.reply().await.starts_with(b":"));
    }
    assert!(direct.ask(&[b"EVAL", &nested(200), b"0"]).await.len() > 800);
    assert_resp!(c.ask(&[b"PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_depth_limit_fails_only_the_client_that_asked() {
    let redis = RedisServer::start();
    let proxy = common::proxy(&format!("{SHARED}limits:\n  max_depth: 8\n"), &redis.url()).await;
    let mut bystander = raw_proxy(&proxy).await;
    assert_resp!(bystander.ask(&[b"PING"]).await, b"+PONG\r\n");
    bystander
        .send(&common::encode_many(&[
            &[b"EVAL", BUSY, b"0"],
            &[b"INCR", b"bystander:n"],
        ]))
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut deep = raw_proxy(&proxy).await;
    deep.cmd(&[b"EVAL", &nested(200), b"0"]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Pipelined behind it on the same shared connection: its replies are lost with the
    // client, but nobody else's.
    bystander
        .send(&common::encode_many(&[&[b"INCR", b"bystander:n"]]))
        .await;
    let err = deep.reply().await;
    assert!(
        err.starts_with(b"-ERR upstream sent an invalid reply: Protocol error: reply nested deeper than 8 levels"),
        "{}",
        show(&err)
    );
    assert!(deep.closed_within(Duration::from_secs(2)).await);
    assert_resp!(bystander.reply().await, bulk(b"done"));
    assert_resp!(bystander.reply().await, b":1\r\n");
    assert_resp!(bystander.reply().await, b":2\r\n");
    assert_resp!(bystander.ask(&[b"PING"]).await, b"+PONG\r\n");
}
