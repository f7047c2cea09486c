//! Metrics: every counter, gauge and histogram respguard exports, and their Prometheus text.
//!
//! Each proxy owns its own recorder (not the process-global one), so two proxies in one
//! process (as in the tests) never mix their figures. Handles are registered once and cached,
//! per command-table row, so the hot path increments an atomic and never looks up labels.
//! Label values are bounded: command names come from the command table (`_other` otherwise),
//! never from client input.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::codec::{self, header_int};
use crate::command::traits::{self, ReadKind};
use crate::command::CommandSpec;
use crate::policy::{NsId, PolicyAction, Rule, NS_NONE, NS_UNMATCHED};

const DURATION_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const COUNTER_HELP: &[(&str, &str)] = &[
    (
        "respguard_commands_total",
        "Commands by command, key namespace and result (ok, error, rejected).",
    ),
    (
        "respguard_cache_hits_total",
        "Reads that found a value, by namespace and command.",
    ),
    (
        "respguard_cache_misses_total",
        "Reads that found nothing (nil or empty), by namespace and command.",
    ),
    (
        "respguard_ttl_enforced_total",
        "TTL actions by namespace: added, clamped, raised, refused.",
    ),
    (
        "respguard_policy_rejections_total",
        "Commands refused by the policy, by namespace and rule.",
    ),
    (
        "respguard_sensitive_fields_total",
        "Sensitive fields found in written values, by namespace, field and action.",
    ),
    (
        "respguard_client_connections_total",
        "Client connections accepted.",
    ),
    (
        "respguard_client_connections_refused_total",
        "Client connections refused at the client limit.",
    ),
    (
        "respguard_client_protocol_errors_total",
        "Client connections closed for malformed or oversized RESP.",
    ),
    (
        "respguard_client_output_limit_total",
        "Clients disconnected for leaving replies unread: past their own limit (limit=client) or with the process budget spent (limit=total).",
    ),
    (
        "respguard_client_timeouts_total",
        "Clients disconnected by a timeout: idle (kind=idle) or a command not received in full in time (kind=incomplete_command).",
    ),
    (
        "respguard_upstream_errors_total",
        "Upstream failures by kind.",
    ),
    (
        "respguard_client_tls_failures_total",
        "Client TLS handshakes that failed, by reason (no_certificate, bad_certificate, not_tls, alert, protocol, timeout, io).",
    ),
    (
        "respguard_tls_reloads_total",
        "TLS certificate reloads by result (ok, error).",
    ),
    (
        "respguard_auth_failures_total",
        "Failed client logins (policy.clients) by client address; addresses past the first 64 count as _other.",
    ),
    (
        "respguard_config_reloads_total",
        "Configuration reloads by result (ok, error).",
    ),
];

const GAUGE_HELP: &[(&str, &str)] = &[
    (
        "respguard_client_connections",
        "Client connections open now.",
    ),
    (
        "respguard_build_info",
        "Always 1; the version label says which respguard runs.",
    ),
];

const HISTOGRAM_HELP: &[(&str, &str)] = &[
    (
        "respguard_command_duration_seconds",
        "Time from a command fully read to its reply handed to the client socket.",
    ),
    (
        "respguard_upstream_duration_seconds",
        "Time from a command written to Redis to its reply read: the Redis share.",
    ),
];

/// How a command ended, for `respguard_commands_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    Rejected,
}

/// A latency histogram with fixed buckets ([`DURATION_BUCKETS`]) and plain atomics.
///
/// The recorder's own histograms keep every sample in an epoch-managed queue until a scrape:
/// with two per command that was the largest user-space cost at `-P 16`. These cost three
/// relaxed atomic adds per run of identical samples and render as a Prometheus histogram.
struct LatencyHistogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    fn new() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    fn record_n(&self, d: Duration, n: u64) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS.partition_point(|b| *b < secs);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(n, Ordering::Relaxed);
        }
        self.count.fetch_add(n, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns
            .fetch_add(ns.saturating_mul(n), Ordering::Relaxed);
    }

    fn render(&self, name: &str, command: &str, out: &mut String) {
        use std::fmt::Write;
        let count = self.count.load(Ordering::Relaxed);
        let mut cumulative = 0u64;
        for (le, b) in DURATION_BUCKETS.iter().zip(&self.buckets) {
            cumulative += b.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{command=\"{command}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{command=\"{command}\",le=\"+Inf\"}} {count}"
        );
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{command=\"{command}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{command=\"{command}\"}} {count}");
    }
}

