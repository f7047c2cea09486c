//! Metrics: every counter, gauge and histogram respguard exports, and their Prometheus text.
//!
//! Each proxy owns its own recorder (not the process-global one), so two proxies in one
//! process (as in the tests) never mix their figures. Handles are registered once and cached,
//! per command-table row, so the hot path increments an atomic and never looks up labels.
//! Label values are bounded: command names come from the command table (`_other` otherwise),
//! never from client input.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::command::CommandSpec;

const DURATION_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How a command ended, for `respguard_commands_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    Rejected,
}

struct CommandHandles {
    ok: Counter,
    error: Counter,
    rejected: Counter,
    duration: Histogram,
}

/// The proxy's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pub client_connections: Gauge,
    pub connections_total: Counter,
    pub connections_refused: Counter,
    pub protocol_errors: Counter,
    reloads_ok: Counter,
    reloads_error: Counter,
    commands: Vec<OnceLock<CommandHandles>>,
    upstream_errors: OnceLock<Vec<(&'static str, Counter)>>,
}

static META: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

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
        let m = Metrics {
            client_connections: recorder
                .register_gauge(&Key::from_name("respguard_client_connections"), &META),
            connections_total: counter("respguard_client_connections_total"),
            connections_refused: counter("respguard_client_connections_refused_total"),
            protocol_errors: counter("respguard_client_protocol_errors_total"),
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
            recorder,
        };
        m.recorder.describe_counter(
            "respguard_commands_total".into(),
            None,
            "Commands by result".into(),
        );
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

    fn command(&self, index: Option<usize>) -> &CommandHandles {
        let slot = index
            .filter(|i| *i < CommandSpec::count())
            .unwrap_or(CommandSpec::count());
        self.commands[slot].get_or_init(|| {
            let name = command_label(index);
            let c = |result: &'static str| {
                self.recorder.register_counter(
                    &Key::from_parts(
                        "respguard_commands_total",
                        vec![Label::new("command", name), Label::new("result", result)],
                    ),
                    &META,
                )
            };
            CommandHandles {
                ok: c("ok"),
                error: c("error"),
                rejected: c("rejected"),
                duration: self.recorder.register_histogram(
                    &Key::from_parts(
                        "respguard_command_duration_seconds",
                        vec![Label::new("command", name)],
                    ),
                    &META,
                ),
            }
        })
    }

    /// Records one finished command: the single place per command where metrics are taken.
    pub fn command_done(&self, index: Option<usize>, outcome: Outcome, elapsed: Duration) {
        let h = self.command(index);
        match outcome {
            Outcome::Ok => h.ok.increment(1),
            Outcome::Error => h.error.increment(1),
            Outcome::Rejected => h.rejected.increment(1),
        }
        h.duration.record(elapsed.as_secs_f64());
    }

    pub fn upstream_error(&self, kind: &'static str) {
        let list = self.upstream_errors.get_or_init(|| {
            [
                "connect",
                "connect_timeout",
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
        self.handle.render()
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
