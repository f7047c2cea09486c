//! Policy, key naming and command rules, against real Redis: the seed document's
//! good keys pass and its bad ones are refused, every key of multi-key, keyword-key and script
//! commands is checked, one bad key refuses the whole command, nothing of a refused command
//! reaches Redis, non-UTF-8 keys are handled, denied and unknown commands are refused with a
//! helpful `POLICY` error, and channels are not keys.

mod common;

use common::{Raw, RedisServer};

const POLICY: &str = r#"
policy:
  mode: enforce
  unknown_keys: reject
  denied_commands: [FLUSHALL, FLUSHDB, KEYS, DEBUG, CONFIG, SHUTDOWN]
  allowed_unknown_commands: [MY.CMD]
  namespaces:
    user_profile:
      keys: ["user_profile:{id}"]
      ttl: { default: 1h, min: 1h, max: 2h }
    session:
      keys: ["session:{id}", "session:core:{id}", "session:extended:{id}", "session:{id}:{device}"]
      ttl: { default: 30m, min: 15m, max: 30m }
    rate_limit:
      keys: ["rate_limit:{action}:{id}", "rate_limit:{action}:{id}:{window}"]
      ttl: { default: 5m, min: 5m, max: 15m }
    blob:
      keys: ["blob:{id}"]
"#;

fn text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).trim_end().to_string()
}

