//! Proxy core, upstream failures: an unreachable upstream (refused, or silent until
//! the connect timeout) answers every command with an error naming the cause, never hangs,
//! and the same client connection works once Redis is up; Redis dying while a client waits in
//! `BLPOP` fails the in-flight command and closes the client; `upstream.read_timeout` fails a
//! slow command (`DEBUG SLEEP`) and closes the client, while blocking commands, subscribers,
//! monitors and idle clients are exempt.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{bulk, bulk_array, raw_proxy, show, wait_blocked, Raw, RedisServer};

/// A loopback address that accepts no connection: a listener whose accept queue is full, so
/// the kernel drops new SYNs and `connect` hangs until the caller gives up.
fn silent_listener() -> (
    std::net::SocketAddr,
    tokio::net::TcpListener,
    Vec<std::net::TcpStream>,
) {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = sock.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut fill = Vec::new();
    // With a backlog of 0 the queue holds one connection; later SYNs are dropped.
    for _ in 0..2 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fill.push(s);
        }
    }
    (addr, listener, fill)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_errors_then_recovers_on_the_same_connection() {
    let port = common::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    // A refused connection is reported at once, not after the (long) connect timeout.
    let proxy = common::proxy("upstream:\n  connect_timeout: 20s\n", &url).await;
    let mut c = raw_proxy(&proxy).await;
    let t = Instant::now();
    let e = c.ask(&[b"PING"]).await;
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let text = String::from_utf8_lossy(&e).into_owned();
    assert!(
        text.starts_with(&format!("-ERR upstream 127.0.0.1:{port} unavailable: "))
            && text.contains("refused")
            && text.ends_with("\r\n"),
        "{text:?}"
    );
    // Every command of a pipeline gets the error, in order.
    c.send(&common::encode_many(&[&[b"GET", b"a"], &[b"GET", b"b"]]))
        .await;
    assert_resp!(c.reply().await, e);
    assert_resp!(c.reply().await, e);
    // Redis comes up on that port: the same client connection now works.
    let _redis = RedisServer::start_on(port, &[]);
    assert_resp!(c.ask(&[b"PING"]).await, b"+PONG\r\n");
    assert_resp!(c.ask(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_resp!(c.ask(&[b"GET", b"k"]).await, bulk(b"v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_upstream_errors_within_the_connect_timeout() {
    let (addr, _listener, _fill) = silent_listener();
    let url = format!("redis://{addr}");
    let proxy = common::proxy("upstream:\n  connect_timeout: 1s\n", &url).await;
    let mut c = raw_proxy(&proxy).await;
    let t = Instant::now();
    let e = c.ask(&[b"PING"]).await;
    let took = t.elapsed();
    assert_resp!(
        e,
        format!("-ERR upstream {addr} unavailable: connect timed out after 1000 ms\r\n")
    );
    assert!(
        took < Duration::from_millis(1500),
        "the error took {took:?}; the connect timeout is 1 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_dying_during_blpop_fails_the_command_and_closes_the_client() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    assert_resp!(a.ask(&[b"PING"]).await, b"+PONG\r\n");
    a.cmd(&[b"BLPOP", b"q", b"0"]).await;
    wait_blocked(&redis, 1).await;
    redis.kill();
    let e = a.reply().await;
    let text = String::from_utf8_lossy(&e).into_owned();
    assert!(
        text == "-ERR upstream closed the connection\r\n"
            || text.starts_with("-ERR upstream connection lost: "),
        "{text:?}"
    );
    assert!(
        a.closed_within(Duration::from_secs(2)).await,
        "client closed"
    );
    // The proxy survives: a new client gets the unavailable error, then works once Redis
    // is back. A client that reaches the shared connection before the proxy has seen it close
    // gets "closed" instead; the next one finds Redis unavailable.
    let unavailable = format!("-ERR upstream 127.0.0.1:{port} unavailable");
    let mut answers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let mut b = raw_proxy(&proxy).await;
        let e = b.ask(&[b"PING"]).await;
        answers.push(show(&e));
        if e.starts_with(unavailable.as_bytes()) {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(seen, "{answers:?}");
    for e in &answers[..answers.len() - 1] {
        assert_eq!(
            e, "-ERR upstream closed the connection\\r\\n",
            "{answers:?}"
        );
    }
    let _again = RedisServer::start_on(port, &[]);
    let mut c = raw_proxy(&proxy).await;
    assert_resp!(c.ask(&[b"PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_timeout_fails_a_slow_command_and_closes() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let proxy = common::proxy("upstream:\n  read_timeout: 200ms\n", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    assert_resp!(a.ask(&[b"PING"]).await, b"+PONG\r\n");
    let t = Instant::now();
    a.send(&common::encode_many(&[
        &[b"DEBUG", b"SLEEP", b"1"],
        &[b"PING"],
    ]))
    .await;
    let e = a.reply().await;
    let took = t.elapsed();
    assert_resp!(e, b"-ERR upstream did not reply within 200 ms\r\n");
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(900),
        "{took:?}"
    );
    // The pipelined PING behind it is failed too, then the connection closes.
    assert_resp!(
        a.reply().await,
        b"-ERR upstream did not reply within 200 ms\r\n"
    );
    assert!(
        a.closed_within(Duration::from_secs(2)).await,
        "client closed"
    );
    // Others are fine once Redis wakes up (a direct PING waits for that).
    let mut direct = redis.raw().await;
    assert_resp!(direct.ask(&[b"PING"]).await, b"+PONG\r\n");
    let mut b = raw_proxy(&proxy).await;
    assert_resp!(b.ask(&[b"PING"]).await, b"+PONG\r\n");
    assert_resp!(b.ask(&[b"DEBUG", b"SLEEP", b"0.05"]).await, b"+OK\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_timeout_exempts_blocking_commands() {
    let redis = RedisServer::start();
    let proxy = common::proxy("upstream:\n  read_timeout: 200ms\n", &redis.url()).await;
    let cases: Vec<(Vec<&[u8]>, &[u8])> = vec![
        (vec![b"BLPOP", b"l", b"0.5"], b"*-1\r\n"),
        (vec![b"BRPOP", b"l", b"0.5"], b"*-1\r\n"),
        (
            vec![b"BLMOVE", b"l", b"d", b"LEFT", b"LEFT", b"0.5"],
            b"*-1\r\n",
        ),
        (vec![b"BZPOPMIN", b"z", b"0.5"], b"*-1\r\n"),
        (
            vec![b"XREAD", b"BLOCK", b"500", b"STREAMS", b"s", b"$"],
            b"*-1\r\n",
        ),
    ];
    let mut tasks = Vec::new();
    for (cmd, want) in cases {
        let addr = proxy.local_addr;
        let cmd: Vec<Vec<u8>> = cmd.iter().map(|a| a.to_vec()).collect();
        tasks.push(tokio::spawn(async move {
            let mut c = Raw::connect(addr).await;
            let args: Vec<&[u8]> = cmd.iter().map(|a| a.as_slice()).collect();
            let t = Instant::now();
            let got = c.ask(&args).await;
            let took = t.elapsed();
            assert_resp!(got, want, "{}", show(&cmd[0]));
            assert!(took >= Duration::from_millis(450), "{took:?}");
            assert_resp!(c.ask(&[b"PING"]).await, b"+PONG\r\n");
        }));
    }
    // A blocking command that gets its data after the read timeout has passed.
    let mut a = raw_proxy(&proxy).await;
    a.cmd(&[b"BLPOP", b"q", b"0"]).await;
    wait_blocked(&redis, 6).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b = raw_proxy(&proxy).await;
    assert_resp!(b.ask(&[b"RPUSH", b"q", b"late"]).await, b":1\r\n");
    assert_resp!(a.reply().await, bulk_array(&[b"q", b"late"]));
    assert_resp!(a.ask(&[b"PING"]).await, b"+PONG\r\n");
    for t in tasks {
        t.await.expect("blocking client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_timeout_exempts_wait() {
    // WAIT blocks the client until the replicas acknowledge or its timeout passes.
    let redis = RedisServer::start();
    let proxy = common::proxy("upstream:\n  read_timeout: 200ms\n", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    assert_resp!(a.ask(&[b"WAIT", b"0", b"100"]).await, b":0\r\n");
    let t = Instant::now();
    assert_resp!(a.ask(&[b"WAIT", b"1", b"500"]).await, b":0\r\n");
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t.elapsed()
    );
    assert_resp!(a.ask(&[b"PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_timeout_spares_idle_subscribers_and_monitors() {
    let redis = RedisServer::start();
    let proxy = common::proxy("upstream:\n  read_timeout: 100ms\n", &redis.url()).await;
    let mut idle = raw_proxy(&proxy).await;
    let mut sub = raw_proxy(&proxy).await;
    let mut mon = raw_proxy(&proxy).await;
    let mut sub3 = raw_proxy(&proxy).await;
    assert_resp!(idle.ask(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_resp!(
        sub.ask(&[b"SUBSCRIBE", b"ch"]).await,
        b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    let hello = sub3.ask(&[b"HELLO", b"3"]).await;
    assert!(hello.starts_with(b"%7\r\n"), "{}", show(&hello));
    assert_resp!(
        sub3.ask(&[b"SUBSCRIBE", b"ch"]).await,
        b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    assert_resp!(mon.ask(&[b"MONITOR"]).await, b"+OK\r\n");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let mut p = raw_proxy(&proxy).await;
    assert_resp!(p.ask(&[b"PUBLISH", b"ch", b"hi"]).await, b":2\r\n");
    assert_resp!(sub.reply().await, bulk_array(&[b"message", b"ch", b"hi"]));
    assert_resp!(
        sub3.reply().await,
        b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
    );
    let line = mon.reply().await;
    assert!(
        String::from_utf8_lossy(&line).ends_with("\"PUBLISH\" \"ch\" \"hi\"\r\n"),
        "{}",
        show(&line)
    );
    assert_resp!(idle.ask(&[b"GET", b"k"]).await, bulk(b"v"));
    assert_resp!(sub.ask(&[b"PING"]).await, bulk_array(&[b"pong", b""]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_timeout_does_not_fire_for_a_command_queued_behind_a_blocking_one() {
    // The timeout measures how long Redis takes to answer a command, not how long the
    // command waited behind a blocking command pipelined before it: DEBUG SLEEP 0.05 answers
    // 50 ms after the BLPOP does, well inside 200 ms.
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let proxy = common::proxy("upstream:\n  read_timeout: 200ms\n", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    a.send(&common::encode_many(&[
        &[b"BLPOP", b"q", b"0"],
        &[b"DEBUG", b"SLEEP", b"0.05"],
        &[b"ECHO", b"after"],
    ]))
    .await;
    wait_blocked(&redis, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b = raw_proxy(&proxy).await;
    assert_resp!(b.ask(&[b"RPUSH", b"q", b"x"]).await, b":1\r\n");
    assert_resp!(a.reply().await, bulk_array(&[b"q", b"x"]));
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(a.reply().await, bulk(b"after"));
    assert_resp!(a.ask(&[b"PING"]).await, b"+PONG\r\n");
}

/// A Lua script that keeps Redis busy for `ms` milliseconds (no DEBUG needed).
fn busy_script(ms: u64) -> Vec<u8> {
    format!(
        "local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] \
         while true do local n = redis.call('TIME') \
         if n[1] * 1000000 + n[2] - s > {} then break end end return 1",
        ms * 1000
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_timeout_applies_to_a_slow_ordinary_command() {
    // Not only DEBUG SLEEP: any command Redis is slow to answer (here a busy script, the
    // client's first command) is failed after read_timeout and the client closed.
    let redis = RedisServer::start();
    let proxy = common::proxy("upstream:\n  read_timeout: 200ms\n", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    let t = Instant::now();
    let e = a.ask(&[b"EVAL", &busy_script(800), b"0"]).await;
    let took = t.elapsed();
    assert_resp!(e, b"-ERR upstream did not reply within 200 ms\r\n");
    assert!(took < Duration::from_millis(700), "{took:?}");
    assert!(
        a.closed_within(Duration::from_secs(2)).await,
        "client closed"
    );
}
