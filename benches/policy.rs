//! Policy hot path: naming match (the compiled DFA over key segments) and whole checks, for a
//! command that passes unchanged and for the TTL rewrites (default added, expiry clamped,
//! hidden `EXPIRE ... NX` appended). Uses the shipped `config/example.yaml` policy; the
//! `permission` group adds a `clients` section to it and times one identity's check of a
//! command (its row, then each key's namespace and access).
//!
//! `cargo bench --bench policy`

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use respguard::command;
use respguard::config::{Config, Overrides};
use respguard::policy::{Policy, Scratch, Verdict};

fn example_policy() -> std::sync::Arc<Policy> {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml"));
    match Config::load(path, &Overrides::default()) {
        Ok(cfg) => cfg.policy.unwrap_or_default(),
        Err(e) => panic!("config/example.yaml: {e}"),
    }
}

/// A command laid out the way the codec scans it.
type Cmd = respguard::codec::OwnedArgv;

/// `MGET` of one key in each of four namespaces.
fn mget_4() -> Cmd {
    Cmd::new(&[
        b"MGET",
        b"user_profile:1",
        b"session:2",
        b"customer:cus_3",
        b"analytics:dashboard:4",
    ])
}

fn naming(c: &mut Criterion) {
    let policy = example_policy();
    let mut g = c.benchmark_group("naming");
    for (name, key) in [
        ("two_segments", &b"user_profile:4f9c2a"[..]),
        ("literal_wins", b"session:core:4f9c2a"),
        ("four_segments", b"rate_limit:login:4f9c2a:3600"),
        ("remainder", b"temp:upload:4f9c2a:part:7:of:9"),
        ("no_match_early", b"user123"),
        ("empty_segment", b"session::x"),
    ] {
        g.bench_function(name, |b| b.iter(|| policy.namespace_of(black_box(key))));
    }
    g.finish();
}

fn check(c: &mut Criterion) {
    let policy = example_policy();
    let mut g = c.benchmark_group("check");
    let cases: [(&str, Cmd); 6] = [
        ("get_unchanged", Cmd::new(&[b"GET", b"session:core:4f9c2a"])),
        ("mget_4_unchanged", mget_4()),
        (
            "set_ex_in_bounds_unchanged",
            Cmd::new(&[b"SET", b"session:4f9c2a", b"v", b"EX", b"1200"]),
        ),
        (
            "set_default_ttl_rewrite",
            Cmd::new(&[b"SET", b"session:4f9c2a", b"v"]),
        ),
        (
            "set_ex_clamped_rewrite",
            Cmd::new(&[b"SET", b"session:4f9c2a", b"v", b"EX", b"86400"]),
        ),
        (
            "hset_expire_nx_appended",
            Cmd::new(&[b"HSET", b"user_profile:4f9c2a", b"name", b"x"]),
        ),
    ];
    for (name, cmd) in &cases {
        let argv = cmd.argv();
        let spec = command::lookup(&argv);
        let mut scratch = Scratch::default();
        g.bench_function(*name, |b| {
            b.iter(|| {
                let v = policy.check(black_box(&argv), spec, &mut scratch);
                black_box(matches!(v, Verdict::Forward))
            })
        });
    }
    g.finish();
}

/// The example policy with two identities (certificate-only, so no secret is needed here).
fn policy_with_clients() -> std::sync::Arc<Policy> {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml"));
    let mut yaml = std::fs::read_to_string(path).expect("config/example.yaml");
    yaml.push_str(
        "\n  clients:\n    web:\n      certificate: [web.internal]\n      namespaces: { user_profile: readwrite, session: readwrite, customer: readwrite, analytics: read }\n      commands: \"+@all -@dangerous\"\n    analytics:\n      certificate: [analytics.internal]\n      namespaces: { analytics: readwrite }\n",
    );
    match Config::parse(&yaml, "example.yaml + clients", &Overrides::default()) {
        Ok(cfg) => cfg.policy.unwrap_or_default(),
        Err(e) => panic!("{e}"),
    }
}

fn permission(c: &mut Criterion) {
    let policy = policy_with_clients();
    let clients = policy.clients().expect("clients");
    let web = clients
        .find(b"web")
        .and_then(|id| clients.get(id))
        .expect("web");
    let mut g = c.benchmark_group("permission");
    let cases: [(&str, Cmd); 4] = [
        ("get_allowed", Cmd::new(&[b"GET", b"session:4f9c2a"])),
        ("set_allowed", Cmd::new(&[b"SET", b"session:4f9c2a", b"v"])),
        ("mget_4_allowed", mget_4()),
        (
            "get_refused",
            Cmd::new(&[b"GET", b"rate_limit:login:4f9c2a"]),
        ),
    ];
    for (name, cmd) in &cases {
        let argv = cmd.argv();
        let spec = command::lookup(&argv);
        let mut keys = Vec::new();
        g.bench_function(*name, |b| {
            b.iter(|| {
                let r = web.check(&policy, spec, black_box(&argv), &mut keys);
                black_box(r.is_ok())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, naming, check, permission);
criterion_main!(benches);