struct CommandHandles {
    duration: LatencyHistogram,
    upstream: LatencyHistogram,
}

/// Counters of one (command, namespace) pair.
struct CellHandles {
    ok: Counter,
    error: Counter,
    rejected: Counter,
    /// Only read commands have hit and miss series.
    hits: Option<Counter>,
    misses: Option<Counter>,
}

/// Result of reading a key, for the hit/miss counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Miss,
}

/// Sensitive-field counters of one (namespace, action), by field label.
type FieldCounters = HashMap<String, Counter>;

/// What the TTL rules did to a command, as `respguard_ttl_enforced_total{action}` counts it.
/// The policy reports finer [`PolicyAction`]s (its audit log tells a default from an appended
/// `EXPIRE`); [`TtlCounter::of`] is the one place they map onto these counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TtlCounter {
    /// An expiry was given to a write without one (`SET` gained `EX`, or an `EXPIRE ... NX`
    /// was appended).
    Added,
    /// An expiry above the namespace maximum was lowered to it.
    Clamped,
    /// An expiry below the namespace minimum was raised to it.
    Raised,
    /// The command was refused for its expiry (out of bounds with `on_violation: reject`,
    /// or `PERSIST`).
    Refused,
}

impl TtlCounter {
    /// Every counter, in the order of [`TTL_ACTIONS`].
    pub const ALL: [TtlCounter; 4] = [
        TtlCounter::Added,
        TtlCounter::Clamped,
        TtlCounter::Raised,
        TtlCounter::Refused,
    ];

    /// The `action` label value.
    pub fn label(self) -> &'static str {
        TTL_ACTIONS[self as usize]
    }

    /// The counter a policy action moves, if any.
    pub fn of(action: PolicyAction) -> Option<TtlCounter> {
        match action {
            PolicyAction::TtlDefault | PolicyAction::TtlAppended => Some(TtlCounter::Added),
            PolicyAction::TtlLowered => Some(TtlCounter::Clamped),
            PolicyAction::TtlRaised => Some(TtlCounter::Raised),
            PolicyAction::Rejected(Rule::Ttl | Rule::Persist) => Some(TtlCounter::Refused),
            PolicyAction::Rejected(_) => None,
        }
    }
}

/// Label values of `respguard_ttl_enforced_total{action}`, indexed by [`TtlCounter`].
pub const TTL_ACTIONS: [&str; 4] = ["added", "clamped", "raised", "refused"];

