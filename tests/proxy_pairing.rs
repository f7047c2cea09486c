//! Reply pairing on shared and dedicated upstream connections ("pinning"): QUIT mid
//! pipeline, WATCH inside MULTI with rewriting, CLIENT REPLY, pub/sub, MONITOR, clients that
//! never read, a client's state change behind another client's running script, a huge
//! pipeline beside a small client, and Redis dying under shared clients; where Redis itself
//! defines the answer, it is compared with what Redis answers on a connection of its own.

#[macro_use]
mod common;

use std::time::Duration;

use common::{bulk, bulk_array, encode_many, raw_proxy, show, Raw, RedisServer, Respguard};

const POLICY: &str = r#"
policy:
  namespaces:
    rate_limit:
      keys: ["rate_limit:{action}:{id}"]
      ttl: { default: 5m, min: 5m, max: 15m }
"#;

const SHARED1: &str = "upstream:\n  shared_connections: 1\n";

/// Asserts that nothing more arrives and the connection closes within `t`.
async fn assert_closed_with_nothing_more(c: &mut Raw, t: Duration, what: &str) {
    let extra = c.read_timeout(t).await;
    assert!(
        extra.is_none(),
        "{what}: unexpected frame: {}",
        show(&extra.unwrap_or_default())
    );
}

