//! Edge cases of every policy stage against real Redis: expiries Redis carries over from
//! another key (RENAME, COPY, MOVE), store destinations, expiry arithmetic at the bounds, key
//! naming edges, appended commands inside MULTI and CLIENT REPLY, and sensitive data in JSON,
//! hashes and streams. What reached Redis is read back directly (no proxy).

#[macro_use]
mod common;

use std::time::{SystemTime, UNIX_EPOCH};

const POLICY: &str = r#"
policy:
  unknown_keys: reject
  sensitive:
    fields: [password, ssn, creditCard, cardNumber, cvv, token]
    action: strip
    detect: [card_number, us_ssn]
  namespaces:
    session:
      keys: ["session:{id}", "session:{id}:{device}"]
      ttl: { default: 30m, min: 15m, max: 30m }
    form_progress:
      keys: ["form_progress:{user_id}:{form_id}"]
      ttl: { default: 24h, min: 10m, max: 7d }
    strict:
      keys: ["strict:{id}"]
      ttl: { default: 10m, min: 5m, max: 10m }
      on_violation: reject
    fast:
      keys: ["fast:{id}"]
      ttl: { default: 90500ms, min: 1m, max: 100500ms }
    temp:
      keys: ["temp:{workflow}:{id}", "temp:{workflow}:{id}:{rest...}"]
      ttl: { default: 1h, min: 10m, max: 7d }
    bt_lit:
      keys: ["bt:lit:{id}"]
      ttl: { default: 1h, min: 1h, max: 1h }
    bt_any:
      keys: ["bt:{x}:{y}:{z}"]
      ttl: { default: 2h, min: 2h, max: 2h }
    plain:
      keys: ["plain:{id}"]
"#;

const MIN_30: i64 = 1_800_000;
const MIN_15: i64 = 900_000;
const SLACK: i64 = 5_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

type Env = common::PolicyEnv;

async fn env_with(yaml: &str) -> Env {
    common::policy_env(yaml).await
}

async fn env() -> Env {
    env_with(POLICY).await
}

impl Env {
    async fn pttl(&mut self, key: &[u8]) -> i64 {
        let r = self.d.call(&[b"PTTL", key]).await;
        let s = String::from_utf8_lossy(&r).trim_end().to_string();
        s.trim_start_matches(':')
            .parse()
            .unwrap_or_else(|_| panic!("PTTL {}: {s}", common::show(key)))
    }

    async fn assert_pttl(&mut self, key: &[u8], lo: i64, hi: i64) {
        let t = self.pttl(key).await;
        assert!(
            (lo..=hi).contains(&t),
            "PTTL {} = {t}, expected {lo}..={hi}",
            common::show(key)
        );
    }

    async fn get(&mut self, key: &[u8]) -> Vec<u8> {
        self.d.call(&[b"GET", key]).await
    }
}

// ---------------------------------------------------------------------------------------------
// TTL: keys whose expiry Redis carries over from another key

/// README: "every key ends up with an expiry inside its namespace's bounds". RENAME carries
/// the source's expiry over in Redis, so a 7-day form_progress key renamed into `session`
/// (max 30m) would keep 7 days: the destination's expiry is clamped to the namespace's max.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_into_a_namespace_clamps_a_carried_expiry_to_its_max() {
    let mut e = env().await;
    assert_resp!(
        e.c.call(&[b"SET", b"form_progress:1:f", b"v", b"EX", b"604800"])
            .await,
        b"+OK\r\n"
    );
    e.assert_pttl(b"form_progress:1:f", 604_800_000 - SLACK, 604_800_000)
        .await;
    assert_resp!(
        e.c.call(&[b"RENAME", b"form_progress:1:f", b"session:9"])
            .await,
        b"+OK\r\n"
    );
    // session's max is 30m.
    e.assert_pttl(b"session:9", MIN_30 - SLACK, MIN_30).await;
}

/// Same with COPY: Redis copies the source's expiry to the destination; it is clamped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_into_a_namespace_clamps_a_carried_expiry_to_its_max() {
    let mut e = env().await;
    e.c.call(&[b"SET", b"form_progress:1:g", b"v", b"EX", b"604800"])
        .await;
    assert_resp!(
        e.c.call(&[b"COPY", b"form_progress:1:g", b"session:10"])
            .await,
        b":1\r\n"
    );
    e.assert_pttl(b"session:10", MIN_30 - SLACK, MIN_30).await;
}

/// `COPY src dst DB 1` would create `dst` in database 1, where the appended `EXPIRE dst ttl NX`
/// (which runs in the client's database) cannot reach it: refused, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_another_db_is_refused_for_a_namespace_with_a_ttl() {
    let mut e = env().await;
    // plain has no ttl section: the source has no expiry.
    assert_resp!(e.c.call(&[b"SET", b"plain:1", b"v"]).await, b"+OK\r\n");
    let reply =
        e.c.call(&[b"COPY", b"plain:1", b"session:11", b"DB", b"1"])
            .await;
    assert!(
        reply.starts_with(b"-POLICY COPY ... DB is not allowed for session keys"),
        "{}",
        common::show(&reply)
    );
    assert_resp!(e.d.call(&[b"SELECT", b"1"]).await, b"+OK\r\n");
    assert_resp!(e.d.call(&[b"EXISTS", b"session:11"]).await, b":0\r\n");
    // Within the same database COPY works and the copy gets the namespace default.
    assert_resp!(
        e.c.call(&[b"COPY", b"plain:1", b"session:11"]).await,
        b":1\r\n"
    );
    assert_resp!(e.d.call(&[b"SELECT", b"0"]).await, b"+OK\r\n");
    e.assert_pttl(b"session:11", MIN_30 - SLACK, MIN_30).await;
}