/// Per-namespace handles for one policy generation. Namespace ids index `names`; a reload
/// builds a new table, and registering the same label set again yields the same series, so
/// counts continue across reloads.
pub struct NsTable {
    recorder: Arc<PrometheusRecorder>,
    /// Configured namespace names, then `_unmatched`, then `_none`.
    names: Vec<String>,
    cells: Vec<OnceLock<CellHandles>>,
    ttl: Vec<OnceLock<[Counter; 4]>>,
    rejections: Mutex<HashMap<(usize, &'static str), Counter>>,
    /// By (namespace slot, action), then field: the field is looked up as `&str`, so a hit
    /// (every stripped value counts one) allocates nothing.
    sensitive: Mutex<HashMap<(usize, &'static str), FieldCounters>>,
}

impl NsTable {
    fn slot(&self, ns: NsId) -> usize {
        let configured = self.names.len() - 2;
        match ns {
            NS_NONE => configured + 1,
            NS_UNMATCHED => configured,
            n if usize::from(n) < configured => usize::from(n),
            _ => configured,
        }
    }

    fn cell(&self, cmd: Option<usize>, ns: NsId) -> &CellHandles {
        let cmd_slot = cmd
            .filter(|i| *i < CommandSpec::count())
            .unwrap_or(CommandSpec::count());
        let ns_slot = self.slot(ns);
        let idx = cmd_slot * self.names.len() + ns_slot;
        self.cells[idx].get_or_init(|| {
            let command = command_label(cmd);
            let namespace = self.names[ns_slot].clone();
            let key = |name: &'static str, extra: Option<(&'static str, &'static str)>| {
                let mut labels = vec![
                    Label::new("command", command),
                    Label::new("namespace", namespace.clone()),
                ];
                if let Some((k, v)) = extra {
                    labels.push(Label::new(k, v));
                }
                self.recorder
                    .register_counter(&Key::from_parts(name, labels), &META)
            };
            CellHandles {
                ok: key("respguard_commands_total", Some(("result", "ok"))),
                error: key("respguard_commands_total", Some(("result", "error"))),
                rejected: key("respguard_commands_total", Some(("result", "rejected"))),
                hits: (read_kind(cmd) != ReadKind::None)
                    .then(|| key("respguard_cache_hits_total", None)),
                misses: (read_kind(cmd) != ReadKind::None)
                    .then(|| key("respguard_cache_misses_total", None)),
            }
        })
    }

    /// Counts `n` finished commands for their namespace.
    pub fn command(&self, cmd: Option<usize>, ns: NsId, outcome: Outcome, n: u64) {
        let c = self.cell(cmd, ns);
        match outcome {
            Outcome::Ok => c.ok.increment(n),
            Outcome::Error => c.error.increment(n),
            Outcome::Rejected => c.rejected.increment(n),
        }
    }

    /// Counts hits or misses of a read.
    pub fn lookup(&self, cmd: Option<usize>, ns: NsId, result: Lookup, n: u64) {
        if n == 0 {
            return;
        }
        let c = self.cell(cmd, ns);
        let counter = match result {
            Lookup::Hit => c.hits.as_ref(),
            Lookup::Miss => c.misses.as_ref(),
        };
        if let Some(c) = counter {
            c.increment(n);
        }
    }

    /// Counts what the policy did to one command in namespace `ns`: its TTL counter and, for
    /// a refusal, the rejection by rule.
    pub fn policy_action(&self, ns: NsId, action: PolicyAction) {
        if let Some(c) = TtlCounter::of(action) {
            self.ttl(ns, c as usize);
        }
        if let PolicyAction::Rejected(rule) = action {
            self.rejection(ns, rule.label());
        }
    }

    /// Counts a TTL action; `action` indexes [`TTL_ACTIONS`] (a [`TtlCounter`] as `usize`).
    pub fn ttl(&self, ns: NsId, action: usize) {
        let slot = self.slot(ns);
        let counters = self.ttl[slot].get_or_init(|| {
            TTL_ACTIONS.map(|a| {
                self.recorder.register_counter(
                    &Key::from_parts(
                        "respguard_ttl_enforced_total",
                        vec![
                            Label::new("namespace", self.names[slot].clone()),
                            Label::new("action", a),
                        ],
                    ),
                    &META,
                )
            })
        });
        if let Some(c) = counters.get(action) {
            c.increment(1);
        }
    }

    /// Counts a refused command by rule. Rare, so a locked map is fine.
    pub fn rejection(&self, ns: NsId, rule: &'static str) {
        let slot = self.slot(ns);
        let mut map = match self.rejections.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.entry((slot, rule))
            .or_insert_with(|| {
                self.recorder.register_counter(
                    &Key::from_parts(
                        "respguard_policy_rejections_total",
                        vec![
                            Label::new("namespace", self.names[slot].clone()),
                            Label::new("rule", rule),
                        ],
                    ),
                    &META,
                )
            })
            .increment(1);
    }

    /// Counts a sensitive field found; `field` is a configured field name (bounded).
    pub fn sensitive(&self, ns: NsId, field: &str, action: &'static str) {
        let slot = self.slot(ns);
        let mut map = match self.sensitive.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let fields = map.entry((slot, action)).or_default();
        if let Some(c) = fields.get(field) {
            c.increment(1);
            return;
        }
        let c = self.recorder.register_counter(
            &Key::from_parts(
                "respguard_sensitive_fields_total",
                vec![
                    Label::new("namespace", self.names[slot].clone()),
                    Label::new("field", field.to_string()),
                    Label::new("action", action),
                ],
            ),
            &META,
        );
        c.increment(1);
        fields.insert(field.to_string(), c);
    }
}

/// The proxy's metrics.
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    pub client_connections: Gauge,
    pub connections_total: Counter,
    pub connections_refused: Counter,
    pub protocol_errors: Counter,
    /// Output limit disconnects: the client's own limit, the process-wide budget.
    pub output_limit_client: Counter,
    pub output_limit_total: Counter,
    /// Timeout disconnects: idle, incomplete command.
    pub timeout_idle: Counter,
    pub timeout_incomplete: Counter,
    reloads_ok: Counter,
    reloads_error: Counter,
    commands: Vec<OnceLock<CommandHandles>>,
    upstream_errors: OnceLock<Vec<(&'static str, Counter)>>,
}

static META: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

/// Registers series on a proxy's recorder (see [`Metrics::registry`]). Label values must be
/// bounded by the caller.
#[derive(Clone)]
pub struct Registry(Arc<PrometheusRecorder>);

impl Registry {
    fn key(name: &'static str, labels: &[(&'static str, String)]) -> Key {
        Key::from_parts(
            name,
            labels
                .iter()
                .map(|(k, v)| Label::new(*k, v.clone()))
                .collect::<Vec<_>>(),
        )
    }

    pub fn counter(&self, name: &'static str, labels: &[(&'static str, String)]) -> Counter {
        self.0.register_counter(&Self::key(name, labels), &META)
    }

    /// A histogram with the proxy's duration buckets, in seconds.
    pub fn histogram(
        &self,
        name: &'static str,
        labels: &[(&'static str, String)],
    ) -> metrics::Histogram {
        self.0.register_histogram(&Self::key(name, labels), &META)
    }

    pub fn describe_counter(&self, name: &'static str, help: &'static str) {
        self.0.describe_counter(name.into(), None, help.into());
    }

    pub fn describe_histogram(&self, name: &'static str, help: &'static str) {
        self.0
            .describe_histogram(name.into(), Some(metrics::Unit::Seconds), help.into());
    }
}

/// Label value for a command-table row index, or `_other`.
pub fn command_label(index: Option<usize>) -> &'static str {
    index
        .and_then(CommandSpec::by_index)
        .map(|c| c.name)
        .unwrap_or("_other")
}

