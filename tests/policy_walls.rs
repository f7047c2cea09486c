//! The policy as a security control, probed the way a reviewer walks around it, against a
//! real Redis through the proxy: scripts, administrative commands, values the policy cannot
//! inspect, and data moved between namespaces. What reached Redis is read back directly.

#[macro_use]
mod common;

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_respguard");

fn example_yaml() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml");
    std::fs::read_to_string(path).expect("config/example.yaml")
}

/// A small policy with sensitive rules; `extra` is spliced into `policy:`.
fn policy(extra: &str) -> String {
    format!(
        r#"
policy:
  unknown_keys: reject
{extra}
  sensitive:
    fields: [password, ssn, token]
    action: strip
    detect: [card_number, us_ssn]
  namespaces:
    user_profile:
      keys: ["user_profile:{{id}}"]
      ttl: {{ default: 1h, min: 1h, max: 2h }}
      sensitive:
        fields: [password, ssn, token, dateOfBirth]
    temp:
      keys: ["temp:{{workflow}}:{{id}}"]
      ttl: {{ default: 1h, min: 10m, max: 7d }}
    other:
      keys: ["other:{{workflow}}:{{id}}"]
      ttl: {{ default: 1h, min: 10m, max: 7d }}
    counters:
      keys: ["counters:{{id}}"]
      ttl: {{ default: 1h }}
      sensitive: {{ fields: [], detect: [] }}
"#
    )
}

fn is_policy_error(reply: &[u8]) -> bool {
    reply.starts_with(b"-POLICY ")
}

