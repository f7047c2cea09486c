//! Policy evaluation adds no heap allocation for a command that passes unchanged:
//! a counting global allocator (per thread) around [`Policy::check`] with a reused `Scratch`,
//! for single- and multi-key reads, writes whose expiry is already within bounds, commands
//! without keys, keys in namespaces without a TTL, and allowed unknown keys. A command that is
//! changed or refused may allocate (the rewrite, the error text) and is not counted here.

use respguard::command;
use respguard::config::{Config, Overrides};
use respguard::policy::{Scratch, Verdict};

mod alloc_count;
use alloc_count::allocations;

/// A command laid out the way the codec scans it.
type Cmd = respguard::codec::OwnedArgv;

fn cmd(args: &[&[u8]]) -> Cmd {
    Cmd::new(args)
}

#[test]
fn passing_commands_do_not_allocate() {
    let yaml = r#"
policy:
  unknown_keys: allow
  denied_commands: [KEYS]
  namespaces:
    session:
      keys: ["session:{id}", "session:core:{id}", "session:{id}:{device}"]
      ttl: { default: 30m, min: 15m, max: 30m }
    rate_limit:
      keys: ["rate_limit:{action}:{id}", "rate_limit:{action}:{id}:{window}"]
      ttl: { default: 5m, min: 5m, max: 15m }
    plain:
      keys: ["plain:{id}", "plain:{id}:{rest...}"]
"#;
    let policy = Config::parse(yaml, "t.yaml", &Overrides::default())
        .unwrap_or_else(|e| panic!("{e}"))
        .policy
        .expect("policy");
    let cmds = [
        cmd(&[b"GET", b"session:42"]),
        cmd(&[
            b"MGET",
            b"session:1",
            b"session:core:2",
            b"rate_limit:login:3:60",
            b"plain:a:b:c",
        ]),
        cmd(&[b"HGETALL", b"session:42:iphone"]),
        cmd(&[b"SET", b"session:42", b"v", b"EX", b"1200"]),
        cmd(&[
            b"SET",
            b"session:42",
            b"v",
            b"NX",
            b"PX",
            b"1200000",
            b"GET",
        ]),
        cmd(&[b"SETEX", b"rate_limit:a:1", b"600", b"v"]),
        cmd(&[b"EXPIRE", b"session:42", b"1000", b"NX"]),
        cmd(&[b"GETEX", b"session:42", b"EX", b"1000"]),
        cmd(&[b"TTL", b"session:42"]),
        cmd(&[b"DEL", b"session:1", b"session:2", b"session:3"]),
        cmd(&[b"ZRANGE", b"session:z", b"0", b"-1", b"WITHSCORES"]),
        cmd(&[
            b"XREAD",
            b"COUNT",
            b"1",
            b"STREAMS",
            b"session:s",
            b"session:t",
            b"0",
            b"0",
        ]),
        cmd(&[b"HSET", b"plain:1", b"f", b"v"]),
        cmd(&[b"SET", b"unknown-key", b"v"]),
        cmd(&[b"PING"]),
        cmd(&[b"CLIENT", b"SETNAME", b"x"]),
        cmd(&[b"PUBLISH", b"chan", b"m"]),
        cmd(&[b"EVAL_RO", b"return 1", b"1", b"session:1"]),
    ];
    let mut scratch = Scratch::default();
    let run = |c: &Cmd, scratch: &mut Scratch| {
        let argv = c.argv();
        let v = policy.check(&argv, command::lookup(&argv), scratch);
        assert!(matches!(v, Verdict::Forward), "{c:?}: {v:?}");
    };
    // Warm up: the reused scratch vectors grow to their working size once.
    for c in &cmds {
        run(c, &mut scratch);
    }
    for c in &cmds {
        let before = allocations();
        for _ in 0..100 {
            run(c, &mut scratch);
        }
        let n = allocations() - before;
        assert_eq!(
            n,
            0,
            "{:?} allocated {n} times in 100 checks",
            c.argv()
                .iter()
                .map(String::from_utf8_lossy)
                .collect::<Vec<_>>()
        );
    }
    let before = allocations();
    assert_eq!(policy.namespace_of(b"session:core:42"), 0);
    assert_eq!(allocations(), before);

    // The counter works: a rewritten command does allocate.
    let set = cmd(&[b"SET", b"session:42", b"v"]);
    let argv = set.argv();
    let before = allocations();
    let v = policy.check(&argv, command::lookup(&argv), &mut scratch);
    assert!(matches!(v, Verdict::Rewrite(_)));
    assert!(allocations() > before);
}
