//! Per-command hot path of the proxy outside the policy: request framing of a
//! pipelined batch, reply framing, command-table lookup and key extraction, and the hit/miss
//! classification of read replies. `policy.rs` covers naming and TTL, `sensitive.rs` JSON.
//!
//! - `scan_request/*`: `codec::scan_request` over a buffer of 16 pipelined commands, as one
//!   read from a `redis-benchmark -P 16` client delivers them (element = one command).
//! - `scan_request_pieces/*`: one 10,001-argument `MGET` arriving in 512-byte reads, scanned
//!   after each read, resuming (`resume`) or from the start of the request (`rescan`).
//! - `scan_reply/*`: `ReplyScanner::scan` over one typical reply (element = one reply).
//! - `lookup/*`, `lookup_keys/*`: `command::lookup` alone, then with `spec.keys()`.
//! - `count_lookups/*`: `metrics::count_lookups` (reply classification: hit/miss) for GET
//!   hit, GET miss and a 10-key MGET reply (7 hits, 3 nils), into local integers and into the
//!   example policy's namespace counters.
//!
//! `cargo bench --bench proxy` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use respguard::codec::{self, Argv, Limits, ReplyScanner, Request, Span};
use respguard::command::{self, KeyRef};
use respguard::config::{Config, Overrides};
use respguard::metrics::{count_lookups, Lookup, Metrics};
use respguard::policy::{NsId, Policy};

fn example_policy() -> std::sync::Arc<Policy> {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml"));
    match Config::load(path, &Overrides::default()) {
        Ok(cfg) => cfg.policy.unwrap_or_default(),
        Err(e) => panic!("config/example.yaml: {e}"),
    }
}

/// RESP multibulk encoding of one command.
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A command laid out the way the codec scans it (arguments as spans of one buffer).
struct Cmd {
    buf: Vec<u8>,
    spans: Vec<Span>,
}

impl Cmd {
    fn new(args: &[&[u8]]) -> Cmd {
        let buf = resp(args);
        let mut spans = Vec::new();
        let mut inline = Vec::new();
        match codec::scan_request(&buf, &Limits::default(), &mut spans, &mut inline) {
            Ok(Some(Request::Multibulk { .. })) => Cmd { buf, spans },
            other => panic!("test command did not scan: {other:?}"),
        }
    }

    fn argv(&self) -> Argv<'_> {
        Argv::new(&self.buf, &self.spans)
    }
}

/// 16 pipelined commands: alternately `SET key:<i> <value>` and `GET key:<i>`.
fn pipeline16(value: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    for i in 0..16 {
        let key = format!("session:{:012}", 4096 + i);
        if i % 2 == 0 {
            buf.extend(resp(&[b"SET", key.as_bytes(), value]));
        } else {
            buf.extend(resp(&[b"GET", key.as_bytes()]));
        }
    }
    buf
}

