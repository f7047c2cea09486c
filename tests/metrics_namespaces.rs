//! Observability: hit/miss and command counters per namespace are exact. A known
//! sequence of reads (pipelined, inside MULTI, MGET with mixed results, hash reads, EXISTS,
//! RESP2 and RESP3) goes through respguard to a real Redis, then every counter is checked.

#[macro_use]
mod common;

use common::{bulk, encode_many, metric_lines, metric_sum, metrics_text, raw_proxy, RedisServer};

const POLICY: &str = "policy:
  namespaces:
    user_profile:
      keys: [\"user_profile:{id}\"]
      ttl: { default: 1h, min: 1h, max: 2h }
    session:
      keys: [\"session:{id}\"]
      ttl: { default: 30m, min: 15m, max: 30m }
";

fn check(text: &str, name: &str, labels: &[(&str, &str)], want: f64) {
    let got = metric_sum(text, name, labels).unwrap_or(0.0);
    assert_eq!(got, want, "{name}{labels:?}\n{}", metric_lines(text, name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_and_misses_are_counted_exactly_per_namespace() {
    let redis = RedisServer::start();
    let proxy = common::proxy(POLICY, &redis.url()).await;
    let mut c = raw_proxy(&proxy).await;

    // Writes.
    assert_eq!(c.call(&[b"SET", b"user_profile:1", b"a"]).await, b"+OK\r\n");
    assert_eq!(c.call(&[b"SET", b"session:1", b"b"]).await, b"+OK\r\n");
    assert_eq!(
        c.call(&[b"HSET", b"user_profile:7", b"f", b"v"]).await,
        b":1\r\n"
    );

    // Pipelined GETs: one hit and one miss per namespace.
    c.send(&encode_many(&[
        &[b"GET", b"user_profile:1"],
        &[b"GET", b"user_profile:2"],
        &[b"GET", b"session:1"],
        &[b"GET", b"session:9"],
    ]))
    .await;
    for _ in 0..4 {
        c.read().await;
    }

    // MGET with mixed results across namespaces: counted per key, each in its namespace.
    let mget = c
        .call(&[
            b"MGET",
            b"user_profile:1",
            b"user_profile:3",
            b"session:1",
            b"session:4",
        ])
        .await;
    assert_eq!(mget, b"*4\r\n$1\r\na\r\n$-1\r\n$1\r\nb\r\n$-1\r\n");

    // Inside MULTI: the data arrives in EXEC's array, not with +QUEUED.
    assert_eq!(c.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.call(&[b"GET", b"user_profile:1"]).await, b"+QUEUED\r\n");
    assert_eq!(c.call(&[b"GET", b"session:5"]).await, b"+QUEUED\r\n");
    assert_eq!(c.call(&[b"EXEC"]).await, b"*2\r\n$1\r\na\r\n$-1\r\n");

    // Hash reads, a collection read and EXISTS.
    assert_eq!(
        c.call(&[b"HGET", b"user_profile:7", b"f"]).await,
        b"$1\r\nv\r\n"
    );
    assert_eq!(
        c.call(&[b"HGET", b"user_profile:7", b"g"]).await,
        b"$-1\r\n"
    );
    assert_eq!(
        c.call(&[b"HMGET", b"user_profile:7", b"f", b"g"]).await,
        b"*2\r\n$1\r\nv\r\n$-1\r\n"
    );
    assert_eq!(c.call(&[b"HGETALL", b"user_profile:8"]).await, b"*0\r\n");
    assert_eq!(
        c.call(&[b"EXISTS", b"user_profile:1", b"user_profile:2"])
            .await,
        b":1\r\n"
    );

    // RESP3: nulls are `_`, still misses.
    let mut r3 = raw_proxy(&proxy).await;
    let hello = r3.call(&[b"HELLO", b"3"]).await;
    assert_eq!(hello.first(), Some(&b'%'));
    assert_eq!(r3.call(&[b"GET", b"user_profile:1"]).await, b"$1\r\na\r\n");
    assert_eq!(r3.call(&[b"GET", b"user_profile:404"]).await, b"_\r\n");
    assert_eq!(
        r3.call(&[b"HGETALL", b"user_profile:7"]).await,
        b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n"
    );

    let text = metrics_text(&proxy).await;
    let hits = "respguard_cache_hits_total";
    let misses = "respguard_cache_misses_total";
    let up = ("namespace", "user_profile");
    let se = ("namespace", "session");
    // GET: pipeline 1 + MULTI 1 + RESP3 1 hits; pipeline 1 + RESP3 1 misses.
    check(&text, hits, &[up, ("command", "GET")], 3.0);
    check(&text, misses, &[up, ("command", "GET")], 2.0);
    check(&text, hits, &[se, ("command", "GET")], 1.0);
    check(&text, misses, &[se, ("command", "GET")], 2.0);
    check(&text, hits, &[up, ("command", "MGET")], 1.0);
    check(&text, misses, &[up, ("command", "MGET")], 1.0);
    check(&text, hits, &[se, ("command", "MGET")], 1.0);
    check(&text, misses, &[se, ("command", "MGET")], 1.0);
    check(&text, hits, &[up, ("command", "HGET")], 1.0);
    check(&text, misses, &[up, ("command", "HGET")], 1.0);
    check(&text, hits, &[up, ("command", "HMGET")], 1.0);
    check(&text, misses, &[up, ("command", "HMGET")], 1.0);
    check(&text, hits, &[up, ("command", "HGETALL")], 1.0);
    check(&text, misses, &[up, ("command", "HGETALL")], 1.0);
    check(&text, hits, &[up, ("command", "EXISTS")], 1.0);
    check(&text, misses, &[up, ("command", "EXISTS")], 1.0);
    // Totals across everything: 10 hits, 10 misses.
    check(&text, hits, &[], 10.0);
    check(&text, misses, &[], 10.0);

    // Commands per namespace and result: GET ran 2 + 1 + 2 times in user_profile (the queued
    // one counts once, when queued).
    let cmds = "respguard_commands_total";
    check(
        &text,
        cmds,
        &[up, ("command", "GET"), ("result", "ok")],
        5.0,
    );
    check(
        &text,
        cmds,
        &[se, ("command", "GET"), ("result", "ok")],
        3.0,
    );
    check(
        &text,
        cmds,
        &[
            ("namespace", "_none"),
            ("command", "EXEC"),
            ("result", "ok"),
        ],
        1.0,
    );
    check(&text, cmds, &[("command", "HELLO"), ("result", "ok")], 1.0);
    // TTL actions: SET user_profile:1 got the default, HSET got EXPIRE NX appended.
    check(
        &text,
        "respguard_ttl_enforced_total",
        &[up, ("action", "added")],
        2.0,
    );
    check(
        &text,
        "respguard_ttl_enforced_total",
        &[se, ("action", "added")],
        1.0,
    );
    // Histograms count every command exactly once.
    check(
        &text,
        "respguard_command_duration_seconds_count",
        &[("command", "MGET")],
        1.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_counted_by_namespace_and_rule() {
    let redis = RedisServer::start();
    let yaml = format!("{POLICY}  denied_commands: [KEYS]\n");
    let proxy = common::proxy(&yaml, &redis.url()).await;
    let mut c = raw_proxy(&proxy).await;
    let refused = c.call(&[b"SET", b"user42", b"x"]).await;
    assert!(
        refused.starts_with(b"-POLICY "),
        "{}",
        common::show(&refused)
    );
    let refused = c.call(&[b"KEYS", b"*"]).await;
    assert!(
        refused.starts_with(b"-POLICY KEYS"),
        "{}",
        common::show(&refused)
    );
    let refused = c.call(&[b"PERSIST", b"session:1"]).await;
    assert!(
        refused.starts_with(b"-POLICY "),
        "{}",
        common::show(&refused)
    );
    let text = metrics_text(&proxy).await;
    let rej = "respguard_policy_rejections_total";
    check(
        &text,
        rej,
        &[("namespace", "_unmatched"), ("rule", "naming")],
        1.0,
    );
    check(
        &text,
        rej,
        &[("namespace", "_none"), ("rule", "denied_command")],
        1.0,
    );
    check(
        &text,
        rej,
        &[("namespace", "session"), ("rule", "persist")],
        1.0,
    );
    check(
        &text,
        "respguard_ttl_enforced_total",
        &[("namespace", "session"), ("action", "refused")],
        1.0,
    );
    check(
        &text,
        "respguard_commands_total",
        &[("command", "SET"), ("result", "rejected")],
        1.0,
    );
    // Nothing reached Redis.
    let mut direct = redis.raw().await;
    assert_eq!(direct.call(&[b"DBSIZE"]).await, b":0\r\n");
}

const PIPELINED_POLICY: &str = r#"
policy:
  unknown_keys: allow
  namespaces:
    aa:
      keys: ["ns:aa:{id}"]
      ttl: { default: 1h, min: 1h, max: 1h }
"#;

/// A pipelined batch counts every command once in `respguard_commands_total` and in the
/// latency histogram, with runs merged by equal instants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_runs_count_every_command() {
    let mut e = common::policy_env(PIPELINED_POLICY).await;
    let gets: Vec<[&[u8]; 2]> = (0..100)
        .map(|_| [b"GET".as_slice(), b"nokey".as_slice()])
        .collect();
    let mut batch: Vec<&[&[u8]]> = gets.iter().map(|c| c.as_slice()).collect();
    batch.push(&[b"SET", b"ns:aa:9", b"v"]);
    batch.push(&[b"SET", b"ns:aa:9", b"v"]);
    e.c.send(&encode_many(&batch)).await;
    for _ in 0..100 {
        assert_resp!(e.c.reply().await, b"$-1\r\n");
    }
    assert_resp!(e.c.reply().await, b"+OK\r\n");
    assert_resp!(e.c.reply().await, b"+OK\r\n");
    // The connection flushes its run of counts before it waits again: one more round trip.
    assert_resp!(e.c.call(&[b"ECHO", b"x"]).await, bulk(b"x"));
    let m = common::metrics_text(&e.proxy).await;
    let get_ok = common::metric_sum(
        &m,
        "respguard_commands_total",
        &[("command", "get"), ("result", "ok")],
    )
    .or_else(|| {
        common::metric_sum(
            &m,
            "respguard_commands_total",
            &[("command", "GET"), ("result", "ok")],
        )
    });
    assert_eq!(
        get_ok,
        Some(100.0),
        "{}",
        common::metric_lines(&m, "respguard_commands_total")
    );
    let get_lat = common::metric_sum(
        &m,
        "respguard_command_duration_seconds_count",
        &[("command", "get")],
    )
    .or_else(|| {
        common::metric_sum(
            &m,
            "respguard_command_duration_seconds_count",
            &[("command", "GET")],
        )
    });
    assert_eq!(
        get_lat,
        Some(100.0),
        "{}",
        common::metric_lines(&m, "respguard_command_duration_seconds")
    );
}

/// A read: command name, a hit and its reply, a miss and its reply.
type Read<'a> = (&'a str, &'a [&'a [u8]], &'a [&'a [u8]], &'a [u8], &'a [u8]);

/// The other reads the README lists: `GETEX` and `GETDEL` (nil = miss), `LRANGE`, `SMEMBERS`
/// and `ZRANGE` (empty = miss), each once on a present key and once on a missing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_and_misses_of_getex_getdel_and_collection_reads() {
    let redis = RedisServer::start();
    let proxy = common::proxy(POLICY, &redis.url()).await;
    let mut c = raw_proxy(&proxy).await;
    assert_resp!(c.ask(&[b"SET", b"session:1", b"a"]).await, b"+OK\r\n");
    assert_resp!(c.ask(&[b"SET", b"session:2", b"b"]).await, b"+OK\r\n");
    assert_resp!(c.ask(&[b"RPUSH", b"session:l", b"x"]).await, b":1\r\n");
    assert_resp!(c.ask(&[b"SADD", b"session:s", b"x"]).await, b":1\r\n");
    assert_resp!(c.ask(&[b"ZADD", b"session:z", b"1", b"x"]).await, b":1\r\n");
    let reads: &[Read] = &[
        (
            "GETEX",
            &[b"GETEX", b"session:1", b"EX", b"1000"],
            &[b"GETEX", b"session:9", b"EX", b"1000"],
            b"$1\r\na\r\n",
            b"$-1\r\n",
        ),
        (
            "GETDEL",
            &[b"GETDEL", b"session:2"],
            &[b"GETDEL", b"session:2"],
            b"$1\r\nb\r\n",
            b"$-1\r\n",
        ),
        (
            "LRANGE",
            &[b"LRANGE", b"session:l", b"0", b"-1"],
            &[b"LRANGE", b"session:nol", b"0", b"-1"],
            b"*1\r\n$1\r\nx\r\n",
            b"*0\r\n",
        ),
        (
            "SMEMBERS",
            &[b"SMEMBERS", b"session:s"],
            &[b"SMEMBERS", b"session:nos"],
            b"*1\r\n$1\r\nx\r\n",
            b"*0\r\n",
        ),
        (
            "ZRANGE",
            &[b"ZRANGE", b"session:z", b"0", b"-1"],
            &[b"ZRANGE", b"session:noz", b"0", b"-1"],
            b"*1\r\n$1\r\nx\r\n",
            b"*0\r\n",
        ),
    ];
    for (name, hit, hit_reply, miss, miss_reply) in reads.iter().map(|r| (r.0, r.1, r.3, r.2, r.4))
    {
        assert_resp!(c.ask(hit).await, hit_reply, "{name} hit");
        assert_resp!(c.ask(miss).await, miss_reply, "{name} miss");
    }
    let m = metrics_text(&proxy).await;
    for (name, ..) in reads {
        let labels = [("namespace", "session"), ("command", name)];
        check(&m, "respguard_cache_hits_total", &labels, 1.0);
        check(&m, "respguard_cache_misses_total", &labels, 1.0);
    }
}

const TTL_POLICY: &str = "policy:
  namespaces:
    session:
      keys: [\"session:{id}\"]
      ttl: { default: 30m, min: 15m, max: 30m }
    strict:
      keys: [\"strict:{id}\"]
      ttl: { default: 10m, min: 5m, max: 10m }
      on_violation: reject
";

/// `respguard_ttl_enforced_total` counts each action once per command: `added` (no expiry
/// given), `clamped` (above the max), `raised` (below the min), `refused` (a namespace that
/// rejects violations); what reached Redis shows the action was taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_actions_are_counted_per_namespace() {
    let mut e = common::policy_env(TTL_POLICY).await;
    assert_resp!(e.c.ask(&[b"SET", b"session:a", b"v"]).await, b"+OK\r\n");
    assert_resp!(
        e.c.ask(&[b"SET", b"session:c", b"v", b"EX", b"86400"])
            .await,
        b"+OK\r\n"
    );
    assert_resp!(
        e.c.ask(&[b"SET", b"session:r", b"v", b"EX", b"10"]).await,
        b"+OK\r\n"
    );
    assert_resp!(e.c.ask(&[b"EXPIRE", b"session:r", b"5"]).await, b":1\r\n");
    let refused = e.c.ask(&[b"SET", b"strict:1", b"v", b"EX", b"86400"]).await;
    assert!(
        refused.starts_with(b"-POLICY"),
        "{}",
        common::show(&refused)
    );
    for (key, want) in [
        (&b"session:a"[..], 1800),
        (b"session:c", 1800),
        (b"session:r", 900),
    ] {
        let ttl = e.d.ttl(key).await;
        assert!(
            (want - 10..=want).contains(&ttl),
            "TTL {} = {ttl}",
            common::show(key)
        );
    }
    assert_resp!(e.d.ask(&[b"EXISTS", b"strict:1"]).await, b":0\r\n");
    let m = metrics_text(&e.proxy).await;
    let ttl = "respguard_ttl_enforced_total";
    check(
        &m,
        ttl,
        &[("namespace", "session"), ("action", "added")],
        1.0,
    );
    check(
        &m,
        ttl,
        &[("namespace", "session"), ("action", "clamped")],
        1.0,
    );
    check(
        &m,
        ttl,
        &[("namespace", "session"), ("action", "raised")],
        2.0,
    );
    check(
        &m,
        ttl,
        &[("namespace", "strict"), ("action", "refused")],
        1.0,
    );
    check(
        &m,
        ttl,
        &[("namespace", "session"), ("action", "refused")],
        0.0,
    );
    check(
        &m,
        ttl,
        &[("namespace", "strict"), ("action", "clamped")],
        0.0,
    );
}

const AUDIT_POLICY: &str = "policy:
  mode: audit
  unknown_keys: reject
  denied_commands: [KEYS]
  namespaces:
    session:
      keys: [\"session:{id}\"]
      ttl: { default: 30m, min: 15m, max: 30m }
";

/// Audit mode counts what enforce mode would have done (README: rejections and TTL actions)
/// while Redis gets every command unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_counts_what_enforce_would_do() {
    let mut e = common::policy_env(AUDIT_POLICY).await;
    assert_resp!(e.c.ask(&[b"SET", b"session:a", b"v"]).await, b"+OK\r\n");
    assert_resp!(
        e.c.ask(&[b"SET", b"session:c", b"v", b"EX", b"86400"])
            .await,
        b"+OK\r\n"
    );
    assert_resp!(e.c.ask(&[b"SET", b"user42", b"v"]).await, b"+OK\r\n");
    assert_resp!(e.c.ask(&[b"KEYS", b"nothing*"]).await, b"*0\r\n");
    // Unchanged in Redis: no expiry added, none clamped, the unnamed key stored.
    assert_eq!(e.d.ttl(b"session:a").await, -1);
    let ttl = e.d.ttl(b"session:c").await;
    assert!((86390..=86400).contains(&ttl), "TTL {ttl}");
    assert_resp!(e.d.ask(&[b"GET", b"user42"]).await, common::bulk(b"v"));
    let m = metrics_text(&e.proxy).await;
    let ttl = "respguard_ttl_enforced_total";
    check(
        &m,
        ttl,
        &[("namespace", "session"), ("action", "added")],
        1.0,
    );
    check(
        &m,
        ttl,
        &[("namespace", "session"), ("action", "clamped")],
        1.0,
    );
    let rej = "respguard_policy_rejections_total";
    check(&m, rej, &[("rule", "naming")], 1.0);
    check(&m, rej, &[("rule", "denied_command")], 1.0);
}