/// `MOVE key db` keeps the key's TTL (same key, same namespace): fine. `RENAME` from a key
/// without expiry gets the destination's default through the appended EXPIRE NX.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_from_a_key_without_expiry_gets_the_default() {
    let mut e = env().await;
    e.c.call(&[b"SET", b"plain:2", b"v"]).await;
    assert_eq!(e.pttl(b"plain:2").await, -1);
    assert_resp!(
        e.c.call(&[b"RENAME", b"plain:2", b"session:12"]).await,
        b"+OK\r\n"
    );
    e.assert_pttl(b"session:12", MIN_30 - SLACK, MIN_30).await;
    // RENAME of a missing key: Redis's own error, and nothing created.
    assert_resp!(
        e.c.call(&[b"RENAME", b"plain:nope", b"session:13"]).await,
        b"-ERR no such key\r\n"
    );
    assert_resp!(e.d.call(&[b"EXISTS", b"session:13"]).await, b":0\r\n");
    // MOVE keeps the key's own (in-bounds) expiry.
    e.c.call(&[b"SET", b"session:mv", b"v"]).await;
    assert_resp!(e.c.call(&[b"MOVE", b"session:mv", b"2"]).await, b":1\r\n");
    e.d.call(&[b"SELECT", b"2"]).await;
    e.assert_pttl(b"session:mv", MIN_30 - SLACK, MIN_30).await;
}

