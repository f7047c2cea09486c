//! Proxy core, limits and shutdown: `limits.max_clients`, `max_bulk_len`,
//! `max_multibulk_len`, `max_buffered_bytes` and malformed RESP answer with Redis's own error
//! and disconnect only the offender (others keep working, nothing panics); the reply nesting
//! bound (`max_depth`) applies to replies only, and request limits do not cut off legitimate
//! replies; `Proxy::shutdown` drains in-flight pipelines, refuses new connections, and closes
//! what is still open when the grace period ends.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{bulk, bulk_array, encode_many, raw_proxy, show, wait_blocked, Raw, RedisServer};

const LIMITS: &str = "limits:\n  max_clients: 3\n  max_bulk_len: 1kb\n  max_multibulk_len: 10\n  max_buffered_bytes: 64kb\n";

/// Sends `bytes` on a fresh connection; returns the reply and whether the proxy then closed.
async fn offend(proxy: &respguard::Proxy, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut c = raw_proxy(proxy).await;
    c.send(bytes).await;
    let reply = c
        .read_timeout(Duration::from_secs(3))
        .await
        .unwrap_or_default();
    let closed = c.closed_within(Duration::from_secs(2)).await;
    (reply, closed)
}

/// A second, well-behaved client that is open throughout still works.
async fn still_serves(bystander: &mut Raw, proxy: &respguard::Proxy) {
    assert_resp!(bystander.ask(&[b"PING"]).await, b"+PONG\r\n");
    let mut fresh = raw_proxy(proxy).await;
    assert_resp!(fresh.ask(&[b"ECHO", b"alive"]).await, bulk(b"alive"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_refuses_the_extra_client() {
    let redis = RedisServer::start();
    let proxy = common::proxy("limits:\n  max_clients: 2\n", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    let mut b = raw_proxy(&proxy).await;
    assert_resp!(a.ask(&[b"PING"]).await, b"+PONG\r\n");
    assert_resp!(b.ask(&[b"PING"]).await, b"+PONG\r\n");
    let mut c = raw_proxy(&proxy).await;
    assert_resp!(
        c.reply().await,
        &b"-ERR max number of clients reached\r\n"[..]
    );
    assert!(c.closed_within(Duration::from_secs(2)).await);
    assert_resp!(a.ask(&[b"PING"]).await, b"+PONG\r\n");
    let m = common::metrics_text(&proxy).await;
    assert_eq!(
        common::metric(&m, "respguard_client_connections_refused_total"),
        Some(1.0),
        "{}",
        common::metric_lines(&m, "respguard_client_connections")
    );
    // A slot frees up when a client leaves.
    drop(b);
    let admitted = common::eventually(Duration::from_secs(3), || async {
        let mut d = raw_proxy(&proxy).await;
        d.cmd(&[b"PING"]).await;
        d.read_timeout(Duration::from_secs(1)).await.as_deref() == Some(&b"+PONG\r\n"[..])
    })
    .await;
    assert!(admitted, "a client is admitted after another left");
    let settled = common::eventually(Duration::from_secs(2), || async {
        proxy.shared.client_count() == 1
    })
    .await;
    assert!(
        settled,
        "only `a` is left connected: {}",
        proxy.shared.client_count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bulk_is_refused_and_disconnects() {
    let redis = RedisServer::start();
    let proxy = common::proxy(LIMITS, &redis.url()).await;
    let mut bystander = raw_proxy(&proxy).await;
    assert_resp!(bystander.ask(&[b"PING"]).await, b"+PONG\r\n");
    // Refused from the header alone: the proxy does not wait for 2000 bytes.
    let (reply, closed) = offend(&proxy, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000\r\n").await;
    assert_resp!(reply, &b"-ERR Protocol error: invalid bulk length\r\n"[..]);
    assert!(closed, "disconnected");
    // Exactly the limit is fine.
    let mut c = raw_proxy(&proxy).await;
    let v = vec![b'x'; 1024];
    assert_resp!(c.ask(&[b"SET", b"k", &v]).await, b"+OK\r\n");
    // Replies after the earlier commands of the same write still arrive first.
    let mut pipelined = encode_many(&[&[b"INCR", b"n"], &[b"INCR", b"n"]]);
    pipelined.extend_from_slice(b"*2\r\n$4\r\nECHO\r\n$1025\r\n");
    let (reply, closed) = {
        let mut d = raw_proxy(&proxy).await;
        d.send(&pipelined).await;
        assert_resp!(d.reply().await, b":1\r\n");
        assert_resp!(d.reply().await, b":2\r\n");
        let r = d.reply().await;
        (r, d.closed_within(Duration::from_secs(2)).await)
    };
    assert_resp!(reply, &b"-ERR Protocol error: invalid bulk length\r\n"[..]);
    assert!(closed);
    // Negative and non-numeric lengths, as Redis refuses them.
    for bad in [&b"*1\r\n$-5\r\n"[..], b"*1\r\n$abc\r\n"] {
        let (reply, closed) = offend(&proxy, bad).await;
        assert_resp!(reply, &b"-ERR Protocol error: invalid bulk length\r\n"[..]);
        assert!(closed, "{}", show(bad));
    }
    still_serves(&mut bystander, &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_arguments_is_refused_and_disconnects() {
    let redis = RedisServer::start();
    let proxy = common::proxy(LIMITS, &redis.url()).await;
    let mut bystander = raw_proxy(&proxy).await;
    assert_resp!(bystander.ask(&[b"PING"]).await, b"+PONG\r\n");
    let (reply, closed) = offend(&proxy, b"*11\r\n").await;
    assert_resp!(
        reply,
        &b"-ERR Protocol error: invalid multibulk length\r\n"[..]
    );
    assert!(closed);
    let mut c = raw_proxy(&proxy).await;
    let ten: Vec<&[u8]> = vec![
        b"RPUSH", b"l", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8",
    ];
    assert_resp!(c.ask(&ten).await, b":8\r\n");
    // Replies are not bound by the request limit: 20 elements come back whole.
    let mut twenty: Vec<Vec<u8>> = Vec::new();
    for i in 0..20 {
        twenty.push(format!("m{i:02}").into_bytes());
    }
    for chunk in twenty.chunks(8) {
        let mut args: Vec<&[u8]> = vec![b"SADD", b"s"];
        args.extend(chunk.iter().map(|v| v.as_slice()));
        c.ask(&args).await;
    }
    assert_resp!(c.ask(&[b"SCARD", b"s"]).await, b":20\r\n");
    let sorted = c.ask(&[b"SORT", b"s", b"ALPHA"]).await;
    let refs: Vec<&[u8]> = twenty.iter().map(|v| v.as_slice()).collect();
    assert_resp!(sorted, bulk_array(&refs));
    let (reply, closed) = offend(&proxy, b"*abc\r\n").await;
    assert_resp!(
        reply,
        &b"-ERR Protocol error: invalid multibulk length\r\n"[..]
    );
    assert!(closed);
    still_serves(&mut bystander, &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_are_not_bound_by_the_request_bulk_limit() {
    // max_bulk_len (like Redis's proto-max-bulk-len) limits what clients send; a value
    // stored by someone else is still readable through the proxy.
    let redis = RedisServer::start();
    let proxy = common::proxy(LIMITS, &redis.url()).await;
    let big = vec![b'v'; 4096];
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"SET", b"big", &big]).await, b"+OK\r\n");
    let mut c = raw_proxy(&proxy).await;
    assert_resp!(c.ask(&[b"STRLEN", b"big"]).await, b":4096\r\n");
    assert_resp!(c.ask(&[b"GET", b"big"]).await, bulk(&big));
    assert_resp!(c.ask(&[b"PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_resp_is_refused_and_disconnects() {
    let redis = RedisServer::start();
    let proxy = common::proxy(LIMITS, &redis.url()).await;
    let mut bystander = raw_proxy(&proxy).await;
    assert_resp!(bystander.ask(&[b"PING"]).await, b"+PONG\r\n");
    let cases: &[(&[u8], &[u8])] = &[
        (
            b"*1\r\n+x\r\n",
            b"-ERR Protocol error: expected '$', got '+'\r\n",
        ),
        (
            b"*2\r\n$4\r\nECHO\r\n:12\r\n",
            b"-ERR Protocol error: expected '$', got ':'\r\n",
        ),
    ];
    for (bytes, want) in cases {
        let (reply, closed) = offend(&proxy, bytes).await;
        // Redis says the same thing, and closes too.
        let mut d = redis.raw().await;
        d.send(bytes).await;
        let direct = d.reply().await;
        assert_resp!(direct, want, "redis for {}", show(bytes));
        assert_resp!(reply, want, "proxy for {}", show(bytes));
        assert!(closed, "{}", show(bytes));
        assert!(d.closed_within(Duration::from_secs(2)).await);
    }
    // After a pipeline: the commands before the bad frame are answered first, as by Redis.
    for (conn, key) in [("proxy", &b"pk"[..]), ("redis", b"rk")] {
        let mut c = if conn == "proxy" {
            raw_proxy(&proxy).await
        } else {
            redis.raw().await
        };
        let mut bytes = encode_many(&[&[b"INCR", key], &[b"INCR", key]]);
        bytes.extend_from_slice(b"*1\r\n+x\r\n");
        c.send(&bytes).await;
        assert_resp!(c.reply().await, b":1\r\n", "{conn}");
        assert_resp!(c.reply().await, b":2\r\n", "{conn}");
        assert_resp!(
            c.reply().await,
            &b"-ERR Protocol error: expected '$', got '+'\r\n"[..],
            "{conn}"
        );
        assert!(c.closed_within(Duration::from_secs(2)).await, "{conn}");
    }
    // A line of bytes that are not UTF-8, then a PING: what Redis answers, frame for frame,
    // and the connection stays open as it does with Redis.
    let junk = b"\xff\xfe*\r\n$\r\n\r\nPING\r\n";
    let mut answers = Vec::new();
    for mut c in [raw_proxy(&proxy).await, redis.raw().await] {
        c.send(junk).await;
        let mut frames = Vec::new();
        while frames.last().map(String::as_str) != Some("+PONG\\r\\n") {
            frames.push(show(&c.reply().await));
        }
        answers.push(frames);
    }
    assert_eq!(answers[0], answers[1], "proxy (left) and redis (right)");
    // A line of NUL bytes, then a PING (Redis finds line ends with `strchr`, so the NUL hides
    // them and it waits for more), and a bulk whose CRLF is missing (Redis skips the two bytes
    // after the data unread): what Redis answers, frame for frame, open or closed alike.
    for junk in [
        &[&[0u8; 64][..], b"\r\nPING\r\n"].concat()[..],
        b"*1\r\n$1\r\nab\r\n\r\n",
    ] {
        let mut answers = Vec::new();
        for mut c in [raw_proxy(&proxy).await, redis.raw().await] {
            c.send(junk).await;
            let (frames, open) = match c.rest_until_closed(Duration::from_secs(1)).await {
                Ok(frames) => (frames, false),
                Err(frames) => (frames, true),
            };
            let frames: Vec<String> = frames.iter().map(|f| show(f)).collect();
            answers.push((frames, open));
        }
        assert_eq!(
            answers[0],
            answers[1],
            "proxy (left) and redis (right) for {}",
            show(junk)
        );
    }
    still_serves(&mut bystander, &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unterminated_request_beyond_the_buffer_limit_disconnects() {
    let redis = RedisServer::start();
    let proxy = common::proxy(
        "limits:\n  max_buffered_bytes: 64kb\n  max_bulk_len: 1mb\n",
        &redis.url(),
    )
    .await;
    let mut bystander = raw_proxy(&proxy).await;
    assert_resp!(bystander.ask(&[b"PING"]).await, b"+PONG\r\n");
    let mut c = raw_proxy(&proxy).await;
    let mut req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$500000\r\n".to_vec();
    req.extend_from_slice(&vec![b'x'; 100 * 1024]);
    c.send(&req).await;
    assert_resp!(
        c.reply().await,
        &b"-ERR Protocol error: client query buffer limit exceeded\r\n"[..]
    );
    assert!(c.closed_within(Duration::from_secs(2)).await);
    // An unterminated inline line is bounded too (Redis: 64 KB).
    let mut i = raw_proxy(&proxy).await;
    i.send(&vec![b'a'; 70 * 1024]).await;
    assert_resp!(
        i.reply().await,
        &b"-ERR Protocol error: too big inline request\r\n"[..]
    );
    assert!(i.closed_within(Duration::from_secs(2)).await);
    still_serves(&mut bystander, &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_nesting_bound_applies_to_replies_only() {
    let redis = RedisServer::start();
    let proxy = common::proxy("limits:\n  max_depth: 8\n", &redis.url()).await;
    let mut bystander = raw_proxy(&proxy).await;
    assert_resp!(bystander.ask(&[b"PING"]).await, b"+PONG\r\n");
    let nested = |depth: usize| {
        format!("local t = 1 for i = 1, {depth} do t = {{t}} end return t").into_bytes()
    };
    let mut c = raw_proxy(&proxy).await;
    let mut want = b"*1\r\n".repeat(8);
    want.extend_from_slice(b":1\r\n");
    assert_resp!(c.ask(&[b"EVAL", &nested(8), b"0"]).await, want);
    // A request is flat: many arguments are not "deep".
    let args: Vec<Vec<u8>> = (0..100).map(|i| format!("{i}").into_bytes()).collect();
    let mut cmd: Vec<&[u8]> = vec![b"RPUSH", b"l"];
    cmd.extend(args.iter().map(|a| a.as_slice()));
    assert_resp!(c.ask(&cmd).await, b":100\r\n");
    // Nine levels exceed the bound: the reply cannot be passed on, the client learns why.
    c.cmd(&[b"EVAL", &nested(9), b"0"]).await;
    assert_resp!(
        c.reply().await,
        &b"-ERR upstream sent an invalid reply: Protocol error: reply nested deeper than 8 levels\r\n"[..]
    );
    assert!(c.closed_within(Duration::from_secs(2)).await);
    still_serves(&mut bystander, &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_an_in_flight_pipeline_then_refuses() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let addr = proxy.local_addr;
    let mut a = raw_proxy(&proxy).await;
    let mut idle = raw_proxy(&proxy).await;
    assert_resp!(idle.ask(&[b"PING"]).await, b"+PONG\r\n");
    // A pipeline whose head blocks, so it is in flight when shutdown starts.
    let incr: &[&[u8]] = &[b"INCR", b"n"];
    let mut cmds: Vec<&[&[u8]]> = vec![&[b"BLPOP", b"q", b"0"]];
    cmds.extend(std::iter::repeat_n(incr, 100));
    a.send(&encode_many(&cmds)).await;
    wait_blocked(&redis, 1).await;
    let t = Instant::now();
    let draining = tokio::spawn(proxy.shutdown(Duration::from_secs(30)));
    // New connections are refused while the drain goes on.
    let refused = common::eventually(Duration::from_secs(2), || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(refused, "new connections are refused during the drain");
    // An idle client is closed at once.
    assert!(
        idle.closed_within(Duration::from_secs(1)).await,
        "idle client closed"
    );
    assert!(!draining.is_finished(), "still draining the pipeline");
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"RPUSH", b"q", b"v"]).await, b":1\r\n");
    assert_resp!(a.reply().await, bulk_array(&[b"q", b"v"]));
    for i in 1..=100 {
        assert_resp!(a.reply().await, format!(":{i}\r\n"), "reply {i}");
    }
    assert!(
        a.closed_within(Duration::from_secs(2)).await,
        "closed after the drain"
    );
    draining.await.expect("shutdown");
    // It ended when the pipeline was drained, not when the grace period did.
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_what_is_left_when_the_grace_period_ends() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    a.cmd(&[b"BLPOP", b"never", b"0"]).await;
    wait_blocked(&redis, 1).await;
    let t = Instant::now();
    proxy.shutdown(Duration::from_millis(300)).await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(
        a.closed_within(Duration::from_secs(1)).await,
        "a client still blocked when the grace period ends is disconnected"
    );
    // And its upstream connection is gone too.
    let redis_addr = redis.addr();
    let gone = common::eventually(Duration::from_secs(2), || async move {
        let mut d = Raw::connect(redis_addr).await;
        let info = d.ask(&[b"INFO", b"clients"]).await;
        String::from_utf8_lossy(&info).contains("\r\nblocked_clients:0\r\n")
    })
    .await;
    assert!(gone, "the blocked upstream connection was closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_large_reply_does_not_disconnect_another() {
    // Two clients whose commands are in flight together: one reads a value larger than the
    // request bulk limit; the other only pings.
    let redis = RedisServer::start_with(common::BUSY_AFTER_10MS);
    let proxy = common::proxy(
        "upstream:\n  shared_connections: 1\nlimits:\n  max_bulk_len: 1kb\n",
        &redis.url(),
    )
    .await;
    let mut d = redis.raw().await;
    assert_resp!(
        d.ask(&[b"SET", b"big", &vec![b'v'; 4096]]).await,
        b"+OK\r\n"
    );
    let mut a = raw_proxy(&proxy).await;
    let mut b = raw_proxy(&proxy).await;
    a.send(&encode_many(&[
        &[b"EVAL", common::ENDLESS_SCRIPT, b"0"],
        &[b"GET", b"big"],
    ]))
    .await;
    redis.wait_busy().await;
    // Redis is busy with a's script: b's INCR waits behind a's GET on the shared connection.
    let unread = redis.unread_bytes();
    let incr = encode_many(&[&[b"INCR", b"b-counter"]]);
    b.send(&incr).await;
    redis.wait_unread(unread + incr.len()).await;
    redis.kill_script().await;
    assert_resp!(b.reply().await, b":1\r\n", "b's reply");
    assert_resp!(b.ask(&[b"INCR", b"b-counter"]).await, b":2\r\n");
    // a's script ran: its reply is owed, then its GET's, larger than the request bulk limit.
    let killed = a.reply().await;
    assert!(show(&killed).contains("Script killed"), "{}", show(&killed));
    assert_resp!(a.reply().await, bulk(&vec![b'v'; 4096]));
}

/// Shutdown reaches connections through the kept phase future: an idle client is closed when
/// draining starts; a client blocked in BLPOP is left to finish during the grace period and
/// closed when it ends (Draining, then Abort on the re-armed future), after many loop
/// iterations on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_then_aborts_connections_after_many_wakeups() {
    let e = common::policy_env("").await;
    let mut idle = common::raw_proxy(&e.proxy).await;
    let mut blocked = common::raw_proxy(&e.proxy).await;
    // Many wakeups of each connection's loop before shutdown starts.
    for i in 0..200u32 {
        let v = i.to_string();
        assert_resp!(idle.call(&[b"SET", b"k", v.as_bytes()]).await, b"+OK\r\n");
        assert_resp!(blocked.call(&[b"GET", b"k"]).await, bulk(v.as_bytes()));
    }
    blocked.cmd(&[b"BLPOP", b"never", b"0"]).await;
    common::wait_blocked(&e.redis, 1).await;
    let started = std::time::Instant::now();
    let proxy = e.proxy;
    let shutdown = tokio::spawn(proxy.shutdown(Duration::from_millis(800)));
    assert!(
        idle.closed_within(Duration::from_millis(500)).await,
        "idle connection not closed when draining started"
    );
    // Abort is sent at 800 ms; the shutdown signal itself is only dropped 1 s later, so a
    // connection that missed Abort would close at about 1.8 s.
    let left = Duration::from_millis(1400).saturating_sub(started.elapsed());
    assert!(
        blocked.closed_within(left).await,
        "blocked connection not closed when the grace period ended (Abort not seen)"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "blocked connection closed before the grace period ended ({took:?})"
    );
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown returns")
        .expect("shutdown task");
}
