//! Proxy core, out-of-band frames: pub/sub (`SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE`)
//! in RESP2 subscribe mode and as RESP3 pushes, messages from other clients, `PING` inside
//! subscribe mode, leaving it with the `UNSUBSCRIBE` family and pairing replies correctly
//! afterwards, and client-side caching (`CLIENT TRACKING`) invalidations in RESP3 and through
//! a RESP2 `REDIRECT` subscriber. Wherever the exact frames depend on Redis, the same script
//! is run straight against Redis and the bytes compared.

#[macro_use]
mod common;

use std::time::Duration;

use common::{bulk, bulk_array, bulk_push, encode_many, raw_proxy, show, Raw, RedisServer};

/// A RESP2 subscribe confirmation or similar `[kind, channel, count]` frame.
fn confirm(kind: &[u8], channel: &[u8], count: i64) -> Vec<u8> {
    let mut v = b"*3\r\n".to_vec();
    v.extend_from_slice(&bulk(kind));
    v.extend_from_slice(&bulk(channel));
    v.extend_from_slice(format!(":{count}\r\n").as_bytes());
    v
}

/// The RESP3 push form of [`confirm`].
fn confirm_push(kind: &[u8], channel: &[u8], count: i64) -> Vec<u8> {
    let mut v = confirm(kind, channel, count);
    v[0] = b'>';
    v
}