/// Asserts that no frame arrives within `t` (the connection may stay open).
async fn assert_silent(c: &mut Raw, t: Duration, what: &str) {
    if let Some(f) = c.read_timeout(t).await {
        panic!("{what}: unexpected frame: {}", show(&f));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_mid_pipeline_on_a_pinned_client_ends_like_redis() {
    // Redis stops reading a connection's input at QUIT: the commands after it are neither
    // executed nor answered; the client gets +OK and a close.
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut direct = redis.raw().await;
    direct
        .send(&encode_many(&[
            &[b"SELECT", b"0"],
            &[b"PING"],
            &[b"QUIT"],
            &[b"SET", b"direct", b"1"],
            &[b"PING"],
        ]))
        .await;
    assert_resp!(direct.reply().await, b"+OK\r\n");
    assert_resp!(direct.reply().await, b"+PONG\r\n");
    assert_resp!(direct.reply().await, b"+OK\r\n");
    assert_closed_with_nothing_more(&mut direct, Duration::from_millis(500), "redis").await;

    let mut a = raw_proxy(&proxy).await;
    a.send(&encode_many(&[
        &[b"SELECT", b"0"], // pins: the client has its own connection from here
        &[b"PING"],
        &[b"QUIT"],
        &[b"SET", b"viaproxy", b"1"],
        &[b"PING"],
    ]))
    .await;
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(a.reply().await, b"+PONG\r\n");
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_closed_with_nothing_more(&mut a, Duration::from_millis(500), "proxy after QUIT").await;
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"EXISTS", b"direct", b"viaproxy"]).await, b":0\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_mid_pipeline_on_a_shared_client_ends_like_redis() {
    // The same on a never-pinned client, where the proxy answers QUIT itself.
    let redis = RedisServer::start();
    let proxy = common::proxy(SHARED1, &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    a.send(&encode_many(&[
        &[b"INCR", b"n"],
        &[b"PING"],
        &[b"QUIT"],
        &[b"SET", b"after", b"1"],
        &[b"PING"],
    ]))
    .await;
    assert_resp!(a.reply().await, b":1\r\n");
    assert_resp!(a.reply().await, b"+PONG\r\n");
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_closed_with_nothing_more(&mut a, Duration::from_millis(500), "proxy after QUIT").await;
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"EXISTS", b"after"]).await, b":0\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_inside_multi_with_a_policy_append_keeps_the_exec_reply() {
    // Redis answers WATCH inside MULTI with an error right away, does not queue it and does
    // not abort the transaction: the proxy must not count it among the queued commands, or
    // the EXEC array (with the hidden EXPIRE removed) would not match its layout.
    let redis = RedisServer::start();
    let mut direct = redis.raw().await;
    let cmds: &[&[&[u8]]] = &[
        &[b"MULTI"],
        &[b"WATCH", b"rate_limit:login:2"],
        &[b"INCR", b"rate_limit:login:1"],
        &[b"EXEC"],
    ];
    direct.send(&encode_many(cmds)).await;
    assert_resp!(direct.reply().await, b"+OK\r\n");
    assert_resp!(
        direct.reply().await,
        b"-ERR WATCH inside MULTI is not allowed\r\n"
    );
    assert_resp!(direct.reply().await, b"+QUEUED\r\n");
    assert_resp!(direct.reply().await, b"*1\r\n:1\r\n");

    let proxy = common::proxy(POLICY, &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    a.send(&encode_many(cmds)).await;
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(
        a.reply().await,
        b"-ERR WATCH inside MULTI is not allowed\r\n"
    );
    assert_resp!(a.reply().await, b"+QUEUED\r\n");
    assert_resp!(a.reply().await, b"*1\r\n:2\r\n", "EXEC through the proxy");
    assert_resp!(a.ask(&[b"TTL", b"rate_limit:login:1"]).await, b":300\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_inside_multi_then_subscribe_in_exec_receives_messages() {
    // The same without any policy: the queued SUBSCRIBE takes effect at EXEC, and the first
    // published message is a message, not a reply.
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    a.send(&encode_many(&[
        &[b"MULTI"],
        &[b"WATCH", b"x"],
        &[b"SUBSCRIBE", b"ch"],
        &[b"EXEC"],
    ]))
    .await;
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(
        a.reply().await,
        b"-ERR WATCH inside MULTI is not allowed\r\n"
    );
    assert_resp!(a.reply().await, b"+QUEUED\r\n");
    let mut exec = b"*1\r\n".to_vec();
    exec.extend_from_slice(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
    assert_resp!(a.reply().await, exec);
    let mut p = redis.raw().await;
    assert_resp!(p.ask(&[b"PUBLISH", b"ch", b"hello"]).await, b":1\r\n");
    assert_resp!(
        a.reply().await,
        bulk_array(&[b"message", b"ch", b"hello"]),
        "published message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_pipelined_with_reset_keeps_pairing() {
    // MONITOR and RESET in one write, with the proxy selecting database 1 on its connections:
    // RESET is queued for pairing before MONITOR's +OK arrives, and its reply must be paired
    // with it in monitor mode too, so that the hidden SELECT's +OK never reaches the client.
    let redis = RedisServer::start();
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"SELECT", b"1"]).await, b"+OK\r\n");
    assert_resp!(d.ask(&[b"SET", b"k", b"db1"]).await, b"+OK\r\n");
    let proxy = common::proxy("", &format!("{}/1", redis.url())).await;
    let mut a = raw_proxy(&proxy).await;
    a.send(&encode_many(&[&[b"MONITOR"], &[b"RESET"]])).await;
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(a.reply().await, b"+RESET\r\n");
    assert_silent(&mut a, Duration::from_millis(300), "after +RESET").await;
    assert_resp!(a.ask(&[b"GET", b"k"]).await, bulk(b"db1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_pipelined_with_commands_leaves_no_stale_entry_for_the_read_timeout() {
    // Without a handshake: the entries queued before MONITOR's +OK are all paired, so nothing
    // is left owed for the read timeout to fail the idle client on.
    let redis = RedisServer::start();
    let proxy = common::proxy("upstream:\n  read_timeout: 200ms\n", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    a.send(&encode_many(&[&[b"MONITOR"], &[b"PING"], &[b"RESET"]]))
        .await;
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(a.reply().await, b"+PONG\r\n");
    let line = a.reply().await;
    assert!(
        line.ends_with(b"\"PING\"\r\n"),
        "monitor line: {}",
        show(&line)
    );
    assert_resp!(a.reply().await, b"+RESET\r\n");
    // Idle, with nothing owed.
    assert_silent(&mut a, Duration::from_millis(600), "idle after RESET").await;
    assert_resp!(a.ask(&[b"PING"]).await, b"+PONG\r\n");
}

/// Samples `rg`'s resident memory every 20 ms until `until` resolves; returns the highest
/// growth over `base` seen, and `until`'s output.
async fn peak_rss_until<T>(
    rg: &Respguard,
    base: usize,
    until: impl std::future::Future<Output = T>,
) -> (usize, T) {
    let mut peak = 0;
    tokio::pin!(until);
    loop {
        peak = peak.max(rg.rss().saturating_sub(base));
        tokio::select! {
            out = &mut until => return (peak, out),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// Redis's `INFO` field `name` (e.g. from `commandstats`) as text.
async fn redis_info(redis: &RedisServer, section: &[u8], name: &str) -> Option<String> {
    let mut r = redis.raw().await;
    let info = r.ask(&[b"INFO", section]).await;
    let prefix = format!("{name}:");
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_owned))
}

/// Whether Redis has executed `n` GETs and holds no reply in any output buffer: every reply
/// was read by the proxy.
async fn redis_answered_gets(redis: &RedisServer, n: usize) -> bool {
    let calls = redis_info(redis, b"commandstats", "cmdstat_get")
        .await
        .and_then(|v| {
            v.split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|c| c.parse::<usize>().ok())
        })
        .unwrap_or(0);
    calls >= n && redis_output_memory(redis).await == 0
}

const NEVER_READS: &str =
    "upstream:\n  shared_connections: 1\nlimits:\n  max_buffered_bytes: 16mb\n  max_client_output: 16mb\n";

/// A client on a shared connection that never reads its replies: the proxy reads them all from
/// Redis (the shared connection cannot wait for one client) without its memory growing by
/// what the client leaves unread, and another client on the same connection is served.
/// Measured on the respguard binary's own process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_client_that_never_reads_keeps_proxy_memory_bounded() {
    let redis = RedisServer::start();
    let mut d = redis.raw().await;
    let value = vec![b'v'; 1024 * 1024];
    assert_resp!(d.ask(&[b"SET", b"big", &value]).await, b"+OK\r\n");
    let rg = Respguard::start_yaml(NEVER_READS, &redis.url()).await;
    let before = rg.rss();
    let mut a = Raw::connect(rg.listen).await;
    let get: &[&[u8]] = &[b"GET", b"big"];
    a.send(&encode_many(&vec![get; 300])).await;
    let redis_ref = &redis;
    let (peak, answered) = peak_rss_until(
        &rg,
        before,
        common::eventually(Duration::from_secs(30), || async move {
            redis_answered_gets(redis_ref, 300).await
        }),
    )
    .await;
    assert!(answered, "Redis never had all 300 replies read from it");
    // Another client on the same shared connection is unaffected.
    let mut b = Raw::connect(rg.listen).await;
    assert_resp!(b.ask(&[b"PING"]).await, b"+PONG\r\n");
    assert_resp!(b.ask(&[b"GET", b"big"]).await, bulk(&value));
    assert!(
        peak < 64 * 1024 * 1024,
        "proxy grew by {} MB for one client that does not read (300 MB of replies)",
        peak / (1024 * 1024)
    );
    drop(a);
}

/// README: a client on a shared connection that leaves more than `max_buffered_bytes` of
/// replies unread is disconnected (like Redis's `client-output-buffer-limit`); what reached it
/// before the close is whole replies, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_client_that_never_reads_is_disconnected() {
    let redis = RedisServer::start();
    let mut d = redis.raw().await;
    let value = vec![b'v'; 1024 * 1024];
    assert_resp!(d.ask(&[b"SET", b"big", &value]).await, b"+OK\r\n");
    let rg = Respguard::start_yaml(NEVER_READS, &redis.url()).await;
    let mut a = Raw::connect(rg.listen).await;
    let get: &[&[u8]] = &[b"GET", b"big"];
    a.send(&encode_many(&vec![get; 300])).await;
    // The client never reads: wait for the proxy to count it gone.
    let admin = rg.admin;
    let gone = common::eventually(Duration::from_secs(20), || async move {
        let m = common::metrics_at(admin).await;
        common::metric(&m, "respguard_client_connections") == Some(0.0)
    })
    .await;
    assert!(
        gone,
        "the client that does not read was never disconnected\n{}\nlog:\n{}",
        common::metric_lines(
            &common::metrics_at(admin).await,
            "respguard_client_connections"
        ),
        rg.log_text()
    );
    let mut b = Raw::connect(rg.listen).await;
    assert_resp!(b.ask(&[b"GET", b"big"]).await, bulk(&value));
    let want = bulk(&value);
    let frames = match a.rest_until_closed(Duration::from_secs(10)).await {
        Ok(frames) => frames,
        Err(frames) => panic!(
            "the client's connection is still open after {} replies",
            frames.len()
        ),
    };
    assert!(frames.len() < 300, "{} replies delivered", frames.len());
    for (i, f) in frames.iter().enumerate() {
        assert!(f == &want, "reply {i} differs ({} bytes)", f.len());
    }
}

/// Redis's `CLIENT LIST` output-buffer memory (`omem`) summed over its clients.
async fn redis_output_memory(redis: &RedisServer) -> usize {
    let mut r = redis.raw().await;
    let list = r.ask(&[b"CLIENT", b"LIST"]).await;
    String::from_utf8_lossy(&list)
        .split_whitespace()
        .filter_map(|f| f.strip_prefix("omem="))
        .filter_map(|v| v.parse::<usize>().ok())
        .sum()
}

/// With its own upstream connection, a client that does not read makes the proxy stop reading
/// Redis (Redis holds the replies in its output buffer), so the proxy's memory stays bounded,
/// and every reply arrives, in order, once the client reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_client_that_never_reads_keeps_proxy_memory_bounded() {
    let redis = RedisServer::start();
    let mut d = redis.raw().await;
    let value = vec![b'v'; 1024 * 1024];
    assert_resp!(d.ask(&[b"SET", b"big", &value]).await, b"+OK\r\n");
    let rg = Respguard::start_yaml("upstream:\n  shared_connections: 0\n", &redis.url()).await;
    let before = rg.rss();
    let mut a = Raw::connect(rg.listen).await;
    let get: &[&[u8]] = &[b"GET", b"big"];
    a.send(&encode_many(&vec![get; 300])).await;
    // Backpressure reached Redis: replies wait in its output buffer, not in the proxy.
    let redis_ref = &redis;
    let (peak, held) = peak_rss_until(
        &rg,
        before,
        common::eventually(Duration::from_secs(20), || async move {
            redis_output_memory(redis_ref).await > 64 * 1024 * 1024
        }),
    )
    .await;
    assert!(
        held,
        "Redis never held the unread replies: the proxy kept reading them"
    );
    assert!(
        peak < 64 * 1024 * 1024,
        "proxy grew by {} MB",
        peak / (1024 * 1024)
    );
    // And the client still gets every reply, in order, once it reads.
    let want = bulk(&value);
    for i in 0..300 {
        let r = a.reply().await;
        assert!(r == want, "reply {i} differs ({} bytes)", r.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_then_stateful_in_one_write_keeps_order_and_state() {
    let redis = RedisServer::start();
    let proxy = common::proxy(SHARED1, &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    a.send(&encode_many(&[
        &[b"SET", b"k", b"db0"],
        &[b"INCR", b"n"],
        &[b"SELECT", b"2"],
        &[b"SET", b"k", b"db2"],
        &[b"MULTI"],
        &[b"INCR", b"n"],
        &[b"GET", b"k"],
        &[b"EXEC"],
        &[b"RPUSH", b"l", b"x"],
        &[b"BLPOP", b"l", b"1"],
        &[b"SUBSCRIBE", b"c"],
        &[b"PING"],
    ]))
    .await;
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(a.reply().await, b":1\r\n");
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(a.reply().await, b"+QUEUED\r\n");
    assert_resp!(a.reply().await, b"+QUEUED\r\n");
    let mut exec = b"*2\r\n:1\r\n".to_vec();
    exec.extend_from_slice(&bulk(b"db2"));
    assert_resp!(a.reply().await, exec);
    assert_resp!(a.reply().await, b":1\r\n");
    assert_resp!(a.reply().await, bulk_array(&[b"l", b"x"]));
    assert_resp!(
        a.reply().await,
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"
    );
    assert_resp!(a.reply().await, bulk_array(&[b"pong", b""]));
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"GET", b"k"]).await, bulk(b"db0"));
    assert_resp!(d.ask(&[b"PUBLISH", b"c", b"m"]).await, b":1\r\n");
    assert_resp!(a.reply().await, bulk_array(&[b"message", b"c", b"m"]));
}

/// A client's shared command is stuck behind another client's running script; its SELECT
/// (which moves it to a connection of its own) must wait for that reply: sent earlier, Redis
/// would answer it -BUSY, and the replies must keep their order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_waits_for_late_shared_replies() {
    let redis = RedisServer::start_with(common::BUSY_AFTER_10MS);
    let proxy = common::proxy(SHARED1, &redis.url()).await;
    let mut slow = raw_proxy(&proxy).await;
    let mut a = raw_proxy(&proxy).await;
    slow.cmd(&[b"EVAL", common::ENDLESS_SCRIPT, b"0"]).await;
    redis.wait_busy().await;
    let unread = redis.unread_bytes();
    let pipeline = encode_many(&[
        &[b"SET", b"k", b"db0"],
        &[b"SELECT", b"3"],
        &[b"GET", b"k"],
        &[b"SET", b"k", b"db3"],
    ]);
    a.send(&pipeline).await;
    // a's SET waits behind the script on the shared connection.
    redis.wait_unread(unread + 29).await;
    redis.kill_script().await;
    let killed = slow.reply().await;
    assert!(
        killed.starts_with(b"-") && show(&killed).contains("Script killed"),
        "{}",
        show(&killed)
    );
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(a.reply().await, b"$-1\r\n");
    assert_resp!(a.reply().await, b"+OK\r\n");
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"GET", b"k"]).await, bulk(b"db0"));
    assert_resp!(d.ask(&[b"SELECT", b"3"]).await, b"+OK\r\n");
    assert_resp!(d.ask(&[b"GET", b"k"]).await, bulk(b"db3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_interleave_megabyte_replies_on_one_shared_connection() {
    let redis = RedisServer::start();
    let mut d = redis.raw().await;
    let va = vec![b'a'; 1024 * 1024];
    let vb = vec![b'b'; 1024 * 1024 + 7];
    assert_resp!(d.ask(&[b"SET", b"ka", &va]).await, b"+OK\r\n");
    assert_resp!(d.ask(&[b"SET", b"kb", &vb]).await, b"+OK\r\n");
    let proxy = common::proxy(SHARED1, &redis.url()).await;
    let mut tasks = Vec::new();
    for (key, val) in [(b"ka".to_vec(), va), (b"kb".to_vec(), vb)] {
        let mut c = raw_proxy(&proxy).await;
        tasks.push(tokio::spawn(async move {
            for round in 0..3 {
                let mut cmds: Vec<&[&[u8]]> = Vec::new();
                let get: &[&[u8]] = &[b"GET", &key];
                let ping: &[&[u8]] = &[b"ECHO", &key];
                for _ in 0..5 {
                    cmds.push(get);
                    cmds.push(ping);
                }
                c.send(&encode_many(&cmds)).await;
                let want = bulk(&val);
                for i in 0..5 {
                    let r = c.reply().await;
                    assert!(r == want, "round {round} GET {i}: {} bytes", r.len());
                    assert_resp!(c.reply().await, bulk(&key));
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_on_a_never_pinned_client() {
    let redis = RedisServer::start();
    let proxy = common::proxy(SHARED1, &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    a.send(&encode_many(&[
        &[b"INCR", b"n"],
        &[b"RESET"],
        &[b"INCR", b"n"],
    ]))
    .await;
    assert_resp!(a.reply().await, b":1\r\n");
    assert_resp!(a.reply().await, b"+RESET\r\n");
    assert_resp!(a.reply().await, b":2\r\n");
    assert_resp!(a.ask(&[b"RESET"]).await, b"+RESET\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_error_after_pipelined_shared_commands() {
    let redis = RedisServer::start();
    let proxy = common::proxy(SHARED1, &redis.url()).await;
    let mut direct = redis.raw().await;
    let mut bytes = encode_many(&[&[b"INCR", b"d"], &[b"PING"]]);
    bytes.extend_from_slice(b"*1\r\n$x\r\n");
    direct.send(&bytes).await;
    assert_resp!(direct.reply().await, b":1\r\n");
    assert_resp!(direct.reply().await, b"+PONG\r\n");
    assert_resp!(
        direct.reply().await,
        b"-ERR Protocol error: invalid bulk length\r\n"
    );
    assert_closed_with_nothing_more(&mut direct, Duration::from_millis(500), "redis").await;
    let mut a = raw_proxy(&proxy).await;
    let mut bytes = encode_many(&[&[b"INCR", b"p"], &[b"PING"]]);
    bytes.extend_from_slice(b"*1\r\n$x\r\n");
    a.send(&bytes).await;
    assert_resp!(a.reply().await, b":1\r\n");
    assert_resp!(a.reply().await, b"+PONG\r\n");
    assert_resp!(
        a.reply().await,
        b"-ERR Protocol error: invalid bulk length\r\n"
    );
    assert_closed_with_nothing_more(&mut a, Duration::from_millis(500), "proxy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_with_shared_replies_in_flight_does_not_hurt_others() {
    let redis = RedisServer::start();
    let mut d = redis.raw().await;
    let value = vec![b'v'; 1024 * 1024];
    assert_resp!(d.ask(&[b"SET", b"big", &value]).await, b"+OK\r\n");
    let proxy = common::proxy(SHARED1, &redis.url()).await;
    let mut b = raw_proxy(&proxy).await;
    for round in 0..5 {
        let mut a = raw_proxy(&proxy).await;
        let get: &[&[u8]] = &[b"GET", b"big"];
        a.send(&encode_many(&vec![get; 20])).await;
        b.cmd(&[b"INCR", b"b"]).await;
        drop(a);
        b.cmd(&[b"ECHO", b"after"]).await;
        assert_resp!(b.reply().await, format!(":{}\r\n", round + 1));
        assert_resp!(b.reply().await, bulk(b"after"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reply_off_and_skip_with_a_policy_append() {
    let redis = RedisServer::start();
    let proxy = common::proxy(POLICY, &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    a.send(&encode_many(&[
        &[b"CLIENT", b"REPLY", b"OFF"],
        &[b"INCR", b"rate_limit:a:1"],
        &[b"INCR", b"rate_limit:a:1"],
        &[b"CLIENT", b"REPLY", b"ON"],
        &[b"TTL", b"rate_limit:a:1"],
        &[b"CLIENT", b"REPLY", b"SKIP"],
        &[b"INCR", b"rate_limit:a:2"],
        &[b"GET", b"rate_limit:a:1"],
        &[b"TTL", b"rate_limit:a:2"],
    ]))
    .await;
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(a.reply().await, b":300\r\n");
    assert_resp!(a.reply().await, bulk(b"2"));
    assert_resp!(a.reply().await, b":300\r\n");
    assert_silent(&mut a, Duration::from_millis(200), "after the pipeline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_3_then_ping_and_exec_variants() {
    let redis = RedisServer::start();
    let proxy = common::proxy(SHARED1, &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    a.send(&encode_many(&[
        &[b"INCR", b"n"],
        &[b"HELLO", b"3"],
        &[b"PING"],
    ]))
    .await;
    assert_resp!(a.reply().await, b":1\r\n");
    let hello = a.reply().await;
    assert!(hello.starts_with(b"%7\r\n"), "HELLO: {}", show(&hello));
    assert_resp!(a.reply().await, b"+PONG\r\n");
    // Empty EXEC, and EXEC aborted by WATCH, in RESP3.
    a.send(&encode_many(&[&[b"MULTI"], &[b"EXEC"]])).await;
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(a.reply().await, b"*0\r\n");
    assert_resp!(a.ask(&[b"WATCH", b"w"]).await, b"+OK\r\n");
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"SET", b"w", b"1"]).await, b"+OK\r\n");
    a.send(&encode_many(&[&[b"MULTI"], &[b"INCR", b"n"], &[b"EXEC"]]))
        .await;
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(a.reply().await, b"+QUEUED\r\n");
    assert_resp!(a.reply().await, b"_\r\n");
    assert_resp!(a.ask(&[b"GET", b"n"]).await, bulk(b"1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_variants_in_resp2_with_policy() {
    let redis = RedisServer::start();
    let proxy = common::proxy(POLICY, &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    a.send(&encode_many(&[&[b"MULTI"], &[b"EXEC"]])).await;
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(a.reply().await, b"*0\r\n");
    assert_resp!(a.ask(&[b"WATCH", b"rate_limit:w:1"]).await, b"+OK\r\n");
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"SET", b"rate_limit:w:1", b"5"]).await, b"+OK\r\n");
    a.send(&encode_many(&[
        &[b"MULTI"],
        &[b"INCR", b"rate_limit:w:1"],
        &[b"EXEC"],
    ]))
    .await;
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(a.reply().await, b"+QUEUED\r\n");
    assert_resp!(a.reply().await, b"*-1\r\n");
    assert_resp!(a.ask(&[b"GET", b"rate_limit:w:1"]).await, bulk(b"5"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_then_reset_then_commands() {
    let redis = RedisServer::start();
    let proxy = common::proxy(SHARED1, &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    a.send(&encode_many(&[
        &[b"SUBSCRIBE", b"c1", b"c2"],
        &[b"RESET"],
        &[b"GET", b"x"],
    ]))
    .await;
    assert_resp!(
        a.reply().await,
        b"*3\r\n$9\r\nsubscribe\r\n$2\r\nc1\r\n:1\r\n"
    );
    assert_resp!(
        a.reply().await,
        b"*3\r\n$9\r\nsubscribe\r\n$2\r\nc2\r\n:2\r\n"
    );
    assert_resp!(a.reply().await, b"+RESET\r\n");
    assert_resp!(a.reply().await, b"$-1\r\n");
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"PUBLISH", b"c1", b"m"]).await, b":0\r\n");
    assert_resp!(a.ask(&[b"LPUSH", b"l", b"message"]).await, b":1\r\n");
    assert_resp!(
        a.ask(&[b"LRANGE", b"l", b"0", b"-1"]).await,
        bulk_array(&[b"message"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_then_commands_from_another_client_then_reset() {
    let redis = RedisServer::start();
    let proxy = common::proxy(SHARED1, &redis.url()).await;
    let mut m = raw_proxy(&proxy).await;
    assert_resp!(m.ask(&[b"MONITOR"]).await, b"+OK\r\n");
    let mut b = raw_proxy(&proxy).await;
    assert_resp!(b.ask(&[b"SET", b"mk", b"1"]).await, b"+OK\r\n");
    let line = m.reply().await;
    assert!(
        line.ends_with(b"\"SET\" \"mk\" \"1\"\r\n"),
        "{}",
        show(&line)
    );
    assert_resp!(m.ask(&[b"RESET"]).await, b"+RESET\r\n");
    assert_resp!(m.ask(&[b"GET", b"mk"]).await, bulk(b"1"));
}

/// A client with a 100,000-command pipeline on the one shared connection does not hold
/// back a small client: with the big pipeline in flight (queued behind a running script, so
/// the contention is certain), the small client's command runs before the big pipeline has
/// finished, and everyone's replies stay in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_shared_pipeline_does_not_starve_a_small_client() {
    const BIG: usize = 100_000;
    let redis = RedisServer::start_with(common::BUSY_AFTER_10MS);
    let proxy = common::proxy(SHARED1, &redis.url()).await;
    let mut blocker = raw_proxy(&proxy).await;
    let big = raw_proxy(&proxy).await;
    let mut small = raw_proxy(&proxy).await;
    blocker.cmd(&[b"EVAL", common::ENDLESS_SCRIPT, b"0"]).await;
    redis.wait_busy().await;
    let incr: &[&[u8]] = &[b"INCR", b"big"];
    let bytes = encode_many(&vec![incr; BIG]);
    let reader = tokio::spawn(async move {
        let (mut rd, mut wr) = big.stream.into_split();
        let w = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            wr.write_all(&bytes).await.expect("write");
            wr
        });
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let mut want = Vec::new();
        for i in 1..=BIG {
            want.extend_from_slice(format!(":{i}\r\n").as_bytes());
        }
        let mut chunk = vec![0u8; 256 * 1024];
        while buf.len() < want.len() {
            let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut chunk))
                .await
                .expect("big replies keep coming")
                .expect("read");
            assert!(n > 0, "closed after {} bytes", buf.len());
            buf.extend_from_slice(&chunk[..n]);
        }
        assert!(buf == want, "100k INCR replies in order");
        let _ = w.await;
    });
    // The big pipeline is on its way to Redis, waiting behind the script.
    redis.wait_unread(16 * 1024).await;
    small.cmd(&[b"GET", b"big"]).await;
    redis.kill_script().await;
    let killed = blocker.reply().await;
    assert!(show(&killed).contains("Script killed"), "{}", show(&killed));
    // The GET ran while the big pipeline was still running: it sees a count below the end.
    let seen = small.reply().await;
    let text = show(&seen);
    let count: usize = text
        .split("\\r\\n")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("GET big: {text}"));
    assert!(
        count < BIG,
        "the small client was answered only after the whole big pipeline ({count})"
    );
    for i in 1..=50 {
        assert_resp!(small.ask(&[b"INCR", b"small"]).await, format!(":{i}\r\n"));
    }
    reader.await.expect("big client");
}

/// Redis dies while four clients have pipelines in flight on one shared connection: every
/// client gets an error (never another client's reply, never a silent close), and after the
/// error nothing but errors until its connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_shared_clients_gives_errors_never_foreign_replies() {
    let mut redis = RedisServer::start();
    let proxy = common::proxy(SHARED1, &redis.url()).await;
    let mut d = redis.raw().await;
    for i in 0..4 {
        let v = vec![b'0' + i as u8; 200_000];
        let k = format!("k{i}");
        assert_resp!(d.ask(&[b"SET", k.as_bytes(), &v]).await, b"+OK\r\n");
    }
    let (running_tx, mut running) = tokio::sync::mpsc::channel::<()>(4);
    let mut tasks = Vec::new();
    for i in 0..4u8 {
        let mut c = raw_proxy(&proxy).await;
        let running_tx = running_tx.clone();
        tasks.push(tokio::spawn(async move {
            let k = format!("k{i}");
            let want = bulk(&vec![b'0' + i; 200_000]);
            let get: &[&[u8]] = &[b"GET", k.as_bytes()];
            for round in 0..100_000 {
                {
                    use tokio::io::AsyncWriteExt;
                    if let Err(e) = c.stream.write_all(&encode_many(&[get, get, get])).await {
                        panic!("client {i}: write failed before any error reply: {e}");
                    }
                }
                let mut errors = 0;
                for _ in 0..3 {
                    match c.read_timeout(Duration::from_secs(10)).await {
                        None => panic!("client {i}: closed (or silent) without an error reply"),
                        Some(r) if r.starts_with(b"-ERR") => errors += 1,
                        Some(r) => assert!(
                            r == want,
                            "client {i} got a foreign reply: {}",
                            show(&r[..r.len().min(40)])
                        ),
                    }
                }
                if round == 0 {
                    let _ = running_tx.send(()).await;
                }
                if errors > 0 {
                    // After an error the client must be closed (its state is unknown).
                    while let Some(r) = c.read_timeout(Duration::from_secs(2)).await {
                        assert!(
                            r.starts_with(b"-ERR"),
                            "client {i} after error: {}",
                            show(&r[..r.len().min(40)])
                        );
                    }
                    return;
                }
            }
            panic!("client {i}: no error in 100000 rounds after Redis was killed");
        }));
    }
    drop(running_tx);
    // Every client has had a whole round answered, and is sending the next: kill Redis now.
    for _ in 0..4 {
        running
            .recv()
            .await
            .expect("a client failed before Redis was killed");
    }
    redis.kill();
    for t in tasks {
        t.await.expect("client task");
    }
}