impl Metrics {
    pub fn new() -> Metrics {
        let builder = PrometheusBuilder::new();
        let builder = match builder.set_buckets(DURATION_BUCKETS) {
            Ok(b) => b,
            // Only fails for an empty bucket list, which the constant is not.
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let counter = |name: &'static str| recorder.register_counter(&Key::from_name(name), &META);
        let labelled = |name: &'static str, label: &'static str, value: &'static str| {
            recorder.register_counter(
                &Key::from_parts(name, vec![Label::new(label, value)]),
                &META,
            )
        };
        let m = Metrics {
            client_connections: recorder
                .register_gauge(&Key::from_name("respguard_client_connections"), &META),
            connections_total: counter("respguard_client_connections_total"),
            connections_refused: counter("respguard_client_connections_refused_total"),
            protocol_errors: counter("respguard_client_protocol_errors_total"),
            output_limit_client: labelled("respguard_client_output_limit_total", "limit", "client"),
            output_limit_total: labelled("respguard_client_output_limit_total", "limit", "total"),
            timeout_idle: labelled("respguard_client_timeouts_total", "kind", "idle"),
            timeout_incomplete: labelled(
                "respguard_client_timeouts_total",
                "kind",
                "incomplete_command",
            ),
            reloads_ok: recorder.register_counter(
                &Key::from_parts(
                    "respguard_config_reloads_total",
                    vec![Label::new("result", "ok")],
                ),
                &META,
            ),
            reloads_error: recorder.register_counter(
                &Key::from_parts(
                    "respguard_config_reloads_total",
                    vec![Label::new("result", "error")],
                ),
                &META,
            ),
            commands: (0..=CommandSpec::count())
                .map(|_| OnceLock::new())
                .collect(),
            upstream_errors: OnceLock::new(),
            handle,
            recorder: Arc::new(recorder),
        };
        for (name, help) in COUNTER_HELP {
            m.recorder
                .describe_counter((*name).into(), None, (*help).into());
        }
        for (name, help) in GAUGE_HELP {
            m.recorder
                .describe_gauge((*name).into(), None, (*help).into());
        }
        let info = m.recorder.register_gauge(
            &Key::from_parts(
                "respguard_build_info",
                vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
            ),
            &META,
        );
        info.set(1.0);
        m
    }