async fn direct(redis: &RedisServer) -> Raw {
    Raw::connect(format!("127.0.0.1:{}", redis.port).parse().expect("addr")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_keys_good_pass_bad_are_refused_before_redis() {
    let redis = RedisServer::start();
    let proxy = common::proxy(POLICY, &redis.url()).await;
    let mut c = Raw::connect(proxy.local_addr).await;
    let mut d = direct(&redis).await;

    for good in [
        "user_profile:42",
        "session:42",
        "session:core:42",
        "session:extended:42",
        "session:42:iphone",
        "rate_limit:login:42",
        "rate_limit:login:42:3600",
        "session:{42}",
    ] {
        assert_eq!(
            c.call(&[b"SET", good.as_bytes(), b"v"]).await,
            b"+OK\r\n",
            "{good}"
        );
        assert_eq!(
            d.call(&[b"EXISTS", good.as_bytes()]).await,
            b":1\r\n",
            "{good}"
        );
    }
    let r = text(&c.call(&[b"SET", b"user42", b"v"]).await);
    assert!(
        r.starts_with("-POLICY key \"user42\" matches no namespace: "),
        "{r}"
    );
    let r = text(&c.call(&[b"INCR", b"123_limit"]).await);
    assert!(
        r.starts_with("-POLICY key \"123_limit\" matches no namespace"),
        "{r}"
    );
    let r = text(&c.call(&[b"GET", b"session:"]).await);
    assert!(
        r.starts_with("-POLICY key \"session:\" has an empty segment"),
        "{r}"
    );
    let r = text(&c.call(&[b"GET", b"user_profile:42:extra"]).await);
    assert!(
        r.contains("user_profile:{id}"),
        "the error suggests the pattern: {r}"
    );
    for bad in [&b"user42"[..], b"123_limit", b"session:"] {
        assert_eq!(d.call(&[b"EXISTS", bad]).await, b":0\r\n");
    }

    // One bad key refuses the whole command; none of it reaches Redis.
    let r = text(
        &c.call(&[
            b"MSET",
            b"session:a",
            b"1",
            b"bad",
            b"2",
            b"session:b",
            b"3",
        ])
        .await,
    );
    assert!(r.starts_with("-POLICY key \"bad\""), "{r}");
    assert_eq!(
        d.call(&[b"EXISTS", b"session:a", b"bad", b"session:b"])
            .await,
        b":0\r\n"
    );
    let r = text(&c.call(&[b"DEL", b"session:42", b"nope"]).await);
    assert!(r.starts_with("-POLICY"), "{r}");
    assert_eq!(d.call(&[b"EXISTS", b"session:42"]).await, b":1\r\n");

    // Keys behind keywords and numkeys are found through the command table.
    let r = text(
        &c.call(&[b"SORT", b"session:42", b"ALPHA", b"STORE", b"dest"])
            .await,
    );
    assert!(r.contains("\"dest\""), "{r}");
    let r = text(
        &c.call(&[b"XREAD", b"STREAMS", b"session:1", b"stream", b"0", b"0"])
            .await,
    );
    assert!(r.contains("\"stream\""), "{r}");
    let r = text(
        &c.call(&[b"ZUNIONSTORE", b"session:z", b"2", b"session:1", b"other"])
            .await,
    );
    assert!(r.contains("\"other\""), "{r}");
    let r = text(&c.call(&[b"OBJECT", b"ENCODING", b"nope"]).await);
    assert!(r.starts_with("-POLICY key \"nope\""), "{r}");
    assert_eq!(d.call(&[b"EXISTS", b"dest", b"session:z"]).await, b":0\r\n");

    // Commands without keys pass.
    assert_eq!(c.call(&[b"PING"]).await, b"+PONG\r\n");
    assert!(c.call(&[b"INFO", b"server"]).await.starts_with(b"$"));
    assert_eq!(c.call(&[b"CLIENT", b"SETNAME", b"app"]).await, b"+OK\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_bytes() {
    let redis = RedisServer::start();
    let proxy = common::proxy(POLICY, &redis.url()).await;
    let mut c = Raw::connect(proxy.local_addr).await;
    let mut d = direct(&redis).await;
    assert_eq!(
        c.call(&[b"SET", b"blob:\xff\x00\xfe", b"\x00v"]).await,
        b"+OK\r\n"
    );
    assert_eq!(
        d.call(&[b"GET", b"blob:\xff\x00\xfe"]).await,
        b"$2\r\n\x00v\r\n"
    );
    let r = text(&c.call(&[b"SET", b"\xff\xfe:\x00", b"v"]).await);
    assert_eq!(
        r,
        "-POLICY key \"\\xff\\xfe:\\x00\" matches no namespace: name it {system}:{entity}:{id} like one of user_profile:{id}, session:{id}, session:core:{id}, session:extended:{id} (policy.namespaces)"
    );
    // A huge key is quoted shortened, and the error stays one line.
    let mut big = b"x\r\n".repeat(10_000);
    big.extend_from_slice(b":1");
    let r = c.call(&[b"GET", &big]).await;
    assert!(r.len() < 600 && r.ends_with(b"\r\n") && !r[..r.len() - 2].contains(&b'\n'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_and_unknown_commands() {
    let redis = RedisServer::start();
    let proxy = common::proxy(POLICY, &redis.url()).await;
    let mut c = Raw::connect(proxy.local_addr).await;
    let mut d = direct(&redis).await;
    assert_eq!(c.call(&[b"SET", b"session:1", b"v"]).await, b"+OK\r\n");

    assert_eq!(
        text(&c.call(&[b"KEYS", b"*"]).await),
        "-POLICY KEYS is disabled here: use SCAN"
    );
    let r = text(&c.call(&[b"flushall"]).await);
    assert!(r.starts_with("-POLICY FLUSHALL is disabled here: "), "{r}");
    assert_eq!(d.call(&[b"EXISTS", b"session:1"]).await, b":1\r\n");
    let r = text(&c.call(&[b"CONFIG", b"GET", b"maxmemory"]).await);
    assert!(r.starts_with("-POLICY CONFIG GET is disabled here"), "{r}");
    let r = text(&c.call(&[b"SHUTDOWN", b"NOSAVE"]).await);
    assert!(r.starts_with("-POLICY SHUTDOWN is disabled"), "{r}");
    assert_eq!(d.call(&[b"PING"]).await, b"+PONG\r\n");
    // SCAN, the suggested replacement, works.
    assert!(c.call(&[b"SCAN", b"0"]).await.starts_with(b"*2\r\n"));

    // Unknown commands: refused unless allowed by name, then Redis answers.
    let r = text(&c.call(&[b"FT.SEARCH", b"idx", b"q"]).await);
    assert!(
        r.starts_with("-POLICY unknown command \"FT.SEARCH\": respguard cannot tell which of its arguments are keys"),
        "{r}"
    );
    assert!(r.contains("policy.allowed_unknown_commands"), "{r}");
    let r = text(&c.call(&[b"my.cmd", b"x"]).await);
    assert!(
        r.starts_with("-ERR unknown command 'my.cmd'"),
        "Redis itself answered: {r}"
    );

    // Channels are not keys.
    assert_eq!(c.call(&[b"PUBLISH", b"any channel", b"m"]).await, b":0\r\n");
    assert_eq!(c.call(&[b"SPUBLISH", b"chan", b"m"]).await, b":0\r\n");
    let mut sub = Raw::connect(proxy.local_addr).await;
    let r = sub.call(&[b"SUBSCRIBE", b"whatever"]).await;
    assert!(r.starts_with(b"*3\r\n$9\r\nsubscribe\r\n"), "{}", text(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_declared_keys_are_checked() {
    let redis = RedisServer::start();
    let proxy = common::proxy(POLICY, &redis.url()).await;
    let mut c = Raw::connect(proxy.local_addr).await;
    let mut d = direct(&redis).await;
    let script = b"redis.call('SET', KEYS[1], ARGV[1]) return 1";
    let r = text(&c.call(&[b"EVAL", script, b"1", b"undeclared", b"v"]).await);
    assert!(r.starts_with("-POLICY key \"undeclared\""), "{r}");
    assert_eq!(
        c.call(&[b"EVAL", script, b"1", b"session:s", b"v"]).await,
        b":1\r\n"
    );
    assert_eq!(d.call(&[b"GET", b"session:s"]).await, b"$1\r\nv\r\n");
    // The declared key was written by the script: the hidden EXPIRE NX gave it its TTL.
    let ttl = text(&d.call(&[b"TTL", b"session:s"]).await);
    assert!(ttl == ":1800" || ttl == ":1799", "{ttl}");
    // Keys a script touches without declaring them cannot be seen (documented limit).
    assert_eq!(
        c.call(&[b"EVAL", b"return redis.call('EXISTS', 'anything')", b"0"])
            .await,
        b":0\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_allow_lets_them_through_unchanged() {
    let redis = RedisServer::start();
    let yaml = POLICY.replace("unknown_keys: reject", "unknown_keys: allow");
    let proxy = common::proxy(&yaml, &redis.url()).await;
    let mut c = Raw::connect(proxy.local_addr).await;
    let mut d = direct(&redis).await;
    assert_eq!(c.call(&[b"SET", b"user42", b"v"]).await, b"+OK\r\n");
    assert_eq!(d.call(&[b"TTL", b"user42"]).await, b":-1\r\n");
    assert_eq!(c.call(&[b"HSET", b"a::b", b"f", b"v"]).await, b":1\r\n");
    // Matched keys are still enforced.
    assert_eq!(c.call(&[b"SET", b"session:1", b"v"]).await, b"+OK\r\n");
    assert_eq!(d.call(&[b"TTL", b"session:1"]).await, b":1800\r\n");
    // Denied commands stay denied.
    assert!(text(&c.call(&[b"KEYS", b"*"]).await).starts_with("-POLICY"));
}