// ---------------------------------------------------------------------------------------------
// TTL: destinations of writes that create keys

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_destinations_get_the_default() {
    let mut e = env().await;
    for cmd in [
        &[&b"SADD"[..], b"plain:s", b"m", b"n"][..],
        &[b"ZADD", b"plain:z", b"1", b"a"],
        &[b"RPUSH", b"plain:l", b"3", b"1", b"2"],
        &[b"SET", b"plain:b1", b"ab"],
        &[b"SET", b"plain:b2", b"cd"],
        &[
            b"GEOADD",
            b"plain:geo",
            b"13.361389",
            b"38.115556",
            b"Palermo",
        ],
    ] {
        let r = e.c.call(cmd).await;
        assert!(!r.starts_with(b"-"), "{}", common::show(&r));
    }
    type Case<'a> = (&'a [&'a [u8]], &'a [u8], &'a [u8]);
    let cases: &[Case] = &[
        (
            &[b"SINTERSTORE", b"session:si", b"plain:s"],
            b":2\r\n",
            b"session:si",
        ),
        (
            &[b"SUNIONSTORE", b"session:su", b"plain:s"],
            b":2\r\n",
            b"session:su",
        ),
        (
            &[b"ZUNIONSTORE", b"session:zu", b"1", b"plain:z"],
            b":1\r\n",
            b"session:zu",
        ),
        (
            &[b"ZRANGESTORE", b"session:zr", b"plain:z", b"0", b"-1"],
            b":1\r\n",
            b"session:zr",
        ),
        (
            &[b"SORT", b"plain:l", b"STORE", b"session:so"],
            b":3\r\n",
            b"session:so",
        ),
        (
            &[b"LMOVE", b"plain:l", b"session:lm", b"LEFT", b"RIGHT"],
            b"$1\r\n3\r\n",
            b"session:lm",
        ),
        (
            &[b"RPOPLPUSH", b"plain:l", b"session:rp"],
            b"$1\r\n2\r\n",
            b"session:rp",
        ),
        (
            &[b"BITOP", b"AND", b"session:bo", b"plain:b1", b"plain:b2"],
            b":2\r\n",
            b"session:bo",
        ),
        (
            &[
                b"GEOSEARCHSTORE",
                b"session:gs",
                b"plain:geo",
                b"FROMLONLAT",
                b"15",
                b"37",
                b"BYRADIUS",
                b"200",
                b"km",
            ],
            b":1\r\n",
            b"session:gs",
        ),
        (
            &[b"SMOVE", b"plain:s", b"session:sm", b"m"],
            b":1\r\n",
            b"session:sm",
        ),
        (
            &[b"COPY", b"plain:b1", b"session:cp"],
            b":1\r\n",
            b"session:cp",
        ),
        (&[b"PFADD", b"session:hll", b"a"], b":1\r\n", b"session:hll"),
        (
            &[b"INCRBYFLOAT", b"session:f", b"1.5"],
            b"$3\r\n1.5\r\n",
            b"session:f",
        ),
        (
            &[b"GETSET", b"session:gset", b"x"],
            b"$-1\r\n",
            b"session:gset",
        ),
    ];
    for (cmd, want, key) in cases {
        let r = e.c.call(cmd).await;
        assert_resp!(r, want, "{}", common::show(cmd[0]));
        e.assert_pttl(key, MIN_30 - SLACK, MIN_30).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mset_keys_in_different_namespaces_get_their_own_default() {
    let mut e = env().await;
    assert_resp!(
        e.c.call(&[
            b"MSET",
            b"session:m1",
            b"a",
            b"form_progress:1:m",
            b"b",
            b"fast:m",
            b"c",
            b"plain:m",
            b"d",
            b"session:m1",
            b"e"
        ])
        .await,
        b"+OK\r\n"
    );
    e.assert_pttl(b"session:m1", MIN_30 - SLACK, MIN_30).await;
    e.assert_pttl(b"form_progress:1:m", 86_400_000 - SLACK, 86_400_000)
        .await;
    e.assert_pttl(b"fast:m", 90_500 - SLACK, 90_500).await;
    assert_eq!(e.pttl(b"plain:m").await, -1);
    assert_resp!(e.get(b"session:m1").await, b"$1\r\ne\r\n");
    // MSETNX that fails sets nothing, and no expiry changes.
    assert_resp!(
        e.c.call(&[b"MSETNX", b"session:m2", b"a", b"session:m1", b"b"])
            .await,
        b":0\r\n"
    );
    assert_resp!(e.d.call(&[b"EXISTS", b"session:m2"]).await, b":0\r\n");
}

// ---------------------------------------------------------------------------------------------
// TTL arithmetic at the edges

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_expiry_edges_zero_negative_past_and_huge() {
    let mut e = env().await;
    // Zero and negative: Redis's own error comes back; nothing stored.
    for v in [&b"0"[..], b"-1"] {
        for opt in [&b"EX"[..], b"PX"] {
            assert_resp!(
                e.c.call(&[b"SET", b"session:z", b"v", opt, v]).await,
                b"-ERR invalid expire time in 'set' command\r\n"
            );
        }
    }
    assert_resp!(e.d.call(&[b"EXISTS", b"session:z"]).await, b":0\r\n");
    // EXAT/PXAT in the past: Redis accepts and the key is gone at once.
    e.c.call(&[b"SET", b"session:past", b"old"]).await;
    let past = (now_ms() / 1000 - 100).to_string();
    assert_resp!(
        e.c.call(&[b"SET", b"session:past", b"v", b"EXAT", past.as_bytes()])
            .await,
        b"+OK\r\n"
    );
    assert_resp!(e.d.call(&[b"EXISTS", b"session:past"]).await, b":0\r\n");
    // Huge: clamped to the max in the same unit.
    for (opt, v) in [
        (&b"EX"[..], "9223372036854775807"),
        (b"PX", "9223372036854775807"),
        (b"EXAT", "9223372036854775807"),
        (b"PXAT", "9223372036854775807"),
    ] {
        assert_resp!(
            e.c.call(&[b"SET", b"session:huge", b"v", opt, v.as_bytes()])
                .await,
            b"+OK\r\n",
            "{}",
            common::show(opt)
        );
        e.assert_pttl(b"session:huge", MIN_30 - SLACK, MIN_30).await;
    }
    // An expiry exactly at a bound is forwarded unchanged.
    e.c.call(&[b"SET", b"session:b", b"v", b"PX", b"900000"])
        .await;
    e.assert_pttl(b"session:b", MIN_15 - SLACK, MIN_15).await;
    // One millisecond under the minimum is raised.
    e.c.call(&[b"SET", b"session:b", b"v", b"PX", b"899999"])
        .await;
    e.assert_pttl(b"session:b", MIN_15 - SLACK, MIN_15).await;
    // Non-whole-second bound from a seconds option: written as PX, exact.
    e.c.call(&[b"SET", b"fast:x", b"v", b"EX", b"101"]).await;
    e.assert_pttl(b"fast:x", 100_500 - SLACK, 100_500).await;
    let exat = (now_ms() / 1000 + 3600).to_string();
    e.c.call(&[b"SET", b"fast:y", b"v", b"EXAT", exat.as_bytes()])
        .await;
    e.assert_pttl(b"fast:y", 100_500 - SLACK, 100_500).await;
    // Non-numeric: refused with a clear message naming the bad value; nothing stored.
    let r =
        e.c.call(&[b"SET", b"session:nn", b"v", b"EX", b"ten"])
            .await;
    assert_resp!(r, b"-POLICY expiry \"ten\" is not an integer\r\n");
    assert_resp!(e.d.call(&[b"EXISTS", b"session:nn"]).await, b":0\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_get_with_nx_xx() {
    let mut e = env().await;
    // SET NX GET on a missing key: nil, key set with the default.
    assert_resp!(
        e.c.call(&[b"SET", b"session:g", b"a", b"NX", b"GET"]).await,
        b"$-1\r\n"
    );
    e.assert_pttl(b"session:g", MIN_30 - SLACK, MIN_30).await;
    // Shorten it directly, then SET NX GET on the existing key: old value, not set, TTL kept.
    e.d.call(&[b"PEXPIRE", b"session:g", b"1000000"]).await;
    assert_resp!(
        e.c.call(&[b"SET", b"session:g", b"b", b"GET", b"NX"]).await,
        b"$1\r\na\r\n"
    );
    assert_resp!(e.get(b"session:g").await, b"$1\r\na\r\n");
    e.assert_pttl(b"session:g", 1_000_000 - SLACK, 1_000_000)
        .await;
    // SET XX GET on existing: old value, set, default TTL.
    assert_resp!(
        e.c.call(&[b"SET", b"session:g", b"c", b"XX", b"GET"]).await,
        b"$1\r\na\r\n"
    );
    e.assert_pttl(b"session:g", MIN_30 - SLACK, MIN_30).await;
    // SET XX on missing: nil, nothing created.
    assert_resp!(
        e.c.call(&[b"SET", b"session:none", b"c", b"XX"]).await,
        b"$-1\r\n"
    );
    assert_resp!(e.d.call(&[b"EXISTS", b"session:none"]).await, b":0\r\n");
    // SET GET on a hash: WRONGTYPE from Redis.
    e.c.call(&[b"HSET", b"session:h", b"f", b"v"]).await;
    assert_resp!(
        e.c.call(&[b"SET", b"session:h", b"c", b"GET"]).await,
        b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    );
    // NX and XX together: Redis's syntax error.
    assert_resp!(
        e.c.call(&[b"SET", b"session:g", b"c", b"NX", b"XX"]).await,
        b"-ERR syntax error\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setex_psetex_getex_exactness() {
    let mut e = env().await;
    assert_resp!(
        e.c.call(&[b"SETEX", b"session:se", b"99999", b"v"]).await,
        b"+OK\r\n"
    );
    e.assert_pttl(b"session:se", MIN_30 - SLACK, MIN_30).await;
    assert_resp!(
        e.c.call(&[b"SETEX", b"fast:se", b"1", b"v"]).await,
        b"+OK\r\n"
    );
    e.assert_pttl(b"fast:se", 60_000 - SLACK, 60_000).await;
    assert_resp!(
        e.c.call(&[b"SETEX", b"fast:se", b"3600", b"v"]).await,
        b"+OK\r\n"
    );
    e.assert_pttl(b"fast:se", 100_500 - SLACK, 100_500).await;
    assert_resp!(
        e.c.call(&[b"SETEX", b"session:se", b"0", b"v"]).await,
        b"-ERR invalid expire time in 'setex' command\r\n"
    );
    assert_resp!(
        e.c.call(&[b"PSETEX", b"session:se", b"-5", b"v"]).await,
        b"-ERR invalid expire time in 'psetex' command\r\n"
    );
    // GETEX variants.
    assert_resp!(
        e.c.call(&[b"GETEX", b"session:se", b"PX", b"1"]).await,
        b"$1\r\nv\r\n"
    );
    e.assert_pttl(b"session:se", MIN_15 - SLACK, MIN_15).await;
    let pxat = (now_ms() + 86_400_000).to_string();
    assert_resp!(
        e.c.call(&[b"GETEX", b"session:se", b"PXAT", pxat.as_bytes()])
            .await,
        b"$1\r\nv\r\n"
    );
    e.assert_pttl(b"session:se", MIN_30 - SLACK, MIN_30).await;
    assert_resp!(
        e.c.call(&[b"GETEX", b"fast:se", b"EX", b"1000"]).await,
        b"$1\r\nv\r\n"
    );
    e.assert_pttl(b"fast:se", 100_500 - SLACK, 100_500).await;
    let r = e.c.call(&[b"GETEX", b"session:se", b"PERSIST"]).await;
    assert!(
        r.starts_with(b"-POLICY GETEX ... PERSIST would remove"),
        "{}",
        common::show(&r)
    );
    e.assert_pttl(b"session:se", MIN_30 - SLACK * 2, MIN_30)
        .await;
    // GETEX on a missing key: nil, nothing created.
    assert_resp!(
        e.c.call(&[b"GETEX", b"session:gx", b"EX", b"100"]).await,
        b"$-1\r\n"
    );
    assert_resp!(e.d.call(&[b"EXISTS", b"session:gx"]).await, b":0\r\n");
    // strict (reject): the message names the bound.
    let r = e.c.call(&[b"SETEX", b"strict:1", b"3600", b"v"]).await;
    assert_resp!(
        r,
        b"-POLICY expiry of 1h for key \"strict:1\" is above the maximum of namespace strict (5m to 10m): use at most 10m\r\n"
    );
    assert_resp!(e.d.call(&[b"EXISTS", b"strict:1"]).await, b":0\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_options_survive_clamping() {
    let mut e = env().await;
    // EXPIRE on a missing key: 0, nothing created.
    assert_resp!(
        e.c.call(&[b"EXPIRE", b"session:nokey", b"99999"]).await,
        b":0\r\n"
    );
    assert_resp!(e.d.call(&[b"EXISTS", b"session:nokey"]).await, b":0\r\n");
    e.c.call(&[b"SET", b"session:e", b"v", b"PX", b"1000000"])
        .await;
    // NX: the key has an expiry, so nothing changes (and 0 comes back), even clamped.
    assert_resp!(
        e.c.call(&[b"EXPIRE", b"session:e", b"99999", b"NX"]).await,
        b":0\r\n"
    );
    e.assert_pttl(b"session:e", 1_000_000 - SLACK, 1_000_000)
        .await;
    // XX: clamped to the max.
    assert_resp!(
        e.c.call(&[b"EXPIRE", b"session:e", b"99999", b"XX"]).await,
        b":1\r\n"
    );
    e.assert_pttl(b"session:e", MIN_30 - SLACK, MIN_30).await;
    // LT with a value above the max: clamped to the max, which is not less than the current.
    assert_resp!(
        e.c.call(&[b"EXPIRE", b"session:e", b"99999", b"LT"]).await,
        b":0\r\n"
    );
    // GT with a small value: raised to the min, which is below the current: 0.
    assert_resp!(
        e.c.call(&[b"PEXPIRE", b"session:e", b"1", b"GT"]).await,
        b":0\r\n"
    );
    e.assert_pttl(b"session:e", MIN_30 - SLACK, MIN_30).await;
    // EXPIREAT with GT far in the future on fast (ms bound): PEXPIREAT, option kept.
    e.c.call(&[b"SET", b"fast:e", b"v", b"PX", b"70000"]).await;
    let at = (now_ms() / 1000 + 86_400).to_string();
    assert_resp!(
        e.c.call(&[b"EXPIREAT", b"fast:e", at.as_bytes(), b"GT"])
            .await,
        b":1\r\n"
    );
    e.assert_pttl(b"fast:e", 100_500 - SLACK, 100_500).await;
    // Invalid option: Redis's own error.
    assert_resp!(
        e.c.call(&[b"EXPIRE", b"session:e", b"1000", b"NX", b"XX"])
            .await,
        b"-ERR NX and XX, GT or LT options at the same time are not compatible\r\n"
    );
    // Negative: forwarded, the key is deleted like Redis does.
    assert_resp!(e.c.call(&[b"EXPIRE", b"session:e", b"-1"]).await, b":1\r\n");
    assert_resp!(e.d.call(&[b"EXISTS", b"session:e"]).await, b":0\r\n");
    // Huge: clamped.
    e.c.call(&[b"SET", b"session:e2", b"v"]).await;
    assert_resp!(
        e.c.call(&[b"PEXPIREAT", b"session:e2", b"9223372036854775807"])
            .await,
        b":1\r\n"
    );
    e.assert_pttl(b"session:e2", MIN_30 - SLACK, MIN_30).await;
    // PERSIST refused.
    let r = e.c.call(&[b"PERSIST", b"session:e2"]).await;
    assert!(
        r.starts_with(b"-POLICY PERSIST would remove"),
        "{}",
        common::show(&r)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_ttl_forms() {
    let mut e = env().await;
    e.d.call(&[b"SET", b"src", b"payload"]).await;
    let dump = e.d.call(&[b"DUMP", b"src"]).await;
    // Strip the bulk header.
    let start = dump.iter().position(|&b| b == b'\n').unwrap() + 1;
    let payload = dump[start..dump.len() - 2].to_vec();
    assert_resp!(
        e.c.call(&[b"RESTORE", b"session:r0", b"0", &payload]).await,
        b"+OK\r\n"
    );
    e.assert_pttl(b"session:r0", MIN_30 - SLACK, MIN_30).await;
    assert_resp!(
        e.c.call(&[b"RESTORE", b"session:r1", b"10", &payload])
            .await,
        b"+OK\r\n"
    );
    e.assert_pttl(b"session:r1", MIN_15 - SLACK, MIN_15).await;
    let abs = (now_ms() + 86_400_000).to_string();
    assert_resp!(
        e.c.call(&[
            b"RESTORE",
            b"session:r2",
            abs.as_bytes(),
            &payload,
            b"ABSTTL"
        ])
        .await,
        b"+OK\r\n"
    );
    e.assert_pttl(b"session:r2", MIN_30 - SLACK, MIN_30).await;
    assert_resp!(
        e.c.call(&[
            b"RESTORE",
            b"session:r3",
            b"0",
            &payload,
            b"ABSTTL",
            b"REPLACE"
        ])
        .await,
        b"+OK\r\n"
    );
    e.assert_pttl(b"session:r3", MIN_30 - SLACK, MIN_30).await;
    assert_resp!(
        e.c.call(&[b"RESTORE", b"session:r3", b"0", &payload]).await,
        b"-BUSYKEY Target key name already exists.\r\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Naming edge cases

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_edges_binary_colons_long_and_rest() {
    let mut e = env().await;
    // Binary bytes inside a segment.
    let bin: &[u8] = b"session:\xff\x00\r\n";
    assert_resp!(e.c.call(&[b"SET", bin, b"v"]).await, b"+OK\r\n");
    e.assert_pttl(bin, MIN_30 - SLACK, MIN_30).await;
    for bad in [
        &b":session:1"[..],
        b"session:1:",
        b"session::1",
        b"session:",
        b"",
        b":",
    ] {
        let r = e.c.call(&[b"SET", bad, b"v"]).await;
        assert!(
            r.starts_with(b"-POLICY key"),
            "{}: {}",
            common::show(bad),
            common::show(&r)
        );
    }
    assert_resp!(e.d.call(&[b"DBSIZE"]).await, b":1\r\n");
    // A very long id segment.
    let mut long = b"session:".to_vec();
    long.extend(std::iter::repeat_n(b'x', 200_000));
    assert_resp!(e.c.call(&[b"SET", &long, b"v"]).await, b"+OK\r\n");
    e.assert_pttl(&long, MIN_30 - SLACK, MIN_30).await;
    // A very long unknown key: refused, message bounded.
    let mut unk = b"nope:".to_vec();
    unk.extend(std::iter::repeat_n(b'y', 200_000));
    let r = e.c.call(&[b"SET", &unk, b"v"]).await;
    assert!(
        r.starts_with(b"-POLICY key \"nope:yyy") && r.len() < 1000,
        "{}",
        r.len()
    );
    // {rest...}: one or more segments, no empty ones.
    assert_resp!(
        e.c.call(&[b"SET", b"temp:wf:1:a:b:c", b"v"]).await,
        b"+OK\r\n"
    );
    e.assert_pttl(b"temp:wf:1:a:b:c", 3_600_000 - SLACK, 3_600_000)
        .await;
    let r = e.c.call(&[b"SET", b"temp:wf:1:a::c", b"v"]).await;
    assert!(r.starts_with(b"-POLICY key"), "{}", common::show(&r));
    // Most specific from the left, with fallback when the literal path dead-ends.
    e.c.call(&[b"SET", b"bt:lit:1", b"v"]).await;
    e.assert_pttl(b"bt:lit:1", 3_600_000 - SLACK, 3_600_000)
        .await;
    e.c.call(&[b"SET", b"bt:lit:1:2", b"v"]).await;
    e.assert_pttl(b"bt:lit:1:2", 7_200_000 - SLACK, 7_200_000)
        .await;
    // Literals are case-sensitive.
    let r = e.c.call(&[b"SET", b"Session:1", b"v"]).await;
    assert!(
        r.starts_with(b"-POLICY key \"Session:1\""),
        "{}",
        common::show(&r)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_allow_passes_unmatched_and_empty_segment_keys_unchanged() {
    let yaml = POLICY.replace("unknown_keys: reject", "unknown_keys: allow");
    let mut e = env_with(&yaml).await;
    for k in [&b"user42"[..], b"a::b", b":x", b"x:"] {
        assert_resp!(e.c.call(&[b"SET", k, b"v"]).await, b"+OK\r\n");
        assert_eq!(e.pttl(k).await, -1, "{}", common::show(k));
    }
    // Still enforced for matching keys in the same command.
    assert_resp!(
        e.c.call(&[b"MSET", b"user43", b"v", b"session:1", b"w"])
            .await,
        b"+OK\r\n"
    );
    assert_eq!(e.pttl(b"user43").await, -1);
    e.assert_pttl(b"session:1", MIN_30 - SLACK, MIN_30).await;
}

// ---------------------------------------------------------------------------------------------
// Transactions and reply modes with appended commands

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_inside_multi_with_appended_expire() {
    let mut e = env().await;
    // Wrong arity goes to Redis, whose queue-time error aborts the transaction.
    assert_resp!(e.c.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_resp!(
        e.c.call(&[b"HSET", b"session:tx", b"f"]).await,
        b"-ERR wrong number of arguments for 'hset' command\r\n"
    );
    assert_resp!(
        e.c.call(&[b"SET", b"session:tx2", b"v"]).await,
        b"+QUEUED\r\n"
    );
    assert_resp!(
        e.c.call(&[b"EXEC"]).await,
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_resp!(e.c.call(&[b"PING"]).await, b"+PONG\r\n");
    assert_resp!(e.d.call(&[b"EXISTS", b"session:tx2"]).await, b":0\r\n");
    // Runtime errors inside EXEC keep the array intact, hidden replies removed.
    e.c.call(&[b"SET", b"session:str", b"v"]).await;
    assert_resp!(e.c.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_resp!(
        e.c.call(&[b"HSET", b"session:str", b"f", b"v"]).await,
        b"+QUEUED\r\n"
    );
    assert_resp!(
        e.c.call(&[b"HSET", b"session:odd", b"f", b"v", b"x"]).await,
        b"+QUEUED\r\n"
    );
    assert_resp!(e.c.call(&[b"INCR", b"session:n"]).await, b"+QUEUED\r\n");
    assert_resp!(
        e.c.call(&[b"EXEC"]).await,
        b"*3\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n-ERR wrong number of arguments for 'hset' command\r\n:1\r\n"
    );
    e.assert_pttl(b"session:n", MIN_30 - SLACK, MIN_30).await;
    assert_resp!(e.d.call(&[b"EXISTS", b"session:odd"]).await, b":0\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reply_skip_with_appended_expire() {
    let mut e = env().await;
    e.c.send(&common::encode_many(&[
        &[b"CLIENT", b"REPLY", b"SKIP"],
        &[b"HSET", b"session:sk", b"f", b"v"],
        &[b"PING"],
    ]))
    .await;
    assert_resp!(e.c.read().await, b"+PONG\r\n");
    e.assert_pttl(b"session:sk", MIN_30 - SLACK, MIN_30).await;
    assert_resp!(e.c.call(&[b"ECHO", b"x"]).await, b"$1\r\nx\r\n");
}

// ---------------------------------------------------------------------------------------------
// Sensitive data

async fn stored_after_set(e: &mut Env, key: &[u8], value: &[u8]) -> Vec<u8> {
    let r = e.c.call(&[b"SET", key, value]).await;
    assert_resp!(r, b"+OK\r\n");
    e.get(key).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_edge_cases() {
    let mut e = env().await;
    let cases: &[(&str, &str)] = &[
        // Duplicate members: both go.
        (r#"{"password":"a","x":1,"password":"b"}"#, r#"{"x":1}"#),
        // Escaped separator and letters.
        (r#"{"credit\u005fcard":"c","a":1}"#, r#"{"a":1}"#),
        (r#"{"\u0050ASSWORD":"c","a":1}"#, r#"{"a":1}"#),
        (r#"{"a":1,"Credit-Card":"c"}"#, r#"{"a":1}"#),
        // Only member.
        (r#"{"token":"t"}"#, r#"{}"#),
        // Arrays of arrays.
        (
            r#"[[{"password":1}],[[{"a":{"ssn":2,"b":3}}]]]"#,
            r#"[[{}],[[{"a":{"b":3}}]]]"#,
        ),
        // A member name inside a string value stays.
        (
            r#"{"note":"\"password\":\"x\"","k":"password"}"#,
            r#"{"note":"\"password\":\"x\"","k":"password"}"#,
        ),
        // Leading whitespace is still JSON.
        ("\n {\"password\":\"x\",\"a\":1}", "\n {\"a\":1}"),
        // JSON scalars are values, untouched.
        (r#""password""#, r#""password""#),
        ("12", "12"),
        // Invalid JSON passes untouched.
        (r#"{"password":"x",}"#, r#"{"password":"x",}"#),
        // A sensitive member whose value is a container.
        (
            r#"{"a":[1,2],"cvv":{"x":[{"y":1}]},"b":2}"#,
            r#"{"a":[1,2],"b":2}"#,
        ),
        // Escaped last letter, whitespace before the colon.
        (r#"{"passwor\u0064" : 1,"a":1}"#, r#"{"a":1}"#),
        (r#"{"password\u005f":1,"a":1}"#, r#"{"a":1}"#),
        // An escaped quote in an earlier name.
        (r#"{"a\"":"b","password":1}"#, r#"{"a\"":"b"}"#),
        // A plain card number value.
        ("4111111111111111", "[REDACTED]"),
        // A card number inside a JSON string.
        (
            r#"{"n":"4111 1111 1111 1111","m":"ok"}"#,
            r#"{"n":"[REDACTED]","m":"ok"}"#,
        ),
    ];
    for (i, (input, want)) in cases.iter().enumerate() {
        let key = format!("session:j{i}");
        let got = stored_after_set(&mut e, key.as_bytes(), input.as_bytes()).await;
        assert_resp!(got, common::bulk(want.as_bytes()), "case {i}: {input}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_and_stream_fields() {
    let mut e = env().await;
    // Mixed: the reply counts the fields actually written.
    assert_resp!(
        e.c.call(&[
            b"HSET",
            b"session:h",
            b"name",
            b"a",
            b"password",
            b"p",
            b"ssn",
            b"s"
        ])
        .await,
        b":1\r\n"
    );
    assert_resp!(
        e.d.call(&[b"HGETALL", b"session:h"]).await,
        b"*2\r\n$4\r\nname\r\n$1\r\na\r\n"
    );
    e.assert_pttl(b"session:h", MIN_30 - SLACK, MIN_30).await;
    // Odd argument count: Redis's own error, nothing stripped or created.
    assert_resp!(
        e.c.call(&[b"HSET", b"session:h2", b"password", b"p", b"x"])
            .await,
        b"-ERR wrong number of arguments for 'hset' command\r\n"
    );
    assert_resp!(e.d.call(&[b"EXISTS", b"session:h2"]).await, b":0\r\n");
    // All sensitive: :0 and no key; HMSET: +OK.
    assert_resp!(
        e.c.call(&[b"HSET", b"session:h3", b"password", b"p"]).await,
        b":0\r\n"
    );
    assert_resp!(
        e.c.call(&[b"HMSET", b"session:h3", b"token", b"p"]).await,
        b"+OK\r\n"
    );
    assert_resp!(e.d.call(&[b"EXISTS", b"session:h3"]).await, b":0\r\n");
    // HSETNX on a sensitive field.
    assert_resp!(
        e.c.call(&[b"HSETNX", b"session:h", b"cvv", b"1"]).await,
        b":0\r\n"
    );
    // A card number in a hash value is redacted.
    assert_resp!(
        e.c.call(&[b"HSET", b"session:h", b"n", b"4111-1111-1111-1111"])
            .await,
        b":1\r\n"
    );
    assert_resp!(
        e.d.call(&[b"HGET", b"session:h", b"n"]).await,
        common::bulk(b"[REDACTED]")
    );
    // XADD with every field sensitive: refused, no stream created.
    let r =
        e.c.call(&[
            b"XADD",
            b"session:x",
            b"*",
            b"password",
            b"p",
            b"token",
            b"t",
        ])
        .await;
    assert_resp!(
        r,
        b"-POLICY every field of the entry for session:x is sensitive, and Redis cannot store an empty stream entry\r\n"
    );
    assert_resp!(e.d.call(&[b"EXISTS", b"session:x"]).await, b":0\r\n");
    // XADD mixed, with trim options.
    let r =
        e.c.call(&[
            b"XADD",
            b"session:x",
            b"MAXLEN",
            b"~",
            b"10",
            b"1-1",
            b"password",
            b"p",
            b"a",
            b"b",
        ])
        .await;
    assert_resp!(r, common::bulk(b"1-1"));
    assert_resp!(
        e.d.call(&[b"XRANGE", b"session:x", b"-", b"+"]).await,
        b"*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n"
    );
    e.assert_pttl(b"session:x", MIN_30 - SLACK, MIN_30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_leaves_everything_untouched() {
    let yaml = POLICY.replace(
        "unknown_keys: reject",
        "mode: audit\n  unknown_keys: reject",
    );
    let mut e = env_with(&yaml).await;
    let doc = br#"{"password":"x","n":"4111111111111111"}"#;
    assert_resp!(e.c.call(&[b"SET", b"session:a", doc]).await, b"+OK\r\n");
    assert_resp!(e.get(b"session:a").await, common::bulk(doc));
    assert_eq!(e.pttl(b"session:a").await, -1);
    assert_resp!(
        e.c.call(&[b"SET", b"user42", b"v", b"EX", b"99999"]).await,
        b"+OK\r\n"
    );
    // Unchanged expiry (a millisecond may pass before PTTL reads it).
    e.assert_pttl(b"user42", 99_998_000, 99_999_000).await;
    assert_resp!(
        e.c.call(&[b"HSET", b"session:h", b"password", b"p"]).await,
        b":1\r\n"
    );
    assert_eq!(e.pttl(b"session:h").await, -1);
    assert_resp!(e.c.call(&[b"PERSIST", b"session:a"]).await, b":0\r\n");
    assert_resp!(
        e.c.call(&[b"SET", b"strict:1", b"v", b"EX", b"99999"])
            .await,
        b"+OK\r\n"
    );
    e.assert_pttl(b"strict:1", 99_998_000, 99_999_000).await;
    let _ = &e.redis;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripping_and_ttl_combine() {
    let mut e = env().await;
    assert_resp!(
        e.c.call(&[
            b"SET",
            b"session:c1",
            br#"{"password":1,"a":2}"#,
            b"EX",
            b"99999"
        ])
        .await,
        b"+OK\r\n"
    );
    assert_resp!(e.get(b"session:c1").await, common::bulk(br#"{"a":2}"#));
    e.assert_pttl(b"session:c1", MIN_30 - SLACK, MIN_30).await;
    assert_resp!(
        e.c.call(&[b"SET", b"fast:c2", br#"{"token":1}"#]).await,
        b"+OK\r\n"
    );
    assert_resp!(e.get(b"fast:c2").await, common::bulk(b"{}"));
    e.assert_pttl(b"fast:c2", 90_500 - SLACK, 90_500).await;
    assert_resp!(
        e.c.call(&[b"SETEX", b"session:c3", b"5", br#"[{"cvv":1}]"#])
            .await,
        b"+OK\r\n"
    );
    assert_resp!(e.get(b"session:c3").await, common::bulk(b"[{}]"));
    e.assert_pttl(b"session:c3", MIN_15 - SLACK, MIN_15).await;
    assert_resp!(
        e.c.call(&[b"RPUSH", b"session:l", br#"{"ssn":"x","k":1}"#, b"plain"])
            .await,
        b":2\r\n"
    );
    assert_resp!(
        e.d.call(&[b"LRANGE", b"session:l", b"0", b"-1"]).await,
        b"*2\r\n$7\r\n{\"k\":1}\r\n$5\r\nplain\r\n"
    );
    e.assert_pttl(b"session:l", MIN_30 - SLACK, MIN_30).await;
}

/// An HSET whose every field is sensitive is answered `:0` by respguard without asking Redis,
/// but on a key holding a string Redis would answer WRONGTYPE: a client that relies on the
/// error (type confusion, a bug to surface) gets a silent success instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_sensitive_hset_on_a_string_key_reports_wrongtype() {
    // When every field is sensitive nothing is written, but Redis still checks the key's type
    // (through a probe), so a wrong-type key is reported as it would be without respguard.
    let mut e = env().await;
    assert_resp!(e.c.call(&[b"SET", b"session:s", b"v"]).await, b"+OK\r\n");
    let wrongtype = b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";
    assert_resp!(
        e.c.call(&[b"HSET", b"session:s", b"name", b"x"]).await,
        wrongtype
    );
    assert_resp!(
        e.c.call(&[b"HSET", b"session:s", b"password", b"x"]).await,
        wrongtype
    );
    assert_resp!(
        e.c.call(&[b"HMSET", b"session:s", b"password", b"x"]).await,
        wrongtype
    );
    assert_resp!(e.d.call(&[b"GET", b"session:s"]).await, b"$1\r\nv\r\n");
    // On a missing key and on a hash: Redis's zero-field replies, nothing created or written.
    assert_resp!(
        e.c.call(&[b"HSET", b"session:h", b"password", b"x"]).await,
        b":0\r\n"
    );
    assert_resp!(
        e.c.call(&[b"HMSET", b"session:h", b"password", b"x"]).await,
        b"+OK\r\n"
    );
    assert_resp!(e.d.call(&[b"EXISTS", b"session:h"]).await, b":0\r\n");
    // Inside MULTI: +QUEUED, and EXEC carries the same answers.
    assert_resp!(e.c.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_resp!(
        e.c.call(&[b"HSET", b"session:s", b"password", b"x"]).await,
        b"+QUEUED\r\n"
    );
    assert_resp!(
        e.c.call(&[b"HSET", b"session:h", b"password", b"x"]).await,
        b"+QUEUED\r\n"
    );
    let mut want = b"*2\r\n".to_vec();
    want.extend_from_slice(wrongtype);
    want.extend_from_slice(b":0\r\n");
    assert_resp!(e.c.call(&[b"EXEC"]).await, want);
}

/// Same with RENAMENX.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamenx_into_a_namespace_clamps_a_carried_expiry_to_its_max() {
    let mut e = env().await;
    e.c.call(&[b"SET", b"form_progress:2:f", b"v", b"EX", b"604800"])
        .await;
    assert_resp!(
        e.c.call(&[b"RENAMENX", b"form_progress:2:f", b"session:20"])
            .await,
        b":1\r\n"
    );
    e.assert_pttl(b"session:20", MIN_30 - SLACK, MIN_30).await;
}
