//! Policy, sensitive data, against real Redis: after every write through respguard
//! the stored value is read back directly from Redis (`redis.client()`, no proxy) and compared
//! byte for byte with the expected result: configured JSON members are gone at any depth and
//! everything else is untouched; sensitive hash and stream fields are dropped; card numbers and
//! SSNs are redacted; PUBLISH messages reach subscribers stripped. Also: per-namespace
//! overrides, `action: reject` (nothing written), `action: audit` and policy `mode: audit`
//! (written unchanged), transactions, pipelines, and the allocation-free clean path.

mod alloc_count;
#[macro_use]
mod common;

use alloc_count::allocations;

use std::time::Duration;

use common::{bulk, bulk_array, encode_many, Raw, RedisServer};
use redis::aio::MultiplexedConnection;

const POLICY: &str = r#"
policy:
  unknown_keys: allow
  sensitive:
    fields: [password, ssn, creditCard, cardNumber, cvv, token]
    action: strip
    detect: [card_number, us_ssn]
    publish: true
  namespaces:
    user_profile:
      keys: ["user_profile:{id}"]
      ttl: { default: 1h, min: 1h, max: 2h }
      sensitive:
        fields: [password, ssn, creditCard, cardNumber, cvv, token, dateOfBirth]
    session:
      keys: ["session:{id}"]
      ttl: { default: 30m, min: 15m, max: 30m }
    vault:
      keys: ["vault:{id}"]
      sensitive: { action: reject }
    watch:
      keys: ["watch:{id}"]
      sensitive: { action: audit }
"#;

/// A profile document: nested objects, arrays of objects, escaped and variant member names,
/// pretty-printed parts, numbers in unusual notation and non-ASCII text.
const PROFILE: &str = "{\"id\":42,\"name\":\"Zo\u{eb} \\\"Z\\\" M\u{fc}ller\",\"password\":\"hunter2\",\n  \"contact\": {\"email\":\"z@example.com\", \"Credit_Card\" : {\"n\":\"x\"},\"phones\":[{\"type\":\"home\",\"cvv\":\"123\"},{\"token\":\"t\"},{\"type\":\"work\"}]},\n  \"pass\\u0077ord\":\"again\",\"n\":1.50e3,\"flags\":[true,false,null],\"dateOfBirth\":\"1990-01-01\",\"note\":\"my password is safe\"}";
/// PROFILE stripped with the default fields (dateOfBirth stays). A removed member takes its
/// separating comma and the whitespace before it along.
const PROFILE_DEFAULT: &str = "{\"id\":42,\"name\":\"Zo\u{eb} \\\"Z\\\" M\u{fc}ller\",\n  \"contact\": {\"email\":\"z@example.com\",\"phones\":[{\"type\":\"home\"},{},{\"type\":\"work\"}]},\"n\":1.50e3,\"flags\":[true,false,null],\"dateOfBirth\":\"1990-01-01\",\"note\":\"my password is safe\"}";
/// PROFILE stripped with the user_profile fields (dateOfBirth too).
const PROFILE_USER: &str = "{\"id\":42,\"name\":\"Zo\u{eb} \\\"Z\\\" M\u{fc}ller\",\n  \"contact\": {\"email\":\"z@example.com\",\"phones\":[{\"type\":\"home\"},{},{\"type\":\"work\"}]},\"n\":1.50e3,\"flags\":[true,false,null],\"note\":\"my password is safe\"}";

fn text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).trim_end().to_string()
}

struct Env {
    redis: RedisServer,
    proxy: respguard::Proxy,
    /// Through respguard, raw: exact replies.
    c: Raw,
    /// Straight to Redis: what was stored.
    d: MultiplexedConnection,
}

async fn env_with(yaml: &str) -> Env {
    let redis = RedisServer::start();
    let proxy = common::proxy(yaml, &redis.url()).await;
    let c = Raw::connect(proxy.local_addr).await;
    let d = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("direct connection to redis");
    Env { redis, proxy, c, d }
}

async fn env() -> Env {
    env_with(POLICY).await
}

