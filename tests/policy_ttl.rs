//! Policy, TTL enforcement, against real Redis: what reached Redis is read back
//! directly (`TTL`, `PTTL`, `GET`, `OBJECT`), per command family. `SET` without an expiry gets
//! the namespace default; expiries are clamped to min..max (or refused with
//! `on_violation: reject`) for SET, SETEX, PSETEX, GETEX, EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT
//! and RESTORE; PERSIST is refused; every write that can create a key ends with the key
//! carrying its TTL through a hidden `EXPIRE key ttl NX`, which keeps an existing expiry.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

const POLICY: &str = r#"
policy:
  namespaces:
    session:
      keys: ["session:{id}", "session:{id}:{device}"]
      ttl: { default: 30m, min: 15m, max: 30m }
    rate_limit:
      keys: ["rate_limit:{action}:{id}"]
      ttl: { default: 5m, min: 5m, max: 15m }
    strict:
      keys: ["strict:{id}"]
      ttl: { default: 10m, min: 5m, max: 10m }
      on_violation: reject
    fast:
      keys: ["fast:{id}"]
      ttl: { default: 90500ms, min: 1m, max: 100500ms }
    plain:
      keys: ["plain:{id}"]
"#;

fn text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).trim_end().to_string()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

type Env = common::PolicyEnv;

async fn env() -> Env {
    common::policy_env(POLICY).await
}

impl Env {
    /// PTTL of `key` read directly from Redis.
    async fn pttl(&mut self, key: &str) -> i64 {
        let r = text(&self.d.call(&[b"PTTL", key.as_bytes()]).await);
        r.trim_start_matches(':')
            .parse()
            .unwrap_or_else(|_| panic!("PTTL {key}: {r}"))
    }

    /// Asserts the key's remaining TTL lies in `lo..=hi` milliseconds.
    async fn assert_pttl(&mut self, key: &str, lo: i64, hi: i64) {
        let t = self.pttl(key).await;
        assert!(
            (lo..=hi).contains(&t),
            "PTTL {key} = {t}, expected {lo}..={hi}"
        );
    }

    async fn ok(&mut self, args: &[&[u8]]) -> Vec<u8> {
        let r = self.c.call(args).await;
        assert!(
            !r.starts_with(b"-"),
            "{:?}: {}",
            args.iter()
                .map(|a| String::from_utf8_lossy(a))
                .collect::<Vec<_>>(),
            text(&r)
        );
        r
    }
}

