//! A client that disconnects while blocked leaves nothing behind: Redis forgets it at once (no
//! blocked client in `INFO clients`), and the next element pushed is still there for the next
//! consumer, for every blocking command and however the command reached the proxy.

#[macro_use]
mod common;

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use common::{encode_many, raw_proxy, wait_blocked, Raw, RedisServer};

/// Redis's `blocked_clients` count.
async fn blocked_clients(redis: &RedisServer) -> usize {
    let mut r = redis.raw().await;
    let info = r.ask(&[b"INFO", b"clients"]).await;
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(usize::MAX)
}

async fn wait_unblocked(redis: &RedisServer, what: &str) {
    let ok = common::eventually(Duration::from_secs(10), || async {
        blocked_clients(redis).await == 0
    })
    .await;
    assert!(
        ok,
        "{what}: Redis still has a blocked client after the client disconnected"
    );
}

/// How the blocking command reaches the proxy before the client closes.
#[derive(Clone, Copy, Debug)]
enum Way {
    /// The blocking command is the client's first write.
    Alone,
    /// A `PING` answered first (on a shared connection), then the blocking command.
    AfterPing,
    /// `PING` and the blocking command in one write, closed without reading.
    PipelinedWithPing,
    /// `QUIT` pipelined behind the blocking command (Redis never runs it while blocked).
    ThenQuit,
}

struct Case {
    name: &'static str,
    setup: &'static [&'static [&'static [u8]]],
    block: &'static [&'static [u8]],
    push: &'static [&'static [u8]],
    check: &'static [&'static [u8]],
    want: &'static [u8],
}

const CASES: &[Case] = &[
    Case {
        name: "BLPOP 0",
        setup: &[],
        block: &[b"BLPOP", b"q", b"0"],
        push: &[b"RPUSH", b"q", b"msg"],
        check: &[b"LLEN", b"q"],
        want: b":1\r\n",
    },
    Case {
        name: "BLPOP with a timeout",
        setup: &[],
        block: &[b"BLPOP", b"q", b"30"],
        push: &[b"RPUSH", b"q", b"msg"],
        check: &[b"LLEN", b"q"],
        want: b":1\r\n",
    },
    Case {
        name: "BRPOP",
        setup: &[],
        block: &[b"BRPOP", b"q", b"0"],
        push: &[b"RPUSH", b"q", b"msg"],
        check: &[b"LLEN", b"q"],
        want: b":1\r\n",
    },
    Case {
        name: "BRPOPLPUSH",
        setup: &[],
        block: &[b"BRPOPLPUSH", b"q", b"dst", b"0"],
        push: &[b"RPUSH", b"q", b"msg"],
        check: &[b"LLEN", b"q"],
        want: b":1\r\n",
    },
    Case {
        name: "BLMOVE",
        setup: &[],
        block: &[b"BLMOVE", b"q", b"dst", b"LEFT", b"RIGHT", b"0"],
        push: &[b"RPUSH", b"q", b"msg"],
        check: &[b"LLEN", b"q"],
        want: b":1\r\n",
    },
    Case {
        name: "BLMPOP",
        setup: &[],
        block: &[b"BLMPOP", b"0", b"1", b"q", b"LEFT"],
        push: &[b"RPUSH", b"q", b"msg"],
        check: &[b"LLEN", b"q"],
        want: b":1\r\n",
    },
    Case {
        name: "BZPOPMIN",
        setup: &[],
        block: &[b"BZPOPMIN", b"z", b"0"],
        push: &[b"ZADD", b"z", b"1", b"m"],
        check: &[b"ZCARD", b"z"],
        want: b":1\r\n",
    },
    Case {
        name: "BZPOPMAX",
        setup: &[],
        block: &[b"BZPOPMAX", b"z", b"0"],
        push: &[b"ZADD", b"z", b"1", b"m"],
        check: &[b"ZCARD", b"z"],
        want: b":1\r\n",
    },
    Case {
        name: "BZMPOP",
        setup: &[],
        block: &[b"BZMPOP", b"0", b"1", b"z", b"MIN"],
        push: &[b"ZADD", b"z", b"1", b"m"],
        check: &[b"ZCARD", b"z"],
        want: b":1\r\n",
    },
    Case {
        name: "XREADGROUP BLOCK",
        setup: &[&[b"XGROUP", b"CREATE", b"s", b"g", b"$", b"MKSTREAM"]],
        block: &[
            b"XREADGROUP",
            b"GROUP",
            b"g",
            b"ghost",
            b"BLOCK",
            b"0",
            b"STREAMS",
            b"s",
            b">",
        ],
        push: &[b"XADD", b"s", b"*", b"f", b"v"],
        // Nothing was delivered to a consumer: no pending entry.
        check: &[b"XPENDING", b"s", b"g", b"-", b"+", b"10"],
        want: b"*0\r\n",
    },
    Case {
        name: "XREAD BLOCK",
        setup: &[],
        block: &[b"XREAD", b"BLOCK", b"0", b"STREAMS", b"s", b"$"],
        push: &[b"XADD", b"s", b"*", b"f", b"v"],
        check: &[b"XLEN", b"s"],
        want: b":1\r\n",
    },
    Case {
        name: "WAIT",
        setup: &[],
        block: &[b"WAIT", b"1", b"0"],
        push: &[b"SET", b"w", b"1"],
        check: &[b"GET", b"w"],
        want: b"$1\r\n1\r\n",
    },
];