    /// Builds the per-namespace handle table for a policy's namespace names.
    pub fn namespace_table(&self, names: &[String]) -> Arc<NsTable> {
        let mut all: Vec<String> = names.to_vec();
        all.push("_unmatched".into());
        all.push("_none".into());
        let cells = (0..(CommandSpec::count() + 1) * all.len())
            .map(|_| OnceLock::new())
            .collect();
        Arc::new(NsTable {
            recorder: self.recorder.clone(),
            ttl: (0..all.len()).map(|_| OnceLock::new()).collect(),
            names: all,
            cells,
            rejections: Mutex::new(HashMap::new()),
            sensitive: Mutex::new(HashMap::new()),
        })
    }

    fn command(&self, index: Option<usize>) -> &CommandHandles {
        let slot = index
            .filter(|i| *i < CommandSpec::count())
            .unwrap_or(CommandSpec::count());
        self.commands[slot].get_or_init(|| CommandHandles {
            duration: LatencyHistogram::new(),
            upstream: LatencyHistogram::new(),
        })
    }

    /// Records the latency of one finished command: total time in the proxy, and the Redis
    /// round trip when it went upstream.
    pub fn latency(&self, index: Option<usize>, total: Duration, upstream: Option<Duration>) {
        self.latency_n(index, total, upstream, 1);
    }

    /// The same for `n` commands with identical latencies (one pipelined batch).
    pub fn latency_n(
        &self,
        index: Option<usize>,
        total: Duration,
        upstream: Option<Duration>,
        n: u64,
    ) {
        let h = self.command(index);
        h.duration.record_n(total, n);
        if let Some(u) = upstream {
            h.upstream.record_n(u, n);
        }
    }

    /// A client login failed (`policy.clients`); `client` comes from a bounded set.
    pub fn auth_failure(&self, client: &str) {
        self.recorder
            .register_counter(
                &Key::from_parts(
                    "respguard_auth_failures_total",
                    vec![Label::new("client", client.to_string())],
                ),
                &META,
            )
            .increment(1);
    }

    /// A client's TLS handshake failed; rare enough to register the series on use.
    pub fn client_tls_failure(&self, reason: &'static str) {
        self.recorder
            .register_counter(
                &Key::from_parts(
                    "respguard_client_tls_failures_total",
                    vec![Label::new("reason", reason)],
                ),
                &META,
            )
            .increment(1);
    }

    /// A reload of TLS certificate files was applied or refused.
    pub fn tls_reload(&self, ok: bool) {
        self.recorder
            .register_counter(
                &Key::from_parts(
                    "respguard_tls_reloads_total",
                    vec![Label::new("result", if ok { "ok" } else { "error" })],
                ),
                &META,
            )
            .increment(1);
    }

    pub fn upstream_error(&self, kind: &'static str) {
        let list = self.upstream_errors.get_or_init(|| {
            [
                "connect",
                "connect_timeout",
                "tls",
                "handshake",
                "io",
                "protocol",
                "closed",
                "read_timeout",
            ]
            .into_iter()
            .map(|k| {
                let c = self.recorder.register_counter(
                    &Key::from_parts(
                        "respguard_upstream_errors_total",
                        vec![Label::new("kind", k)],
                    ),
                    &META,
                );
                (k, c)
            })
            .collect()
        });
        if let Some((_, c)) = list.iter().find(|(k, _)| *k == kind) {
            c.increment(1);
        }
    }

    pub fn config_reload(&self, ok: bool) {
        if ok {
            self.reloads_ok.increment(1);
        } else {
            self.reloads_error.increment(1);
        }
    }

    /// Prometheus text exposition of everything recorded so far.
    pub fn render(&self) -> String {
        let mut out = self.handle.render();
        for (name, help) in HISTOGRAM_HELP {
            let mut body = String::new();
            for (i, slot) in self.commands.iter().enumerate() {
                if let Some(h) = slot.get() {
                    let hist = if *name == "respguard_command_duration_seconds" {
                        &h.duration
                    } else {
                        &h.upstream
                    };
                    if hist.count.load(Ordering::Relaxed) > 0 {
                        let command = command_label((i < CommandSpec::count()).then_some(i));
                        hist.render(name, command, &mut body);
                    }
                }
            }
            if !body.is_empty() {
                out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
                out.push_str(&body);
                out.push('\n');
            }
        }
        out
    }