#[track_caller]
fn assert_policy_error(reply: &[u8], contains: &str, what: &str) {
    let text = String::from_utf8_lossy(reply);
    assert!(
        is_policy_error(reply) && text.contains(contains),
        "{what}: expected a POLICY error mentioning {contains:?}, got {text:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Scripts

const FLUSHALL_SCRIPT: &[u8] = b"return redis.call('flushall')";
const SET_SCRIPT: &[u8] = b"return redis.call('set','bad:eval','x')";
const LIB: &[u8] = b"#!lua name=walls\nredis.register_function('wipe', function() return redis.call('flushall') end)";

#[tokio::test]
async fn the_example_policy_refuses_every_way_to_run_code() {
    let mut e = common::policy_env(&example_yaml()).await;
    assert_eq!(
        e.d.ask(&[b"SET", b"user_profile:1", b"kept"]).await,
        b"+OK\r\n"
    );
    let sha = {
        let r = e.d.ask(&[b"SCRIPT", b"LOAD", FLUSHALL_SCRIPT]).await;
        // $40\r\n<sha>\r\n
        r[5..45].to_vec()
    };
    assert_eq!(
        e.d.ask(&[b"FUNCTION", b"LOAD", LIB]).await,
        b"$5\r\nwalls\r\n"
    );
    let attempts: [&[&[u8]]; 10] = [
        &[b"EVAL", FLUSHALL_SCRIPT, b"0"],
        &[b"EVAL", SET_SCRIPT, b"0"],
        &[b"eval_ro", b"return redis.call('keys','*')", b"0"],
        &[b"EVALSHA", &sha, b"0"],
        &[b"EVALSHA_RO", &sha, b"0"],
        &[b"FCALL", b"wipe", b"0"],
        &[b"FCALL_RO", b"wipe", b"0"],
        &[b"SCRIPT", b"LOAD", FLUSHALL_SCRIPT],
        &[b"FUNCTION", b"LOAD", b"REPLACE", LIB],
        &[b"FUNCTION", b"RESTORE", b"x"],
    ];
    for cmd in attempts {
        let r = e.c.ask(cmd).await;
        assert_policy_error(&r, "policy.scripts: refuse", &common::show(cmd[0]));
    }
    assert_eq!(
        e.d.ask(&[b"GET", b"user_profile:1"]).await,
        b"$4\r\nkept\r\n",
        "a script emptied Redis"
    );
    assert_eq!(e.d.ask(&[b"EXISTS", b"bad:eval"]).await, b":0\r\n");
    // What scripts need besides running code stays open: checking the cache of scripts.
    let exists: &[&[u8]] = &[b"SCRIPT", b"EXISTS", &sha];
    assert_eq!(e.c.ask(exists).await, e.d.ask(exists).await);
}

#[tokio::test]
async fn scripts_declared_keys_checks_the_declared_keys_only() {
    let mut e = common::policy_env(&policy("  scripts: declared_keys")).await;
    let r =
        e.c.ask(&[
            b"EVAL",
            b"return redis.call('get',KEYS[1])",
            b"1",
            b"bad:key",
        ])
        .await;
    assert_policy_error(&r, "matches no namespace", "declared bad key");
    let ok: &[&[u8]] = &[
        b"EVAL",
        b"return redis.call('set',KEYS[1],'v')",
        b"1",
        b"temp:a:1",
    ];
    assert_eq!(e.c.ask(ok).await, b"+OK\r\n");
    // The documented limit of this setting: undeclared keys are out of sight.
    assert_eq!(e.c.ask(&[b"EVAL", SET_SCRIPT, b"0"]).await, b"+OK\r\n");
}

#[tokio::test]
async fn scripts_allow_forwards_scripts_unchecked() {
    let mut e = common::policy_env(&policy("  scripts: allow")).await;
    let cmd: &[&[u8]] = &[
        b"EVAL",
        b"return redis.call('set',KEYS[1],'v')",
        b"1",
        b"bad:declared",
    ];
    assert_eq!(e.c.ask(cmd).await, b"+OK\r\n");
    assert_eq!(e.d.ask(&[b"TTL", b"bad:declared"]).await, b":-1\r\n");
}

#[tokio::test]
async fn a_bad_scripts_setting_or_category_is_reported_with_line_and_field() {
    let yaml = policy("  scripts: sometimes\n  denied_commands: [\"@admn\", \"CLIENT|KILL\"]");
    let err = respguard::config::Config::parse(
        &yaml,
        "walls.yaml",
        &respguard::config::Overrides::default(),
    )
    .expect_err("invalid");
    let text = err.to_string();
    assert!(
        text.contains("walls.yaml:4: policy.scripts: \"sometimes\" is not valid"),
        "{text}"
    );
    assert!(
        text.contains(
            "walls.yaml:5: policy.denied_commands[0]: \"@admn\" is not a Redis ACL category"
        ),
        "{text}"
    );
    assert_eq!(err.0.len(), 2, "{text}");
}

// ---------------------------------------------------------------------------------------------
// Administrative commands

#[tokio::test]
async fn the_example_policy_refuses_administrative_commands() {
    let mut e = common::policy_env(&example_yaml()).await;
    let refused: &[&[&[u8]]] = &[
        &[b"REPLICAOF", b"127.0.0.1", b"1"],
        &[b"SLAVEOF", b"NO", b"ONE"],
        &[
            b"ACL",
            b"SETUSER",
            b"intruder",
            b"on",
            b"nopass",
            b"+@all",
            b"~*",
        ],
        &[b"ACL", b"DELUSER", b"default"],
        &[b"ACL", b"LIST"],
        &[b"ACL", b"SAVE"],
        &[b"CLIENT", b"KILL", b"ID", b"1"],
        &[b"client", b"pause", b"10000"],
        &[b"CLIENT", b"LIST"],
        &[b"SCRIPT", b"FLUSH"],
        &[b"FUNCTION", b"FLUSH"],
        &[b"FUNCTION", b"DELETE", b"lib"],
        &[b"MONITOR"],
        &[b"SWAPDB", b"0", b"1"],
        &[b"BGSAVE"],
        &[b"SAVE"],
        &[b"BGREWRITEAOF"],
        &[b"MODULE", b"LOAD", b"/tmp/x.so"],
        &[b"FLUSHALL"],
        &[b"FLUSHDB", b"ASYNC"],
        &[b"KEYS", b"*"],
        &[b"DEBUG", b"SLEEP", b"0"],
        &[b"SHUTDOWN", b"NOSAVE"],
        &[b"CONFIG", b"SET", b"maxmemory", b"1"],
        &[b"CONFIG", b"GET", b"requirepass"],
        &[b"FAILOVER"],
        &[
            b"MIGRATE",
            b"127.0.0.1",
            b"1",
            b"user_profile:1",
            b"0",
            b"10",
        ],
        &[b"SLOWLOG", b"RESET"],
        &[b"LATENCY", b"RESET"],
    ];
    for cmd in refused {
        let r = e.c.ask(cmd).await;
        let name: Vec<String> = cmd.iter().take(2).map(|a| common::show(a)).collect();
        assert_policy_error(&r, "is disabled here", &name.join(" "));
    }
    // The server is untouched: still a master, no new user, not paused.
    let role = e.d.ask(&[b"ROLE"]).await;
    assert!(
        role.starts_with(b"*3\r\n$6\r\nmaster"),
        "{}",
        common::show(&role)
    );
    assert_eq!(
        e.d.ask(&[b"ACL", b"USERS"]).await,
        b"*1\r\n$7\r\ndefault\r\n"
    );
    // What applications and client libraries send on connect still passes, as Redis answers.
    let open: &[&[&[u8]]] = &[
        &[b"PING"],
        &[b"ACL", b"WHOAMI"],
        &[b"CLIENT", b"SETNAME", b"app"],
        &[b"CLIENT", b"GETNAME"],
        &[b"ECHO", b"x"],
    ];
    for cmd in open {
        assert_eq!(
            e.c.ask(cmd).await,
            e.d.ask(cmd).await,
            "{}",
            common::show(cmd[0])
        );
    }
    let info = e.c.ask(&[b"INFO", b"server"]).await;
    assert!(info.starts_with(b"$"), "{}", common::show(&info));
}

#[tokio::test]
async fn denied_categories_cover_their_subcommands_and_names_use_redis_spelling() {
    let mut e = common::policy_env(&policy(
        "  denied_commands: [\"@dangerous\", \"CLIENT|SETNAME\", \"object encoding\"]",
    ))
    .await;
    let cmds: [&[&[u8]]; 5] = [
        &[b"INFO"],
        &[b"SORT", b"temp:a:1"],
        &[b"CONFIG", b"GET", b"x"],
        &[b"CLIENT", b"SETNAME", b"x"],
        &[b"OBJECT", b"ENCODING", b"temp:a:1"],
    ];
    for cmd in cmds {
        let r = e.c.ask(cmd).await;
        assert_policy_error(&r, "is disabled here", &common::show(cmd[0]));
    }
    let ok: &[&[u8]] = &[b"OBJECT", b"FREQ", b"temp:a:1"];
    assert_eq!(e.c.ask(ok).await, e.d.ask(ok).await);
}

// ---------------------------------------------------------------------------------------------
// --check-config warnings

fn check_config(yaml: &str, extra: &[&str]) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!(
        "respguard-walls-{}-{}",
        std::process::id(),
        common::free_port()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("policy.yaml");
    std::fs::write(&path, yaml).expect("write policy");
    let out = Command::new(BIN)
        .arg("--check-config")
        .arg(&path)
        .args(extra)
        .env_remove("RESPGUARD_UPSTREAM")
        .env_remove("RESPGUARD_UPSTREAM_PASSWORD")
        .output()
        .expect("run respguard");
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_warns_about_open_dangerous_commands_and_scripts() {
    let (code, out, err) = check_config(&policy(""), &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("configuration OK"), "{out}");
    assert!(
        err.contains("warning:") && err.contains("@dangerous command(s) stay open: "),
        "{err}"
    );
    assert!(
        err.contains("FLUSHALL") && err.contains("CONFIG|SET"),
        "{err}"
    );
    assert!(
        err.contains("policy.scripts: scripts: declared_keys"),
        "{err}"
    );

    let closed = policy("  scripts: refuse\n  denied_commands: [\"@dangerous\"]");
    let (code, out, err) = check_config(&closed, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("warning"), "{err}");

    // The example leaves exactly the documented few open.
    let (code, _, err) = check_config(&example_yaml(), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("4 @dangerous command(s) stay open: INFO, RESTORE, SORT, SORT_RO;"),
        "{err}"
    );
    assert!(!err.contains("policy.scripts"), "{err}");
}

#[test]
fn a_password_on_the_command_line_is_warned_about_and_never_printed() {
    let closed = policy("  scripts: refuse\n  denied_commands: [\"@dangerous\"]");
    let (code, out, err) = check_config(
        &closed,
        &["--upstream", "redis://app:hunter2-secret@127.0.0.1:6390"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("--upstream: upstream.url: the upstream URL carries a password")
            && err.contains("upstream.password_file"),
        "{err}"
    );
    assert!(
        !err.contains("hunter2") && !out.contains("hunter2"),
        "{err}"
    );
    let (_, _, err) = check_config(&closed, &["--upstream", "redis://app@127.0.0.1:6390"]);
    assert!(!err.contains("warning"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Values the policy cannot see: fail closed, or inspect where that is exact

/// The payload of a RESP2 bulk-string reply.
fn bulk_value(reply: &[u8]) -> Vec<u8> {
    let text_end = reply
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("a bulk reply");
    let len: usize = std::str::from_utf8(&reply[1..text_end])
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a bulk reply: {}", common::show(reply)));
    reply[text_end + 2..text_end + 2 + len].to_vec()
}

#[tokio::test]
async fn partial_writes_into_a_namespace_with_sensitive_rules_are_refused() {
    let mut e = common::policy_env(&policy("")).await;
    let start: &[u8] = br#"{"name":"x""#;
    assert_eq!(
        e.d.ask(&[b"SET", b"user_profile:1", start]).await,
        b"+OK\r\n"
    );
    let attempts: [&[&[u8]]; 6] = [
        &[b"APPEND", b"user_profile:1", br#","password":"hunter2"}"#],
        &[b"APPEND", b"user_profile:2", br#"{"password":"hunter2"}"#],
        &[b"SETRANGE", b"user_profile:1", b"2", b"password"],
        &[b"SETBIT", b"user_profile:1", b"7", b"1"],
        &[b"bitfield", b"user_profile:1", b"SET", b"u8", b"0", b"123"],
        &[b"APPEND", b"temp:a:1", b"4111 1111 1111 1111"],
    ];
    for cmd in attempts {
        let r = e.c.ask(cmd).await;
        assert_policy_error(
            &r,
            "changes part of the value",
            &format!("{} {}", common::show(cmd[0]), common::show(cmd[1])),
        );
    }
    assert_eq!(
        bulk_value(&e.d.ask(&[b"GET", b"user_profile:1"]).await),
        start
    );
    assert_eq!(e.d.ask(&[b"EXISTS", b"user_profile:2"]).await, b":0\r\n");
    // Reads, and namespaces without sensitive rules, are untouched.
    let read: &[&[u8]] = &[b"BITFIELD", b"user_profile:1", b"GET", b"u8", b"0"];
    assert_eq!(e.c.ask(read).await, e.d.ask(read).await);
    assert_eq!(e.c.ask(&[b"APPEND", b"counters:1", b"ab"]).await, b":2\r\n");
    assert_eq!(
        e.c.ask(&[b"SETRANGE", b"counters:1", b"1", b"password"])
            .await,
        b":9\r\n"
    );
    assert_eq!(
        e.c.ask(&[b"SETBIT", b"counters:2", b"7", b"1"]).await,
        b":0\r\n"
    );
    // Where they pass, partial writes that create a key still get the namespace's TTL.
    for key in [&b"counters:1"[..], b"counters:2"] {
        let ttl = e.d.ask(&[b"TTL", key]).await;
        assert!(
            ttl == b":3600\r\n" || ttl == b":3599\r\n",
            "{}",
            common::show(&ttl)
        );
    }
}

#[tokio::test]
async fn zincrby_and_geoadd_members_are_inspected_like_zadd_members() {
    let mut e = common::policy_env(&policy("")).await;
    let member: &[u8] = br#"{"a":1,"password":"hunter2"}"#;
    assert_eq!(
        e.c.ask(&[b"ZINCRBY", b"temp:z:1", b"2", member]).await,
        b"$1\r\n2\r\n"
    );
    assert_eq!(
        e.d.ask(&[b"ZRANGE", b"temp:z:1", b"0", b"-1"]).await,
        common::bulk_array(&[br#"{"a":1}"#])
    );
    let geo_member: &[u8] = br#"{"city":"p","token":"t0k"}"#;
    assert_eq!(
        e.c.ask(&[
            b"GEOADD",
            b"temp:g:1",
            b"CH",
            b"13.36",
            b"38.11",
            geo_member,
            b"15.08",
            b"37.50",
            b"4111 1111 1111 1111",
        ])
        .await,
        b":2\r\n"
    );
    let stored = e.d.ask(&[b"ZRANGE", b"temp:g:1", b"0", b"-1"]).await;
    let text = String::from_utf8_lossy(&stored);
    assert!(
        text.contains(r#"{"city":"p"}"#) && text.contains("[REDACTED]") && !text.contains("t0k"),
        "{text}"
    );
}

#[tokio::test]
async fn restore_payloads_are_inspected_and_opaque_ones_refused() {
    let mut e = common::policy_env(&policy("")).await;
    // Payloads made by Redis itself: a short plain string, a long compressed one, a hash.
    let with_dob: &[u8] = br#"{"name":"x","dateOfBirth":"1990-01-01"}"#;
    let long_secret = format!(r#"{{"pad":"{}","password":"hunter2"}}"#, "ab".repeat(200));
    let clean = format!(r#"{{"pad":"{}","name":"x"}}"#, "ab".repeat(200));
    e.d.ask(&[b"SET", b"src:1", with_dob]).await;
    e.d.ask(&[b"SET", b"src:2", long_secret.as_bytes()]).await;
    e.d.ask(&[b"SET", b"src:3", clean.as_bytes()]).await;
    e.d.ask(&[b"HSET", b"src:4", b"f", b"v"]).await;
    let encoding = e.d.ask(&[b"OBJECT", b"ENCODING", b"src:2"]).await;
    assert_eq!(encoding, b"$3\r\nraw\r\n");
    let mut dumps = Vec::new();
    for k in [&b"src:1"[..], b"src:2", b"src:3", b"src:4"] {
        dumps.push(bulk_value(&e.d.ask(&[b"DUMP", k]).await));
    }
    // The long value really is LZF-compressed in its payload (shorter than the value).
    assert!(dumps[1].len() < long_secret.len(), "{}", dumps[1].len());

    let r =
        e.c.ask(&[b"RESTORE", b"user_profile:1", b"0", &dumps[0]])
            .await;
    assert_policy_error(
        &r,
        "\"dateOfBirth\" (in a RESTORE payload",
        "DUMP with dateOfBirth",
    );
    let r = e.c.ask(&[b"RESTORE", b"temp:r:2", b"0", &dumps[1]]).await;
    assert_policy_error(&r, "\"password\"", "compressed DUMP with a password");
    let r = e.c.ask(&[b"RESTORE", b"temp:r:4", b"0", &dumps[3]]).await;
    assert_policy_error(
        &r,
        "RDB type 16, which respguard does not decode",
        "DUMP of a hash",
    );
    let r =
        e.c.ask(&[b"RESTORE", b"temp:r:5", b"0", b"\x00\x05hel"])
            .await;
    assert_policy_error(&r, "not a well-formed DUMP payload", "broken payload");
    for k in [
        &b"user_profile:1"[..],
        b"temp:r:2",
        b"temp:r:4",
        b"temp:r:5",
    ] {
        assert_eq!(e.d.ask(&[b"EXISTS", k]).await, b":0\r\n");
    }
    // A clean payload is restored as sent (and gets its TTL); so is a hash where no
    // sensitive rules apply.
    assert_eq!(
        e.c.ask(&[b"RESTORE", b"temp:r:3", b"0", &dumps[2]]).await,
        b"+OK\r\n"
    );
    assert_eq!(
        bulk_value(&e.d.ask(&[b"GET", b"temp:r:3"]).await),
        clean.as_bytes()
    );
    assert_eq!(
        e.c.ask(&[b"RESTORE", b"counters:4", b"0", &dumps[3]]).await,
        b"+OK\r\n"
    );
}

#[tokio::test]
async fn json_nested_deeper_than_the_parser_goes_is_refused_when_it_may_hold_a_field() {
    let mut e = common::policy_env(&policy("")).await;
    let deep = |inner: &str| format!("{}{inner}{}", r#"{"a":"#.repeat(200), "}".repeat(200));
    let secret = deep(r#"{"password":"hunter2"}"#);
    let r = e.c.ask(&[b"SET", b"temp:d:1", secret.as_bytes()]).await;
    assert_policy_error(
        &r,
        "nested deeper than 128 levels",
        "deep JSON with a password",
    );
    assert_eq!(e.d.ask(&[b"EXISTS", b"temp:d:1"]).await, b":0\r\n");
    // Nothing that looks like a configured field anywhere: stored as sent.
    let harmless = deep(r#"{"name":"x"}"#);
    assert_eq!(
        e.c.ask(&[b"SET", b"temp:d:2", harmless.as_bytes()]).await,
        b"+OK\r\n"
    );
    assert_eq!(
        bulk_value(&e.d.ask(&[b"GET", b"temp:d:2"]).await),
        harmless.as_bytes()
    );
}

// ---------------------------------------------------------------------------------------------
// Moves between namespaces

#[tokio::test]
async fn data_cannot_move_into_a_namespace_with_stricter_sensitive_rules() {
    let mut e = common::policy_env(&policy("")).await;
    let dob: &[u8] = br#"{"dateOfBirth":"1990-01-01"}"#;
    let setup: [&[&[u8]]; 7] = [
        &[b"SET", b"temp:a:1", dob],
        &[b"SADD", b"temp:s:1", dob],
        &[b"RPUSH", b"temp:l:1", dob, dob, dob, dob, dob],
        &[b"ZADD", b"temp:z:1", b"1", dob],
        &[b"GEOADD", b"temp:g:1", b"15.08", b"37.50", dob],
        &[b"PFADD", b"temp:h:1", b"a"],
        &[b"SET", b"counters:1", dob],
    ];
    for cmd in setup {
        let r = e.d.ask(cmd).await;
        assert!(!r.starts_with(b"-"), "{}", common::show(&r));
    }
    let refused: [&[&[u8]]; 22] = [
        &[b"RENAME", b"temp:a:1", b"user_profile:1"],
        &[b"RENAMENX", b"temp:a:1", b"user_profile:1"],
        &[b"COPY", b"temp:a:1", b"user_profile:1"],
        &[
            b"COPY",
            b"temp:a:1",
            b"user_profile:1",
            b"DB",
            b"1",
            b"REPLACE",
        ],
        &[b"SMOVE", b"temp:s:1", b"user_profile:1", dob],
        &[b"LMOVE", b"temp:l:1", b"user_profile:1", b"LEFT", b"RIGHT"],
        &[b"RPOPLPUSH", b"temp:l:1", b"user_profile:1"],
        &[
            b"BLMOVE",
            b"temp:l:1",
            b"user_profile:1",
            b"LEFT",
            b"RIGHT",
            b"0",
        ],
        &[b"BRPOPLPUSH", b"temp:l:1", b"user_profile:1", b"0"],
        &[b"SORT", b"temp:l:1", b"ALPHA", b"STORE", b"user_profile:1"],
        &[b"SINTERSTORE", b"user_profile:1", b"temp:s:1"],
        &[b"SUNIONSTORE", b"user_profile:1", b"temp:s:1"],
        &[b"SDIFFSTORE", b"user_profile:1", b"temp:s:1"],
        &[b"ZUNIONSTORE", b"user_profile:1", b"1", b"temp:z:1"],
        &[b"ZINTERSTORE", b"user_profile:1", b"1", b"temp:z:1"],
        &[b"ZDIFFSTORE", b"user_profile:1", b"1", b"temp:z:1"],
        &[b"ZRANGESTORE", b"user_profile:1", b"temp:z:1", b"0", b"-1"],
        &[
            b"GEOSEARCHSTORE",
            b"user_profile:1",
            b"temp:g:1",
            b"FROMLONLAT",
            b"15",
            b"37",
            b"BYRADIUS",
            b"200",
            b"km",
        ],
        &[
            b"GEORADIUS",
            b"temp:g:1",
            b"15",
            b"37",
            b"200",
            b"km",
            b"STORE",
            b"user_profile:1",
        ],
        &[b"BITOP", b"OR", b"user_profile:1", b"temp:a:1"],
        &[b"PFMERGE", b"user_profile:1", b"temp:h:1"],
        &[b"RENAME", b"counters:1", b"user_profile:1"],
    ];
    for cmd in refused {
        let r = e.c.ask(cmd).await;
        assert_policy_error(
            &r,
            "whose sensitive rules are stricter",
            &common::show(cmd[0]),
        );
    }
    assert_eq!(e.d.ask(&[b"EXISTS", b"user_profile:1"]).await, b":0\r\n");
    e.d.ask(&[b"SELECT", b"1"]).await;
    assert_eq!(e.d.ask(&[b"DBSIZE"]).await, b":0\r\n");
    e.d.ask(&[b"SELECT", b"0"]).await;
    assert_eq!(e.d.ask(&[b"LLEN", b"temp:l:1"]).await, b":5\r\n");

    // Between namespaces with the same rules, and within one, moves pass as Redis answers;
    // into stricter rules they are refused whichever namespace the data came from.
    let allowed: [(&[&[u8]], &[u8]); 4] = [
        (&[b"COPY", b"temp:a:1", b"other:a:1"], b":1\r\n"),
        (&[b"RENAME", b"other:a:1", b"user_profile:2"], b"-POLICY"),
        (&[b"SUNIONSTORE", b"other:s:1", b"temp:s:1"], b":1\r\n"),
        (&[b"MOVE", b"temp:h:1", b"1"], b":1\r\n"),
    ];
    for (cmd, want) in allowed {
        let r = e.c.ask(cmd).await;
        assert!(
            r.starts_with(want),
            "{}: {}",
            common::show(cmd[0]),
            common::show(&r)
        );
    }
    e.d.ask(&[b"SET", b"user_profile:3", b"{}"]).await;
    for (cmd, want) in [
        (
            &[&b"COPY"[..], b"user_profile:3", b"temp:c:1"][..],
            &b":1\r\n"[..],
        ),
        (
            &[b"RENAME", b"user_profile:3", b"user_profile:4"],
            b"+OK\r\n",
        ),
    ] {
        assert_eq!(e.c.ask(cmd).await, want, "{}", common::show(cmd[0]));
    }
}

// ---------------------------------------------------------------------------------------------
// Redis as the second wall

fn acl_commands(yaml: &str, user: Option<&str>) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!(
        "respguard-acl-{}-{}",
        std::process::id(),
        common::free_port()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("policy.yaml");
    std::fs::write(&path, yaml).expect("write policy");
    let mut cmd = Command::new(BIN);
    cmd.arg("acl").arg("--config").arg(&path);
    if let Some(u) = user {
        cmd.args(["--user", u]);
    }
    let out = cmd
        .env_remove("RESPGUARD_UPSTREAM")
        .env_remove("RESPGUARD_UPSTREAM_PASSWORD")
        .output()
        .expect("run respguard acl");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("s3cret"), "{stdout}");
    stdout.lines().map(str::to_string).collect()
}

/// Sends each generated line to Redis as a command (the lines hold no quoted arguments).
async fn apply_acl(admin: &mut common::Raw, lines: &[String]) {
    assert!(!lines.is_empty());
    for line in lines {
        let args: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
        assert_eq!(admin.ask(&args).await, b"+OK\r\n", "{line}");
    }
}

#[tokio::test]
async fn the_generated_acl_user_loads_into_redis_and_stops_scripts_inside_it() {
    let redis = common::RedisServer::start();
    let port = redis.addr().port();
    let upstream = format!("redis://app:s3cret@127.0.0.1:{port}");
    let yaml = format!(
        "upstream:\n  url: {upstream}\n{}",
        policy("  scripts: allow\n  denied_commands: [\"@admin\", KEYS, FLUSHALL, FLUSHDB]")
    );
    let mut admin = redis.raw().await;
    apply_acl(&mut admin, &acl_commands(&yaml, None)).await;
    // The example policy's user loads too.
    apply_acl(&mut admin, &acl_commands(&example_yaml(), Some("example"))).await;
    assert_eq!(
        admin.ask(&[b"SET", b"user_profile:1", b"kept"]).await,
        b"+OK\r\n"
    );

    let proxy = common::proxy(&yaml, &upstream).await;
    let mut c = common::raw_proxy(&proxy).await;
    let mut direct = redis.raw().await;
    assert_eq!(direct.ask(&[b"AUTH", b"app", b"s3cret"]).await, b"+OK\r\n");
    // The application's own traffic works as that user.
    assert_eq!(c.ask(&[b"SET", b"temp:a:1", b"v"]).await, b"+OK\r\n");
    assert_eq!(c.ask(&[b"GET", b"temp:a:1"]).await, b"$1\r\nv\r\n");

    let lib: &[u8] = LIB;
    assert_eq!(
        c.ask(&[b"FUNCTION", b"LOAD", lib]).await,
        b"$5\r\nwalls\r\n"
    );
    let attempts: [&[&[u8]]; 5] = [
        &[b"EVAL", FLUSHALL_SCRIPT, b"0"],
        &[b"EVAL", SET_SCRIPT, b"0"],
        &[b"EVAL", b"return redis.call('keys','*')", b"0"],
        &[b"EVAL", b"return redis.call('get','other:x')", b"0"],
        &[b"FCALL", b"wipe", b"0"],
    ];
    for cmd in attempts {
        let through = c.ask(cmd).await;
        let text = String::from_utf8_lossy(&through).into_owned();
        // Redis 7.0 reports ACL refusals inside scripts as ERR, not NOPERM.
        assert!(
            text.starts_with("-ERR The user executing the script can't")
                || text.starts_with("-NOPERM "),
            "{}: {text}",
            common::show(cmd[1])
        );
        assert_eq!(through, direct.ask(cmd).await, "{}", common::show(cmd[1]));
    }
    assert_eq!(
        admin.ask(&[b"GET", b"user_profile:1"]).await,
        b"$4\r\nkept\r\n"
    );
    assert_eq!(admin.ask(&[b"EXISTS", b"bad:eval"]).await, b":0\r\n");
}

/// Runs the real binary against `yaml` until a log line contains one of `wanted` (or 20 s),
/// then stops it; returns that line.
fn first_log_line(yaml: &str, wanted: &[&str]) -> String {
    use std::io::{BufRead, BufReader};
    let dir = std::env::temp_dir().join(format!(
        "respguard-start-{}-{}",
        std::process::id(),
        common::free_port()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("policy.yaml");
    std::fs::write(&path, yaml).expect("write policy");
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .env_remove("RESPGUARD_UPSTREAM")
        .env_remove("RESPGUARD_UPSTREAM_PASSWORD")
        .env_remove("RESPGUARD_LISTEN")
        .env_remove("RESPGUARD_ADMIN")
        .env("RESPGUARD_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start respguard");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = String::new();
    let found = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if wanted.iter().any(|w| line.contains(w)) => break Some(line),
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    found.unwrap_or_else(|| panic!("none of {wanted:?} logged within 20 s:\n{seen}"))
}

#[tokio::test]
async fn at_start_respguard_warns_when_its_redis_user_may_run_what_the_policy_denies() {
    let redis = common::RedisServer::start();
    let port = redis.addr().port();
    let warn = "may run commands the policy denies";
    let not_checked = "may not run ACL DRYRUN";
    let denied = "  denied_commands: [\"@admin\", KEYS, FLUSHALL, FLUSHDB]";
    let listen = format!("listen: 127.0.0.1:{}\n", common::free_port());

    // As Redis's default user, which may run everything.
    let yaml = format!(
        "{listen}upstream:\n  url: redis://127.0.0.1:{port}\n{}",
        policy(denied)
    );
    let line = first_log_line(&yaml, &[warn, not_checked]);
    assert!(
        line.contains(warn) && line.contains("FLUSHALL") && line.contains("CONFIG|SET"),
        "{line}"
    );
    assert!(line.contains("user=default"), "{line}");

    // As the user `respguard acl` prints for this policy.
    let yaml = format!(
        "{listen}upstream:\n  url: redis://app:s3cret@127.0.0.1:{port}\n{}",
        policy(denied)
    );
    let mut admin = redis.raw().await;
    apply_acl(&mut admin, &acl_commands(&yaml, None)).await;
    let line = first_log_line(&yaml, &[warn, not_checked]);
    assert!(line.contains(not_checked), "{line}");
}
