//! `respguard audit` end to end: the binary walks a real Redis seeded with a messy keyspace
//! of 105,010 keys (the example policy's namespaces, badly named keys, keys without TTL or
//! with TTLs above the maximum, JSON with passwords, SSNs and card numbers, hashes with
//! sensitive fields, every data type), and its JSON report must carry the exact counts the
//! seed implies. `--fix-ttl --apply` must leave nothing to fix and no value changed; the
//! suggested policy must validate and, in the proxy, accept the keys it was made from; Ctrl-C
//! must still print a (partial) report.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::RedisServer;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_respguard");
const PASSWORD: &str = "audit-secret";

/// Keys per group of the seed.
const PROFILES: usize = 20_000;
const BIG_PROFILES: usize = 10;
const SESSIONS: usize = 30_000;
const CUSTOMERS: usize = 10_000;
const BAD_USER: usize = 15_000;
const BAD_LIMIT: usize = 5_000;
const BAD_FORM: usize = 5_000;
const LISTS: usize = 5_000;
const SETS: usize = 5_000;
const ZSETS: usize = 5_000;
const STREAMS: usize = 5_000;
const TOTAL: usize = PROFILES
    + BIG_PROFILES
    + SESSIONS
    + CUSTOMERS
    + BAD_USER
    + BAD_LIMIT
    + BAD_FORM
    + LISTS
    + SETS
    + ZSETS
    + STREAMS;