    /// This proxy's recorder, for modules that register and keep their own handles.
    pub fn registry(&self) -> Registry {
        Registry(self.recorder.clone())
    }

    /// Drains histogram buffers; without it they grow without bound between scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// How the command's reply counts as hits and misses ([`traits::Traits::read`]).
fn read_kind(cmd: Option<usize>) -> ReadKind {
    cmd.map_or(ReadKind::None, |i| traits::by_index(i).read)
}

/// True for commands whose replies count as hits or misses.
pub fn is_read(cmd: Option<usize>) -> bool {
    read_kind(cmd) != ReadKind::None
}

/// True for reads whose hits and misses are counted per key, so each key's namespace is kept.
pub fn counts_per_key(cmd: Option<usize>) -> bool {
    matches!(read_kind(cmd), ReadKind::PerKey | ReadKind::Count)
}

/// Whether a reply value (type byte first) is a nil: RESP2 `$-1`/`*-1` or RESP3 `_`.
fn is_nil(v: &[u8]) -> bool {
    v.starts_with(b"$-1\r\n") || v.starts_with(b"*-1\r\n") || v.starts_with(b"_\r\n")
}

/// Counts the hits and misses in one successful reply of a read command.
///
/// `nkeys` is the number of keys the command named (for `EXISTS`); `key_ns` the namespace of
/// each key when they were kept. A multi-key `EXISTS` reply is a total, so its hits and misses
/// cannot be told apart per key: they are counted under the first key's namespace.
pub fn count_lookups(
    t: &mut dyn FnMut(NsId, Lookup, u64),
    cmd: Option<usize>,
    ns: NsId,
    key_ns: Option<&[NsId]>,
    nkeys: usize,
    reply: &[u8],
    limits: &codec::Limits,
) {
    match read_kind(cmd) {
        ReadKind::None => {}
        ReadKind::Value => {
            let r = if is_nil(reply) {
                Lookup::Miss
            } else {
                Lookup::Hit
            };
            t(ns, r, 1);
        }
        ReadKind::Collection => {
            let empty = is_nil(reply) || header_int(reply) == Some(0);
            let r = if empty { Lookup::Miss } else { Lookup::Hit };
            t(ns, r, 1);
        }
        ReadKind::Count => {
            if let (Some(b':'), Some(n)) = (reply.first(), header_int(reply)) {
                let total = nkeys.max(1) as i64;
                let hits = n.clamp(0, total);
                t(ns, Lookup::Hit, hits as u64);
                t(ns, Lookup::Miss, (total - hits) as u64);
            }
        }
        kind @ (ReadKind::PerKey | ReadKind::PerField) => {
            if !matches!(reply.first(), Some(b'*')) {
                return;
            }
            for (i, el) in codec::elements(reply, limits).enumerate() {
                let el_ns = match (kind, key_ns) {
                    (ReadKind::PerKey, Some(list)) => list.get(i).copied().unwrap_or(ns),
                    _ => ns,
                };
                let r = if is_nil(el.bytes) {
                    Lookup::Miss
                } else {
                    Lookup::Hit
                };
                t(el_ns, r, 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::lookup_name;

    fn cmd(name: &str) -> Option<usize> {
        lookup_name(name.as_bytes()).map(CommandSpec::index)
    }

    /// (namespace, hit, n) for every call `count_lookups` makes.
    fn lookups(
        name: &str,
        key_ns: Option<&[NsId]>,
        nkeys: usize,
        reply: &[u8],
    ) -> Vec<(NsId, bool, u64)> {
        let mut seen = Vec::new();
        let mut t = |ns: NsId, r: Lookup, n: u64| seen.push((ns, r == Lookup::Hit, n));
        count_lookups(
            &mut t,
            cmd(name),
            7,
            key_ns,
            nkeys,
            reply,
            &codec::Limits::default(),
        );
        seen
    }

    #[test]
    fn every_policy_action_moves_its_ttl_counter() {
        use TtlCounter::*;
        let cases = [
            (PolicyAction::TtlDefault, Some(Added)),
            (PolicyAction::TtlAppended, Some(Added)),
            (PolicyAction::TtlLowered, Some(Clamped)),
            (PolicyAction::TtlRaised, Some(Raised)),
            (PolicyAction::Rejected(Rule::Ttl), Some(Refused)),
            (PolicyAction::Rejected(Rule::Persist), Some(Refused)),
            (PolicyAction::Rejected(Rule::Naming), None),
            (PolicyAction::Rejected(Rule::Sensitive), None),
        ];
        for (action, want) in cases {
            assert_eq!(TtlCounter::of(action), want, "{action:?}");
        }
        let labels: Vec<_> = TtlCounter::ALL.iter().map(|c| c.label()).collect();
        assert_eq!(labels, ["added", "clamped", "raised", "refused"]);
    }

    #[test]
    fn policy_actions_reach_the_ttl_and_rejection_series() {
        let m = Metrics::new();
        let t = m.namespace_table(&["session".to_string()]);
        t.policy_action(0, PolicyAction::TtlDefault);
        t.policy_action(0, PolicyAction::TtlAppended);
        t.policy_action(0, PolicyAction::TtlLowered);
        t.policy_action(0, PolicyAction::Rejected(Rule::Persist));
        t.policy_action(0, PolicyAction::Rejected(Rule::Naming));
        let text = m.render();
        let has = |line: &str| text.lines().any(|l| l == line);
        for line in [
            r#"respguard_ttl_enforced_total{namespace="session",action="added"} 2"#,
            r#"respguard_ttl_enforced_total{namespace="session",action="clamped"} 1"#,
            r#"respguard_ttl_enforced_total{namespace="session",action="raised"} 0"#,
            r#"respguard_ttl_enforced_total{namespace="session",action="refused"} 1"#,
            r#"respguard_policy_rejections_total{namespace="session",rule="persist"} 1"#,
            r#"respguard_policy_rejections_total{namespace="session",rule="naming"} 1"#,
        ] {
            assert!(has(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn replies_count_as_hits_and_misses_by_read_kind() {
        assert_eq!(lookups("GET", None, 1, b"$1\r\nv\r\n"), [(7, true, 1)]);
        assert_eq!(lookups("GETDEL", None, 1, b"$-1\r\n"), [(7, false, 1)]);
        assert_eq!(lookups("JSON.GET", None, 1, b"_\r\n"), [(7, false, 1)]);
        // Per key, each under its own namespace when they were kept.
        assert_eq!(
            lookups(
                "MGET",
                Some(&[1, 2, 3]),
                3,
                b"*3\r\n$1\r\na\r\n$-1\r\n$1\r\nc\r\n"
            ),
            [(1, true, 1), (2, false, 1), (3, true, 1)]
        );
        // Per field of one key: all under the key's namespace.
        assert_eq!(
            lookups("HMGET", None, 1, b"*2\r\n$-1\r\n$1\r\nb\r\n"),
            [(7, false, 1), (7, true, 1)]
        );
        assert_eq!(lookups("HGETALL", None, 1, b"*0\r\n"), [(7, false, 1)]);
        assert_eq!(
            lookups("SMEMBERS", None, 1, b"~1\r\n$1\r\na\r\n"),
            [(7, true, 1)]
        );
        assert_eq!(lookups("ZRANGE", None, 1, b"*-1\r\n"), [(7, false, 1)]);
        // A count of existing keys: hits, and the rest misses.
        assert_eq!(
            lookups("EXISTS", None, 3, b":2\r\n"),
            [(7, true, 2), (7, false, 1)]
        );
        assert_eq!(
            lookups("HEXISTS", None, 1, b":0\r\n"),
            [(7, true, 0), (7, false, 1)]
        );
        // Not reads, and replies of the wrong shape, count nothing.
        assert_eq!(lookups("SET", None, 1, b"+OK\r\n"), []);
        assert_eq!(lookups("MGET", None, 1, b"-ERR x\r\n"), []);
        assert!(is_read(cmd("GET")) && !is_read(cmd("SET")) && !is_read(None));
        assert!(counts_per_key(cmd("MGET")) && counts_per_key(cmd("EXISTS")));
        assert!(!counts_per_key(cmd("GET")));
    }
}
