//! Under a policy, commands Redis refuses before running them (a wrong argument count, a bad
//! numkeys) get Redis's own error byte for byte, not a `POLICY` error: they touch no key, so
//! they go to Redis. With a policy that constrains no key, a command respguard does not know
//! goes to Redis too (which answers "unknown command" when it does not know it either); under
//! a policy that does constrain keys it is still refused, since its keys cannot be checked.

#[macro_use]
mod common;

use common::{policy_env, show};

/// Every key allowed, no TTL rules, nothing sensitive.
const PERMISSIVE: &str = "policy:\n  unknown_keys: allow\n";

fn example_yaml() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml");
    std::fs::read_to_string(path).expect("config/example.yaml")
}

/// Commands Redis refuses before running them. Keys are named for the example policy's
/// namespaces, so the refusal can only come from the arguments.
const REFUSED: &[&[&str]] = &[
    &["GETEX"],
    &["SMISMEMBER", "session:1"],
    &["SINTERCARD", "1"],
    &["SINTERCARD", "abc", "session:1"],
    &["SINTERCARD", "-1", "session:1"],
    &["SINTERCARD", "0", "session:1"],
    &["SINTERCARD", "5", "session:1"],
    &["ZINCRBY", "session:1", "1"],
    &["ZMPOP", "1", "session:1"],
    &["ZMPOP", "abc", "session:1", "MIN"],
    &["ZMPOP", "-1", "session:1", "MIN"],
    &["ZMPOP", "3", "session:1", "MIN"],
    &["XADD", "session:1"],
    &["SET", "session:1"],
    &["GET"],
    &["EVAL", "return 1", "-1"],
    &["EVAL", "return 1", "abc"],
    &["EVAL", "return 1", "01", "session:1"],
    &["EVAL", "return 1", "99999999999999999999", "session:1"],
    &["EVAL", "return 1", "5", "session:1"],
    &["EVAL_RO", "return 1", "2", "session:1"],
    &["EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "-3"],
    &["FCALL", "f", "-1"],
    &["FCALL", "f", "x"],
    &["FCALL", "f", "3", "session:1"],
    &["FCALL_RO", "f", "2.5", "session:1"],
    &["ZUNIONSTORE", "session:1", "0", "session:2"],
    &["ZUNIONSTORE", "session:1", "3", "session:2"],
    &["ZINTER", "x", "session:2"],
    &["ZDIFF", "-2", "session:2"],
    &["ZINTERCARD", "2", "session:2"],
    &["LMPOP", "0", "session:2", "LEFT"],
    &["BLMPOP", "0", "abc", "session:2", "LEFT"],
    &["BZMPOP", "0", "5", "session:2", "MIN"],
    &["XREAD", "STREAMS", "session:1"],
    &["XREAD", "COUNT", "1", "session:1", "0"],
    &[
        "XREADGROUP",
        "GROUP",
        "g",
        "c",
        "STREAMS",
        "session:1",
        "session:2",
        "0",
    ],
];

/// Scripts and functions, which `policy.scripts: refuse` refuses whatever their arguments.
fn runs_code(cmd: &[&str]) -> bool {
    ["EVAL", "EVAL_RO", "EVALSHA", "FCALL", "FCALL_RO"].contains(&cmd[0])
}

async fn refused_commands_get_redis_errors(yaml: &str, scripts_refused: bool) {
    let mut env = policy_env(yaml).await;
    for cmd in REFUSED {
        let args: Vec<&[u8]> = cmd.iter().map(|a| a.as_bytes()).collect();
        let want = env.d.ask(&args).await;
        assert!(
            want.starts_with(b"-"),
            "Redis accepts {cmd:?}: {}",
            show(&want)
        );
        let got = env.c.ask(&args).await;
        if scripts_refused && runs_code(cmd) {
            // A configured rule answers first, as Redis's ACLs would.
            assert!(
                got.starts_with(b"-POLICY ") && show(&got).contains("policy.scripts: refuse"),
                "{cmd:?}: {}",
                show(&got)
            );
        } else {
            assert_resp!(got, want, "{cmd:?}");
        }
    }
    // Nothing ran: no key exists.
    assert_resp!(env.d.ask(&[b"DBSIZE"]).await, b":0\r\n");
    assert_resp!(env.c.ask(&[b"PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arity_and_numkeys_errors_are_redis_own_under_a_permissive_policy() {
    refused_commands_get_redis_errors(PERMISSIVE, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arity_and_numkeys_errors_are_redis_own_under_the_example_policy() {
    refused_commands_get_redis_errors(&example_yaml(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arity_and_numkeys_errors_of_scripts_are_redis_own_when_scripts_declare_their_keys() {
    let yaml = example_yaml().replace("scripts: refuse", "scripts: declared_keys");
    assert!(yaml.contains("scripts: declared_keys"));
    refused_commands_get_redis_errors(&yaml, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_commands_inside_multi_abort_the_transaction_as_in_redis() {
    let mut env = policy_env(&example_yaml()).await;
    let script: &[&[&[u8]]] = &[
        &[b"MULTI"],
        &[b"SET", b"session:1", b"v", b"EX", b"1200"],
        &[b"GETEX"],
        &[b"EXEC"],
    ];
    for cmd in script {
        let want = env.d.ask(cmd).await;
        let got = env.c.ask(cmd).await;
        assert_resp!(got, want, "{}", show(cmd[0]));
    }
    assert_resp!(env.d.ask(&[b"EXISTS", b"session:1"]).await, b":0\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commands_get_redis_error_when_no_rule_constrains_keys() {
    let mut env = policy_env(PERMISSIVE).await;
    for cmd in [
        &[&b"FOO"[..], b"a", b"b"][..],
        &[b"NOSUCH.CMD"],
        &[b"foo", b"with \"quotes\""],
    ] {
        let want = env.d.ask(cmd).await;
        assert!(want.starts_with(b"-ERR unknown command"), "{}", show(&want));
        assert_resp!(env.c.ask(cmd).await, want);
    }
    assert_resp!(env.c.ask(&[b"PING"]).await, b"+PONG\r\n");
    // A policy with rules on keys still refuses what it cannot check.
    let mut env = policy_env(&example_yaml()).await;
    let got = env.c.ask(&[b"FOO", b"session:1"]).await;
    assert!(
        got.starts_with(b"-POLICY unknown command"),
        "{}",
        show(&got)
    );
}
