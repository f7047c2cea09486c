//! Unit tests of the whole policy pipeline ([`Policy::check`]) on scanned commands, with a
//! stopped clock; the integration tests (tests/policy_*.rs) check the same against real Redis.

use std::sync::Arc;

use super::ttl::Clock;
use super::*;
use crate::command;
use crate::config::{Config, Overrides};

const NOW: i64 = 1_700_000_000_000;

const POLICY: &str = r#"
policy:
  denied_commands: [KEYS, FLUSHALL]
  allowed_unknown_commands: [MY.CMD]
  namespaces:
    session:
      keys: ["session:{id}", "session:{id}:{device}"]
      ttl: { default: 30m, min: 15m, max: 30m }
    strict:
      keys: ["strict:{id}"]
      ttl: { default: 10m, min: 5m, max: 10m }
      on_violation: reject
    fast:
      keys: ["fast:{id}"]
      ttl: { default: 1500ms, max: 2500ms }
    plain:
      keys: ["plain:{id}", "plain:{id}:{rest...}"]
"#;

fn policy(yaml: &str) -> Arc<Policy> {
    Config::parse(yaml, "t.yaml", &Overrides::default())
        .unwrap_or_else(|e| panic!("{e}"))
        .policy
        .expect("a policy")
}

fn run(p: &Policy, args: &[&[u8]], scratch: &mut Scratch) -> Verdict {
    let owned = crate::codec::OwnedArgv::new(args);
    let argv = owned.argv();
    let v = p.check_with(
        &argv,
        command::lookup(&argv),
        scratch,
        &mut Clock::fixed(NOW),
    );
    // Arguments appended to the original bytes read, for assertions, as a whole command.
    match v {
        Verdict::Rewrite(Rewrite {
            command: None,
            tail,
            append,
        }) if !tail.is_empty() => {
            let mut full: Vec<Bytes> = argv.iter().map(Bytes::copy_from_slice).collect();
            full.extend(tail);
            Verdict::Rewrite(Rewrite {
                command: Some(full),
                tail: Vec::new(),
                append,
            })
        }
        other => other,
    }
}

fn check(p: &Policy, args: &[&str]) -> (Verdict, Scratch) {
    let mut s = Scratch::default();
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    let v = run(p, &args, &mut s);
    (v, s)
}

/// The rewritten command as strings, or panics.
fn rewritten(v: &Verdict) -> Vec<String> {
    match v {
        Verdict::Rewrite(Rewrite {
            command: Some(c), ..
        }) => c
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect(),
        other => panic!("expected a rewritten command, got {other:?}"),
    }
}

fn appended(v: &Verdict) -> Vec<Vec<String>> {
    match v {
        Verdict::Rewrite(rw) => rw
            .append
            .iter()
            .map(|c| {
                c.iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect()
            })
            .collect(),
        other => panic!("expected appended commands, got {other:?}"),
    }
}