async fn hello3(c: &mut Raw) {
    let hello = c.ask(&[b"HELLO", b"3"]).await;
    assert!(hello.starts_with(b"%7\r\n"), "{}", show(&hello));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_subscribe_publish_ping_unsubscribe() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    let mut b = raw_proxy(&proxy).await;
    a.cmd(&[b"SUBSCRIBE", b"ch1", b"ch2"]).await;
    assert_resp!(a.reply().await, confirm(b"subscribe", b"ch1", 1));
    assert_resp!(a.reply().await, confirm(b"subscribe", b"ch2", 2));
    assert_resp!(b.ask(&[b"PUBLISH", b"ch1", b"hello"]).await, b":1\r\n");
    assert_resp!(a.reply().await, bulk_array(&[b"message", b"ch1", b"hello"]));
    assert_resp!(b.ask(&[b"PUBLISH", b"nobody", b"x"]).await, b":0\r\n");
    // PING in RESP2 subscribe mode answers with a ["pong", arg] array.
    assert_resp!(a.ask(&[b"PING"]).await, bulk_array(&[b"pong", b""]));
    assert_resp!(
        a.ask(&[b"PING", b"hi"]).await,
        bulk_array(&[b"pong", b"hi"])
    );
    let refused = a.ask(&[b"GET", b"k"]).await;
    assert!(
        refused.starts_with(b"-ERR Can't execute 'get'"),
        "{}",
        show(&refused)
    );
    // A message published while a PING is outstanding arrives in order around it.
    assert_resp!(b.ask(&[b"PUBLISH", b"ch2", b"m2"]).await, b":1\r\n");
    assert_resp!(
        a.ask(&[b"PING"]).await,
        bulk_array(&[b"message", b"ch2", b"m2"])
    );
    assert_resp!(a.reply().await, bulk_array(&[b"pong", b""]));
    a.cmd(&[b"UNSUBSCRIBE"]).await;
    // Which channel goes first depends on Redis's dict order; the counts go 1 then 0.
    let first = a.reply().await;
    let second = a.reply().await;
    let (c1, c2) = if first == confirm(b"unsubscribe", b"ch1", 1) {
        (b"ch1", b"ch2")
    } else {
        (b"ch2", b"ch1")
    };
    assert_resp!(first, confirm(b"unsubscribe", c1, 1));
    assert_resp!(second, confirm(b"unsubscribe", c2, 0));
    // Back to normal: ordinary replies pair correctly, pipelined too.
    assert_resp!(a.ask(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"GET", b"k"]).await, bulk(b"v"));
    assert_resp!(a.ask(&[b"PING"]).await, b"+PONG\r\n");
    let cmds: Vec<&[&[u8]]> = vec![&[b"INCR", b"n"]; 10];
    a.send(&encode_many(&cmds)).await;
    for i in 1..=10 {
        assert_resp!(a.reply().await, format!(":{i}\r\n"));
    }
    assert_resp!(b.ask(&[b"PUBLISH", b"ch1", b"late"]).await, b":0\r\n");
    assert!(a.read_timeout(Duration::from_millis(100)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_psubscribe_and_ssubscribe() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    let mut b = raw_proxy(&proxy).await;
    assert_resp!(
        a.ask(&[b"PSUBSCRIBE", b"news.*"]).await,
        confirm(b"psubscribe", b"news.*", 1)
    );
    assert_resp!(b.ask(&[b"PUBLISH", b"news.uk", b"x"]).await, b":1\r\n");
    assert_resp!(
        a.reply().await,
        bulk_array(&[b"pmessage", b"news.*", b"news.uk", b"x"])
    );
    assert_resp!(
        a.ask(&[b"SSUBSCRIBE", b"shard"]).await,
        confirm(b"ssubscribe", b"shard", 1)
    );
    assert_resp!(b.ask(&[b"SPUBLISH", b"shard", b"s1"]).await, b":1\r\n");
    assert_resp!(a.reply().await, bulk_array(&[b"smessage", b"shard", b"s1"]));
    assert_resp!(
        a.ask(&[b"PUNSUBSCRIBE", b"news.*"]).await,
        confirm(b"punsubscribe", b"news.*", 0)
    );
    // Still in subscribe mode through the shard channel.
    assert_resp!(a.ask(&[b"PING"]).await, bulk_array(&[b"pong", b""]));
    assert_resp!(
        a.ask(&[b"SUNSUBSCRIBE"]).await,
        confirm(b"sunsubscribe", b"shard", 0)
    );
    assert_resp!(a.ask(&[b"PING"]).await, b"+PONG\r\n");
    assert_resp!(a.ask(&[b"SET", b"k", b"1"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"INCR", b"k"]).await, b":2\r\n");
}

/// Runs one pub/sub script on `sub`, publishing from `publ` where the script says so, and
/// returns every frame `sub` received, `frames` of them.
async fn pubsub_script(sub: &mut Raw, publ: &mut Raw, frames: usize) -> Vec<Vec<u8>> {
    sub.send(&encode_many(&[
        &[b"SUBSCRIBE", b"a"],
        &[b"SSUBSCRIBE", b"s"],
        &[b"PSUBSCRIBE", b"p*"],
        &[b"PING"],
    ]))
    .await;
    let mut out = Vec::new();
    for _ in 0..4 {
        out.push(sub.reply().await);
    }
    assert_resp!(publ.ask(&[b"PUBLISH", b"a", b"1"]).await, b":1\r\n");
    assert_resp!(publ.ask(&[b"PUBLISH", b"pa", b"2"]).await, b":1\r\n");
    assert_resp!(publ.ask(&[b"SPUBLISH", b"s", b"3"]).await, b":1\r\n");
    sub.send(&encode_many(&[
        &[b"UNSUBSCRIBE"],
        &[b"PING", b"x"],
        &[b"PUNSUBSCRIBE"],
        &[b"PING", b"y"],
        &[b"SUNSUBSCRIBE", b"s"],
        &[b"UNSUBSCRIBE"],
        &[b"PING", b"z"],
        &[b"ECHO", b"normal"],
        &[b"SET", b"after", b"1"],
        &[b"GET", b"after"],
    ]))
    .await;
    while out.len() < frames {
        out.push(sub.reply().await);
    }
    assert!(
        sub.read_timeout(Duration::from_millis(100)).await.is_none(),
        "more frames than expected"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_mixed_subscriptions_pipelined_match_redis() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    // 4 replies, 3 messages, then 10 commands with one frame each.
    let frames = 4 + 3 + 10;
    let mut ps = raw_proxy(&proxy).await;
    let mut pp = raw_proxy(&proxy).await;
    let got = pubsub_script(&mut ps, &mut pp, frames).await;
    let mut ds = redis.raw().await;
    let mut dp = redis.raw().await;
    let want = pubsub_script(&mut ds, &mut dp, frames).await;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_resp!(g, w, "frame {i}");
    }
    assert_resp!(got[3], bulk_array(&[b"pong", b""]));
    assert_resp!(got[frames - 3], bulk(b"normal"));
    assert_resp!(got[frames - 1], bulk(b"1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_subscriptions_arrive_as_pushes() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    let mut b = raw_proxy(&proxy).await;
    hello3(&mut a).await;
    assert_resp!(
        a.ask(&[b"SUBSCRIBE", b"ch"]).await,
        confirm_push(b"subscribe", b"ch", 1)
    );
    assert_resp!(
        a.ask(&[b"PSUBSCRIBE", b"p.*"]).await,
        confirm_push(b"psubscribe", b"p.*", 2)
    );
    assert_resp!(
        a.ask(&[b"SSUBSCRIBE", b"sh"]).await,
        confirm_push(b"ssubscribe", b"sh", 1)
    );
    // RESP3 allows ordinary commands while subscribed.
    assert_resp!(a.ask(&[b"PING"]).await, b"+PONG\r\n");
    assert_resp!(a.ask(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"GET", b"k"]).await, bulk(b"v"));
    assert_resp!(b.ask(&[b"PUBLISH", b"ch", b"hi"]).await, b":1\r\n");
    assert_resp!(b.ask(&[b"PUBLISH", b"p.x", b"pat"]).await, b":1\r\n");
    assert_resp!(b.ask(&[b"SPUBLISH", b"sh", b"sm"]).await, b":1\r\n");
    // The pushes came before this command's reply, which still pairs with it.
    a.cmd(&[b"GET", b"missing"]).await;
    assert_resp!(a.reply().await, bulk_push(&[b"message", b"ch", b"hi"]));
    assert_resp!(
        a.reply().await,
        bulk_push(&[b"pmessage", b"p.*", b"p.x", b"pat"])
    );
    assert_resp!(a.reply().await, bulk_push(&[b"smessage", b"sh", b"sm"]));
    assert_resp!(a.reply().await, b"_\r\n");
    assert_resp!(
        a.ask(&[b"UNSUBSCRIBE", b"ch"]).await,
        confirm_push(b"unsubscribe", b"ch", 1)
    );
    assert_resp!(
        a.ask(&[b"PUNSUBSCRIBE"]).await,
        confirm_push(b"punsubscribe", b"p.*", 0)
    );
    assert_resp!(
        a.ask(&[b"SUNSUBSCRIBE"]).await,
        confirm_push(b"sunsubscribe", b"sh", 0)
    );
    // Unsubscribing from nothing still answers, with a null channel.
    assert_resp!(
        a.ask(&[b"UNSUBSCRIBE"]).await,
        b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n"
    );
    assert_resp!(a.ask(&[b"INCR", b"n"]).await, b":1\r\n");
    assert_resp!(b.ask(&[b"PUBLISH", b"ch", b"late"]).await, b":0\r\n");
    assert!(a.read_timeout(Duration::from_millis(100)).await.is_none());
}

/// A namespace for the keys of the push tests, so that the policy changes what reaches Redis
/// (an expiry appended to each SET) while the client sees what Redis would send.
const PUSH_POLICY: &str = r#"
policy:
  unknown_keys: reject
  namespaces:
    key:
      keys: ["key:{id}"]
      ttl: { default: 10m, max: 1h }
"#;

/// One pipeline in which Redis itself puts pushes between replies: a message the subscribed
/// client publishes to itself, and the invalidation of a key it read and then wrote with
/// `CLIENT TRACKING on`. Everything the client receives is compared with Redis byte for byte.
async fn pushes_inside_one_pipeline(yaml: &str) {
    let redis = RedisServer::start();
    let proxy = common::proxy(yaml, &redis.url()).await;
    let pipeline = encode_many(&[
        &[b"GET", b"key:1"],
        &[b"PUBLISH", b"ch", b"first"],
        &[b"SET", b"key:1", b"v2"],
        &[b"GET", b"key:1"],
        &[b"PUBLISH", b"ch", b"second"],
        &[b"PING"],
    ]);
    let mut streams = Vec::new();
    // Straight to Redis first, then through the proxy, on the same keys.
    for mut c in [redis.raw().await, raw_proxy(&proxy).await] {
        hello3(&mut c).await;
        assert_resp!(c.ask(&[b"SET", b"key:1", b"v1"]).await, b"+OK\r\n");
        assert_resp!(c.ask(&[b"CLIENT", b"TRACKING", b"on"]).await, b"+OK\r\n");
        assert_resp!(
            c.ask(&[b"SUBSCRIBE", b"ch"]).await,
            confirm_push(b"subscribe", b"ch", 1)
        );
        c.send(&pipeline).await;
        let mut frames = Vec::new();
        while frames.last().map(Vec::as_slice) != Some(&b"+PONG\r\n"[..]) {
            frames.push(c.reply().await);
        }
        streams.push(frames);
    }
    let (direct, proxied) = (&streams[0], &streams[1]);
    let shown = |f: &Vec<Vec<u8>>| f.iter().map(|x| show(x)).collect::<Vec<_>>();
    assert_eq!(shown(proxied), shown(direct), "proxy (left), redis (right)");
    // The pushes really are inside the pipeline: between its first and last reply.
    let first_push = direct.iter().position(|f| f.first() == Some(&b'>'));
    assert!(
        first_push.is_some_and(|i| i > 0 && i < direct.len() - 1),
        "{:?}",
        shown(direct)
    );
    assert!(
        direct.iter().filter(|f| f.first() == Some(&b'>')).count() >= 3,
        "two messages and an invalidation: {:?}",
        shown(direct)
    );
    // The policy did change what reached Redis: the proxied SET got the namespace's expiry.
    let ttl = redis.raw().await.ttl(b"key:1").await;
    if yaml.is_empty() {
        assert_eq!(ttl, -1);
    } else {
        assert!((590..=600).contains(&ttl), "TTL {ttl}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_pushes_inside_a_pipeline_match_redis() {
    pushes_inside_one_pipeline("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_pushes_inside_a_pipeline_match_redis_with_a_policy() {
    pushes_inside_one_pipeline(PUSH_POLICY).await;
}

/// Pipelines of GETs from a subscribed RESP3 client while another client publishes, and each
/// pipeline also publishes to the client itself (so at least one push lands inside every
/// pipeline): replies stay paired and in order, and every message arrives once, in order.
async fn pushes_interleaved_with_pipelines(yaml: &str) {
    let redis = RedisServer::start();
    let proxy = common::proxy(yaml, &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    hello3(&mut a).await;
    let values: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("value-{i}").into_bytes())
        .collect();
    let keys: Vec<Vec<u8>> = (0..200).map(|i| format!("key:{i}").into_bytes()).collect();
    for (k, v) in keys.iter().zip(&values) {
        assert_resp!(a.ask(&[b"SET", k, v]).await, b"+OK\r\n");
    }
    assert_resp!(
        a.ask(&[b"SUBSCRIBE", b"ch", b"self"]).await,
        confirm_push(b"subscribe", b"ch", 1)
    );
    assert_resp!(a.reply().await, confirm_push(b"subscribe", b"self", 2));
    let publisher_addr = proxy.local_addr;
    let publisher = tokio::spawn(async move {
        let mut b = Raw::connect(publisher_addr).await;
        for i in 0..200 {
            let msg = format!("m{i}");
            assert_resp!(b.ask(&[b"PUBLISH", b"ch", msg.as_bytes()]).await, b":1\r\n");
        }
    });
    let mut replies = Vec::new();
    let mut pushes = Vec::new();
    let mut own = Vec::new();
    for (n, chunk) in keys.chunks(20).enumerate() {
        let label = format!("own-{n}");
        let mut cmds: Vec<Vec<&[u8]>> = chunk.iter().map(|k| vec![&b"GET"[..], k]).collect();
        cmds.insert(10, vec![b"PUBLISH", b"self", label.as_bytes()]);
        let refs: Vec<&[&[u8]]> = cmds.iter().map(|c| c.as_slice()).collect();
        a.send(&encode_many(&refs)).await;
        let mut got = 0;
        while got < cmds.len() {
            let f = a.reply().await;
            if f.first() != Some(&b'>') {
                replies.push(f);
                got += 1;
            } else if f.ends_with(format!("${}\r\n{label}\r\n", label.len()).as_bytes()) {
                // Published by this pipeline to itself: after the tenth reply, before the
                // PUBLISH's own reply.
                assert_eq!(got, 10, "own message at reply {got} of pipeline {n}");
                own.push(f);
            } else {
                pushes.push(f);
            }
        }
    }
    publisher.await.expect("publisher");
    while pushes.len() < 200 {
        let f = a.reply().await;
        assert_eq!(f.first(), Some(&b'>'), "{}", show(&f));
        pushes.push(f);
    }
    assert_eq!(own.len(), 10, "one own message per pipeline");
    let mut want = Vec::new();
    for (n, chunk) in values.chunks(20).enumerate() {
        for (i, v) in chunk.iter().enumerate() {
            if i == 10 {
                want.push(b":1\r\n".to_vec());
            }
            want.push(bulk(v));
        }
        assert_resp!(
            own[n],
            bulk_push(&[b"message", b"self", format!("own-{n}").as_bytes()])
        );
    }
    assert_eq!(replies.len(), want.len());
    for (i, (r, w)) in replies.iter().zip(&want).enumerate() {
        assert_resp!(r, w, "reply {i}");
    }
    for (i, p) in pushes.iter().enumerate() {
        let msg = format!("m{i}");
        assert_resp!(
            p,
            bulk_push(&[b"message", b"ch", msg.as_bytes()]),
            "push {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_pushes_interleaved_with_a_pipeline_keep_replies_paired() {
    pushes_interleaved_with_pipelines("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_pushes_interleaved_with_a_pipeline_keep_replies_paired_with_a_policy() {
    pushes_interleaved_with_pipelines(PUSH_POLICY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_client_tracking_invalidation_push() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    let mut b = raw_proxy(&proxy).await;
    assert_resp!(b.ask(&[b"SET", b"tk", b"v1"]).await, b"+OK\r\n");
    hello3(&mut a).await;
    assert_resp!(a.ask(&[b"CLIENT", b"TRACKING", b"on"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"GET", b"tk"]).await, bulk(b"v1"));
    assert_resp!(b.ask(&[b"SET", b"tk", b"v2"]).await, b"+OK\r\n");
    let inval = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$2\r\ntk\r\n";
    assert_resp!(a.reply().await, inval);
    assert_resp!(a.ask(&[b"PING"]).await, b"+PONG\r\n");
    // The push answers no command: the next reply is still the next command's.
    assert_resp!(a.ask(&[b"GET", b"tk"]).await, bulk(b"v2"));
    assert_resp!(b.ask(&[b"DEL", b"tk"]).await, b":1\r\n");
    a.cmd(&[b"GET", b"other"]).await;
    assert_resp!(a.reply().await, inval);
    assert_resp!(a.reply().await, b"_\r\n");
    // A flush invalidates everything with a null key list.
    assert_resp!(a.ask(&[b"GET", b"tk"]).await, b"_\r\n");
    assert_resp!(b.ask(&[b"FLUSHALL"]).await, b"+OK\r\n");
    assert_resp!(a.reply().await, b">2\r\n$10\r\ninvalidate\r\n_\r\n");
    assert_resp!(
        a.ask(&[b"ECHO", b"still paired"]).await,
        bulk(b"still paired")
    );
    assert_resp!(a.ask(&[b"CLIENT", b"TRACKING", b"off"]).await, b"+OK\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_client_tracking_redirect_to_a_subscriber() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut sub = raw_proxy(&proxy).await;
    let mut a = raw_proxy(&proxy).await;
    let mut b = raw_proxy(&proxy).await;
    let id = sub.ask(&[b"CLIENT", b"ID"]).await;
    assert!(id.starts_with(b":"), "{}", show(&id));
    let id = id[1..id.len() - 2].to_vec();
    assert_resp!(
        sub.ask(&[b"SUBSCRIBE", b"__redis__:invalidate"]).await,
        confirm(b"subscribe", b"__redis__:invalidate", 1)
    );
    assert_resp!(
        a.ask(&[b"CLIENT", b"TRACKING", b"on", b"REDIRECT", &id])
            .await,
        b"+OK\r\n"
    );
    assert_resp!(a.ask(&[b"GET", b"tk"]).await, b"$-1\r\n");
    assert_resp!(b.ask(&[b"SET", b"tk", b"x"]).await, b"+OK\r\n");
    assert_resp!(
        sub.reply().await,
        b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$2\r\ntk\r\n"
    );
    assert_resp!(sub.ask(&[b"PING"]).await, bulk_array(&[b"pong", b""]));
    assert_resp!(a.ask(&[b"GET", b"tk"]).await, bulk(b"x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_binary_messages_reach_subscribers() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    let mut b = raw_proxy(&proxy).await;
    assert_resp!(
        a.ask(&[b"SUBSCRIBE", b"bin"]).await,
        confirm(b"subscribe", b"bin", 1)
    );
    let payload: Vec<u8> = (0..2 * 1024 * 1024).map(|i| (i % 256) as u8).collect();
    assert_resp!(b.ask(&[b"PUBLISH", b"bin", &payload]).await, b":1\r\n");
    let all: Vec<u8> = (0..=255u8).collect();
    assert_resp!(b.ask(&[b"PUBLISH", b"bin", &all]).await, b":1\r\n");
    assert_resp!(a.reply().await, bulk_array(&[b"message", b"bin", &payload]));
    assert_resp!(a.reply().await, bulk_array(&[b"message", b"bin", &all]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_inside_multi_then_messages_arrive() {
    // Redis allows SUBSCRIBE inside MULTI: EXEC answers with the confirmation inside its
    // array, and the connection is in subscribe mode afterwards.
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    let mut b = raw_proxy(&proxy).await;
    assert_resp!(a.ask(&[b"MULTI"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"SUBSCRIBE", b"ch"]).await, b"+QUEUED\r\n");
    assert_resp!(
        a.ask(&[b"EXEC"]).await,
        b"*1\r\n*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    assert_resp!(b.ask(&[b"PUBLISH", b"ch", b"hi"]).await, b":1\r\n");
    assert_resp!(a.reply().await, bulk_array(&[b"message", b"ch", b"hi"]));
    assert_resp!(a.ask(&[b"PING"]).await, bulk_array(&[b"pong", b""]));
    assert_resp!(
        a.ask(&[b"UNSUBSCRIBE"]).await,
        confirm(b"unsubscribe", b"ch", 0)
    );
    assert_resp!(a.ask(&[b"PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_inside_multi_switches_protocol_for_pubsub() {
    // HELLO may be queued in a transaction; the protocol changes when EXEC runs it.
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    let mut b = raw_proxy(&proxy).await;
    hello3(&mut a).await;
    assert_resp!(a.ask(&[b"MULTI"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"HELLO", b"2"]).await, b"+QUEUED\r\n");
    let exec = a.ask(&[b"EXEC"]).await;
    assert!(exec.starts_with(b"*1\r\n*14\r\n"), "{}", show(&exec));
    // Now RESP2: the subscription is confirmed with arrays and messages are arrays.
    a.cmd(&[b"SUBSCRIBE", b"c1", b"c2"]).await;
    assert_resp!(a.reply().await, confirm(b"subscribe", b"c1", 1));
    assert_resp!(a.reply().await, confirm(b"subscribe", b"c2", 2));
    assert_resp!(b.ask(&[b"PUBLISH", b"c2", b"m"]).await, b":1\r\n");
    assert_resp!(a.reply().await, bulk_array(&[b"message", b"c2", b"m"]));
    assert_resp!(a.ask(&[b"PING"]).await, bulk_array(&[b"pong", b""]));
}