fn resp(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// The profile document of user `i`: every tenth has a password, the ones ending in 5 a card
/// number in a free-text field, the ones ending in 7 an `ssn` member.
fn profile(i: usize) -> String {
    match i % 10 {
        0 => format!(r#"{{"id":{i},"name":"u{i}","password":"hunter2"}}"#),
        5 => format!(r#"{{"id":{i},"name":"u{i}","note":"paid with 4111111111111111"}}"#),
        7 => format!(r#"{{"id":{i},"name":"u{i}","ssn":"on file"}}"#),
        _ => format!(r#"{{"id":{i},"name":"u{i}","plan":"free"}}"#),
    }
}

/// Writes the messy keyspace through one `redis-cli --pipe`.
fn seed(redis: &RedisServer) {
    let mut p = Vec::with_capacity(16 << 20);
    for i in 0..PROFILES {
        let k = format!("user_profile:{i}");
        let v = profile(i);
        // 1h..2h: none, 90m, 24h (above), 4000 s
        match i % 4 {
            0 => resp(&mut p, &[b"SET", k.as_bytes(), v.as_bytes()]),
            1 => resp(
                &mut p,
                &[b"SET", k.as_bytes(), v.as_bytes(), b"EX", b"5400"],
            ),
            2 => resp(
                &mut p,
                &[b"SET", k.as_bytes(), v.as_bytes(), b"EX", b"86400"],
            ),
            _ => resp(
                &mut p,
                &[b"SET", k.as_bytes(), v.as_bytes(), b"EX", b"4000"],
            ),
        }
    }
    let big = format!(r#"{{"password":"x","pad":"{}"}}"#, "a".repeat(100_000));
    for i in 0..BIG_PROFILES {
        let k = format!("user_profile:big{i}");
        resp(
            &mut p,
            &[b"SET", k.as_bytes(), big.as_bytes(), b"EX", b"5400"],
        );
    }
    for i in 0..SESSIONS {
        let k = format!("session:{i}");
        // 15m..30m: none, 20m, 2h (above)
        match i % 3 {
            0 => resp(&mut p, &[b"SET", k.as_bytes(), b"v"]),
            1 => resp(&mut p, &[b"SET", k.as_bytes(), b"v", b"EX", b"1200"]),
            _ => resp(&mut p, &[b"SET", k.as_bytes(), b"v", b"EX", b"7200"]),
        }
    }
    for i in 0..CUSTOMERS {
        let k = format!("customer:{i}");
        if i % 5 == 0 {
            resp(
                &mut p,
                &[
                    b"HSET",
                    k.as_bytes(),
                    b"name",
                    b"c",
                    b"plan",
                    b"pro",
                    b"token",
                    b"tok",
                ],
            );
        } else {
            resp(
                &mut p,
                &[b"HSET", k.as_bytes(), b"name", b"c", b"plan", b"pro"],
            );
        }
        resp(&mut p, &[b"EXPIRE", k.as_bytes(), b"3600"]);
    }
    for i in 0..BAD_USER {
        resp(&mut p, &[b"SET", format!("user{i}").as_bytes(), b"x"]);
    }
    for i in 0..BAD_LIMIT {
        resp(
            &mut p,
            &[b"SET", format!("{i}_limit").as_bytes(), b"1", b"EX", b"600"],
        );
    }
    for i in 0..BAD_FORM {
        resp(&mut p, &[b"SET", format!("form:{i}").as_bytes(), b"step2"]);
    }
    for i in 0..LISTS {
        let k = format!("temp:list:{i}");
        resp(&mut p, &[b"RPUSH", k.as_bytes(), b"a", b"b"]);
        resp(&mut p, &[b"EXPIRE", k.as_bytes(), b"3600"]);
    }
    for i in 0..SETS {
        let k = format!("rate_limit:login:{i}");
        resp(&mut p, &[b"SADD", k.as_bytes(), b"a"]);
        resp(&mut p, &[b"EXPIRE", k.as_bytes(), b"600"]);
    }
    for i in 0..ZSETS {
        resp(
            &mut p,
            &[
                b"ZADD",
                format!("analytics:page:{i}").as_bytes(),
                b"1",
                b"a",
            ],
        );
    }
    for i in 0..STREAMS {
        let k = format!("notification_queue:{i}");
        resp(&mut p, &[b"XADD", k.as_bytes(), b"*", b"msg", b"hi"]);
        resp(&mut p, &[b"EXPIRE", k.as_bytes(), b"100000"]);
    }
    let mut child = Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "-a",
            PASSWORD,
            "--no-auth-warning",
            "--pipe",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli on PATH");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&p)
        .expect("write the seed");
    let out = child.wait_with_output().expect("redis-cli --pipe");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("errors: 0"), "seed failed: {text}");
    let dbsize = redis_cli(redis, &["DBSIZE"]);
    assert_eq!(dbsize.trim(), TOTAL.to_string());
}

/// Every key the seed writes.
fn all_keys() -> Vec<String> {
    let groups: [(&str, &str, usize); 11] = [
        ("user_profile:", "", PROFILES),
        ("user_profile:big", "", BIG_PROFILES),
        ("session:", "", SESSIONS),
        ("customer:", "", CUSTOMERS),
        ("user", "", BAD_USER),
        ("", "_limit", BAD_LIMIT),
        ("form:", "", BAD_FORM),
        ("temp:list:", "", LISTS),
        ("rate_limit:login:", "", SETS),
        ("analytics:page:", "", ZSETS),
        ("notification_queue:", "", STREAMS),
    ];
    groups
        .iter()
        .flat_map(|&(pre, post, n)| (0..n).map(move |i| format!("{pre}{i}{post}")))
        .collect()
}

fn redis_cli(redis: &RedisServer, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "-a",
            PASSWORD,
            "--no-auth-warning",
        ])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start() -> RedisServer {
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    seed(&redis);
    redis
}

/// Runs `respguard audit` against `redis` (password from the environment, as an operator
/// would pass it) with the example policy.
fn audit(redis: &RedisServer, extra: &[&str]) -> Output {
    Command::new(BIN)
        .arg("audit")
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml"),
        ])
        .args(["--upstream", &redis.url()])
        .args(extra)
        .env("RESPGUARD_UPSTREAM_PASSWORD", PASSWORD)
        .output()
        .expect("run respguard audit")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn ns<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("namespace {name} missing"))
}

fn sensitive(n: &Value, field: &str) -> u64 {
    n["sensitive"]
        .as_array()
        .expect("sensitive")
        .iter()
        .find(|f| f["field"] == field)
        .and_then(|f| f["keys"].as_u64())
        .unwrap_or(0)
}

#[test]
fn audit_reports_exact_counts_for_a_messy_keyspace() {
    let redis = start();
    // A dry run of --fix-ttl rides along: it must change nothing (checked below).
    let out = audit(&redis, &["--format", "json", "--fix-ttl"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "violations exit 1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&out);
    assert_eq!(r["keys_scanned"], TOTAL as u64);
    assert_eq!(r["dbsize"], TOTAL as u64);
    assert_eq!(r["partial"], false);

    let p = ns(&r, "user_profile");
    assert_eq!(p["keys"], (PROFILES + BIG_PROFILES) as u64);
    assert_eq!(p["types"]["string"], (PROFILES + BIG_PROFILES) as u64);
    assert_eq!(p["no_expiry"], (PROFILES / 4) as u64);
    assert_eq!(p["ttl_above_max"], (PROFILES / 4) as u64);
    assert_eq!(p["ttl_below_min"], 0);
    assert_eq!(sensitive(p, "password"), (PROFILES / 10) as u64);
    assert_eq!(sensitive(p, "card_number"), (PROFILES / 10) as u64);
    assert_eq!(sensitive(p, "ssn"), (PROFILES / 10) as u64);
    assert_eq!(p["sensitive_keys"], (3 * PROFILES / 10) as u64);
    assert_eq!(p["values_not_inspected"], BIG_PROFILES as u64);
    let profile_violations = (0..PROFILES)
        .filter(|i| i % 4 == 0 || i % 4 == 2 || [0, 5, 7].contains(&(i % 10)))
        .count();
    assert_eq!(p["violations"], profile_violations as u64);
    // 90m and 4000 s fall in (1h, 2h]; 24h in (7d]...: bucket by bucket.
    let buckets: Vec<(String, u64)> = p["ttl_remaining"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| {
            (
                b["up_to"].as_str().unwrap_or("").to_string(),
                b["keys"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let get = |label: &str| buckets.iter().find(|(l, _)| l == label).map(|b| b.1);
    assert_eq!(get("<=2h"), Some((PROFILES / 2 + BIG_PROFILES) as u64));
    assert_eq!(get("<=1d"), Some((PROFILES / 4) as u64));
    assert_eq!(
        buckets.iter().map(|b| b.1).sum::<u64>(),
        (3 * PROFILES / 4 + BIG_PROFILES) as u64
    );

    let s = ns(&r, "session");
    assert_eq!(s["keys"], SESSIONS as u64);
    assert_eq!(s["no_expiry"], (SESSIONS / 3) as u64);
    assert_eq!(s["ttl_above_max"], (SESSIONS / 3) as u64);
    assert_eq!(s["violations"], (2 * SESSIONS / 3) as u64);
    assert_eq!(s["sensitive_keys"], 0);

    let c = ns(&r, "customer");
    assert_eq!(c["types"]["hash"], CUSTOMERS as u64);
    assert_eq!(sensitive(c, "token"), (CUSTOMERS / 5) as u64);
    assert_eq!(c["no_expiry"], 0);
    assert_eq!(c["violations"], (CUSTOMERS / 5) as u64);

    assert_eq!(ns(&r, "temp")["types"]["list"], LISTS as u64);
    assert_eq!(ns(&r, "temp")["violations"], 0);
    assert_eq!(ns(&r, "rate_limit")["types"]["set"], SETS as u64);
    assert_eq!(ns(&r, "rate_limit")["violations"], 0);
    assert_eq!(ns(&r, "analytics")["types"]["zset"], ZSETS as u64);
    assert_eq!(ns(&r, "analytics")["no_expiry"], ZSETS as u64);
    assert_eq!(
        ns(&r, "notification_queue")["types"]["stream"],
        STREAMS as u64
    );
    assert_eq!(
        ns(&r, "notification_queue")["ttl_above_max"],
        STREAMS as u64
    );
    assert_eq!(ns(&r, "dashboard")["keys"], 0);

    let u = &r["unmatched"];
    assert_eq!(u["refused_by_policy"], true);
    assert_eq!(u["keys"], (BAD_USER + BAD_LIMIT + BAD_FORM) as u64);
    assert_eq!(u["no_expiry"], (BAD_USER + BAD_FORM) as u64);
    assert_eq!(u["distinct_shapes"], 3);
    let shapes: Vec<(String, u64)> = u["shapes"]
        .as_array()
        .expect("shapes")
        .iter()
        .map(|s| {
            (
                s["shape"].as_str().unwrap_or("").to_string(),
                s["keys"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        shapes,
        vec![
            ("user{n}".to_string(), BAD_USER as u64),
            ("form:{n}".to_string(), BAD_FORM as u64),
            ("{n}_limit".to_string(), BAD_LIMIT as u64),
        ]
    );
    let examples = u["shapes"][0]["examples"].as_array().expect("examples");
    assert!(!examples.is_empty() && examples.len() <= 3);
    assert!(examples
        .iter()
        .all(|e| e.as_str().is_some_and(|k| k.starts_with("user"))));

    let v = &r["violations"];
    assert_eq!(v["no_namespace"], (BAD_USER + BAD_LIMIT + BAD_FORM) as u64);
    assert_eq!(v["no_expiry"], (PROFILES / 4 + SESSIONS / 3 + ZSETS) as u64);
    assert_eq!(
        v["ttl_above_max"],
        (PROFILES / 4 + SESSIONS / 3 + STREAMS) as u64
    );
    assert_eq!(v["sensitive"], (3 * PROFILES / 10 + CUSTOMERS / 5) as u64);
    assert_eq!(
        v["keys"],
        (profile_violations
            + 2 * SESSIONS / 3
            + CUSTOMERS / 5
            + ZSETS
            + STREAMS
            + BAD_USER
            + BAD_LIMIT
            + BAD_FORM) as u64
    );

    let f = &r["fix_ttl"];
    assert_eq!(f["applied"], false);
    assert_eq!(f["set_default"]["user_profile"], (PROFILES / 4) as u64);
    assert_eq!(f["set_default"]["session"], (SESSIONS / 3) as u64);
    assert_eq!(f["set_default"]["analytics"], ZSETS as u64);
    assert_eq!(f["lower_to_max"]["user_profile"], (PROFILES / 4) as u64);
    assert_eq!(f["lower_to_max"]["session"], (SESSIONS / 3) as u64);
    assert_eq!(f["lower_to_max"]["notification_queue"], STREAMS as u64);
    assert_eq!(f["changed"], 0);
    assert_eq!(redis_cli(&redis, &["PTTL", "session:0"]).trim(), "-1");
    let ttl: i64 = redis_cli(&redis, &["TTL", "session:2"])
        .trim()
        .parse()
        .expect("ttl");
    assert!(ttl > 3600, "the dry run left the 2h TTL alone: {ttl}");

    // No value ever reaches the report.
    let text = String::from_utf8_lossy(&out.stdout);
    for secret in ["hunter2", "4111111111111111", "on file", "\"tok\""] {
        assert!(!text.contains(secret), "{secret} leaked into the report");
    }

    // The table and Markdown carry the same figures.
    let table = audit(&redis, &["--sample", "1000"]);
    assert_eq!(table.status.code(), Some(1));
    let t = String::from_utf8_lossy(&table.stdout);
    assert!(
        t.contains("(sample)") && t.contains("1000 keys scanned"),
        "{t}"
    );
    let md = audit(&redis, &["--format", "markdown", "--sample", "1000"]);
    let m = String::from_utf8_lossy(&md.stdout);
    assert!(
        m.contains("| namespace | ttl (default, min..max) | keys |") && m.contains("|---|"),
        "{m}"
    );
}

#[tokio::test]
async fn fix_ttl_apply_leaves_nothing_to_fix_and_no_value_changed() {
    let redis = start();
    let client = redis::Client::open(format!("redis://:{PASSWORD}@127.0.0.1:{}", redis.port))
        .expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    // Every seventh key: each group, each TTL case and each value variant is in the sample.
    assert_eq!(all_keys().len(), TOTAL);
    let keys: Vec<String> = all_keys().into_iter().step_by(7).collect();
    let dumps = |con: &mut redis::aio::MultiplexedConnection| {
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("DUMP").arg(k);
        }
        let mut con = con.clone();
        async move {
            pipe.query_async::<Vec<Vec<u8>>>(&mut con)
                .await
                .expect("DUMP")
        }
    };
    let before = dumps(&mut con).await;

    let applied = audit(&redis, &["--format", "json", "--fix-ttl", "--apply"]);
    assert_eq!(
        applied.status.code(),
        Some(1),
        "the walk before the fix saw violations"
    );
    let a = json(&applied);
    let planned = (PROFILES / 4 + SESSIONS / 3 + ZSETS) + (PROFILES / 4 + SESSIONS / 3 + STREAMS);
    assert_eq!(a["fix_ttl"]["changed"], planned as u64);
    assert_eq!(a["fix_ttl"]["unchanged"], 0);

    let second = audit(&redis, &["--format", "json", "--fix-ttl", "--apply"]);
    let s = json(&second);
    assert_eq!(s["violations"]["no_expiry"], 0);
    assert_eq!(s["violations"]["ttl_above_max"], 0);
    assert_eq!(s["fix_ttl"]["changed"], 0, "a second run has nothing to do");
    // What is left: names and sensitive data, which --fix-ttl never touches.
    assert_eq!(
        s["violations"]["no_namespace"],
        (BAD_USER + BAD_LIMIT + BAD_FORM) as u64
    );
    assert_eq!(s["unmatched"]["no_expiry"], (BAD_USER + BAD_FORM) as u64);

    let ttl: i64 = redis_cli(&redis, &["PTTL", "session:0"])
        .trim()
        .parse()
        .expect("pttl");
    assert!(
        ttl > 1_700_000 && ttl <= 1_800_000,
        "session default 30m: {ttl}"
    );
    let ttl: i64 = redis_cli(&redis, &["PTTL", "session:2"])
        .trim()
        .parse()
        .expect("pttl");
    assert!(
        ttl > 1_700_000 && ttl <= 1_800_000,
        "session max 30m: {ttl}"
    );
    let ttl: i64 = redis_cli(&redis, &["TTL", "session:1"])
        .trim()
        .parse()
        .expect("ttl");
    assert!(ttl > 1100, "a TTL in bounds is left alone: {ttl}");
    assert_eq!(
        redis_cli(&redis, &["PTTL", "user7"]).trim(),
        "-1",
        "keys in no namespace are left alone"
    );

    let after = dumps(&mut con).await;
    assert!(
        before.iter().all(|d| !d.is_empty()),
        "every sampled key exists"
    );
    assert_eq!(before.len(), after.len());
    let changed = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    assert_eq!(changed, 0, "no value may change");
}

#[tokio::test]
async fn suggested_policy_validates_and_the_proxy_accepts_the_keys_it_came_from() {
    let redis = start();
    let dir = std::env::temp_dir().join(format!("respguard-audit-suggest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let empty = dir.join("no-policy.yaml");
    std::fs::write(&empty, "upstream:\n  url: redis://127.0.0.1:1\n").expect("write config");
    let file = dir.join("suggested.yaml");
    let out = Command::new(BIN)
        .args(["audit", "--config"])
        .arg(&empty)
        .args([
            "--upstream",
            &redis.url(),
            "--format",
            "json",
            "--suggest-policy",
        ])
        .arg(&file)
        .env("RESPGUARD_UPSTREAM_PASSWORD", PASSWORD)
        .output()
        .expect("audit");
    // Without a policy nothing is a violation.
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = std::fs::read_to_string(&file).expect("suggested policy written");

    let check = Command::new(BIN)
        .arg("--check-config")
        .arg(&file)
        .output()
        .expect("check");
    assert!(
        check.status.success(),
        "{}\n{yaml}",
        String::from_utf8_lossy(&check.stderr)
    );
    for line in [
        "keys: [\"user_profile:{id}\"]",
        "keys: [\"session:{id}\"]",
        "keys: [\"customer:{id}\"]",
        "keys: [\"temp:list:{id}\"]",
        "keys: [\"form:{id}\"]",
        "ttl: { default: 1d, max: 1d }",
        "user{n} (15000 keys)",
        "{n}_limit (5000 keys)",
    ] {
        assert!(yaml.contains(line), "missing {line:?} in\n{yaml}");
    }

    let proxy = common::proxy(
        &yaml,
        &format!("redis://:{PASSWORD}@127.0.0.1:{}", redis.port),
    )
    .await;
    let mut raw = common::raw_proxy(&proxy).await;
    for key in [
        "user_profile:3",
        "session:4",
        "customer:9",
        "temp:list:1",
        "rate_limit:login:2",
        "analytics:page:3",
        "notification_queue:8",
        "form:77",
    ] {
        let reply = raw.call(&[b"EXISTS", key.as_bytes()]).await;
        assert_eq!(reply, b":1\r\n", "{key}: {}", common::show(&reply));
    }
    let reply = raw.call(&[b"SET", b"session:new", b"v"]).await;
    assert_eq!(reply, b"+OK\r\n");
    for key in ["user42", "7_limit", "unheard_of:1"] {
        let reply = raw.call(&[b"GET", key.as_bytes()]).await;
        assert!(
            reply.starts_with(b"-POLICY"),
            "{key} must be refused: {}",
            common::show(&reply)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ctrl_c_prints_a_partial_report_and_exits_130() {
    let redis = start();
    let child = Command::new(BIN)
        .arg("audit")
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml"),
        ])
        .args([
            "--upstream",
            &redis.url(),
            "--format",
            "json",
            "--rate",
            "20000",
        ])
        .env("RESPGUARD_UPSTREAM_PASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("audit");
    std::thread::sleep(Duration::from_millis(1500));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let out = child.wait_with_output().expect("audit ends");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&out);
    assert_eq!(r["partial"], true);
    let scanned = r["keys_scanned"].as_u64().expect("keys_scanned");
    assert!(scanned > 0 && scanned < TOTAL as u64, "{scanned}");
    let sum: u64 = r["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .map(|n| n["keys"].as_u64().unwrap_or(0))
        .sum::<u64>()
        + r["unmatched"]["keys"].as_u64().unwrap_or(0);
    assert_eq!(sum, scanned, "the partial report adds up");
}

#[test]
fn unreachable_redis_exits_2_and_bad_flags_exit_64() {
    let port = common::free_port();
    let out = Command::new(BIN)
        .args(["audit", "--upstream", &format!("redis://127.0.0.1:{port}")])
        .output()
        .expect("audit");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unavailable"));
    let out = Command::new(BIN)
        .args(["audit", "--format", "yaml"])
        .output()
        .expect("audit");
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(BIN)
        .args(["audit", "--apply"])
        .output()
        .expect("audit");
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn wrong_password_is_an_upstream_error_that_never_shows_the_password() {
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    let out = Command::new(BIN)
        .args([
            "audit",
            "--upstream",
            &format!("redis://:wrong-pw-123@127.0.0.1:{}", redis.port),
        ])
        .output()
        .expect("audit");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("handshake"), "{err}");
    assert!(!err.contains("wrong-pw-123"), "{err}");
}

#[test]
fn an_acl_user_without_memory_usage_gets_a_report_with_values_not_inspected() {
    let redis = RedisServer::start();
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &redis.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        cli(&[
            "ACL",
            "SETUSER",
            "auditor",
            "on",
            ">audit-pw",
            "~*",
            "+scan",
            "+type",
            "+pttl",
            "+get",
            "+hgetall",
            "+dbsize",
        ]),
        "OK"
    );
    cli(&["SET", "user_profile:1", r#"{"password":"x"}"#, "EX", "5400"]);
    cli(&["SET", "session:1", "v", "EX", "1200"]);
    let out = Command::new(BIN)
        .args(["audit", "--format", "json", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml"))
        .args([
            "--upstream",
            &format!("redis://auditor:audit-pw@127.0.0.1:{}", redis.port),
        ])
        .output()
        .expect("audit");
    let r = json(&out);
    assert_eq!(r["keys_scanned"], 2);
    assert_eq!(r["bytes"], 0, "sizes are unknown without MEMORY USAGE");
    let p = ns(&r, "user_profile");
    assert_eq!(
        p["values_not_inspected"], 1,
        "the value cap cannot be checked: not read"
    );
    assert_eq!(p["sensitive_keys"], 0);
    assert_eq!(out.status.code(), Some(0));
}