async fn disconnect_while_blocked(redis: &RedisServer, proxy: &respguard::Proxy, way: Way) {
    let mut d = redis.raw().await;
    for case in CASES {
        let what = format!("{} ({way:?})", case.name);
        assert_resp!(d.ask(&[b"FLUSHALL"]).await, b"+OK\r\n");
        for cmd in case.setup {
            d.ask(cmd).await;
        }
        let mut c: Raw = raw_proxy(proxy).await;
        match way {
            Way::Alone => c.cmd(case.block).await,
            Way::AfterPing => {
                assert_resp!(c.ask(&[b"PING"]).await, b"+PONG\r\n");
                c.cmd(case.block).await;
            }
            Way::PipelinedWithPing => c.send(&encode_many(&[&[b"PING"], case.block])).await,
            Way::ThenQuit => c.send(&encode_many(&[case.block, &[b"QUIT"]])).await,
        }
        wait_blocked(redis, 1).await;
        drop(c);
        wait_unblocked(redis, &what).await;
        d.ask(case.push).await;
        assert_resp!(
            d.ask(case.check).await,
            case.want,
            "{what}: the message was taken"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_blocked_client_takes_no_message() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    for way in [
        Way::Alone,
        Way::AfterPing,
        Way::PipelinedWithPing,
        Way::ThenQuit,
    ] {
        disconnect_while_blocked(&redis, &proxy, way).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_blocked_client_takes_no_message_without_shared_connections() {
    let redis = RedisServer::start();
    let proxy = common::proxy("upstream:\n  shared_connections: 0\n", &redis.url()).await;
    disconnect_while_blocked(&redis, &proxy, Way::Alone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_still_gets_the_replies_it_is_owed() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut c = raw_proxy(&proxy).await;
    c.send(&encode_many(&[
        &[b"SET", b"k", b"v"],
        &[b"MULTI"],
        &[b"BLPOP", b"q", b"0"],
        &[b"EXEC"],
        &[b"GET", b"k"],
    ]))
    .await;
    c.stream.shutdown().await.expect("half-close");
    assert_resp!(c.reply().await, b"+OK\r\n");
    assert_resp!(c.reply().await, b"+OK\r\n");
    assert_resp!(c.reply().await, b"+QUEUED\r\n");
    // Inside a transaction BLPOP does not block: an empty list answers nil at once.
    assert_resp!(c.reply().await, b"*1\r\n*-1\r\n");
    assert_resp!(c.reply().await, b"$1\r\nv\r\n");
}