fn scan_request(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("scan_request");
    g.throughput(Throughput::Elements(16));
    let json_1k = vec![b'x'; 1024];
    for (name, buf) in [
        ("16_set_get_3b", pipeline16(b"xxx")),
        ("16_set_get_1k", pipeline16(&json_1k)),
    ] {
        let mut spans: Vec<Span> = Vec::with_capacity(8);
        let mut inline: Vec<Vec<u8>> = Vec::new();
        g.bench_with_input(BenchmarkId::from_parameter(name), &buf, |b, buf| {
            b.iter(|| {
                let mut pos = 0;
                let mut args = 0;
                while pos < buf.len() {
                    match codec::scan_request(&buf[pos..], &limits, &mut spans, &mut inline) {
                        Ok(Some(Request::Multibulk { len })) => {
                            args += spans.len();
                            pos += len;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                black_box(args)
            })
        });
    }
    g.finish();
}

/// One large request arriving in 512-byte reads, scanned after each read: resuming where the
/// previous read stopped (`resume`, what a connection does) against a fresh scan from the
/// start of the request each time (`rescan`). Element = one argument.
fn scan_request_pieces(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("scan_request_pieces");
    let mut args: Vec<Vec<u8>> = vec![b"MGET".to_vec()];
    args.extend((0..10_000).map(|i| format!("session:{i:012}").into_bytes()));
    let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    let buf = resp(&refs);
    g.throughput(Throughput::Elements(args.len() as u64));
    let mut spans: Vec<Span> = Vec::new();
    let mut inline: Vec<Vec<u8>> = Vec::new();
    for (name, resume) in [
        ("mget_10k_512b/resume", true),
        ("mget_10k_512b/rescan", false),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut scanner = codec::RequestScanner::new();
                let mut end = 0;
                loop {
                    end = (end + 512).min(buf.len());
                    if !resume {
                        scanner.reset();
                    }
                    match scanner.scan(&buf[..end], &limits, &mut spans, &mut inline) {
                        Ok(None) => {}
                        Ok(Some(Request::Multibulk { len })) => break black_box(len),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            })
        });
    }
    g.finish();
}

fn scan_reply(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("scan_reply");
    g.throughput(Throughput::Elements(1));
    let mut array10 = b"*10\r\n".to_vec();
    for i in 0..10 {
        let v = format!("value-{i:04}-{}", "x".repeat(20));
        array10.extend_from_slice(format!("${}\r\n{v}\r\n", v.len()).as_bytes());
    }
    // HGETALL under RESP3: a map of 5 field/value pairs.
    let mut map5 = b"%5\r\n".to_vec();
    for i in 0..5 {
        map5.extend_from_slice(format!("$6\r\nfield{i}\r\n$8\r\nvalue-{i:02}\r\n").as_bytes());
    }
    let bulk_1k = {
        let mut v = b"$1024\r\n".to_vec();
        v.extend(std::iter::repeat_n(b'x', 1024));
        v.extend_from_slice(b"\r\n");
        v
    };
    let cases: [(&str, Vec<u8>); 6] = [
        ("ok", b"+OK\r\n".to_vec()),
        ("nil", b"$-1\r\n".to_vec()),
        ("bulk_3b", b"$3\r\nxxx\r\n".to_vec()),
        ("bulk_1k", bulk_1k),
        ("array_10_bulks", array10),
        ("resp3_map_5", map5),
    ];
    let mut scanner = ReplyScanner::new();
    for (name, reply) in &cases {
        g.bench_with_input(BenchmarkId::from_parameter(name), reply, |b, reply| {
            b.iter(|| match scanner.scan(black_box(reply), &limits) {
                Ok(Some(f)) => black_box(f.len),
                other => panic!("unexpected {other:?}"),
            })
        });
    }
    g.finish();
}

fn commands() -> Vec<(&'static str, Cmd)> {
    vec![
        ("GET", Cmd::new(&[b"GET", b"session:000000004096"])),
        (
            "MSET_3",
            Cmd::new(&[
                b"MSET",
                b"session:1",
                b"a",
                b"user_profile:2",
                b"b",
                b"customer:cus_3",
                b"c",
            ]),
        ),
        (
            "XREAD_2",
            Cmd::new(&[
                b"XREAD",
                b"COUNT",
                b"10",
                b"BLOCK",
                b"0",
                b"STREAMS",
                b"notification_queue:1",
                b"notification_queue:2",
                b"0-0",
                b"$",
            ]),
        ),
        (
            "EVAL_2",
            Cmd::new(&[
                b"EVAL",
                b"return redis.call('GET', KEYS[1])",
                b"2",
                b"session:1",
                b"rate_limit:login:1",
                b"arg",
            ]),
        ),
        // Lower case: the lookup compares case-insensitively.
        (
            "get_lowercase",
            Cmd::new(&[b"get", b"session:000000004096"]),
        ),
    ]
}

fn lookup(c: &mut Criterion) {
    let cases = commands();
    let mut g = c.benchmark_group("lookup");
    for (name, cmd) in &cases {
        let argv = cmd.argv();
        g.bench_function(*name, |b| {
            b.iter(|| black_box(command::lookup(black_box(&argv))).map(|s| s.arity))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("lookup_keys");
    let mut keys: Vec<KeyRef> = Vec::with_capacity(16);
    for (name, cmd) in &cases {
        let argv = cmd.argv();
        g.bench_function(*name, |b| {
            b.iter(|| {
                let spec = command::lookup(black_box(&argv)).expect("known command");
                spec.keys(&argv, &mut keys).expect("keys");
                black_box(keys.len())
            })
        });
    }
    g.finish();
}

fn lookups(c: &mut Criterion) {
    let policy = example_policy();
    let metrics = Metrics::new();
    let table = metrics.namespace_table(policy.namespace_names());
    let limits = Limits::default();
    let ns = policy.namespace_of(b"session:000000004096");
    let get = command::lookup_name(b"GET").map(|s| s.index());
    let mget = command::lookup_name(b"MGET").map(|s| s.index());
    let key_ns: Vec<NsId> = (0..10)
        .map(|i| policy.namespace_of(format!("session:{i}").as_bytes()))
        .collect();
    let mut mget_reply = b"*10\r\n".to_vec();
    for i in 0..10 {
        if i % 3 == 2 {
            mget_reply.extend_from_slice(b"$-1\r\n");
        } else {
            mget_reply.extend_from_slice(b"$3\r\nxxx\r\n");
        }
    }
    // `count_lookups` reports through a callback. `classify/*` counts into local integers
    // (the connection's run of identical results); `counters/*` increments the namespace
    // table's Prometheus counters, as the connection does when the run does not match.
    for group in ["classify", "counters"] {
        let mut g = c.benchmark_group(format!("count_lookups/{group}"));
        for (name, cmd, per_key, nkeys, reply) in [
            ("get_hit", get, None, 1, b"$3\r\nxxx\r\n".to_vec()),
            ("get_miss", get, None, 1, b"$-1\r\n".to_vec()),
            ("mget_10", mget, Some(&key_ns[..]), 10, mget_reply.clone()),
        ] {
            let (mut hits, mut misses) = (0u64, 0u64);
            g.bench_function(name, |b| {
                b.iter(|| {
                    let mut local = |_ns: NsId, r: Lookup, n: u64| match r {
                        Lookup::Hit => hits += n,
                        Lookup::Miss => misses += n,
                    };
                    let mut shared = |ns: NsId, r: Lookup, n: u64| table.lookup(cmd, ns, r, n);
                    let sink: &mut dyn FnMut(NsId, Lookup, u64) = if group == "classify" {
                        &mut local
                    } else {
                        &mut shared
                    };
                    count_lookups(sink, cmd, ns, per_key, nkeys, black_box(&reply), &limits)
                })
            });
            black_box((hits, misses));
        }
        g.finish();
    }
}

criterion_group!(
    benches,
    scan_request,
    scan_request_pieces,
    scan_reply,
    lookup,
    lookups
);
criterion_main!(benches);
