//! Cost of the sensitive-data stage per value.
//!
//! `copy/*` is the baseline: copying the value once, as forwarding it does at the least. The
//! `fields/*` rows use the example policy's field list; `fields+detect/*` adds both detectors. Each size
//! is measured on a clean document (the prefilter path, which must stay close to the copy) and
//! on one with a sensitive field in the middle (prefilter, parse and rewrite).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use respguard::policy::sensitive::{Detector, SensitiveAction, SensitiveRules};

const FIELDS: &[&str] = &[
    "password",
    "ssn",
    "creditCard",
    "cardNumber",
    "cvv",
    "token",
];

/// A JSON array of user-like records, about `size` bytes; with `sensitive`, the middle record
/// carries a password.
fn document(size: usize, sensitive: bool) -> Vec<u8> {
    let mut records = Vec::new();
    let mut len = 2;
    let mut i = 0;
    while len < size {
        let r = format!(
            r#"{{"id":{i},"user_id":"u-{i}","name":"Alice Example","email":"alice{i}@example.com","created_at":"2024-01-15T10:00:00Z","tags":["a","b"],"active":true,"score":12.5}}"#
        );
        len += r.len() + 1;
        records.push(r);
        i += 1;
    }
    if sensitive {
        let mid = records.len() / 2;
        if let Some(r) = records.get_mut(mid) {
            r.insert_str(1, r#""password":"hunter2","#);
        }
    }
    format!("[{}]", records.join(",")).into_bytes()
}

fn bench(c: &mut Criterion) {
    let fields = SensitiveRules::new(FIELDS, SensitiveAction::Strip, &[], true).expect("rules");
    let detect = SensitiveRules::new(
        FIELDS,
        SensitiveAction::Strip,
        &[Detector::CardNumber, Detector::UsSsn],
        true,
    )
    .expect("rules");
    let text: Vec<u8> = "session 7f3a last seen 2024-01-15 from 10.0.0.1; "
        .repeat(21)
        .into_bytes();
    let inputs = [
        ("json-1k-clean", document(1024, false)),
        ("json-1k-sensitive", document(1024, true)),
        ("json-64k-clean", document(64 * 1024, false)),
        ("json-64k-sensitive", document(64 * 1024, true)),
        ("text-1k", text),
    ];

    let mut group = c.benchmark_group("copy");
    for (name, value) in &inputs {
        group.throughput(Throughput::Bytes(value.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), value, |b, v| {
            b.iter(|| bytes::Bytes::copy_from_slice(black_box(v)))
        });
    }
    group.finish();

    for (label, rules) in [("fields", &fields), ("fields+detect", &detect)] {
        let mut group = c.benchmark_group(label);
        let mut findings = Vec::new();
        for (name, value) in &inputs {
            group.throughput(Throughput::Bytes(value.len() as u64));
            group.bench_with_input(BenchmarkId::from_parameter(name), value, |b, v| {
                b.iter(|| {
                    findings.clear();
                    rules.scan_value(black_box(v), &mut findings)
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