const MIN_30: i64 = 1_800_000;
const MIN_15: i64 = 900_000;
/// Slack for the time between the write and the read-back.
const SLACK: i64 = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_gets_the_default_and_clamped_expiries() {
    let mut e = env().await;
    assert_eq!(e.ok(&[b"SET", b"session:plain", b"v"]).await, b"+OK\r\n");
    e.assert_pttl("session:plain", MIN_30 - SLACK, MIN_30).await;

    // SET ... GET still answers with the old value.
    assert_eq!(
        e.ok(&[b"SET", b"session:plain", b"w", b"GET"]).await,
        b"$1\r\nv\r\n"
    );
    e.assert_pttl("session:plain", MIN_30 - SLACK, MIN_30).await;
    assert_eq!(
        e.ok(&[b"SET", b"session:nx", b"v", b"NX"]).await,
        b"+OK\r\n"
    );
    e.assert_pttl("session:nx", MIN_30 - SLACK, MIN_30).await;

    e.ok(&[b"SET", b"session:above", b"v", b"EX", b"86400"])
        .await;
    e.assert_pttl("session:above", MIN_30 - SLACK, MIN_30).await;
    e.ok(&[b"SET", b"session:below", b"v", b"PX", b"10"]).await;
    e.assert_pttl("session:below", MIN_15 - SLACK, MIN_15).await;
    e.ok(&[b"SET", b"session:within", b"v", b"EX", b"1000"])
        .await;
    e.assert_pttl("session:within", 1_000_000 - SLACK, 1_000_000)
        .await;
    let exat = (now_ms() / 1000 + 86_400).to_string();
    e.ok(&[b"SET", b"session:exat", b"v", b"EXAT", exat.as_bytes()])
        .await;
    e.assert_pttl("session:exat", MIN_30 - SLACK, MIN_30).await;
    let pxat = (now_ms() + 1000).to_string();
    e.ok(&[b"SET", b"session:pxat", b"v", b"PXAT", pxat.as_bytes()])
        .await;
    e.assert_pttl("session:pxat", MIN_15 - SLACK, MIN_15).await;

    // KEEPTTL keeps an existing expiry, and gives a new key the default.
    e.ok(&[b"SET", b"session:keep", b"v", b"EX", b"1000"]).await;
    e.ok(&[b"SET", b"session:keep", b"w", b"KEEPTTL"]).await;
    e.assert_pttl("session:keep", 1_000_000 - SLACK, 1_000_000)
        .await;
    e.ok(&[b"SET", b"session:keepnew", b"w", b"KEEPTTL"]).await;
    e.assert_pttl("session:keepnew", MIN_30 - SLACK, MIN_30)
        .await;

    // A bound that is not whole seconds is applied exactly, in milliseconds.
    e.ok(&[b"SET", b"fast:1", b"v"]).await;
    e.assert_pttl("fast:1", 90_500 - SLACK, 90_500).await;
    e.ok(&[b"SET", b"fast:2", b"v", b"EX", b"3600"]).await;
    e.assert_pttl("fast:2", 100_500 - SLACK, 100_500).await;

    // A namespace without ttl is left alone.
    e.ok(&[b"SET", b"plain:1", b"v"]).await;
    assert_eq!(e.pttl("plain:1").await, -1);
    // The value itself is untouched.
    assert_eq!(e.d.call(&[b"GET", b"session:plain"]).await, b"$1\r\nw\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_commands_are_clamped() {
    let mut e = env().await;
    e.ok(&[b"SETEX", b"session:setex", b"99999", b"v"]).await;
    e.assert_pttl("session:setex", MIN_30 - SLACK, MIN_30).await;
    e.ok(&[b"PSETEX", b"session:psetex", b"5", b"v"]).await;
    e.assert_pttl("session:psetex", MIN_15 - SLACK, MIN_15)
        .await;
    assert_eq!(
        e.ok(&[b"GETEX", b"session:psetex", b"EX", b"99999"]).await,
        b"$1\r\nv\r\n"
    );
    e.assert_pttl("session:psetex", MIN_30 - SLACK, MIN_30)
        .await;
    assert_eq!(e.ok(&[b"GETEX", b"session:psetex"]).await, b"$1\r\nv\r\n");

    e.ok(&[b"HSET", b"session:h", b"f", b"v"]).await;
    assert_eq!(e.ok(&[b"EXPIRE", b"session:h", b"5"]).await, b":1\r\n");
    e.assert_pttl("session:h", MIN_15 - SLACK, MIN_15).await;
    assert_eq!(
        e.ok(&[b"PEXPIRE", b"session:h", b"999999999"]).await,
        b":1\r\n"
    );
    e.assert_pttl("session:h", MIN_30 - SLACK, MIN_30).await;
    let at = (now_ms() / 1000 + 60).to_string();
    assert_eq!(
        e.ok(&[b"EXPIREAT", b"session:h", at.as_bytes()]).await,
        b":1\r\n"
    );
    e.assert_pttl("session:h", MIN_15 - SLACK, MIN_15).await;
    let at = (now_ms() + 10 * 3_600_000).to_string();
    assert_eq!(
        e.ok(&[b"PEXPIREAT", b"session:h", at.as_bytes()]).await,
        b":1\r\n"
    );
    e.assert_pttl("session:h", MIN_30 - SLACK, MIN_30).await;
    // EXPIRE options still work on the clamped value.
    assert_eq!(
        e.ok(&[b"EXPIRE", b"session:h", b"1000", b"LT"]).await,
        b":1\r\n"
    );
    e.assert_pttl("session:h", 1_000_000 - SLACK, 1_000_000)
        .await;
    // Seconds become milliseconds when the bound is not whole seconds.
    e.ok(&[b"SET", b"fast:e", b"v"]).await;
    assert_eq!(e.ok(&[b"EXPIRE", b"fast:e", b"3600"]).await, b":1\r\n");
    e.assert_pttl("fast:e", 100_500 - SLACK, 100_500).await;

    // Expiring now deletes the key, which is allowed.
    assert_eq!(e.ok(&[b"EXPIRE", b"session:h", b"0"]).await, b":1\r\n");
    assert_eq!(e.d.call(&[b"EXISTS", b"session:h"]).await, b":0\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persist_and_reject_mode_refuse_and_leave_redis_alone() {
    let mut e = env().await;
    e.ok(&[b"SET", b"session:p", b"v"]).await;
    let r = text(&e.c.call(&[b"PERSIST", b"session:p"]).await);
    assert!(
        r.starts_with("-POLICY PERSIST would remove the expiry of key \"session:p\""),
        "{r}"
    );
    let r = text(&e.c.call(&[b"GETEX", b"session:p", b"PERSIST"]).await);
    assert!(
        r.starts_with("-POLICY GETEX ... PERSIST would remove the expiry"),
        "{r}"
    );
    e.assert_pttl("session:p", MIN_30 - SLACK, MIN_30).await;
    // Where no TTL is configured, PERSIST is Redis's business.
    e.ok(&[b"SET", b"plain:p", b"v", b"EX", b"100"]).await;
    assert_eq!(e.ok(&[b"PERSIST", b"plain:p"]).await, b":1\r\n");

    let r = text(&e.c.call(&[b"SET", b"strict:1", b"v", b"EX", b"3600"]).await);
    assert_eq!(
        r,
        "-POLICY expiry of 1h for key \"strict:1\" is above the maximum of namespace strict (5m to 10m): use at most 10m"
    );
    assert_eq!(e.d.call(&[b"EXISTS", b"strict:1"]).await, b":0\r\n");
    let r = text(&e.c.call(&[b"SETEX", b"strict:1", b"1", b"v"]).await);
    assert!(r.contains("below the minimum of namespace strict"), "{r}");
    assert_eq!(e.d.call(&[b"EXISTS", b"strict:1"]).await, b":0\r\n");
    e.ok(&[b"SET", b"strict:1", b"v"]).await;
    e.assert_pttl("strict:1", 600_000 - SLACK, 600_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_gets_a_ttl() {
    let mut e = env().await;
    e.d.call(&[b"RPUSH", b"src", b"a", b"b"]).await;
    let dump = e.d.call(&[b"DUMP", b"src"]).await;
    // The bulk payload: strip "$<len>\r\n" and the trailing CRLF.
    let start = dump.iter().position(|b| *b == b'\n').expect("header") + 1;
    let payload = dump[start..dump.len() - 2].to_vec();
    assert_eq!(
        e.ok(&[b"RESTORE", b"session:r0", b"0", &payload]).await,
        b"+OK\r\n"
    );
    e.assert_pttl("session:r0", MIN_30 - SLACK, MIN_30).await;
    e.ok(&[b"RESTORE", b"session:r1", b"99999999", &payload, b"REPLACE"])
        .await;
    e.assert_pttl("session:r1", MIN_30 - SLACK, MIN_30).await;
    let abs = (now_ms() + 1000).to_string();
    e.ok(&[
        b"RESTORE",
        b"session:r2",
        abs.as_bytes(),
        &payload,
        b"ABSTTL",
    ])
    .await;
    e.assert_pttl("session:r2", MIN_15 - SLACK, MIN_15).await;
    e.ok(&[
        b"RESTORE",
        b"session:r3",
        b"0",
        &payload,
        b"ABSTTL",
        b"IDLETIME",
        b"10",
    ])
    .await;
    e.assert_pttl("session:r3", MIN_30 - SLACK, MIN_30).await;
    assert_eq!(
        e.d.call(&[b"OBJECT", b"IDLETIME", b"session:r3"]).await[..2],
        *b":1"
    );
    assert_eq!(
        e.d.call(&[b"LRANGE", b"session:r0", b"0", b"-1"]).await,
        b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"
    );
}

/// A command, the key it creates, and the reply Redis gives.
type Case<'a> = (&'a [&'a [u8]], &'a str, &'a [u8]);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_that_creates_a_key_leaves_it_with_a_ttl() {
    let mut e = env().await;
    let cases: &[Case] = &[
        (
            &[b"HSET", b"session:hset", b"f", b"v"],
            "session:hset",
            b":1\r\n",
        ),
        (
            &[b"HSETNX", b"session:hsetnx", b"f", b"v"],
            "session:hsetnx",
            b":1\r\n",
        ),
        (
            &[b"HMSET", b"session:hmset", b"f", b"v"],
            "session:hmset",
            b"+OK\r\n",
        ),
        (
            &[b"HINCRBY", b"session:hincrby", b"f", b"2"],
            "session:hincrby",
            b":2\r\n",
        ),
        (
            &[b"HINCRBYFLOAT", b"session:hincrbyfloat", b"f", b"1.5"],
            "session:hincrbyfloat",
            b"$3\r\n1.5\r\n",
        ),
        (
            &[b"LPUSH", b"session:lpush", b"a", b"b"],
            "session:lpush",
            b":2\r\n",
        ),
        (
            &[b"RPUSH", b"session:rpush", b"b", b"a"],
            "session:rpush",
            b":2\r\n",
        ),
        (
            &[b"SADD", b"session:sadd", b"x", b"y"],
            "session:sadd",
            b":2\r\n",
        ),
        (
            &[b"ZADD", b"session:zadd", b"1", b"m"],
            "session:zadd",
            b":1\r\n",
        ),
        (
            &[b"ZINCRBY", b"session:zincrby", b"2", b"m"],
            "session:zincrby",
            b"$1\r\n2\r\n",
        ),
        (&[b"INCR", b"session:incr"], "session:incr", b":1\r\n"),
        (
            &[b"INCRBY", b"session:incrby", b"5"],
            "session:incrby",
            b":5\r\n",
        ),
        (&[b"DECR", b"session:decr"], "session:decr", b":-1\r\n"),
        (
            &[b"DECRBY", b"session:decrby", b"3"],
            "session:decrby",
            b":-3\r\n",
        ),
        (
            &[b"INCRBYFLOAT", b"session:incrbyfloat", b"0.5"],
            "session:incrbyfloat",
            b"$3\r\n0.5\r\n",
        ),
        (
            &[b"APPEND", b"session:append", b"abc"],
            "session:append",
            b":3\r\n",
        ),
        (
            &[b"SETRANGE", b"session:setrange", b"2", b"x"],
            "session:setrange",
            b":3\r\n",
        ),
        (
            &[b"SETNX", b"session:setnx", b"v"],
            "session:setnx",
            b":1\r\n",
        ),
        (
            &[b"GETSET", b"session:getset", b"v"],
            "session:getset",
            b"$-1\r\n",
        ),
        (
            &[b"MSET", b"session:mset1", b"a", b"session:mset2", b"b"],
            "session:mset2",
            b"+OK\r\n",
        ),
        (
            &[
                b"MSETNX",
                b"session:msetnx1",
                b"a",
                b"session:msetnx2",
                b"b",
            ],
            "session:msetnx1",
            b":1\r\n",
        ),
        (
            &[b"PFADD", b"session:pfadd", b"a"],
            "session:pfadd",
            b":1\r\n",
        ),
        (
            &[
                b"GEOADD",
                b"session:geoadd",
                b"13.361389",
                b"38.115556",
                b"palermo",
            ],
            "session:geoadd",
            b":1\r\n",
        ),
        (
            &[b"SETBIT", b"session:setbit", b"7", b"1"],
            "session:setbit",
            b":0\r\n",
        ),
        (
            &[
                b"BITFIELD",
                b"session:bitfield",
                b"SET",
                b"u8",
                b"0",
                b"255",
            ],
            "session:bitfield",
            b"*1\r\n:0\r\n",
        ),
        (
            &[b"XADD", b"session:xadd", b"1-1", b"f", b"v"],
            "session:xadd",
            b"$3\r\n1-1\r\n",
        ),
        (
            &[
                b"XGROUP",
                b"CREATE",
                b"session:xgroup",
                b"g",
                b"$",
                b"MKSTREAM",
            ],
            "session:xgroup",
            b"+OK\r\n",
        ),
        (
            &[b"SUNIONSTORE", b"session:sunionstore", b"session:sadd"],
            "session:sunionstore",
            b":2\r\n",
        ),
        (
            &[b"SINTERSTORE", b"session:sinterstore", b"session:sadd"],
            "session:sinterstore",
            b":2\r\n",
        ),
        (
            &[b"SDIFFSTORE", b"session:sdiffstore", b"session:sadd"],
            "session:sdiffstore",
            b":2\r\n",
        ),
        (
            &[b"SMOVE", b"session:sadd", b"session:smove", b"x"],
            "session:smove",
            b":1\r\n",
        ),
        (
            &[
                b"ZUNIONSTORE",
                b"session:zunionstore",
                b"1",
                b"session:zadd",
            ],
            "session:zunionstore",
            b":1\r\n",
        ),
        (
            &[
                b"ZRANGESTORE",
                b"session:zrangestore",
                b"session:zadd",
                b"0",
                b"-1",
            ],
            "session:zrangestore",
            b":1\r\n",
        ),
        (
            &[
                b"LMOVE",
                b"session:lpush",
                b"session:lmove",
                b"LEFT",
                b"RIGHT",
            ],
            "session:lmove",
            b"$1\r\nb\r\n",
        ),
        (
            &[b"RPOPLPUSH", b"session:rpush", b"session:rpoplpush"],
            "session:rpoplpush",
            b"$1\r\na\r\n",
        ),
        (
            &[b"COPY", b"session:incr", b"session:copy"],
            "session:copy",
            b":1\r\n",
        ),
        (
            &[b"BITOP", b"OR", b"session:bitop", b"session:setbit"],
            "session:bitop",
            b":1\r\n",
        ),
        (
            &[b"PFMERGE", b"session:pfmerge", b"session:pfadd"],
            "session:pfmerge",
            b"+OK\r\n",
        ),
        (
            &[
                b"SORT",
                b"session:sadd",
                b"ALPHA",
                b"STORE",
                b"session:sortstore",
            ],
            "session:sortstore",
            b":1\r\n",
        ),
        (
            &[
                b"GEOSEARCHSTORE",
                b"session:geosearchstore",
                b"session:geoadd",
                b"FROMLONLAT",
                b"13.36",
                b"38.11",
                b"BYRADIUS",
                b"10",
                b"km",
            ],
            "session:geosearchstore",
            b":1\r\n",
        ),
        (
            &[b"SET", b"session:rename", b"v"],
            "session:rename",
            b"+OK\r\n",
        ),
        (
            &[b"RENAME", b"session:rename", b"session:renamed"],
            "session:renamed",
            b"+OK\r\n",
        ),
    ];
    for (cmd, key, want) in cases {
        let got = e.c.call(cmd).await;
        assert_eq!(
            text(&got),
            text(want),
            "{}",
            String::from_utf8_lossy(cmd[0])
        );
        e.assert_pttl(key, MIN_30 - SLACK, MIN_30).await;
    }
    // Keys a command creates in a namespace without ttl stay as they are.
    e.ok(&[b"HSET", b"plain:h", b"f", b"v"]).await;
    assert_eq!(e.pttl("plain:h").await, -1);
    // Reads create nothing and add nothing.
    assert_eq!(e.ok(&[b"HGET", b"session:none", b"f"]).await, b"$-1\r\n");
    assert_eq!(e.d.call(&[b"EXISTS", b"session:none"]).await, b":0\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_window_is_kept() {
    let mut e = env().await;
    // The application opens a 10-minute window (within 5m..15m), then counts in it.
    assert_eq!(e.ok(&[b"INCR", b"rate_limit:login:42"]).await, b":1\r\n");
    assert_eq!(
        e.ok(&[b"EXPIRE", b"rate_limit:login:42", b"600"]).await,
        b":1\r\n"
    );
    for i in 2..=5 {
        assert_eq!(
            text(&e.ok(&[b"INCR", b"rate_limit:login:42"]).await),
            format!(":{i}")
        );
    }
    // EXPIRE ... NX did not reset it to the 5-minute default.
    e.assert_pttl("rate_limit:login:42", 600_000 - SLACK, 600_000)
        .await;
    // A key that existed without expiry (written around the proxy) gets one on its next write.
    e.d.call(&[b"SET", b"rate_limit:api:7", b"1"]).await;
    assert_eq!(e.pttl("rate_limit:api:7").await, -1);
    e.ok(&[b"INCR", b"rate_limit:api:7"]).await;
    e.assert_pttl("rate_limit:api:7", 300_000 - SLACK, 300_000)
        .await;
}