impl Env {
    /// Runs a command straight on Redis.
    async fn direct<T: redis::FromRedisValue>(&mut self, args: &[&[u8]]) -> T {
        let mut cmd = redis::cmd(std::str::from_utf8(args[0]).expect("command name"));
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut self.d)
            .await
            .unwrap_or_else(|e| panic!("direct {}: {e}", text(args[0])))
    }

    /// The stored string value, read directly.
    async fn stored(&mut self, key: &str) -> Option<Vec<u8>> {
        self.direct(&[b"GET", key.as_bytes()]).await
    }

    async fn exists(&mut self, key: &str) -> bool {
        self.direct::<i64>(&[b"EXISTS", key.as_bytes()]).await == 1
    }

    async fn ttl(&mut self, key: &str) -> i64 {
        self.direct(&[b"TTL", key.as_bytes()]).await
    }

    /// Asserts the stored value of `key` is exactly `want`.
    #[track_caller]
    fn assert_stored(got: Option<Vec<u8>>, want: &str, key: &str) {
        let got = got.unwrap_or_else(|| panic!("{key} was not stored"));
        assert_eq!(
            String::from_utf8_lossy(&got),
            want,
            "stored value of {key} (byte for byte)"
        );
        assert_eq!(got, want.as_bytes(), "{key}: bytes");
    }
}

