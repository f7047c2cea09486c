//! Per-connection state: every client keeps its own connection state (it leaves the shared
//! upstream connections for one of its own when it changes that state), so `SELECT`, `AUTH` (requirepass and ACL users), `CLIENT SETNAME`, `RESET`,
//! `QUIT`, transactions (`MULTI`/`EXEC`/`DISCARD`/`WATCH`), blocking commands, `MONITOR`,
//! scripting (`EVAL`/`EVALSHA`/`FCALL`) and `SCAN` cursors behave exactly as against Redis.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{bulk, bulk_array, encode_many, raw_proxy, show, wait_blocked, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_is_per_client_connection() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    let mut b = raw_proxy(&proxy).await;
    assert_resp!(a.ask(&[b"SELECT", b"1"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"SET", b"k", b"in-1"]).await, b"+OK\r\n");
    assert_resp!(b.ask(&[b"SET", b"k", b"in-0"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"GET", b"k"]).await, bulk(b"in-1"));
    assert_resp!(b.ask(&[b"GET", b"k"]).await, bulk(b"in-0"));
    assert_resp!(b.ask(&[b"SELECT", b"2"]).await, b"+OK\r\n");
    assert_resp!(b.ask(&[b"GET", b"k"]).await, b"$-1\r\n");
    assert_resp!(a.ask(&[b"GET", b"k"]).await, bulk(b"in-1"));
    // A new client starts in db 0 whatever the others selected.
    let mut c = raw_proxy(&proxy).await;
    assert_resp!(c.ask(&[b"GET", b"k"]).await, bulk(b"in-0"));
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"SELECT", b"1"]).await, b"+OK\r\n");
    assert_resp!(d.ask(&[b"GET", b"k"]).await, bulk(b"in-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_with_requirepass_is_per_client() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    let mut b = raw_proxy(&proxy).await;
    assert_resp!(
        a.ask(&[b"PING"]).await,
        &b"-NOAUTH Authentication required.\r\n"[..]
    );
    assert_resp!(
        a.ask(&[b"AUTH", b"wrong"]).await,
        &b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"[..]
    );
    assert_resp!(a.ask(&[b"AUTH", b"s3cret"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"PING"]).await, b"+PONG\r\n");
    assert_resp!(a.ask(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    // The other client's upstream connection is still unauthenticated.
    assert_resp!(
        b.ask(&[b"GET", b"k"]).await,
        &b"-NOAUTH Authentication required.\r\n"[..]
    );
    assert_resp!(b.ask(&[b"AUTH", b"default", b"s3cret"]).await, b"+OK\r\n");
    assert_resp!(b.ask(&[b"GET", b"k"]).await, bulk(b"v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_auth_is_per_client() {
    let redis = RedisServer::start_with(&["--requirepass", "adminpw"]);
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"AUTH", b"adminpw"]).await, b"+OK\r\n");
    assert_resp!(
        d.ask(&[
            b"ACL",
            b"SETUSER",
            b"alice",
            b"on",
            b">alicepw",
            b"~app:*",
            b"+@all"
        ])
        .await,
        b"+OK\r\n"
    );
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    assert_resp!(a.ask(&[b"AUTH", b"alice", b"alicepw"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"ACL", b"WHOAMI"]).await, bulk(b"alice"));
    assert_resp!(a.ask(&[b"SET", b"app:1", b"x"]).await, b"+OK\r\n");
    let denied = a.ask(&[b"SET", b"other", b"x"]).await;
    let mut direct_alice = redis.raw().await;
    assert_resp!(
        direct_alice.ask(&[b"AUTH", b"alice", b"alicepw"]).await,
        b"+OK\r\n"
    );
    assert_resp!(
        denied,
        direct_alice.ask(&[b"SET", b"other", b"x"]).await,
        "same refusal as Redis gives directly"
    );
    assert!(denied.starts_with(b"-NOPERM"), "{}", show(&denied));
    let mut b = raw_proxy(&proxy).await;
    assert_resp!(b.ask(&[b"AUTH", b"adminpw"]).await, b"+OK\r\n");
    assert_resp!(b.ask(&[b"ACL", b"WHOAMI"]).await, bulk(b"default"));
    assert_resp!(a.ask(&[b"ACL", b"WHOAMI"]).await, bulk(b"alice"));
    assert_resp!(b.ask(&[b"SET", b"other", b"y"]).await, b"+OK\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_setname_is_per_client() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    let mut b = raw_proxy(&proxy).await;
    assert_resp!(a.ask(&[b"CLIENT", b"SETNAME", b"alpha"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"CLIENT", b"GETNAME"]).await, bulk(b"alpha"));
    assert_resp!(b.ask(&[b"CLIENT", b"GETNAME"]).await, b"$-1\r\n");
    assert_resp!(b.ask(&[b"CLIENT", b"SETNAME", b"beta"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"CLIENT", b"GETNAME"]).await, bulk(b"alpha"));
    // Redis sees two distinct connections with those names.
    let mut d = redis.raw().await;
    let list = d.ask(&[b"CLIENT", b"LIST"]).await;
    let text = String::from_utf8_lossy(&list);
    assert_eq!(text.matches(" name=alpha ").count(), 1, "{text}");
    assert_eq!(text.matches(" name=beta ").count(), 1, "{text}");
    // CLIENT ID differs per client connection.
    let ida = a.ask(&[b"CLIENT", b"ID"]).await;
    let idb = b.ask(&[b"CLIENT", b"ID"]).await;
    assert!(ida.starts_with(b":") && idb.starts_with(b":"));
    assert_ne!(ida, idb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_clears_db_name_and_protocol() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    assert_resp!(a.ask(&[b"SELECT", b"3"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"SET", b"k", b"db3"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"CLIENT", b"SETNAME", b"named"]).await, b"+OK\r\n");
    let hello = a.ask(&[b"HELLO", b"3"]).await;
    assert!(hello.starts_with(b"%7\r\n"), "{}", show(&hello));
    assert_resp!(a.ask(&[b"RESET"]).await, b"+RESET\r\n");
    assert_resp!(a.ask(&[b"CLIENT", b"GETNAME"]).await, b"$-1\r\n");
    assert_resp!(a.ask(&[b"GET", b"k"]).await, b"$-1\r\n");
    assert_resp!(a.ask(&[b"HSET", b"h", b"f", b"v"]).await, b":1\r\n");
    assert_resp!(a.ask(&[b"HGETALL", b"h"]).await, bulk_array(&[b"f", b"v"]));
    // RESET inside MULTI and in subscribe mode returns to a normal connection too.
    assert_resp!(a.ask(&[b"MULTI"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"INCR", b"n"]).await, b"+QUEUED\r\n");
    assert_resp!(a.ask(&[b"RESET"]).await, b"+RESET\r\n");
    assert_resp!(a.ask(&[b"EXEC"]).await, &b"-ERR EXEC without MULTI\r\n"[..]);
    assert_resp!(a.ask(&[b"GET", b"n"]).await, b"$-1\r\n");
    assert_resp!(
        a.ask(&[b"SUBSCRIBE", b"ch"]).await,
        &b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"[..]
    );
    assert_resp!(a.ask(&[b"RESET"]).await, b"+RESET\r\n");
    assert_resp!(a.ask(&[b"SET", b"after", b"1"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"GET", b"after"]).await, bulk(b"1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_keeps_the_proxys_credentials_and_database() {
    let redis = RedisServer::start_with(&["--requirepass", "pw0"]);
    let url = format!("redis://:pw0@127.0.0.1:{}/2", redis.port);
    let proxy = common::proxy("", &url).await;
    let mut a = raw_proxy(&proxy).await;
    // The proxy's handshake authenticated and selected db 2.
    assert_resp!(a.ask(&[b"SET", b"k", b"db2"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"CLIENT", b"SETNAME", b"x"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"RESET"]).await, b"+RESET\r\n");
    assert_resp!(a.ask(&[b"PING"]).await, b"+PONG\r\n");
    assert_resp!(a.ask(&[b"GET", b"k"]).await, bulk(b"db2"));
    assert_resp!(a.ask(&[b"CLIENT", b"GETNAME"]).await, b"$-1\r\n");
    // Pipelined RESETs stay paired.
    a.send(&encode_many(&[
        &[b"RESET"],
        &[b"GET", b"k"],
        &[b"RESET"],
        &[b"RESET"],
        &[b"PING"],
    ]))
    .await;
    assert_resp!(a.reply().await, b"+RESET\r\n");
    assert_resp!(a.reply().await, bulk(b"db2"));
    assert_resp!(a.reply().await, b"+RESET\r\n");
    assert_resp!(a.reply().await, b"+RESET\r\n");
    assert_resp!(a.reply().await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_out_of_monitor_keeps_the_proxys_credentials() {
    let redis = RedisServer::start_with(&["--requirepass", "pw1"]);
    let url = format!("redis://:pw1@127.0.0.1:{}/1", redis.port);
    let proxy = common::proxy("", &url).await;
    let mut a = raw_proxy(&proxy).await;
    assert_resp!(a.ask(&[b"SET", b"k", b"db1"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"MONITOR"]).await, b"+OK\r\n");
    a.cmd(&[b"RESET"]).await;
    // Redis may echo the RESET to the monitor before its reply.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let f = a.reply().await;
        if f == b"+RESET\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "no +RESET");
    }
    assert_resp!(a.ask(&[b"PING"]).await, b"+PONG\r\n");
    assert_resp!(a.ask(&[b"GET", b"k"]).await, bulk(b"db1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_replies_ok_then_closes() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    assert_resp!(a.ask(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"QUIT"]).await, b"+OK\r\n");
    assert!(
        a.closed_within(Duration::from_secs(2)).await,
        "closed after QUIT"
    );
    // Pipelined: replies before QUIT arrive, nothing after it runs.
    let mut b = raw_proxy(&proxy).await;
    b.send(&encode_many(&[
        &[b"INCR", b"n"],
        &[b"QUIT"],
        &[b"INCR", b"n"],
    ]))
    .await;
    assert_resp!(b.reply().await, b":1\r\n");
    assert_resp!(b.reply().await, b"+OK\r\n");
    assert!(
        b.closed_within(Duration::from_secs(2)).await,
        "closed after QUIT"
    );
    let mut c = raw_proxy(&proxy).await;
    assert_resp!(c.ask(&[b"GET", b"n"]).await, bulk(b"1"));
    // Inline QUIT, as a telnet user types it.
    c.send(b"QUIT\r\n").await;
    assert_resp!(c.reply().await, b"+OK\r\n");
    assert!(c.closed_within(Duration::from_secs(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_exec_and_discard() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    assert_resp!(a.ask(&[b"MULTI"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"SET", b"k", b"v"]).await, b"+QUEUED\r\n");
    assert_resp!(a.ask(&[b"INCR", b"n"]).await, b"+QUEUED\r\n");
    assert_resp!(a.ask(&[b"GET", b"k"]).await, b"+QUEUED\r\n");
    assert_resp!(a.ask(&[b"EXEC"]).await, b"*3\r\n+OK\r\n:1\r\n$1\r\nv\r\n");
    assert_resp!(a.ask(&[b"MULTI"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"SET", b"d", b"1"]).await, b"+QUEUED\r\n");
    assert_resp!(a.ask(&[b"DISCARD"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"GET", b"d"]).await, b"$-1\r\n");
    assert_resp!(a.ask(&[b"EXEC"]).await, &b"-ERR EXEC without MULTI\r\n"[..]);
    assert_resp!(
        a.ask(&[b"DISCARD"]).await,
        &b"-ERR DISCARD without MULTI\r\n"[..]
    );
    // A command refused while queueing aborts the transaction.
    assert_resp!(a.ask(&[b"MULTI"]).await, b"+OK\r\n");
    let e = a.ask(&[b"NOSUCHCMD"]).await;
    assert!(e.starts_with(b"-ERR unknown command"), "{}", show(&e));
    assert_resp!(a.ask(&[b"INCR", b"n"]).await, b"+QUEUED\r\n");
    assert_resp!(
        a.ask(&[b"EXEC"]).await,
        &b"-EXECABORT Transaction discarded because of previous errors.\r\n"[..]
    );
    // Runtime errors inside EXEC are per element.
    assert_resp!(a.ask(&[b"MULTI"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"INCR", b"k"]).await, b"+QUEUED\r\n");
    assert_resp!(a.ask(&[b"INCR", b"n"]).await, b"+QUEUED\r\n");
    assert_resp!(
        a.ask(&[b"EXEC"]).await,
        &b"*2\r\n-ERR value is not an integer or out of range\r\n:2\r\n"[..]
    );
    // The whole transaction pipelined in one write.
    a.send(&encode_many(&[
        &[b"MULTI"],
        &[b"INCR", b"n"],
        &[b"INCR", b"n"],
        &[b"EXEC"],
        &[b"GET", b"n"],
    ]))
    .await;
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(a.reply().await, b"+QUEUED\r\n");
    assert_resp!(a.reply().await, b"+QUEUED\r\n");
    assert_resp!(a.reply().await, b"*2\r\n:3\r\n:4\r\n");
    assert_resp!(a.reply().await, bulk(b"4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_conflict_from_another_client_aborts_exec() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    let mut b = raw_proxy(&proxy).await;
    assert_resp!(a.ask(&[b"WATCH", b"w"]).await, b"+OK\r\n");
    assert_resp!(b.ask(&[b"SET", b"w", b"from-b"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"MULTI"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"SET", b"w", b"from-a"]).await, b"+QUEUED\r\n");
    assert_resp!(a.ask(&[b"EXEC"]).await, b"*-1\r\n");
    assert_resp!(a.ask(&[b"GET", b"w"]).await, bulk(b"from-b"));
    // Without a conflict the same transaction commits.
    assert_resp!(a.ask(&[b"WATCH", b"w"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"MULTI"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"SET", b"w", b"from-a"]).await, b"+QUEUED\r\n");
    assert_resp!(a.ask(&[b"EXEC"]).await, b"*1\r\n+OK\r\n");
    // In RESP3 the aborted EXEC is a null.
    let hello = a.ask(&[b"HELLO", b"3"]).await;
    assert!(hello.starts_with(b"%7\r\n"), "{}", show(&hello));
    assert_resp!(a.ask(&[b"WATCH", b"w"]).await, b"+OK\r\n");
    assert_resp!(b.ask(&[b"DEL", b"w"]).await, b":1\r\n");
    assert_resp!(a.ask(&[b"MULTI"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"GET", b"w"]).await, b"+QUEUED\r\n");
    assert_resp!(a.ask(&[b"EXEC"]).await, b"_\r\n");
    assert_resp!(a.ask(&[b"UNWATCH"]).await, b"+OK\r\n");
    assert_resp!(a.ask(&[b"PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_client_never_delays_another() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    let mut b = raw_proxy(&proxy).await;
    assert_resp!(b.ask(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    a.cmd(&[b"BLPOP", b"q", b"0"]).await;
    wait_blocked(&redis, 1).await;
    for _ in 0..100 {
        assert_resp!(b.ask(&[b"GET", b"k"]).await, bulk(b"v"));
    }
    // All of b's answers came while a was still blocked.
    assert_eq!(
        common::info_clients(&redis, "blocked_clients").await,
        Some(1),
        "a is still blocked"
    );
    assert!(
        a.read_timeout(Duration::from_millis(50)).await.is_none(),
        "BLPOP answered before anything was pushed"
    );
    assert_resp!(b.ask(&[b"RPUSH", b"q", b"item"]).await, b":1\r\n");
    assert_resp!(a.reply().await, bulk_array(&[b"q", b"item"]));
    assert_resp!(a.ask(&[b"PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_blocking_command_wakes_on_data() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut blpop = raw_proxy(&proxy).await;
    let mut brpop = raw_proxy(&proxy).await;
    let mut blmove = raw_proxy(&proxy).await;
    let mut bzpop = raw_proxy(&proxy).await;
    let mut xread = raw_proxy(&proxy).await;
    blpop.cmd(&[b"BLPOP", b"l1", b"0"]).await;
    brpop.cmd(&[b"BRPOP", b"l2", b"0"]).await;
    blmove
        .cmd(&[b"BLMOVE", b"src", b"dst", b"LEFT", b"RIGHT", b"0"])
        .await;
    bzpop.cmd(&[b"BZPOPMIN", b"z", b"0"]).await;
    xread
        .cmd(&[b"XREAD", b"BLOCK", b"0", b"STREAMS", b"s", b"$"])
        .await;
    wait_blocked(&redis, 5).await;
    let mut b = raw_proxy(&proxy).await;
    // WAIT with zero replicas answers at once; with one it times out (no replicas) with 0.
    assert_resp!(b.ask(&[b"WAIT", b"0", b"100"]).await, b":0\r\n");
    let t = Instant::now();
    assert_resp!(b.ask(&[b"WAIT", b"1", b"150"]).await, b":0\r\n");
    assert!(
        t.elapsed() >= Duration::from_millis(140),
        "{:?}",
        t.elapsed()
    );
    for (i, _) in [(); 20].iter().enumerate() {
        assert_resp!(
            b.ask(&[b"INCR", b"other"]).await,
            format!(":{}\r\n", i + 1).into_bytes()
        );
    }
    assert_resp!(b.ask(&[b"RPUSH", b"l1", b"a"]).await, b":1\r\n");
    assert_resp!(blpop.reply().await, bulk_array(&[b"l1", b"a"]));
    assert_resp!(b.ask(&[b"RPUSH", b"l2", b"x", b"y"]).await, b":2\r\n");
    assert_resp!(brpop.reply().await, bulk_array(&[b"l2", b"y"]));
    assert_resp!(b.ask(&[b"RPUSH", b"src", b"m"]).await, b":1\r\n");
    assert_resp!(blmove.reply().await, bulk(b"m"));
    assert_resp!(b.ask(&[b"ZADD", b"z", b"1", b"mem"]).await, b":1\r\n");
    assert_resp!(bzpop.reply().await, bulk_array(&[b"z", b"mem", b"1"]));
    assert_resp!(
        b.ask(&[b"XADD", b"s", b"1-1", b"f", b"v"]).await,
        bulk(b"1-1")
    );
    assert_resp!(
        xread.reply().await,
        &b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"[..]
    );
    // Blocking commands with a timeout return nil when it passes.
    assert_resp!(blpop.ask(&[b"BLPOP", b"none", b"0.05"]).await, b"*-1\r\n");
    assert_resp!(
        blmove
            .ask(&[b"BLMOVE", b"none", b"dst", b"LEFT", b"RIGHT", b"0.05"])
            .await,
        b"*-1\r\n",
        "Redis 7.0 answers a timed-out BLMOVE with a null array"
    );
    assert_resp!(
        b.ask(&[b"LRANGE", b"dst", b"0", b"-1"]).await,
        bulk_array(&[b"m"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_evalsha_and_fcall() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    assert_resp!(
        a.ask(&[
            b"EVAL",
            b"return redis.call('INCRBY', KEYS[1], ARGV[1])",
            b"1",
            b"k",
            b"5"
        ])
        .await,
        b":5\r\n"
    );
    assert_resp!(
        a.ask(&[b"EVAL", b"return {1, 'two', {3}}", b"0"]).await,
        b"*3\r\n:1\r\n$3\r\ntwo\r\n*1\r\n:3\r\n"
    );
    let script = b"return ARGV[1] .. redis.call('GET', KEYS[1])";
    let sha = a.ask(&[b"SCRIPT", b"LOAD", script]).await;
    assert!(sha.starts_with(b"$40\r\n"), "{}", show(&sha));
    let sha = sha[5..45].to_vec();
    assert_resp!(
        a.ask(&[b"EVALSHA", &sha, b"1", b"k", b"n="]).await,
        bulk(b"n=5")
    );
    assert_resp!(
        a.ask(&[b"EVALSHA", &[b'0'; 40], b"0"]).await,
        &b"-NOSCRIPT No matching script. Please use EVAL.\r\n"[..]
    );
    let lib = b"#!lua name=mylib\n\
redis.register_function('myecho', function(keys, args) return args[1] end)\n\
redis.register_function{function_name='myget', callback=function(keys, args) return redis.call('GET', keys[1]) end, flags={'no-writes'}}\n";
    assert_resp!(a.ask(&[b"FUNCTION", b"LOAD", lib]).await, bulk(b"mylib"));
    assert_resp!(
        a.ask(&[b"FCALL", b"myecho", b"0", b"hello"]).await,
        bulk(b"hello")
    );
    assert_resp!(
        a.ask(&[b"FCALL_RO", b"myget", b"1", b"k"]).await,
        bulk(b"5")
    );
    // Functions are server-wide: another client calls it too.
    let mut b = raw_proxy(&proxy).await;
    assert_resp!(
        b.ask(&[b"FCALL", b"myecho", b"0", b"from-b"]).await,
        bulk(b"from-b")
    );
    let e = a.ask(&[b"EVAL", b"return redis.call('NOPE')", b"0"]).await;
    assert!(e.starts_with(b"-ERR"), "{}", show(&e));
    assert_resp!(a.ask(&[b"PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_cursors_iterate_every_key() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut con = common::proxy_conn(&proxy).await;
    let mut mset = redis::cmd("MSET");
    let mut want = HashSet::new();
    for i in 0..1000 {
        mset.arg(format!("key:{i}")).arg(i);
        want.insert(format!("key:{i}"));
    }
    let ok: String = mset.query_async(&mut con).await.expect("MSET");
    assert_eq!(ok, "OK");
    let mut got = HashSet::new();
    let mut cursor: u64 = 0;
    let mut rounds = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("key:*")
            .arg("COUNT")
            .arg(100)
            .query_async(&mut con)
            .await
            .expect("SCAN");
        got.extend(keys);
        rounds += 1;
        cursor = next;
        if cursor == 0 {
            break;
        }
        assert!(rounds < 1000, "SCAN never finished");
    }
    assert!(rounds > 1, "1000 keys need more than one SCAN round");
    assert_eq!(got, want);
    // SSCAN over a large set as well.
    let mut sadd = redis::cmd("SADD");
    sadd.arg("set");
    for i in 0..1000 {
        sadd.arg(i);
    }
    let n: i64 = sadd.query_async(&mut con).await.expect("SADD");
    assert_eq!(n, 1000);
    let mut members = HashSet::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<i64>) = redis::cmd("SSCAN")
            .arg("set")
            .arg(cursor)
            .arg("COUNT")
            .arg(50)
            .query_async(&mut con)
            .await
            .expect("SSCAN");
        members.extend(page);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert_eq!(members, (0..1000).collect::<HashSet<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_shows_another_clients_commands() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut m = raw_proxy(&proxy).await;
    let mut b = raw_proxy(&proxy).await;
    assert_resp!(m.ask(&[b"MONITOR"]).await, b"+OK\r\n");
    assert_resp!(b.ask(&[b"SET", b"foo", b"bar"]).await, b"+OK\r\n");
    assert_resp!(b.ask(&[b"GET", b"foo"]).await, bulk(b"bar"));
    let line1 = m.reply().await;
    let line2 = m.reply().await;
    for (line, want) in [
        (&line1, " \"SET\" \"foo\" \"bar\"\r\n"),
        (&line2, " \"GET\" \"foo\"\r\n"),
    ] {
        let text = String::from_utf8_lossy(line);
        assert!(
            text.starts_with('+') && text.contains(" [0 127.0.0.1:") && text.ends_with(want),
            "monitor line {text:?}, want one ending {want:?}"
        );
    }
    // The monitoring client leaves with QUIT: +OK, then closed.
    m.cmd(&[b"QUIT"]).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let f = m.reply().await;
        if f == b"+OK\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "no +OK for QUIT");
    }
    assert!(m.closed_within(Duration::from_secs(2)).await);
    assert_resp!(b.ask(&[b"PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_with_auth_and_setname() {
    let redis = RedisServer::start_with(&["--requirepass", "hpw"]);
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    let hello = a
        .ask(&[
            b"HELLO", b"3", b"AUTH", b"default", b"hpw", b"SETNAME", b"h3",
        ])
        .await;
    assert!(hello.starts_with(b"%7\r\n"), "{}", show(&hello));
    assert_resp!(a.ask(&[b"CLIENT", b"GETNAME"]).await, bulk(b"h3"));
    assert_resp!(a.ask(&[b"HSET", b"h", b"f", b"v"]).await, b":1\r\n");
    assert_resp!(
        a.ask(&[b"HGETALL", b"h"]).await,
        b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n"
    );
    let mut b = raw_proxy(&proxy).await;
    let refused = b.ask(&[b"HELLO", b"3", b"AUTH", b"default", b"nope"]).await;
    assert_resp!(
        refused,
        &b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"[..]
    );
    // The failed HELLO left b in RESP2 and unauthenticated.
    assert_resp!(
        b.ask(&[b"PING"]).await,
        &b"-NOAUTH Authentication required.\r\n"[..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reply_off_and_skip_keep_replies_paired() {
    // CLIENT REPLY OFF/SKIP make Redis send no reply at all for some commands.
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    a.send(&encode_many(&[
        &[b"CLIENT", b"REPLY", b"OFF"],
        &[b"SET", b"a", b"1"],
        &[b"SET", b"b", b"2"],
        &[b"CLIENT", b"REPLY", b"ON"],
    ]))
    .await;
    assert_resp!(a.reply().await, b"+OK\r\n");
    a.send(&encode_many(&[
        &[b"CLIENT", b"REPLY", b"SKIP"],
        &[b"INCR", b"n"],
        &[b"GET", b"a"],
    ]))
    .await;
    assert_resp!(a.reply().await, bulk(b"1"));
    assert_resp!(a.ask(&[b"GET", b"b"]).await, bulk(b"2"));
    assert_resp!(a.ask(&[b"GET", b"n"]).await, bulk(b"1"));
    // QUIT still gives exactly +OK and a close: no stale replies are owed.
    a.cmd(&[b"QUIT"]).await;
    assert_resp!(a.reply().await, b"+OK\r\n");
    let extra = a.read_timeout(Duration::from_millis(300)).await;
    assert!(
        extra.is_none(),
        "unexpected frame after QUIT: {}",
        show(&extra.unwrap_or_default())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reply_off_does_not_trip_the_read_timeout() {
    let redis = RedisServer::start();
    let proxy = common::proxy("upstream:\n  read_timeout: 150ms\n", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    a.send(&encode_many(&[
        &[b"CLIENT", b"REPLY", b"OFF"],
        &[b"SET", b"a", b"1"],
    ]))
    .await;
    // Nothing is owed while replies are off, so nothing can time out.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_resp!(a.ask(&[b"CLIENT", b"REPLY", b"ON"]).await, b"+OK\r\n");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_resp!(a.ask(&[b"GET", b"a"]).await, bulk(b"1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changing_command_mid_pipeline_keeps_order_and_state() {
    // Whatever the proxy does with a client's upstream connection, a pipeline that switches
    // database half-way behaves as on one connection of its own.
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut a = raw_proxy(&proxy).await;
    let incr: &[&[u8]] = &[b"INCR", b"n"];
    let mut cmds: Vec<&[&[u8]]> = Vec::new();
    cmds.extend(std::iter::repeat_n(incr, 50));
    cmds.push(&[b"SET", b"a", b"db0"]);
    cmds.push(&[b"SELECT", b"1"]);
    cmds.push(&[b"SET", b"a", b"db1"]);
    cmds.extend(std::iter::repeat_n(incr, 50));
    cmds.push(&[b"GET", b"a"]);
    cmds.push(&[b"CLIENT", b"SETNAME", b"mid"]);
    cmds.push(&[b"CLIENT", b"GETNAME"]);
    a.send(&encode_many(&cmds)).await;
    for i in 1..=50 {
        assert_resp!(a.reply().await, format!(":{i}\r\n"));
    }
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(a.reply().await, b"+OK\r\n");
    for i in 1..=50 {
        assert_resp!(a.reply().await, format!(":{i}\r\n"), "db 1 counter");
    }
    assert_resp!(a.reply().await, bulk(b"db1"));
    assert_resp!(a.reply().await, b"+OK\r\n");
    assert_resp!(a.reply().await, bulk(b"mid"));
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"GET", b"a"]).await, bulk(b"db0"));
    assert_resp!(d.ask(&[b"GET", b"n"]).await, bulk(b"50"));
    // Another client is still in db 0.
    let mut b = raw_proxy(&proxy).await;
    assert_resp!(b.ask(&[b"GET", b"a"]).await, bulk(b"db0"));
    assert_resp!(a.ask(&[b"GET", b"n"]).await, bulk(b"50"));
}