fn rejection(v: &Verdict) -> &Rejection {
    match v {
        Verdict::Reject(r) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn forwarded(v: &Verdict) -> bool {
    matches!(v, Verdict::Forward)
}

#[test]
fn good_keys_pass_unchanged_and_are_attributed() {
    let p = policy(POLICY);
    let (v, s) = check(&p, &["GET", "session:42"]);
    assert!(forwarded(&v));
    assert_eq!(s.namespace, 0);
    assert!(s.actions.is_empty());
    let (v, s) = check(&p, &["MGET", "plain:1", "session:2:ios"]);
    assert!(forwarded(&v));
    assert_eq!(s.key_ns, [3, 0]);
    let (v, s) = check(&p, &["PING"]);
    assert!(forwarded(&v));
    assert_eq!(s.namespace, NS_NONE);
}

#[test]
fn naming_failures_refuse_the_whole_command() {
    let p = policy(POLICY);
    let (v, s) = check(&p, &["GET", "user42"]);
    let r = rejection(&v);
    assert!(
        r.message
            .starts_with("POLICY key \"user42\" matches no namespace"),
        "{}",
        r.message
    );
    assert_eq!(r.rule, "naming");
    assert_eq!(
        s.actions,
        [(NS_UNMATCHED, PolicyAction::Rejected(Rule::Naming))]
    );
    let (v, _) = check(&p, &["SET", "session:", "v"]);
    let r = rejection(&v);
    assert!(
        r.message
            .starts_with("POLICY key \"session:\" has an empty segment"),
        "{}",
        r.message
    );
    // One bad key among good ones.
    let (v, _) = check(&p, &["MSET", "session:1", "a", "123_limit", "b"]);
    assert!(rejection(&v).message.contains("\"123_limit\""));
    // The suggestion names patterns of the same first segment.
    let (v, _) = check(&p, &["GET", "session"]);
    assert!(
        rejection(&v).message.contains("session:{id}"),
        "{}",
        rejection(&v).message
    );
    // Non-UTF-8 keys are matched as bytes and quoted safely.
    let (v, _) = check(&p, &["GET", "\u{0}\u{7f}"]);
    assert!(rejection(&v).message.contains("\\x00\\x7f"));
    let mut s = Scratch::default();
    assert!(forwarded(&run(&p, &[b"GET", b"plain:\xff\xfe"], &mut s)));
    // Keyword keys and script keys are keys too.
    let (v, _) = check(&p, &["SORT", "plain:1", "STORE", "bad"]);
    assert!(rejection(&v).message.contains("\"bad\""));
    let (v, _) = check(&p, &["EVAL", "return 1", "2", "plain:1", "nope"]);
    assert!(rejection(&v).message.contains("\"nope\""));
    // Channels are not keys.
    assert!(forwarded(&check(&p, &["PUBLISH", "anything", "m"]).0));
    assert!(forwarded(&check(&p, &["SPUBLISH", "anything", "m"]).0));
}

#[test]
fn allowed_unknown_keys_pass_untouched() {
    let p = policy("policy:\n  unknown_keys: allow\n  namespaces:\n    s:\n      keys: [\"s:{id}\"]\n      ttl: { default: 1m }\n");
    let (v, s) = check(&p, &["HSET", "whatever", "f", "v"]);
    assert!(forwarded(&v));
    assert_eq!(s.key_ns, [NS_UNMATCHED]);
    assert!(forwarded(&check(&p, &["SET", "a::b", "v"]).0));
    assert_eq!(appended(&check(&p, &["HSET", "s:1", "f", "v"]).0).len(), 1);
}

#[test]
fn command_rules() {
    let p = policy(POLICY);
    let (v, s) = check(&p, &["keys", "*"]);
    assert_eq!(
        rejection(&v).message,
        "POLICY KEYS is disabled here: use SCAN"
    );
    assert_eq!(
        s.actions,
        [(NS_NONE, PolicyAction::Rejected(Rule::DeniedCommand))]
    );
    let (v, _) = check(&p, &["NOPE.CMD", "x"]);
    let r = rejection(&v);
    assert_eq!(r.rule, "unknown_command");
    assert!(r.message.contains("allowed_unknown_commands"));
    assert!(forwarded(&check(&p, &["my.cmd", "anything"]).0));
    // A command Redis refuses before running it (wrong arity, bad numkeys) touches no key:
    // it goes to Redis, which answers with its own error.
    assert!(forwarded(&check(&p, &["GET"]).0));
    assert!(forwarded(&check(&p, &["EVAL", "return 1", "-1"]).0));
    // SORT BY pattern reads keys that cannot be checked.
    let (v, _) = check(&p, &["SORT", "plain:1", "BY", "w_*"]);
    assert_eq!(rejection(&v).rule, "unchecked_keys");
    assert!(forwarded(
        &check(&p, &["SORT", "plain:1", "BY", "nosort"]).0
    ));
}

#[test]
fn set_gets_the_default_or_a_clamped_expiry() {
    let p = policy(POLICY);
    let (v, s) = check(&p, &["SET", "session:1", "v"]);
    assert_eq!(rewritten(&v), ["SET", "session:1", "v", "EX", "1800"]);
    assert_eq!(s.actions, [(0, PolicyAction::TtlDefault)]);
    assert_eq!(
        rewritten(&check(&p, &["set", "session:1", "v", "NX", "GET"]).0),
        ["set", "session:1", "v", "NX", "GET", "EX", "1800"]
    );
    let (v, s) = check(&p, &["SET", "session:1", "v", "EX", "86400"]);
    assert_eq!(rewritten(&v), ["SET", "session:1", "v", "EX", "1800"]);
    assert_eq!(s.actions, [(0, PolicyAction::TtlLowered)]);
    let (v, s) = check(&p, &["SET", "session:1", "v", "px", "10"]);
    assert_eq!(rewritten(&v), ["SET", "session:1", "v", "px", "900000"]);
    assert_eq!(s.actions, [(0, PolicyAction::TtlRaised)]);
    // Absolute times are compared with the clock and rewritten exactly, in milliseconds.
    let at = (NOW / 1000 + 36_000).to_string();
    assert_eq!(
        rewritten(&check(&p, &["SET", "session:1", "v", "EXAT", &at]).0),
        [
            "SET",
            "session:1",
            "v",
            "PXAT",
            &(NOW + 1_800_000).to_string()
        ]
    );
    let within = (NOW + 1_200_000).to_string();
    assert!(forwarded(
        &check(&p, &["SET", "session:1", "v", "PXAT", &within]).0
    ));
    assert!(forwarded(
        &check(&p, &["SET", "session:1", "v", "EX", "1000"]).0
    ));
    // KEEPTTL keeps an existing expiry; a hidden EXPIRE NX covers a key that has none.
    let (v, _) = check(&p, &["SET", "session:1", "v", "KEEPTTL"]);
    assert_eq!(appended(&v), [["EXPIRE", "session:1", "1800", "NX"]]);
    assert!(matches!(
        &v,
        Verdict::Rewrite(Rewrite { command: None, .. })
    ));
    // A default that is not whole seconds is given in milliseconds.
    assert_eq!(
        rewritten(&check(&p, &["SET", "fast:1", "v"]).0),
        ["SET", "fast:1", "v", "PX", "1500"]
    );
    // A bound that is not whole seconds turns EX into PX.
    assert_eq!(
        rewritten(&check(&p, &["SET", "fast:1", "v", "EX", "60"]).0),
        ["SET", "fast:1", "v", "PX", "2500"]
    );
    // Namespaces without ttl are left alone.
    assert!(forwarded(&check(&p, &["SET", "plain:1", "v"]).0));
    // Options Redis would refuse are refused.
    assert_eq!(
        rejection(&check(&p, &["SET", "session:1", "v", "EX"]).0).rule,
        "malformed"
    );
    assert_eq!(
        rejection(&check(&p, &["SET", "session:1", "v", "EX", "ten"]).0).rule,
        "malformed"
    );
    assert_eq!(
        rejection(&check(&p, &["SET", "session:1", "v", "EX", "1", "PX", "1"]).0).rule,
        "malformed"
    );
    assert_eq!(
        rejection(&check(&p, &["SET", "session:1", "v", "FOO"]).0).rule,
        "malformed"
    );
    // Non-positive expiries delete or are refused by Redis: nothing to enforce.
    assert!(forwarded(
        &check(&p, &["SET", "session:1", "v", "EX", "0"]).0
    ));
}

#[test]
fn on_violation_reject_refuses_out_of_bounds_expiries() {
    let p = policy(POLICY);
    let (v, s) = check(&p, &["SET", "strict:1", "v", "EX", "3600"]);
    let r = rejection(&v);
    assert_eq!(r.rule, "ttl");
    assert_eq!(
        r.message,
        "POLICY expiry of 1h for key \"strict:1\" is above the maximum of namespace strict (5m to 10m): use at most 10m"
    );
    assert_eq!(s.actions, [(1, PolicyAction::Rejected(Rule::Ttl))]);
    let (v, _) = check(&p, &["EXPIRE", "strict:1", "1"]);
    assert!(rejection(&v).message.contains("below the minimum"));
    // The default is still supplied where there is no expiry.
    assert_eq!(
        rewritten(&check(&p, &["SET", "strict:1", "v"]).0),
        ["SET", "strict:1", "v", "EX", "600"]
    );
}

#[test]
fn expiry_commands_are_clamped_in_place() {
    let p = policy(POLICY);
    assert_eq!(
        rewritten(&check(&p, &["EXPIRE", "session:1", "99999", "GT"]).0),
        ["EXPIRE", "session:1", "1800", "GT"]
    );
    assert_eq!(
        rewritten(&check(&p, &["PEXPIRE", "session:1", "5"]).0),
        ["PEXPIRE", "session:1", "900000"]
    );
    assert_eq!(
        rewritten(&check(&p, &["SETEX", "session:1", "5", "v"]).0),
        ["SETEX", "session:1", "900", "v"]
    );
    assert_eq!(
        rewritten(&check(&p, &["PSETEX", "session:1", "5", "v"]).0),
        ["PSETEX", "session:1", "900000", "v"]
    );
    assert_eq!(
        rewritten(&check(&p, &["SETEX", "fast:1", "60", "v"]).0),
        ["PSETEX", "fast:1", "2500", "v"]
    );
    assert_eq!(
        rewritten(&check(&p, &["EXPIRE", "fast:1", "60"]).0),
        ["PEXPIRE", "fast:1", "2500"]
    );
    let far = (NOW / 1000 + 86_400).to_string();
    assert_eq!(
        rewritten(&check(&p, &["EXPIREAT", "session:1", &far]).0),
        ["PEXPIREAT", "session:1", &(NOW + 1_800_000).to_string()]
    );
    let near = (NOW + 1000).to_string();
    assert_eq!(
        rewritten(&check(&p, &["PEXPIREAT", "session:1", &near]).0),
        ["PEXPIREAT", "session:1", &(NOW + 900_000).to_string()]
    );
    // In the past, zero or negative: the key is deleted, which the policy allows.
    assert!(forwarded(&check(&p, &["EXPIREAT", "session:1", "1"]).0));
    assert!(forwarded(&check(&p, &["EXPIRE", "session:1", "0"]).0));
    assert!(forwarded(&check(&p, &["EXPIRE", "session:1", "-5"]).0));
    assert!(forwarded(&check(&p, &["EXPIRE", "session:1", "1200"]).0));
    assert!(forwarded(&check(&p, &["EXPIRE", "plain:1", "5"]).0));
}

#[test]
fn getex_persist_and_restore() {
    let p = policy(POLICY);
    assert!(forwarded(&check(&p, &["GETEX", "session:1"]).0));
    assert_eq!(
        rewritten(&check(&p, &["GETEX", "session:1", "EX", "1"]).0),
        ["GETEX", "session:1", "EX", "900"]
    );
    let r = check(&p, &["GETEX", "session:1", "PERSIST"]).0;
    assert_eq!(rejection(&r).rule, "persist");
    let r = check(&p, &["PERSIST", "session:1"]).0;
    assert!(rejection(&r)
        .message
        .starts_with("POLICY PERSIST would remove the expiry of key \"session:1\""));
    assert!(forwarded(&check(&p, &["PERSIST", "plain:1"]).0));
    assert_eq!(
        rewritten(&check(&p, &["RESTORE", "session:1", "0", "payload", "REPLACE"]).0),
        ["RESTORE", "session:1", "1800000", "payload", "REPLACE"]
    );
    assert_eq!(
        rewritten(&check(&p, &["RESTORE", "session:1", "0", "payload", "ABSTTL"]).0),
        [
            "RESTORE",
            "session:1",
            &(NOW + 1_800_000).to_string(),
            "payload",
            "ABSTTL"
        ]
    );
    assert_eq!(
        rewritten(&check(&p, &["RESTORE", "session:1", "99999999", "payload"]).0),
        ["RESTORE", "session:1", "1800000", "payload"]
    );
    assert_eq!(
        rejection(&check(&p, &["RESTORE", "session:1", "0", "p", "BOGUS"]).0).rule,
        "malformed"
    );
}

#[test]
fn writes_that_create_keys_get_a_hidden_expire_nx() {
    let p = policy(POLICY);
    let (v, s) = check(&p, &["HSET", "session:1", "f", "v"]);
    assert_eq!(appended(&v), [["EXPIRE", "session:1", "1800", "NX"]]);
    assert!(matches!(
        &v,
        Verdict::Rewrite(Rewrite { command: None, .. })
    ));
    assert_eq!(s.actions, [(0, PolicyAction::TtlAppended)]);
    // One per distinct key; only keys in namespaces with a TTL.
    assert_eq!(
        appended(
            &check(
                &p,
                &[
                    "MSET",
                    "session:1",
                    "a",
                    "session:1",
                    "b",
                    "fast:1",
                    "c",
                    "plain:1",
                    "d"
                ]
            )
            .0
        ),
        [
            vec!["EXPIRE", "session:1", "1800", "NX"],
            vec!["PEXPIRE", "fast:1", "1500", "NX"]
        ]
    );
    // Destinations, not sources.
    assert_eq!(
        appended(&check(&p, &["LMOVE", "session:1", "session:2", "LEFT", "RIGHT"]).0),
        [["EXPIRE", "session:2", "1800", "NX"]]
    );
    assert_eq!(
        appended(&check(&p, &["SUNIONSTORE", "session:9", "session:1", "session:2"]).0),
        [["EXPIRE", "session:9", "1800", "NX"]]
    );
    // Declared script keys are assumed written.
    assert_eq!(
        appended(&check(&p, &["EVAL", "return 1", "1", "session:1"]).0),
        [["EXPIRE", "session:1", "1800", "NX"]]
    );
    // Reads and deletes add nothing.
    for cmd in [
        &["HGET", "session:1", "f"][..],
        &["DEL", "session:1"],
        &["LPOP", "session:1"],
        &["TTL", "session:1"],
        &["HSET", "plain:1", "f", "v"],
    ] {
        assert!(forwarded(&check(&p, cmd).0), "{cmd:?}");
    }
}

#[test]
fn audit_mode_forwards_and_records_what_enforce_would_do() {
    let p = policy(&POLICY.replace("policy:\n", "policy:\n  mode: audit\n"));
    assert_eq!(p.mode(), Mode::Audit);
    let (v, s) = check(&p, &["SET", "session:1", "v"]);
    assert!(forwarded(&v));
    assert!(s.audit);
    assert_eq!(s.actions, [(0, PolicyAction::TtlDefault)]);
    let (v, s) = check(&p, &["GET", "user42"]);
    assert!(forwarded(&v));
    assert_eq!(
        s.actions,
        [(NS_UNMATCHED, PolicyAction::Rejected(Rule::Naming))]
    );
    let (v, s) = check(&p, &["KEYS", "*"]);
    assert!(forwarded(&v));
    assert!(s.audit);
    let (v, s) = check(&p, &["GET", "session:1"]);
    assert!(forwarded(&v));
    assert!(!s.audit && s.actions.is_empty());
}

#[test]
fn accessors() {
    let p = policy(POLICY);
    assert_eq!(p.namespace_names(), ["session", "strict", "fast", "plain"]);
    assert_eq!(p.namespace_of(b"plain:1:2:3"), 3);
    assert_eq!(p.namespace_of(b"plain"), NS_UNMATCHED);
    assert_eq!(p.namespace_label(0), "session");
    assert_eq!(p.namespace_label(NS_NONE), "_none");
    assert_eq!(p.namespace_label(NS_UNMATCHED), "_unmatched");
}

// ---------------------------------------------------------------------------------------------
// Stage 3: sensitive data

const SENSITIVE: &str = r#"
policy:
  unknown_keys: allow
  sensitive:
    fields: [password, ssn, creditCard, cardNumber, cvv, token]
    action: strip
    detect: [card_number, us_ssn]
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
      sensitive: { action: audit, detect: [] }
"#;

/// `scratch.sensitive` as `namespace/action/field` strings.
fn found(p: &Policy, s: &Scratch) -> Vec<String> {
    s.sensitive
        .iter()
        .map(|&(ns, action, field)| {
            format!(
                "{}/{action}/{}",
                p.namespace_label(ns),
                p.sensitive_field_label(field)
            )
        })
        .collect()
}

#[test]
fn sensitive_strip_combines_with_ttl_edits() {
    let p = policy(SENSITIVE);
    let doc = r#"{"name":"Ann","password":"x","dob":{"dateOfBirth":"1990-01-01","y":1}}"#;
    let (v, s) = check(&p, &["SET", "user_profile:1", doc]);
    assert_eq!(
        rewritten(&v),
        [
            "SET",
            "user_profile:1",
            r#"{"name":"Ann","dob":{"y":1}}"#,
            "EX",
            "3600"
        ]
    );
    assert_eq!(
        found(&p, &s),
        [
            "user_profile/strip/password",
            "user_profile/strip/dateOfBirth"
        ]
    );
    assert_eq!(s.actions, [(0, PolicyAction::TtlDefault)]);
    // Another namespace uses the default fields: dateOfBirth stays there.
    let (v, s) = check(&p, &["SETEX", "session:1", "99999", doc]);
    assert_eq!(
        rewritten(&v),
        [
            "SETEX",
            "session:1",
            "1800",
            r#"{"name":"Ann","dob":{"dateOfBirth":"1990-01-01","y":1}}"#
        ]
    );
    assert_eq!(found(&p, &s), ["session/strip/password"]);
    // Keys in no namespace use the default rules; detectors redact plain values.
    let (v, s) = check(&p, &["SET", "misc", "4111 1111 1111 1111"]);
    assert_eq!(rewritten(&v), ["SET", "misc", "[REDACTED]"]);
    assert_eq!(found(&p, &s), ["_unmatched/strip/card_number"]);
    // Clean values: nothing recorded, the original bytes are forwarded.
    let (v, s) = check(&p, &["SET", "misc", r#"{"name":"Ann"}"#]);
    assert!(forwarded(&v));
    assert!(s.sensitive.is_empty() && s.actions.is_empty());
}

#[test]
fn sensitive_hash_fields_and_answers() {
    let p = policy(SENSITIVE);
    let (v, s) = check(
        &p,
        &[
            "HSET",
            "session:1",
            "name",
            "ann",
            "Pass_Word",
            "x",
            "n",
            "1",
        ],
    );
    assert_eq!(
        rewritten(&v),
        ["HSET", "session:1", "name", "ann", "n", "1"]
    );
    assert_eq!(appended(&v), [["EXPIRE", "session:1", "1800", "NX"]]);
    assert_eq!(found(&p, &s), ["session/strip/password"]);
    assert_eq!(s.actions, [(1, PolicyAction::TtlAppended)]);
    // Every field sensitive: nothing is written and no EXPIRE; only `HLEN key` goes to Redis,
    // so a key of another type still gets Redis's WRONGTYPE, else the zero-field reply.
    let probe = |v: &Verdict| match v {
        Verdict::Probe { command, reply } => (
            command
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect::<Vec<_>>(),
            reply.clone(),
        ),
        other => panic!("expected a probe, got {other:?}"),
    };
    let (v, s) = check(&p, &["HSET", "session:1", "cvv", "1", "token", "t"]);
    assert_eq!(
        probe(&v),
        (
            vec!["HLEN".into(), "session:1".into()],
            Bytes::from_static(b":0\r\n")
        )
    );
    assert_eq!(found(&p, &s), ["session/strip/cvv", "session/strip/token"]);
    assert!(s.actions.is_empty());
    let (v, _) = check(&p, &["HMSET", "session:1", "cvv", "1"]);
    assert_eq!(probe(&v).1, Bytes::from_static(b"+OK\r\n"));
}

#[test]
fn sensitive_mset_uses_each_keys_rules() {
    let p = policy(SENSITIVE);
    let doc = r#"{"dateOfBirth":"x","cvv":1,"k":1}"#;
    let (v, s) = check(
        &p,
        &[
            "MSET",
            "user_profile:1",
            doc,
            "session:1",
            doc,
            "watch:1",
            doc,
        ],
    );
    assert_eq!(
        rewritten(&v),
        [
            "MSET",
            "user_profile:1",
            r#"{"k":1}"#,
            "session:1",
            r#"{"dateOfBirth":"x","k":1}"#,
            "watch:1",
            doc
        ]
    );
    assert_eq!(
        found(&p, &s),
        [
            "user_profile/strip/dateOfBirth",
            "user_profile/strip/cvv",
            "session/strip/cvv",
            "watch/audit/cvv"
        ]
    );
    assert_eq!(appended(&v).len(), 2);
}

#[test]
fn sensitive_publish_uses_the_default_rules() {
    let p = policy(SENSITIVE);
    let (v, s) = check(
        &p,
        &[
            "PUBLISH",
            "user_profile:1",
            r#"{"dateOfBirth":1,"ssn":"x"}"#,
        ],
    );
    assert_eq!(
        rewritten(&v),
        ["PUBLISH", "user_profile:1", r#"{"dateOfBirth":1}"#]
    );
    assert_eq!(found(&p, &s), ["_none/strip/ssn"]);
    assert_eq!(s.namespace, NS_NONE);
    let (v, _) = check(&p, &["SPUBLISH", "c", "ssn 123-45-6789"]);
    assert_eq!(rewritten(&v), ["SPUBLISH", "c", "[REDACTED]"]);
    // publish: false
    let quiet = policy(&SENSITIVE.replace(
        "    detect: [card_number, us_ssn]\n",
        "    detect: [card_number, us_ssn]\n    publish: false\n",
    ));
    let (v, s) = check(&quiet, &["PUBLISH", "c", r#"{"ssn":"x"}"#]);
    assert!(forwarded(&v));
    assert!(s.sensitive.is_empty());
    // Reads never reach the stage.
    assert!(forwarded(&check(&p, &["GET", "misc"]).0));
}

#[test]
fn sensitive_reject_and_audit_actions() {
    let p = policy(SENSITIVE);
    let (v, s) = check(&p, &["SET", "vault:1", r#"{"a":{"token":"t"}}"#]);
    let r = rejection(&v);
    assert_eq!(r.rule, "sensitive");
    assert_eq!(r.namespace, 2);
    assert_eq!(
        r.message,
        r#"POLICY value for vault:1 contains sensitive field "token""#
    );
    assert_eq!(found(&p, &s), ["vault/reject/token"]);
    assert_eq!(s.actions, [(2, PolicyAction::Rejected(Rule::Sensitive))]);
    let (v, _) = check(&p, &["HSET", "vault:1", "ssn", "x"]);
    assert_eq!(rejection(&v).rule, "sensitive");
    // Every field of a stream entry sensitive: refused, Redis cannot store an empty entry.
    let (v, _) = check(&p, &["XADD", "session:s", "*", "password", "x"]);
    assert!(
        rejection(&v).message.starts_with("POLICY every field"),
        "{}",
        rejection(&v).message
    );
    // action: audit forwards unchanged and records; `detect: []` turned detectors off there.
    let (v, s) = check(&p, &["SET", "watch:1", r#"{"password":"x"}"#, "EX", "60"]);
    assert!(forwarded(&v));
    assert_eq!(found(&p, &s), ["watch/audit/password"]);
    assert!(!s.audit, "only this rule audits; the policy enforces");
    let (v, s) = check(&p, &["SET", "watch:1", "4111111111111111", "EX", "60"]);
    assert!(forwarded(&v));
    assert!(s.sensitive.is_empty());
}

#[test]
fn sensitive_stage_is_audit_only_in_audit_mode() {
    let p = policy(
        &SENSITIVE
            .replace("policy:\n", "policy:\n  mode: audit\n")
            .replace("unknown_keys: allow", "unknown_keys: reject"),
    );
    let (v, s) = check(
        &p,
        &["SET", "session:1", r#"{"password":"x"}"#, "EX", "1000"],
    );
    assert!(forwarded(&v));
    assert!(s.audit);
    assert_eq!(found(&p, &s), ["session/audit/password"]);
    // Reject rules only record too.
    let (v, s) = check(&p, &["HSET", "vault:1", "ssn", "x"]);
    assert!(forwarded(&v));
    assert_eq!(found(&p, &s), ["vault/audit/ssn"]);
    assert!(s.actions.is_empty(), "{:?}", s.actions);
    // A command an earlier stage would refuse still reaches Redis in audit mode: its
    // sensitive data is recorded as well.
    let (v, s) = check(&p, &["SET", "user42", r#"{"cvv":1}"#]);
    assert!(forwarded(&v));
    assert_eq!(
        s.actions,
        [(NS_UNMATCHED, PolicyAction::Rejected(Rule::Naming))]
    );
    assert_eq!(found(&p, &s), ["_unmatched/audit/cvv"]);
}

#[test]
fn sensitive_stage_exists_only_when_configured() {
    let p = policy(POLICY);
    assert!(p.sensitive_rules(0).is_none());
    let (v, s) = check(&p, &["SET", "plain:1", r#"{"password":"x"}"#]);
    assert!(forwarded(&v));
    assert!(s.sensitive.is_empty());
    assert_eq!(p.sensitive_field_label(0), "_unknown");
    // A section that finds nothing leaves the stage off too.
    let p = policy("policy:\n  unknown_keys: allow\n  sensitive: { action: reject }\n");
    assert!(p.sensitive_rules(NS_NONE).is_none());
    // Only one namespace configured: other keys and PUBLISH are not scanned.
    let p = policy(
        "policy:\n  unknown_keys: allow\n  namespaces:\n    u:\n      keys: [\"u:{id}\"]\n      sensitive: { fields: [password] }\n",
    );
    assert!(p.sensitive_rules(0).is_some_and(|r| r.is_active()));
    assert!(p
        .sensitive_rules(NS_UNMATCHED)
        .is_some_and(|r| !r.is_active()));
    assert_eq!(
        rewritten(&check(&p, &["SET", "u:1", r#"{"password":1,"a":2}"#]).0),
        ["SET", "u:1", r#"{"a":2}"#]
    );
    assert!(forwarded(&check(&p, &["SET", "x", r#"{"password":1}"#]).0));
    assert!(forwarded(
        &check(&p, &["PUBLISH", "c", r#"{"password":1}"#]).0
    ));
}

#[test]
fn sensitive_field_labels_are_shared_across_rule_sets() {
    let p = policy(SENSITIVE);
    let (_, a) = check(&p, &["SET", "user_profile:1", r#"{"password":1}"#]);
    let (_, b) = check(&p, &["SET", "session:1", r#"{"password":1}"#]);
    assert_eq!(a.sensitive[0].2, b.sensitive[0].2, "one label id per name");
    assert_eq!(p.sensitive_field_label(a.sensitive[0].2), "password");
    assert_eq!(p.sensitive_field_label(FieldLabelId::MAX), "_unknown");
}

#[test]
fn audit_mode_reports_what_enforce_refuses_for_want_of_inspection_and_forwards_it() {
    let yaml = |mode: &str| {
        format!(
            "policy:\n  mode: {mode}\n  sensitive: {{ fields: [password] }}\n  namespaces:\n    a:\n      keys: [\"a:{{id}}\"]\n    b:\n      keys: [\"b:{{id}}\"]\n      sensitive: {{ fields: [password, dateOfBirth] }}\n"
        )
    };
    let (enforce, audit) = (policy(&yaml("enforce")), policy(&yaml("audit")));
    let cases: [(&[&[u8]], Rule); 3] = [
        (&[b"APPEND", b"a:1", b"x"], Rule::Sensitive),
        (&[b"SETRANGE", b"b:1", b"0", b"x"], Rule::Sensitive),
        (&[b"RENAME", b"a:1", b"b:1"], Rule::CrossNamespace),
    ];
    for (args, rule) in cases {
        let mut s = Scratch::default();
        assert!(
            matches!(run(&enforce, args, &mut s), Verdict::Reject(_)),
            "{args:?}"
        );
        let mut s = Scratch::default();
        assert!(
            matches!(run(&audit, args, &mut s), Verdict::Forward),
            "{args:?}"
        );
        assert!(s.audit, "{args:?}");
        assert!(
            s.actions
                .iter()
                .any(|(_, a)| *a == PolicyAction::Rejected(rule)),
            "{args:?}: {:?}",
            s.actions
        );
    }
    // Moving data the other way, into looser rules, is fine.
    let mut s = Scratch::default();
    assert!(matches!(
        run(&enforce, &[b"RENAME", b"b:1", b"a:1"], &mut s),
        Verdict::Forward
    ));
}

#[test]
fn redisjson_writes_other_than_json_set_are_refused_where_sensitive_rules_apply() {
    let p = policy(
        "policy:\n  sensitive: { fields: [password] }\n  namespaces:\n    a:\n      keys: [\"a:{id}\"]\n    open:\n      keys: [\"open:{id}\"]\n      sensitive: { fields: [] }\n",
    );
    let cases: [&[&[u8]]; 5] = [
        &[b"JSON.ARRAPPEND", b"a:1", b"$", br#"{"password":"x"}"#],
        &[b"JSON.ARRINSERT", b"a:1", b"$", b"0", b"1"],
        &[b"JSON.MERGE", b"a:1", b"$", br#"{"password":"x"}"#],
        &[b"JSON.MSET", b"open:1", b"$", b"1", b"a:1", b"$", b"2"],
        &[b"JSON.STRAPPEND", b"a:1", b"$.name", b"\"x\""],
    ];
    for args in cases {
        let mut s = Scratch::default();
        match run(&p, args, &mut s) {
            Verdict::Reject(r) => assert!(r.message.contains("JSON.SET"), "{}", r.message),
            other => panic!("{args:?}: {other:?}"),
        }
    }
    let mut s = Scratch::default();
    assert!(matches!(
        run(&p, &[b"JSON.ARRAPPEND", b"open:1", b"$", b"1"], &mut s),
        Verdict::Forward | Verdict::Rewrite(_)
    ));
}