/// The stripped documents are still valid JSON, with the same content minus the fields.
#[test]
fn expected_documents_are_valid_json() {
    for doc in [PROFILE, PROFILE_DEFAULT, PROFILE_USER] {
        serde_json::from_str::<serde_json::Value>(doc).unwrap_or_else(|e| panic!("{e}: {doc}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_strips_json_members_at_any_depth_byte_for_byte() {
    let mut e = env().await;
    // The default fields for a namespace without an override, and for keys in no namespace.
    assert_eq!(
        e.c.call(&[b"SET", b"session:1", PROFILE.as_bytes()]).await,
        b"+OK\r\n"
    );
    Env::assert_stored(e.stored("session:1").await, PROFILE_DEFAULT, "session:1");
    // Stripping and the TTL default combine: `EX 1800` was added after the stripped value.
    assert!((1790..=1800).contains(&e.ttl("session:1").await));
    assert_eq!(
        e.c.call(&[b"SET", b"misc", PROFILE.as_bytes()]).await,
        b"+OK\r\n"
    );
    Env::assert_stored(e.stored("misc").await, PROFILE_DEFAULT, "misc");
    // The namespace override adds dateOfBirth.
    assert_eq!(
        e.c.call(&[
            b"SET",
            b"user_profile:42",
            PROFILE.as_bytes(),
            b"EX",
            b"99999"
        ])
        .await,
        b"+OK\r\n"
    );
    Env::assert_stored(
        e.stored("user_profile:42").await,
        PROFILE_USER,
        "user_profile:42",
    );
    assert!(
        (7190..=7200).contains(&e.ttl("user_profile:42").await),
        "clamped"
    );
    // SET options keep working on the rewritten command.
    let r =
        e.c.call(&[
            b"SET",
            b"user_profile:42",
            br#"{"token":"t2","v":2}"#,
            b"XX",
            b"GET",
        ])
        .await;
    assert_eq!(
        r,
        bulk(PROFILE_USER.as_bytes()),
        "GET returns the old value"
    );
    Env::assert_stored(
        e.stored("user_profile:42").await,
        r#"{"v":2}"#,
        "user_profile:42",
    );

    // Left alone: names only in string values, documents that are not valid JSON, clean ones.
    for v in [
        r#"{"note":"password: x","hint":"ssn"}"#,
        r#"{"password":"x",}"#,
        r#"{"payload":"{\"password\":\"x\"}"}"#,
        "password=hunter2",
        r#"{"user":"ann","tokens":3,"card":"n/a"}"#,
    ] {
        assert_eq!(
            e.c.call(&[b"SET", b"session:2", v.as_bytes()]).await,
            b"+OK\r\n"
        );
        Env::assert_stored(e.stored("session:2").await, v, "session:2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setex_mset_getset_and_friends() {
    let mut e = env().await;
    let doc = r#"{"a":1,"ssn":"x","b":[{"cvv":1,"c":2}]}"#;
    let clean = r#"{"a":1,"b":[{"c":2}]}"#;
    assert_eq!(
        e.c.call(&[b"SETEX", b"session:1", b"99999", doc.as_bytes()])
            .await,
        b"+OK\r\n"
    );
    Env::assert_stored(e.stored("session:1").await, clean, "session:1");
    assert!((1790..=1800).contains(&e.ttl("session:1").await), "clamped");
    assert_eq!(
        e.c.call(&[b"PSETEX", b"session:2", b"1000000", doc.as_bytes()])
            .await,
        b"+OK\r\n"
    );
    Env::assert_stored(e.stored("session:2").await, clean, "session:2");

    // MSET: each key with its namespace's rules.
    let doc2 = r#"{"dateOfBirth":"1990-01-01","password":"p","k":"v"}"#;
    assert_eq!(
        e.c.call(&[
            b"MSET",
            b"user_profile:1",
            doc2.as_bytes(),
            b"session:3",
            doc2.as_bytes(),
            b"plain",
            b"4111 1111 1111 1111",
        ])
        .await,
        b"+OK\r\n"
    );
    Env::assert_stored(
        e.stored("user_profile:1").await,
        r#"{"k":"v"}"#,
        "user_profile:1",
    );
    Env::assert_stored(
        e.stored("session:3").await,
        r#"{"dateOfBirth":"1990-01-01","k":"v"}"#,
        "session:3",
    );
    Env::assert_stored(e.stored("plain").await, "[REDACTED]", "plain");
    assert!((3590..=3600).contains(&e.ttl("user_profile:1").await));
    assert_eq!(
        e.c.call(&[b"MSETNX", b"session:4", doc.as_bytes()]).await,
        b":1\r\n"
    );
    Env::assert_stored(e.stored("session:4").await, clean, "session:4");

    // GETSET answers the old value and stores the stripped new one.
    assert_eq!(
        e.c.call(&[b"GETSET", b"session:1", br#"{"token":"x","z":0}"#])
            .await,
        bulk(clean.as_bytes())
    );
    Env::assert_stored(e.stored("session:1").await, r#"{"z":0}"#, "session:1");
    assert_eq!(
        e.c.call(&[b"SETNX", b"session:5", doc.as_bytes()]).await,
        b":1\r\n"
    );
    Env::assert_stored(e.stored("session:5").await, clean, "session:5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hset_drops_sensitive_fields() {
    let mut e = env().await;
    assert_eq!(
        e.c.call(&[
            b"HSET",
            b"session:h",
            b"name",
            b"ann",
            b"Pass_Word",
            b"x",
            b"prefs",
            br#"{"token":1,"a":2}"#,
            b"SSN",
            b"123-45-6789",
        ])
        .await,
        b":2\r\n"
    );
    let all: Vec<Vec<u8>> = e.direct(&[b"HGETALL", b"session:h"]).await;
    assert_eq!(
        all,
        [&b"name"[..], b"ann", b"prefs", br#"{"a":2}"#].map(<[u8]>::to_vec)
    );
    assert!((1790..=1800).contains(&e.ttl("session:h").await));
    // Values are scanned too: a card number in a harmless field is redacted.
    assert_eq!(
        e.c.call(&[b"HSET", b"session:h", b"note", b"5555555555554444"])
            .await,
        b":1\r\n"
    );
    let note: Vec<u8> = e.direct(&[b"HGET", b"session:h", b"note"]).await;
    assert_eq!(note, b"[REDACTED]");

    // Every field sensitive: answered like Redis would for nothing new, key not created.
    assert_eq!(
        e.c.call(&[b"HSET", b"session:h2", b"cvv", b"1", b"token", b"t"])
            .await,
        b":0\r\n"
    );
    assert!(!e.exists("session:h2").await);
    assert_eq!(
        e.c.call(&[b"HMSET", b"session:h3", b"password", b"x"])
            .await,
        b"+OK\r\n"
    );
    assert_eq!(
        e.c.call(&[b"HSETNX", b"session:h4", b"creditCard", b"x"])
            .await,
        b":0\r\n"
    );
    assert!(!e.exists("session:h3").await && !e.exists("session:h4").await);
    // The override's extra field is dropped only in its namespace.
    assert_eq!(
        e.c.call(&[
            b"HSET",
            b"user_profile:1",
            b"date_of_birth",
            b"x",
            b"n",
            b"1"
        ])
        .await,
        b":1\r\n"
    );
    let keys: Vec<Vec<u8>> = e.direct(&[b"HKEYS", b"user_profile:1"]).await;
    assert_eq!(keys, [b"n".to_vec()]);
    assert_eq!(
        e.c.call(&[b"HSET", b"session:h5", b"date_of_birth", b"x"])
            .await,
        b":1\r\n"
    );
    // The connection is still paired correctly after local answers.
    assert_eq!(e.c.call(&[b"PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_set_sorted_set_and_stream_values() {
    let mut e = env().await;
    let doc = r#"{"id":1,"cardNumber":"4111111111111111"}"#;
    let clean = r#"{"id":1}"#;
    assert_eq!(
        e.c.call(&[
            b"LPUSH",
            b"session:l",
            doc.as_bytes(),
            b"plain",
            b"ssn: 123-45-6789",
        ])
        .await,
        b":3\r\n"
    );
    let list: Vec<Vec<u8>> = e.direct(&[b"LRANGE", b"session:l", b"0", b"-1"]).await;
    assert_eq!(
        list,
        [&b"[REDACTED]"[..], b"plain", clean.as_bytes()].map(<[u8]>::to_vec)
    );
    assert!((1790..=1800).contains(&e.ttl("session:l").await));
    assert_eq!(
        e.c.call(&[b"RPUSH", b"session:l", doc.as_bytes()]).await,
        b":4\r\n"
    );
    assert_eq!(
        e.c.call(&[b"LSET", b"session:l", b"1", doc.as_bytes()])
            .await,
        b"+OK\r\n"
    );
    let list: Vec<Vec<u8>> = e.direct(&[b"LRANGE", b"session:l", b"0", b"-1"]).await;
    assert_eq!(
        list,
        [
            &b"[REDACTED]"[..],
            clean.as_bytes(),
            clean.as_bytes(),
            clean.as_bytes()
        ]
        .map(<[u8]>::to_vec)
    );

    assert_eq!(
        e.c.call(&[b"SADD", b"session:s", doc.as_bytes(), b"m"])
            .await,
        b":2\r\n"
    );
    let mut members: Vec<Vec<u8>> = e.direct(&[b"SMEMBERS", b"session:s"]).await;
    members.sort();
    assert_eq!(members, [b"m".to_vec(), clean.as_bytes().to_vec()]);

    assert_eq!(
        e.c.call(&[
            b"ZADD",
            b"session:z",
            b"NX",
            b"1",
            doc.as_bytes(),
            b"2",
            b"m"
        ])
        .await,
        b":2\r\n"
    );
    let z: Vec<Vec<u8>> = e.direct(&[b"ZRANGE", b"session:z", b"0", b"-1"]).await;
    assert_eq!(z, [clean.as_bytes().to_vec(), b"m".to_vec()]);

    // XADD: sensitive fields dropped, values scanned, options and the ID untouched.
    let r =
        e.c.call(&[
            b"XADD",
            b"session:x",
            b"MAXLEN",
            b"~",
            b"100",
            b"1-1",
            b"password",
            b"x",
            b"msg",
            doc.as_bytes(),
        ])
        .await;
    assert_eq!(r, bulk(b"1-1"));
    let mut want = b"*1\r\n*2\r\n".to_vec();
    want.extend(bulk(b"1-1"));
    want.extend(bulk_array(&[b"msg", clean.as_bytes()]));
    let mut d = e.redis.raw().await;
    assert_resp!(d.call(&[b"XRANGE", b"session:x", b"-", b"+"]).await, want);
    // Every field sensitive: refused, an empty entry cannot be stored.
    let r = text(
        &e.c.call(&[b"XADD", b"session:x", b"*", b"token", b"t"])
            .await,
    );
    assert!(
        r.starts_with("-POLICY every field of the entry for session:x"),
        "{r}"
    );
    let len: i64 = e.direct(&[b"XLEN", b"session:x"]).await;
    assert_eq!(len, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_messages_reach_subscribers_stripped() {
    let mut e = env().await;
    // Subscribed straight to Redis: what Redis delivered is what respguard published.
    let mut sub = e.redis.raw().await;
    sub.cmd(&[b"SUBSCRIBE", b"user_profile:events"]).await;
    let _confirm = sub.read().await;
    // Channels use the default rules, even one named like a key of an override namespace.
    let msg = r#"{"event":"signup","user":{"name":"ann","password":"p","dateOfBirth":"d"}}"#;
    let stripped = r#"{"event":"signup","user":{"name":"ann","dateOfBirth":"d"}}"#;
    assert_eq!(
        e.c.call(&[b"PUBLISH", b"user_profile:events", msg.as_bytes()])
            .await,
        b":1\r\n"
    );
    assert_resp!(
        sub.read().await,
        bulk_array(&[b"message", b"user_profile:events", stripped.as_bytes()])
    );
    assert_eq!(
        e.c.call(&[
            b"PUBLISH",
            b"user_profile:events",
            b"card 4111 1111 1111 1111"
        ])
        .await,
        b":1\r\n"
    );
    assert_resp!(
        sub.read().await,
        bulk_array(&[b"message", b"user_profile:events", b"[REDACTED]"])
    );
    // A clean message is forwarded as is.
    assert_eq!(
        e.c.call(&[b"PUBLISH", b"user_profile:events", b"{\"a\":1}"])
            .await,
        b":1\r\n"
    );
    assert_resp!(
        sub.read().await,
        bulk_array(&[b"message", b"user_profile:events", b"{\"a\":1}"])
    );
    // Nothing else arrives.
    assert!(sub.read_timeout(Duration::from_millis(200)).await.is_none());

    // publish: false leaves messages alone.
    let quiet = POLICY.replace("    publish: true\n", "    publish: false\n");
    let mut q = env_with(&quiet).await;
    let mut sub = q.redis.raw().await;
    sub.cmd(&[b"SUBSCRIBE", b"ch"]).await;
    let _confirm = sub.read().await;
    assert_eq!(
        q.c.call(&[b"PUBLISH", b"ch", msg.as_bytes()]).await,
        b":1\r\n"
    );
    assert_resp!(
        sub.read().await,
        bulk_array(&[b"message", b"ch", msg.as_bytes()])
    );
    // Keys are still stripped there.
    q.c.call(&[b"SET", b"k", msg.as_bytes()]).await;
    Env::assert_stored(q.stored("k").await, stripped, "k");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detectors_redact_card_numbers_and_ssns() {
    let mut e = env().await;
    for (value, want) in [
        // Plain strings: the whole value is replaced.
        ("4111 1111 1111 1111", "[REDACTED]"),
        ("card: 5500-0000-0000-0004 exp 12/25", "[REDACTED]"),
        ("ssn 078-05-1120", "[REDACTED]"),
        // JSON leaves (strings and plain integers) are replaced, the rest kept.
        (
            r#"{"pay":{"pan":"4012888888881881","last4":"1881"},"amount":12.5}"#,
            r#"{"pay":{"pan":"[REDACTED]","last4":"1881"},"amount":12.5}"#,
        ),
        (
            r#"[{"n":4111111111111111},{"id":"078-05-1120"},"ok"]"#,
            r#"[{"n":"[REDACTED]"},{"id":"[REDACTED]"},"ok"]"#,
        ),
        // Not cards or SSNs: Luhn failure, a millisecond timestamp, dates, an invalid SSN.
        ("4111 1111 1111 1112", "4111 1111 1111 1112"),
        ("1700000000000", "1700000000000"),
        (
            r#"{"at":1700000000000,"day":"2024-01-15","ssn_like":"000-12-3456"}"#,
            r#"{"at":1700000000000,"day":"2024-01-15","ssn_like":"000-12-3456"}"#,
        ),
    ] {
        assert_eq!(
            e.c.call(&[b"SET", b"session:d", value.as_bytes()]).await,
            b"+OK\r\n",
            "{value}"
        );
        Env::assert_stored(e.stored("session:d").await, want, value);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_action_refuses_and_writes_nothing() {
    let mut e = env().await;
    let r = text(
        &e.c.call(&[b"SET", b"vault:1", br#"{"a":{"token":"t"}}"#])
            .await,
    );
    assert_eq!(
        r,
        r#"-POLICY value for vault:1 contains sensitive field "token""#
    );
    let r = text(
        &e.c.call(&[b"HSET", b"vault:2", b"f", b"v", b"SSN", b"x"])
            .await,
    );
    assert_eq!(
        r,
        r#"-POLICY value for vault:2 contains sensitive field "ssn""#
    );
    let r = text(&e.c.call(&[b"LPUSH", b"vault:3", b"4111111111111111"]).await);
    assert_eq!(r, "-POLICY value for vault:3 contains a card number");
    // MSET is refused as a whole when one of its keys rejects.
    let r = text(
        &e.c.call(&[b"MSET", b"session:1", b"ok", b"vault:4", br#"{"cvv":1}"#])
            .await,
    );
    assert!(r.starts_with("-POLICY value for vault:4"), "{r}");
    for key in ["vault:1", "vault:2", "vault:3", "vault:4", "session:1"] {
        assert!(!e.exists(key).await, "{key} was written");
    }
    // Clean values pass.
    assert_eq!(
        e.c.call(&[b"SET", b"vault:5", br#"{"a":1}"#]).await,
        b"+OK\r\n"
    );
    Env::assert_stored(e.stored("vault:5").await, r#"{"a":1}"#, "vault:5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_action_and_audit_mode_write_unchanged() {
    let mut e = env().await;
    let doc = r#"{"password":"p","card":"4111111111111111","k":1}"#;
    assert_eq!(
        e.c.call(&[b"SET", b"watch:1", doc.as_bytes()]).await,
        b"+OK\r\n"
    );
    Env::assert_stored(e.stored("watch:1").await, doc, "watch:1");
    assert_eq!(
        e.c.call(&[b"HSET", b"watch:2", b"password", b"p"]).await,
        b":1\r\n"
    );
    let v: Vec<u8> = e.direct(&[b"HGET", b"watch:2", b"password"]).await;
    assert_eq!(v, b"p");

    // Policy mode: audit makes every rule set audit-only, reject ones included.
    let mut a = env_with(&POLICY.replace("policy:\n", "policy:\n  mode: audit\n")).await;
    for key in ["session:1", "vault:1", "user_profile:1", "misc"] {
        assert_eq!(
            a.c.call(&[b"SET", key.as_bytes(), doc.as_bytes()]).await,
            b"+OK\r\n"
        );
        Env::assert_stored(a.stored(key).await, doc, key);
        assert_eq!(a.ttl(key).await, -1, "audit mode adds no expiry either");
    }
    assert_eq!(
        a.c.call(&[b"HSET", b"session:h", b"cvv", b"1"]).await,
        b":1\r\n"
    );
    let mut sub = a.redis.raw().await;
    sub.cmd(&[b"SUBSCRIBE", b"ch"]).await;
    let _confirm = sub.read().await;
    a.c.call(&[b"PUBLISH", b"ch", doc.as_bytes()]).await;
    assert_resp!(
        sub.read().await,
        bulk_array(&[b"message", b"ch", doc.as_bytes()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_multi_exec() {
    let mut e = env().await;
    let doc = r#"{"a":1,"password":"p"}"#;
    assert_eq!(e.c.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(
        e.c.call(&[b"SET", b"session:m1", doc.as_bytes()]).await,
        b"+QUEUED\r\n"
    );
    assert_eq!(
        e.c.call(&[b"HSET", b"session:m2", b"n", b"1", b"token", b"t"])
            .await,
        b"+QUEUED\r\n"
    );
    assert_eq!(
        e.c.call(&[b"RPUSH", b"user_profile:m3", br#"{"dateOfBirth":1}"#])
            .await,
        b"+QUEUED\r\n"
    );
    assert_eq!(
        e.c.call(&[b"EXEC"]).await,
        b"*3\r\n+OK\r\n:1\r\n:1\r\n".to_vec()
    );
    Env::assert_stored(e.stored("session:m1").await, r#"{"a":1}"#, "session:m1");
    let keys: Vec<Vec<u8>> = e.direct(&[b"HKEYS", b"session:m2"]).await;
    assert_eq!(keys, [b"n".to_vec()]);
    let list: Vec<Vec<u8>> = e
        .direct(&[b"LRANGE", b"user_profile:m3", b"0", b"-1"])
        .await;
    assert_eq!(list, [b"{}".to_vec()]);

    // A rejected value aborts the transaction like any refused command; nothing is applied.
    assert_eq!(e.c.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(
        e.c.call(&[b"SET", b"session:m4", b"v"]).await,
        b"+QUEUED\r\n"
    );
    let r = text(&e.c.call(&[b"SET", b"vault:m", doc.as_bytes()]).await);
    assert!(r.starts_with("-POLICY value for vault:m"), "{r}");
    assert_eq!(
        text(&e.c.call(&[b"EXEC"]).await),
        "-EXECABORT Transaction discarded because of previous errors."
    );
    assert!(!e.exists("session:m4").await && !e.exists("vault:m").await);
    assert_eq!(e.c.call(&[b"PING"]).await, b"+PONG\r\n");
}

/// A command answered by respguard itself (every hash field sensitive) inside `MULTI` must
/// look like Redis: `+QUEUED` now, its reply inside the `EXEC` array.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_answer_inside_multi_exec() {
    let mut e = env().await;
    assert_eq!(e.c.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(
        e.c.call(&[b"SET", b"session:q1", b"v"]).await,
        b"+QUEUED\r\n"
    );
    assert_eq!(
        e.c.call(&[b"HSET", b"session:q2", b"password", b"p"]).await,
        b"+QUEUED\r\n"
    );
    assert_eq!(e.c.call(&[b"EXEC"]).await, b"*2\r\n+OK\r\n:0\r\n".to_vec());
    assert!(!e.exists("session:q2").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_pipeline_replies_keep_their_order() {
    let mut e = env().await;
    let doc = r#"{"cvv":"1","v":1}"#;
    let cmds: &[&[&[u8]]] = &[
        &[b"SET", b"session:p1", doc.as_bytes()],
        &[b"HSET", b"session:p2", b"token", b"t"],
        &[b"GET", b"session:p1"],
        &[b"SET", b"vault:p", doc.as_bytes()],
        &[b"HSET", b"session:p3", b"a", b"1", b"ssn", b"x"],
        &[b"LPUSH", b"session:p4", b"078-05-1120"],
        &[b"PING"],
    ];
    e.c.send(&encode_many(cmds)).await;
    assert_eq!(e.c.read().await, b"+OK\r\n");
    assert_eq!(
        e.c.read().await,
        b":0\r\n",
        "answered by respguard, in order"
    );
    assert_eq!(e.c.read().await, bulk(br#"{"v":1}"#));
    assert!(text(&e.c.read().await).starts_with("-POLICY value for vault:p"));
    assert_eq!(e.c.read().await, b":1\r\n");
    assert_eq!(e.c.read().await, b":1\r\n");
    assert_eq!(e.c.read().await, b"+PONG\r\n");
    let list: Vec<Vec<u8>> = e.direct(&[b"LRANGE", b"session:p4", b"0", b"-1"]).await;
    assert_eq!(list, [b"[REDACTED]".to_vec()]);
    assert!(!e.exists("session:p2").await && !e.exists("vault:p").await);

    // The redis crate's pipelines work unchanged.
    let mut p = common::proxy_conn(&e.proxy).await;
    let (a, b): (String, i64) = redis::pipe()
        .cmd("SET")
        .arg("session:p5")
        .arg(r#"{"password":"p","x":[1,2]}"#)
        .cmd("HSET")
        .arg("session:p6")
        .arg("cvv")
        .arg("1")
        .query_async(&mut p)
        .await
        .expect("pipeline");
    assert_eq!((a.as_str(), b), ("OK", 0));
    Env::assert_stored(e.stored("session:p5").await, r#"{"x":[1,2]}"#, "session:p5");
}

/// `respguard_sensitive_fields_total{namespace, field, action}` counts findings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_are_counted_in_metrics() {
    let mut e = env().await;
    e.c.call(&[
        b"SET",
        b"user_profile:1",
        br#"{"password":1,"dateOfBirth":2}"#,
    ])
    .await;
    e.c.call(&[b"SET", b"session:1", br#"{"password":1}"#])
        .await;
    e.c.call(&[b"SET", b"session:2", b"4111111111111111"]).await;
    e.c.call(&[b"HSET", b"session:3", b"cvv", b"1"]).await;
    e.c.call(&[b"SET", b"vault:1", br#"{"ssn":1}"#]).await;
    e.c.call(&[b"SET", b"watch:1", br#"{"token":1}"#]).await;
    e.c.call(&[b"PUBLISH", b"ch", br#"{"token":1}"#]).await;
    assert_eq!(e.c.call(&[b"PING"]).await, b"+PONG\r\n");
    let m = common::metrics_text(&e.proxy).await;
    let name = "respguard_sensitive_fields_total";
    for (ns, field, action, n) in [
        ("user_profile", "password", "strip", 1.0),
        ("user_profile", "dateOfBirth", "strip", 1.0),
        ("session", "password", "strip", 1.0),
        ("session", "card_number", "strip", 1.0),
        ("session", "cvv", "strip", 1.0),
        ("vault", "ssn", "reject", 1.0),
        ("watch", "token", "audit", 1.0),
        ("_none", "token", "strip", 1.0),
    ] {
        assert_eq!(
            common::metric_sum(
                &m,
                name,
                &[("namespace", ns), ("field", field), ("action", action)]
            ),
            Some(n),
            "{ns}/{field}/{action}:\n{}",
            common::metric_lines(&m, name)
        );
    }
    assert_eq!(
        common::metric_sum(
            &m,
            "respguard_policy_rejections_total",
            &[("namespace", "vault"), ("rule", "sensitive")]
        ),
        Some(1.0)
    );
}

// ---------------------------------------------------------------------------------------------
// The clean path allocates nothing: a counting allocator (per thread) around Policy::check.

#[test]
fn clean_commands_do_not_allocate() {
    use respguard::policy::{Scratch, Verdict};

    let policy = common::config(POLICY, "redis://127.0.0.1:1")
        .policy
        .expect("policy");
    let doc = br#"{"id":"u-1","user_id":7,"created_at":"2024-01-15T10:00:00Z","tags":["a"],"nested":{"k":[{"v":1}]}}"#;
    let cmds: [&[&[u8]]; 8] = [
        &[b"SET", b"session:1", doc, b"EX", b"1200"],
        &[b"SET", b"misc", doc],
        &[b"MSET", b"misc", doc, b"other", b"plain text 12345"],
        &[b"SADD", b"misc", doc, b"m"],
        &[b"HSET", b"misc", b"name", b"ann", b"n", b"1"],
        &[b"XADD", b"misc", b"*", b"msg", doc],
        &[b"PUBLISH", b"ch", doc],
        &[b"GET", b"session:1"],
    ];
    let mut scratch = Scratch::default();
    for args in cmds {
        let owned = respguard::codec::OwnedArgv::new(args);
        let argv = owned.argv();
        let spec = respguard::command::lookup(&argv);
        // Warm up the reused scratch vectors.
        let v = policy.check(&argv, spec, &mut scratch);
        assert!(matches!(v, Verdict::Forward), "{:?}: {v:?}", text(args[0]));
        let before = allocations();
        for _ in 0..50 {
            let v = policy.check(&argv, spec, &mut scratch);
            assert!(matches!(v, Verdict::Forward));
        }
        let n = allocations() - before;
        assert_eq!(n, 0, "{} allocated {n} times in 50 checks", text(args[0]));
        assert!(scratch.sensitive.is_empty());
    }
    // The counter works: a command with a finding does allocate (the rewrite).
    let args: [&[u8]; 3] = [b"SET", b"misc", br#"{"password":1}"#];
    let owned = respguard::codec::OwnedArgv::new(&args);
    let argv = owned.argv();
    let before = allocations();
    let v = policy.check(&argv, respguard::command::lookup(&argv), &mut scratch);
    assert!(matches!(v, Verdict::Rewrite(_)));
    assert!(allocations() > before);
    assert_eq!(scratch.sensitive.len(), 1);
    assert_eq!(
        policy.sensitive_field_label(scratch.sensitive[0].2),
        "password"
    );
}
