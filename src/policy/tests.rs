//! Unit tests of the whole policy pipeline ([`Policy::check`]) on scanned commands, with a
//! stopped clock; the integration tests (tests/policy_*.rs) check the same against real Redis.

use std::sync::Arc;

use super::ttl::Clock;
use super::*;
use crate::codec::Span;
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
    let mut buf = Vec::new();
    let mut spans = Vec::new();
    for a in args {
        let start = buf.len() as u32;
        buf.extend_from_slice(a);
        spans.push(Span {
            start,
            end: buf.len() as u32,
        });
    }
    let argv = Argv::new(&buf, &spans);
    p.check_with(&argv, command::lookup(&argv), scratch, &mut Clock::fixed(NOW))
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
        }) => c.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect(),
        other => panic!("expected a rewritten command, got {other:?}"),
    }
}

fn appended(v: &Verdict) -> Vec<Vec<String>> {
    match v {
        Verdict::Rewrite(rw) => rw
            .append
            .iter()
            .map(|c| c.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect())
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
    assert!(r.message.starts_with("POLICY key \"user42\" matches no namespace"), "{}", r.message);
    assert_eq!(r.rule, "naming");
    assert_eq!(s.actions, [(NS_UNMATCHED, PolicyAction::Rejected(Rule::Naming))]);
    let (v, _) = check(&p, &["SET", "session:", "v"]);
    let r = rejection(&v);
    assert!(r.message.starts_with("POLICY key \"session:\" has an empty segment"), "{}", r.message);
    // One bad key among good ones.
    let (v, _) = check(&p, &["MSET", "session:1", "a", "123_limit", "b"]);
    assert!(rejection(&v).message.contains("\"123_limit\""));
    // The suggestion names patterns of the same first segment.
    let (v, _) = check(&p, &["GET", "session"]);
    assert!(rejection(&v).message.contains("session:{id}"), "{}", rejection(&v).message);
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
    assert_eq!(rejection(&v).message, "POLICY KEYS is disabled here: use SCAN");
    assert_eq!(s.actions, [(NS_NONE, PolicyAction::Rejected(Rule::DeniedCommand))]);
    let (v, _) = check(&p, &["NOPE.CMD", "x"]);
    let r = rejection(&v);
    assert_eq!(r.rule, "unknown_command");
    assert!(r.message.contains("allowed_unknown_commands"));
    assert!(forwarded(&check(&p, &["my.cmd", "anything"]).0));
    // Keys that cannot be located: Redis would refuse the command as well.
    let (v, _) = check(&p, &["GET"]);
    assert_eq!(rejection(&v).rule, "malformed");
    // SORT BY pattern reads keys that cannot be checked.
    let (v, _) = check(&p, &["SORT", "plain:1", "BY", "w_*"]);
    assert_eq!(rejection(&v).rule, "unchecked_keys");
    assert!(forwarded(&check(&p, &["SORT", "plain:1", "BY", "nosort"]).0));
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
        ["SET", "session:1", "v", "PXAT", &(NOW + 1_800_000).to_string()]
    );
    let within = (NOW + 1_200_000).to_string();
    assert!(forwarded(&check(&p, &["SET", "session:1", "v", "PXAT", &within]).0));
    assert!(forwarded(&check(&p, &["SET", "session:1", "v", "EX", "1000"]).0));
    // KEEPTTL keeps an existing expiry; a hidden EXPIRE NX covers a key that has none.
    let (v, _) = check(&p, &["SET", "session:1", "v", "KEEPTTL"]);
    assert_eq!(appended(&v), [["EXPIRE", "session:1", "1800", "NX"]]);
    assert!(matches!(&v, Verdict::Rewrite(Rewrite { command: None, .. })));
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
    assert_eq!(rejection(&check(&p, &["SET", "session:1", "v", "EX"]).0).rule, "malformed");
    assert_eq!(rejection(&check(&p, &["SET", "session:1", "v", "EX", "ten"]).0).rule, "malformed");
    assert_eq!(rejection(&check(&p, &["SET", "session:1", "v", "EX", "1", "PX", "1"]).0).rule, "malformed");
    assert_eq!(rejection(&check(&p, &["SET", "session:1", "v", "FOO"]).0).rule, "malformed");
    // Non-positive expiries delete or are refused by Redis: nothing to enforce.
    assert!(forwarded(&check(&p, &["SET", "session:1", "v", "EX", "0"]).0));
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
    assert_eq!(rewritten(&check(&p, &["EXPIRE", "session:1", "99999", "GT"]).0), ["EXPIRE", "session:1", "1800", "GT"]);
    assert_eq!(rewritten(&check(&p, &["PEXPIRE", "session:1", "5"]).0), ["PEXPIRE", "session:1", "900000"]);
    assert_eq!(rewritten(&check(&p, &["SETEX", "session:1", "5", "v"]).0), ["SETEX", "session:1", "900", "v"]);
    assert_eq!(rewritten(&check(&p, &["PSETEX", "session:1", "5", "v"]).0), ["PSETEX", "session:1", "900000", "v"]);
    assert_eq!(rewritten(&check(&p, &["SETEX", "fast:1", "60", "v"]).0), ["PSETEX", "fast:1", "2500", "v"]);
    assert_eq!(rewritten(&check(&p, &["EXPIRE", "fast:1", "60"]).0), ["PEXPIRE", "fast:1", "2500"]);
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
    assert_eq!(rewritten(&check(&p, &["GETEX", "session:1", "EX", "1"]).0), ["GETEX", "session:1", "EX", "900"]);
    let r = check(&p, &["GETEX", "session:1", "PERSIST"]).0;
    assert_eq!(rejection(&r).rule, "persist");
    let r = check(&p, &["PERSIST", "session:1"]).0;
    assert!(rejection(&r).message.starts_with("POLICY PERSIST would remove the expiry of key \"session:1\""));
    assert!(forwarded(&check(&p, &["PERSIST", "plain:1"]).0));
    assert_eq!(
        rewritten(&check(&p, &["RESTORE", "session:1", "0", "payload", "REPLACE"]).0),
        ["RESTORE", "session:1", "1800000", "payload", "REPLACE"]
    );
    assert_eq!(
        rewritten(&check(&p, &["RESTORE", "session:1", "0", "payload", "ABSTTL"]).0),
        ["RESTORE", "session:1", &(NOW + 1_800_000).to_string(), "payload", "ABSTTL"]
    );
    assert_eq!(
        rewritten(&check(&p, &["RESTORE", "session:1", "99999999", "payload"]).0),
        ["RESTORE", "session:1", "1800000", "payload"]
    );
    assert_eq!(rejection(&check(&p, &["RESTORE", "session:1", "0", "p", "BOGUS"]).0).rule, "malformed");
}

#[test]
fn writes_that_create_keys_get_a_hidden_expire_nx() {
    let p = policy(POLICY);
    let (v, s) = check(&p, &["HSET", "session:1", "f", "v"]);
    assert_eq!(appended(&v), [["EXPIRE", "session:1", "1800", "NX"]]);
    assert!(matches!(&v, Verdict::Rewrite(Rewrite { command: None, .. })));
    assert_eq!(s.actions, [(0, PolicyAction::TtlAppended)]);
    // One per distinct key; only keys in namespaces with a TTL.
    assert_eq!(
        appended(&check(&p, &["MSET", "session:1", "a", "session:1", "b", "fast:1", "c", "plain:1", "d"]).0),
        [vec!["EXPIRE", "session:1", "1800", "NX"], vec!["PEXPIRE", "fast:1", "1500", "NX"]]
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
    assert_eq!(s.actions, [(NS_UNMATCHED, PolicyAction::Rejected(Rule::Naming))]);
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
