//! `respguard stats`: a terminal view of one running respguard's `/metrics`, for someone inside
//! the pod with no Grafana at hand.
//!
//! This module owns the whole chain, std + tokio only:
//!
//! - [`scrape`]: `GET /metrics` over HTTP/1.1 on a plain [`TcpStream`]. The admin port speaks
//!   nothing fancier, and an HTTP client crate would cost more build time than these lines.
//! - [`parse`]: the Prometheus text exposition format into [`Samples`]. A pure function, so it
//!   is tested on canned text.
//! - [`report`]: the arithmetic Prometheus would do over two scrapes (counter increases that
//!   survive restarts, rates, `histogram_quantile` over `_bucket` series) into a [`Report`].
//! - [`render`]: the tables.
//! - [`run`]: the `respguard stats [--admin ADDR] [--interval 2s] [--once]` loop.
//!
//! The figures follow the Grafana dashboard (`config/grafana/respguard.json`) and the alerts
//! (`config/prometheus/alerts.yaml`), so the terminal and the dashboard agree: hit rate is
//! hits / (hits + misses), flagged under [`HIT_RATE_TARGET`]; the proxy's own latency is the
//! quantile of `respguard_command_duration_seconds` minus the same quantile of
//! `respguard_upstream_duration_seconds`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Hit rates under this are flagged, as in the dashboard threshold and the
/// `RespguardCacheHitRateLow` alert.
pub const HIT_RATE_TARGET: f64 = 0.8;

/// Connecting is local (same pod), so a slow connect means nothing listens properly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longer than the admin server's own 10 s per-request limit, so its answer wins the race.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(15);
/// A /metrics page is a few hundred KiB at most; the cap only guards against a wrong port
/// streaming forever.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;
/// Rows of the command table; the rest are counted, not listed, to fit a terminal.
const TOP_COMMANDS: usize = 10;
/// Per-command latency rows, after the overall row.
const TOP_LATENCY: usize = 5;

/// Why `respguard stats` could not produce its view.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("the interval must be longer than zero: rates need two scrapes apart in time")]
    ZeroInterval,
    #[error("cannot connect to the admin endpoint {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reading http://{addr}/metrics failed: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no complete answer from http://{addr}/metrics within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("http://{addr}/metrics answered {status}: {body}")]
    Status {
        addr: SocketAddr,
        status: String,
        body: String,
    },
    #[error("http://{addr}/metrics sent a malformed HTTP response: {reason}")]
    Http { addr: SocketAddr, reason: String },
    #[error("cannot write the report: {0}")]
    Output(#[from] std::io::Error),
}

// ------------------------------------------------------------------------------------- parse

/// A label set, sorted by label name so that equal sets compare equal whatever their order on
/// the page.
pub type Labels = Vec<(String, String)>;

/// One scrape: every sample on the page, by metric name then label set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples {
    pub metrics: BTreeMap<String, BTreeMap<Labels, f64>>,
    /// Lines that were neither comments nor samples; shown so a format drift is noticed.
    pub skipped: usize,
}

impl Samples {
    /// Every series of `name` with its value.
    pub fn series<'s>(&'s self, name: &str) -> impl Iterator<Item = (&'s Labels, f64)> + 's {
        self.metrics
            .get(name)
            .into_iter()
            .flat_map(|m| m.iter().map(|(l, v)| (l, *v)))
    }

    /// The value of one series; `labels` must be sorted by name, as [`parse`] stores them.
    pub fn get(&self, name: &str, labels: &Labels) -> Option<f64> {
        self.metrics.get(name)?.get(labels).copied()
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.metrics.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The value of label `key`, if the set has it.
pub fn label<'l>(labels: &'l Labels, key: &str) -> Option<&'l str> {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Parses a Prometheus text exposition (version 0.0.4; OpenMetrics text parses too, its extra
/// comment lines being comments). Comments and blank lines are skipped; lines that are not
/// samples are counted in [`Samples::skipped`] rather than failing the whole page, because one
/// odd line should not blank the view. Timestamps are ignored: rates here use the time between
/// the scrapes.
pub fn parse(text: &str) -> Samples {
    let mut samples = Samples::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Some((name, labels, value)) => {
                samples
                    .metrics
                    .entry(name)
                    .or_default()
                    .insert(labels, value);
            }
            None => samples.skipped += 1,
        }
    }
    samples
}

fn parse_line(line: &str) -> Option<(String, Labels, f64)> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut rest = line[name_end..].trim_start();
    let mut labels = Labels::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = parse_labels(inner, &mut labels)?;
    }
    // The value, then an optional timestamp (and, in OpenMetrics, an exemplar): ignored.
    let value = parse_value(rest.split_ascii_whitespace().next()?)?;
    labels.sort();
    Some((name.to_string(), labels, value))
}

/// Parses `name="value",...}` (the `{` already consumed) into `labels`; returns what follows
/// the `}`. Label values unescape `\\`, `\"` and `\n`; any other backslash is kept as is, as
/// Prometheus does.
fn parse_labels<'t>(mut rest: &'t str, labels: &mut Labels) -> Option<&'t str> {
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Some(after);
        }
        let key_end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
        if key_end == 0 {
            return None;
        }
        let key = &rest[..key_end];
        rest = rest[key_end..]
            .trim_start()
            .strip_prefix('=')?
            .trim_start()
            .strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let close = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    other => {
                        value.push('\\');
                        value.push(other);
                    }
                },
                c => value.push(c),
            }
        };
        labels.push((key.to_string(), value));
        // The closing quote is one byte, so `close + 1` is a char boundary.
        rest = rest[close + 1..].trim_start();
        match rest.strip_prefix(',') {
            Some(after) => rest = after,
            None if rest.starts_with('}') => {}
            None => return None,
        }
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

// -------------------------------------------------------------------------------- arithmetic

/// How much a counter grew from `before` to `now`. A counter that went down was reset (the
/// process restarted) and counts from zero, which is what Prometheus' `rate()` assumes too.
pub fn increase(before: f64, now: f64) -> f64 {
    if !now.is_finite() {
        0.0
    } else if now >= before {
        now - before
    } else {
        now
    }
}

/// hits / (hits + misses), or `None` when there were no reads (0/0 is no information, not 0%).
pub fn hit_rate(hits: f64, misses: f64) -> Option<f64> {
    let reads = hits + misses;
    (reads > 0.0).then(|| hits / reads)
}

/// The `q` quantile of a histogram given as `(le, cumulative count)` buckets, in any order,
/// the `+Inf` bucket included: Prometheus' `histogram_quantile`, linear interpolation inside
/// the bucket the rank falls in. A rank in the `+Inf` bucket gives the largest finite bound.
/// `None` without observations or without a `+Inf` bucket.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut b: Vec<(f64, f64)> = buckets
        .iter()
        .copied()
        .filter(|(le, _)| !le.is_nan())
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let n = b.len();
    if n < 2 || b[n - 1].0 != f64::INFINITY {
        return None;
    }
    // Buckets are read one by one while commands are recorded, so counts can come out slightly
    // non-monotonic; Prometheus evens them out the same way.
    let mut max = 0.0_f64;
    for bucket in b.iter_mut() {
        max = max.max(bucket.1);
        bucket.1 = max;
    }
    let total = b[n - 1].1;
    if total <= 0.0 {
        return None;
    }
    let mut rank = q.clamp(0.0, 1.0) * total;
    let i = b[..n - 1]
        .iter()
        .position(|(_, count)| *count >= rank)
        .unwrap_or(n - 1);
    if i == n - 1 {
        return Some(b[n - 2].0);
    }
    if i == 0 && b[0].0 <= 0.0 {
        return Some(b[0].0);
    }
    let (mut start, end, mut count) = (0.0, b[i].0, b[i].1);
    if i > 0 {
        start = b[i - 1].0;
        count -= b[i - 1].1;
        rank -= b[i - 1].1;
    }
    if count <= 0.0 {
        return Some(start);
    }
    Some(start + (end - start) * (rank / count))
}

/// Two scrapes and the seconds between them.
pub struct Window<'a> {
    pub prev: &'a Samples,
    pub cur: &'a Samples,
    pub secs: f64,
}

impl<'a> Window<'a> {
    /// Each series of `name` in the later scrape with its increase over the window and its
    /// value now. A series missing from the earlier scrape counts from zero: respguard creates
    /// series on first use, so it did not exist yet.
    pub fn increases<'s>(
        &'s self,
        name: &'s str,
    ) -> impl Iterator<Item = (&'a Labels, f64, f64)> + 's {
        self.cur.series(name).map(move |(labels, now)| {
            let before = self.prev.get(name, labels).unwrap_or(0.0);
            (labels, increase(before, now), now)
        })
    }

    /// Per second over the window.
    pub fn rate(&self, increase: f64) -> f64 {
        if self.secs > 0.0 {
            increase / self.secs
        } else {
            0.0
        }
    }

    /// Increases and values now of `name`, summed by the values of `keys` (`sum by (keys)`).
    fn sum_by(&self, name: &str, keys: &[&str]) -> BTreeMap<Vec<String>, (f64, f64)> {
        self.sum_by_where(name, keys, |_| true)
    }

    fn sum_by_where(
        &self,
        name: &str,
        keys: &[&str],
        keep: impl Fn(&Labels) -> bool,
    ) -> BTreeMap<Vec<String>, (f64, f64)> {
        let mut out: BTreeMap<Vec<String>, (f64, f64)> = BTreeMap::new();
        for (labels, inc, now) in self.increases(name) {
            if !keep(labels) {
                continue;
            }
            let key = keys
                .iter()
                .map(|k| label(labels, k).unwrap_or_default().to_string())
                .collect();
            let e = out.entry(key).or_default();
            e.0 += inc;
            e.1 += now;
        }
        out
    }

    /// Window increase and value now of `name` summed over all its series.
    fn total(&self, name: &str) -> (f64, f64) {
        self.increases(name)
            .fold((0.0, 0.0), |(i, n), (_, inc, now)| (i + inc, n + now))
    }

    /// The window's observations of histogram `base`, optionally of one command only.
    fn histogram(&self, base: &str, command: Option<&str>) -> Histogram {
        let keep = |labels: &Labels| command.is_none_or(|c| label(labels, "command") == Some(c));
        let mut buckets: BTreeMap<String, f64> = BTreeMap::new();
        for (labels, inc, _) in self.increases(&format!("{base}_bucket")) {
            if keep(labels) {
                if let Some(le) = label(labels, "le") {
                    *buckets.entry(le.to_string()).or_default() += inc;
                }
            }
        }
        let buckets = buckets
            .into_iter()
            .filter_map(|(le, count)| Some((parse_value(&le)?, count)))
            .collect();
        let sum_of = |suffix: &str| {
            self.increases(&format!("{base}_{suffix}"))
                .filter(|(labels, _, _)| keep(labels))
                .fold(0.0, |acc, (_, inc, _)| acc + inc)
        };
        Histogram {
            buckets,
            sum: sum_of("sum"),
            count: sum_of("count"),
        }
    }
}

/// Observations of one histogram over the window.
struct Histogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Histogram {
    fn quantiles(&self) -> Quantiles {
        Quantiles {
            p50: quantile(0.5, &self.buckets),
            p99: quantile(0.99, &self.buckets),
        }
    }
}

// ------------------------------------------------------------------------------------ report

/// Everything the view shows, computed from two scrapes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub window_secs: f64,
    /// From `respguard_build_info{version}`.
    pub version: Option<String>,
    pub namespaces: Vec<NamespaceRow>,
    /// The busiest commands, at most ten.
    pub commands: Vec<CommandRow>,
    /// Commands seen but not listed.
    pub commands_more: usize,
    /// All commands first (command `ALL`), then the busiest ones.
    pub latency: Vec<LatencyRow>,
    /// `[namespace, action]`, series with a non-zero total only.
    pub ttl: Vec<CountRow>,
    /// `[namespace, rule]`.
    pub rejections: Vec<CountRow>,
    /// `[namespace, field, action]`.
    pub sensitive: Vec<CountRow>,
    /// `[kind]`.
    pub upstream_errors: Vec<CountRow>,
    /// `[result]`.
    pub reloads: Vec<CountRow>,
    pub connections: Connections,
    /// Unparsable lines in the later scrape.
    pub skipped_lines: usize,
}

/// One namespace: traffic and reads over the window, and reads since respguard started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamespaceRow {
    pub namespace: String,
    pub ops_per_sec: f64,
    pub hits: f64,
    pub misses: f64,
    pub hits_total: f64,
    pub misses_total: f64,
}

impl NamespaceRow {
    pub fn hit_rate(&self) -> Option<f64> {
        hit_rate(self.hits, self.misses)
    }

    pub fn hit_rate_total(&self) -> Option<f64> {
        hit_rate(self.hits_total, self.misses_total)
    }

    /// Flagged on the window's hit rate, what is happening now; on the lifetime one only when
    /// the window had no reads.
    pub fn low(&self) -> bool {
        self.hit_rate()
            .or(self.hit_rate_total())
            .is_some_and(|r| r < HIT_RATE_TARGET)
    }
}

/// One command over all namespaces.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommandRow {
    pub command: String,
    pub ops_per_sec: f64,
    /// Over the window.
    pub errors: f64,
    pub rejected: f64,
    /// Since respguard started.
    pub ops_total: f64,
    pub errors_total: f64,
    pub rejected_total: f64,
}

/// p50 and p99, `None` without observations.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Quantiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

/// Latency of one command (or `ALL`) over the window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyRow {
    pub command: String,
    /// Commands observed in the window.
    pub count: f64,
    /// `respguard_command_duration_seconds`: command read to reply written.
    pub total: Quantiles,
    /// `respguard_upstream_duration_seconds`: the Redis round trip.
    pub upstream: Quantiles,
    /// (sum of total − sum of upstream) / commands: exact, unlike the quantile difference,
    /// because every command's time is its proxy share plus its upstream share.
    pub proxy_mean: Option<f64>,
}

impl LatencyRow {
    /// The proxy's own share at the same quantile. A difference of quantiles is an estimate
    /// (the quantile of a difference is not knowable from two histograms), clamped at zero.
    /// Without upstream observations (every command refused or answered locally) all the time
    /// is the proxy's.
    pub fn proxy(&self) -> Quantiles {
        let diff =
            |total: Option<f64>, up: Option<f64>| total.map(|t| up.map_or(t, |u| (t - u).max(0.0)));
        Quantiles {
            p50: diff(self.total.p50, self.upstream.p50),
            p99: diff(self.total.p99, self.upstream.p99),
        }
    }
}

/// A counter grouped by some labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CountRow {
    pub labels: Vec<String>,
    /// Increase over the window.
    pub window: f64,
    /// Since respguard started.
    pub total: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Connections {
    pub open: f64,
    /// Accepted over the window, and since start.
    pub accepted: f64,
    pub accepted_total: f64,
    pub refused: f64,
    pub refused_total: f64,
    pub protocol_errors: f64,
    pub protocol_errors_total: f64,
}

/// Namespaces respguard makes up (`_unmatched`, `_none`) sort after the configured ones.
fn namespace_order(name: &str) -> (bool, &str) {
    (name.starts_with('_'), name)
}

fn count_rows(w: &Window, name: &str, keys: &[&str]) -> Vec<CountRow> {
    w.sum_by(name, keys)
        .into_iter()
        // Zero series are registered ahead of use (e.g. all four TTL actions at once); they
        // say nothing.
        .filter(|(_, (inc, total))| *inc > 0.0 || *total > 0.0)
        .map(|(labels, (window, total))| CountRow {
            labels,
            window,
            total,
        })
        .collect()
}

/// Computes the view from an earlier and a later scrape `secs` apart.
pub fn report(prev: &Samples, cur: &Samples, secs: f64) -> Report {
    let w = Window { prev, cur, secs };

    // Namespaces: traffic from commands_total, reads from hits and misses.
    let ops = w.sum_by("respguard_commands_total", &["namespace"]);
    let hits = w.sum_by("respguard_cache_hits_total", &["namespace"]);
    let misses = w.sum_by("respguard_cache_misses_total", &["namespace"]);
    let names: BTreeSet<&Vec<String>> =
        ops.keys().chain(hits.keys()).chain(misses.keys()).collect();
    let get = |m: &BTreeMap<Vec<String>, (f64, f64)>, k: &Vec<String>| {
        m.get(k).copied().unwrap_or_default()
    };
    let mut namespaces: Vec<NamespaceRow> = names
        .into_iter()
        .map(|k| {
            let (h, m) = (get(&hits, k), get(&misses, k));
            NamespaceRow {
                namespace: k.join(""),
                ops_per_sec: w.rate(get(&ops, k).0),
                hits: h.0,
                misses: m.0,
                hits_total: h.1,
                misses_total: m.1,
            }
        })
        .collect();
    namespaces.sort_by(|a, b| namespace_order(&a.namespace).cmp(&namespace_order(&b.namespace)));

    // Commands over all namespaces, busiest first.
    let by_cmd = w.sum_by("respguard_commands_total", &["command", "result"]);
    let mut commands: BTreeMap<String, CommandRow> = BTreeMap::new();
    for (key, (inc, total)) in by_cmd {
        let [command, result] = key.as_slice() else {
            continue;
        };
        let row = commands
            .entry(command.clone())
            .or_insert_with(|| CommandRow {
                command: command.clone(),
                ..CommandRow::default()
            });
        row.ops_per_sec += w.rate(inc);
        row.ops_total += total;
        match result.as_str() {
            "error" => {
                row.errors += inc;
                row.errors_total += total;
            }
            "rejected" => {
                row.rejected += inc;
                row.rejected_total += total;
            }
            _ => {}
        }
    }
    let mut commands: Vec<CommandRow> = commands.into_values().collect();
    commands.sort_by(|a, b| {
        b.ops_per_sec
            .total_cmp(&a.ops_per_sec)
            .then(b.ops_total.total_cmp(&a.ops_total))
            .then(a.command.cmp(&b.command))
    });
    let commands_more = commands.len().saturating_sub(TOP_COMMANDS);
    commands.truncate(TOP_COMMANDS);

    // Latency: all commands, then the busiest ones in the window.
    let latency_row = |command: Option<&str>| {
        let total = w.histogram("respguard_command_duration_seconds", command);
        let upstream = w.histogram("respguard_upstream_duration_seconds", command);
        LatencyRow {
            command: command.unwrap_or("ALL").to_string(),
            count: total.count,
            total: total.quantiles(),
            upstream: upstream.quantiles(),
            proxy_mean: (total.count > 0.0)
                .then(|| ((total.sum - upstream.sum) / total.count).max(0.0)),
        }
    };
    let mut latency = vec![latency_row(None)];
    let mut busiest: Vec<(String, f64)> = w
        .sum_by("respguard_command_duration_seconds_count", &["command"])
        .into_iter()
        .filter(|(_, (inc, _))| *inc > 0.0)
        .map(|(k, (inc, _))| (k.join(""), inc))
        .collect();
    busiest.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    latency.extend(
        busiest
            .iter()
            .take(TOP_LATENCY)
            .map(|(c, _)| latency_row(Some(c))),
    );

    let (accepted, accepted_total) = w.total("respguard_client_connections_total");
    let (refused, refused_total) = w.total("respguard_client_connections_refused_total");
    let (protocol_errors, protocol_errors_total) =
        w.total("respguard_client_protocol_errors_total");

    Report {
        window_secs: secs,
        version: cur
            .series("respguard_build_info")
            .find_map(|(l, _)| label(l, "version").map(str::to_string)),
        namespaces,
        commands,
        commands_more,
        latency,
        ttl: count_rows(&w, "respguard_ttl_enforced_total", &["namespace", "action"]),
        rejections: count_rows(
            &w,
            "respguard_policy_rejections_total",
            &["namespace", "rule"],
        ),
        sensitive: count_rows(
            &w,
            "respguard_sensitive_fields_total",
            &["namespace", "field", "action"],
        ),
        upstream_errors: count_rows(&w, "respguard_upstream_errors_total", &["kind"]),
        reloads: count_rows(&w, "respguard_config_reloads_total", &["result"]),
        connections: Connections {
            open: cur
                .series("respguard_client_connections")
                .map(|(_, v)| v)
                .sum(),
            accepted,
            accepted_total,
            refused,
            refused_total,
            protocol_errors,
            protocol_errors_total,
        },
        skipped_lines: cur.skipped,
    }
}

// ------------------------------------------------------------------------------------ render

/// `-0.0` (the sum of nothing, in Rust) would print as `-0`.
fn positive_zero(v: f64) -> f64 {
    if v == 0.0 {
        0.0
    } else {
        v
    }
}

fn count(v: f64) -> String {
    format!("{:.0}", positive_zero(v))
}

fn per_sec(v: f64) -> String {
    format!("{:.1}", positive_zero(v))
}

fn percent(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0))
}

/// Seconds in the unit that keeps 2-3 significant digits; ASCII `us` so the output survives
/// any log pipeline it is pasted into.
fn seconds(s: Option<f64>) -> String {
    match s {
        None => "-".to_string(),
        Some(s) if s < 1e-3 => format!("{:.0}us", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.2}ms", s * 1e3),
        Some(s) => format!("{s:.2}s"),
    }
}

/// Writes an aligned table, indented: the first `left` columns left-aligned (names), the
/// others right-aligned (figures).
fn table(
    out: &mut impl Write,
    header: &[&str],
    left: usize,
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::from(" ");
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            text.push(' ');
            if i < left {
                text.push_str(&format!("{cell:<width$}"));
            } else {
                text.push_str(&format!("{cell:>width$}"));
            }
            text.push(' ');
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, &mut header.iter().copied())?;
    for row in rows {
        line(out, &mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

fn count_section(
    out: &mut impl Write,
    title: &str,
    header: &[&str],
    rows: &[CountRow],
) -> std::io::Result<()> {
    writeln!(out, "{title}")?;
    if rows.is_empty() {
        return writeln!(out, "  none");
    }
    let mut full: Vec<&str> = header.to_vec();
    full.extend(["WINDOW", "TOTAL"]);
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut cells = r.labels.clone();
            cells.extend([count(r.window), count(r.total)]);
            cells
        })
        .collect();
    table(out, &full, header.len(), &rows)
}

/// Writes the view of `r`, scraped from `admin`.
pub fn render(r: &Report, admin: SocketAddr, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "respguard stats  http://{admin}/metrics  version {}  window {:.1}s",
        r.version.as_deref().unwrap_or("?"),
        r.window_secs
    )?;
    writeln!(
        out,
        "WINDOW figures cover the last {:.1}s; TOTAL figures count since respguard started.",
        r.window_secs
    )?;
    if r.skipped_lines > 0 {
        writeln!(
            out,
            "warning: {} line(s) of /metrics could not be parsed",
            r.skipped_lines
        )?;
    }

    writeln!(
        out,
        "\nNAMESPACES  hit rate = hits / (hits + misses), LOW under {:.0}%",
        HIT_RATE_TARGET * 100.0
    )?;
    if r.namespaces.is_empty() {
        writeln!(out, "  none yet")?;
    } else {
        let rows: Vec<Vec<String>> = r
            .namespaces
            .iter()
            .map(|n| {
                vec![
                    n.namespace.clone(),
                    per_sec(n.ops_per_sec),
                    count(n.hits),
                    count(n.misses),
                    percent(n.hit_rate()),
                    percent(n.hit_rate_total()),
                    if n.low() { "LOW" } else { "" }.to_string(),
                ]
            })
            .collect();
        table(
            out,
            &[
                "NAMESPACE",
                "OPS/S",
                "HITS",
                "MISSES",
                "HIT%",
                "HIT% TOTAL",
                "",
            ],
            1,
            &rows,
        )?;
    }

    writeln!(
        out,
        "\nCOMMANDS  busiest first; ERRORS and REJECTED over the window"
    )?;
    if r.commands.is_empty() {
        writeln!(out, "  none yet")?;
    } else {
        let rows: Vec<Vec<String>> = r
            .commands
            .iter()
            .map(|c| {
                vec![
                    c.command.clone(),
                    per_sec(c.ops_per_sec),
                    count(c.errors),
                    count(c.rejected),
                    count(c.ops_total),
                    count(c.errors_total),
                    count(c.rejected_total),
                ]
            })
            .collect();
        table(
            out,
            &[
                "COMMAND",
                "OPS/S",
                "ERRORS",
                "REJECTED",
                "TOTAL",
                "ERRORS TOTAL",
                "REJECTED TOTAL",
            ],
            1,
            &rows,
        )?;
        if r.commands_more > 0 {
            writeln!(out, "  ... and {} more", r.commands_more)?;
        }
    }

    writeln!(
        out,
        "\nLATENCY  from histogram buckets over the window; PROXY = TOTAL - UPSTREAM (estimate), \
         PROXY MEAN exact"
    )?;
    let rows: Vec<Vec<String>> = r
        .latency
        .iter()
        .map(|l| {
            let proxy = l.proxy();
            vec![
                l.command.clone(),
                count(l.count),
                seconds(l.total.p50),
                seconds(l.total.p99),
                seconds(l.upstream.p50),
                seconds(l.upstream.p99),
                seconds(proxy.p50),
                seconds(proxy.p99),
                seconds(l.proxy_mean),
            ]
        })
        .collect();
    table(
        out,
        &[
            "COMMAND",
            "COUNT",
            "TOTAL P50",
            "TOTAL P99",
            "UPSTREAM P50",
            "UPSTREAM P99",
            "PROXY P50",
            "PROXY P99",
            "PROXY MEAN",
        ],
        1,
        &rows,
    )?;

    writeln!(out, "\nPOLICY")?;
    count_section(out, "TTL enforced", &["NAMESPACE", "ACTION"], &r.ttl)?;
    count_section(out, "Rejections", &["NAMESPACE", "RULE"], &r.rejections)?;
    count_section(
        out,
        "Sensitive fields",
        &["NAMESPACE", "FIELD", "ACTION"],
        &r.sensitive,
    )?;

    let c = &r.connections;
    writeln!(
        out,
        "\nCONNECTIONS  open {}  accepted {} (total {})  refused {} (total {})  \
         protocol errors {} (total {})",
        count(c.open),
        count(c.accepted),
        count(c.accepted_total),
        count(c.refused),
        count(c.refused_total),
        count(c.protocol_errors),
        count(c.protocol_errors_total),
    )?;
    writeln!(out)?;
    count_section(out, "UPSTREAM ERRORS", &["KIND"], &r.upstream_errors)?;
    writeln!(out)?;
    count_section(out, "CONFIG RELOADS", &["RESULT"], &r.reloads)?;
    Ok(())
}

// -------------------------------------------------------------------------------------- http

/// Fetches and parses `http://{admin}/metrics`.
pub async fn scrape(admin: SocketAddr) -> Result<Samples, StatsError> {
    let body = tokio::time::timeout(SCRAPE_TIMEOUT, fetch(admin))
        .await
        .map_err(|_| StatsError::Timeout {
            addr: admin,
            after: SCRAPE_TIMEOUT,
        })??;
    Ok(parse(&body))
}

async fn fetch(admin: SocketAddr) -> Result<String, StatsError> {
    let connect = |source| StatsError::Connect {
        addr: admin,
        source,
    };
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(admin))
        .await
        .map_err(|_| connect(std::io::ErrorKind::TimedOut.into()))?
        .map_err(connect)?;
    let io = |source| StatsError::Io {
        addr: admin,
        source,
    };
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nUser-Agent: respguard-stats/{}\r\n\
         Accept: text/plain\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let response = loop {
        let n = stream.read_buf(&mut buf).await.map_err(io)?;
        // Stop as soon as the body is complete rather than waiting for the close: a server
        // that keeps the connection open despite `Connection: close` must not cost a timeout.
        match http_response(&buf, n == 0) {
            Ok(Some(r)) => break r,
            Ok(None) if buf.len() > MAX_RESPONSE => {
                return Err(StatsError::Http {
                    addr: admin,
                    reason: format!("response larger than {MAX_RESPONSE} bytes"),
                })
            }
            Ok(None) => {}
            Err(reason) => {
                return Err(StatsError::Http {
                    addr: admin,
                    reason,
                })
            }
        }
    };
    let body = String::from_utf8_lossy(&response.body).into_owned();
    if response.code != 200 {
        return Err(StatsError::Status {
            addr: admin,
            status: response.status,
            body: body.lines().next().unwrap_or_default().to_string(),
        });
    }
    Ok(body)
}

#[derive(Debug, PartialEq)]
struct Response {
    code: u16,
    /// The status line after the version, e.g. `503 Service Unavailable`.
    status: String,
    body: Vec<u8>,
}

/// Decodes an HTTP/1.x response from `buf`: `Ok(None)` while more bytes are needed, an error
/// when it cannot be one. Bodies are delimited by `Content-Length`, chunked encoding, or the
/// connection's end (`eof`).
fn http_response(buf: &[u8], eof: bool) -> Result<Option<Response>, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if eof {
            Err("connection closed before the response head ended".into())
        } else {
            Ok(None)
        };
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let rest = &buf[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = match status_line.split_once(' ') {
        Some((version, status)) if version.starts_with("HTTP/1.") => status.trim().to_string(),
        _ => return Err(format!("not an HTTP/1.x status line: {status_line:?}")),
    };
    let code = status
        .split(' ')
        .next()
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status code in {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = if chunked {
        match dechunk(rest)? {
            Some(body) => body,
            None if eof => return Err("connection closed inside a chunked body".into()),
            None => return Ok(None),
        }
    } else if let Some(len) = length {
        match rest.get(..len) {
            Some(body) => body.to_vec(),
            None if eof => {
                return Err(format!(
                    "connection closed after {} of {len} body bytes",
                    rest.len()
                ))
            }
            None => return Ok(None),
        }
    } else if eof {
        rest.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(Response { code, status, body }))
}

/// Decodes a chunked body; `Ok(None)` while incomplete. Trailers are ignored.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(rest, b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        let Some(chunk) = rest.get(..size) else {
            return Ok(None);
        };
        body.extend_from_slice(chunk);
        rest = match rest.get(size..) {
            Some(after) if after.len() >= 2 => &after[2..],
            _ => return Ok(None),
        };
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// --------------------------------------------------------------------------------------- run

/// A scrape and when it was taken: just before the request, the closest to the moment the
/// page was rendered that the client knows.
async fn scrape_at(admin: SocketAddr) -> Result<(Samples, Instant), StatsError> {
    let at = Instant::now();
    Ok((scrape(admin).await?, at))
}

/// Resolves on Ctrl-C; never, if the handler cannot be installed (the default SIGINT
/// behaviour, ending the process, then still applies).
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// `respguard stats`: scrapes `admin` twice, `interval` apart, and writes the view to `out`.
/// With `once`, one view and return; otherwise a new view every `interval` until Ctrl-C,
/// clearing the screen in between when stdout is a terminal (a pipe or file gets every view,
/// one after the other). In that mode a failed scrape is shown and retried, so a restarting
/// respguard does not end the session; only the first scrape's failure is returned, since it
/// most likely means a wrong address.
pub async fn run(
    admin: SocketAddr,
    interval: Duration,
    once: bool,
    out: &mut impl Write,
) -> Result<(), StatsError> {
    if interval.is_zero() {
        return Err(StatsError::ZeroInterval);
    }
    let secs = |from: Instant, to: Instant| to.duration_since(from).as_secs_f64();
    if once {
        let (prev, t0) = scrape_at(admin).await?;
        tokio::time::sleep(interval).await;
        let (cur, t1) = scrape_at(admin).await?;
        render(&report(&prev, &cur, secs(t0, t1)), admin, out)?;
        out.flush()?;
        return Ok(());
    }

    let clear = std::io::stdout().is_terminal();
    let stop = ctrl_c();
    tokio::pin!(stop);
    let mut prev = tokio::select! {
        r = scrape_at(admin) => r?,
        _ = &mut stop => return Ok(()),
    };
    writeln!(
        out,
        "respguard stats: watching http://{admin}/metrics, first figures in {interval:?}; \
         Ctrl-C to quit"
    )?;
    out.flush()?;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut stop => return Ok(()),
        }
        let scraped = tokio::select! {
            r = scrape_at(admin) => r,
            _ = &mut stop => return Ok(()),
        };
        if clear {
            write!(out, "\x1b[H\x1b[2J")?;
        } else {
            writeln!(out)?;
        }
        match scraped {
            Ok(cur) => {
                render(&report(&prev.0, &cur.0, secs(prev.1, cur.1)), admin, out)?;
                prev = cur;
            }
            // The last good scrape stays the baseline: the next rates then cover the longer
            // window, measured, so they stay right.
            Err(e) => writeln!(out, "respguard stats: {e}; retrying every {interval:?}")?,
        }
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page in the shape metrics-exporter-prometheus renders, plus the odd lines the text
    /// format allows (escapes, timestamps, trailing commas, blank lines).
    const PAGE: &str = r#"# HELP respguard_commands_total Commands by result
# TYPE respguard_commands_total counter
respguard_commands_total{command="GET",namespace="session",result="ok"} 100
respguard_commands_total{command="GET",namespace="session",result="error"} 2
respguard_commands_total{command="SET",namespace="session",result="rejected"} 3 1700000000000
respguard_commands_total{command="CLIENT|SETNAME",namespace="_none",result="ok"} 1

respguard_cache_hits_total{command="GET",namespace="session"} 80
respguard_cache_misses_total{command="GET",namespace="session"} 20
respguard_sensitive_fields_total{namespace="session",field="pa\"ss\\wd\nx",action="strip",} 4
respguard_client_connections 7
respguard_build_info{version="0.1.0"} 1
respguard_command_duration_seconds_bucket{command="GET",le="0.001"} 50
respguard_command_duration_seconds_bucket{command="GET",le="+Inf"} 100
respguard_command_duration_seconds_sum{command="GET"} 0.25
respguard_command_duration_seconds_count{command="GET"} 100
nan_metric NaN
"#;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        let mut l: Labels = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.sort();
        l
    }

    #[test]
    fn parses_samples_labels_and_escapes() {
        let s = parse(PAGE);
        assert_eq!(s.skipped, 0);
        assert_eq!(s.len(), 14);
        assert_eq!(
            s.get(
                "respguard_commands_total",
                &labels(&[
                    ("command", "SET"),
                    ("namespace", "session"),
                    ("result", "rejected")
                ])
            ),
            Some(3.0),
            "the timestamp is not the value"
        );
        assert_eq!(
            s.get(
                "respguard_commands_total",
                &labels(&[
                    ("command", "CLIENT|SETNAME"),
                    ("namespace", "_none"),
                    ("result", "ok")
                ])
            ),
            Some(1.0)
        );
        let (l, v) = s
            .series("respguard_sensitive_fields_total")
            .next()
            .expect("sensitive series");
        assert_eq!(label(l, "field"), Some("pa\"ss\\wd\nx"));
        assert_eq!(label(l, "action"), Some("strip"));
        assert_eq!(v, 4.0);
        assert_eq!(
            s.get("respguard_client_connections", &Labels::new()),
            Some(7.0)
        );
        let inf = labels(&[("command", "GET"), ("le", "+Inf")]);
        assert_eq!(
            s.get("respguard_command_duration_seconds_bucket", &inf),
            Some(100.0)
        );
        assert!(s.get("nan_metric", &Labels::new()).is_some_and(f64::is_nan));
    }

    #[test]
    fn label_order_does_not_matter() {
        let a = parse("m{b=\"2\",a=\"1\"} 5\n");
        let b = parse("m{a=\"1\",b=\"2\"} 5\n");
        assert_eq!(a, b);
    }

    #[test]
    fn braces_commas_and_unknown_escapes_inside_values() {
        let s = parse("m{path=\"a,b}c\",re=\"\\d+\"} 1.5e3\n");
        let (l, v) = s.series("m").next().expect("one series");
        assert_eq!(label(l, "path"), Some("a,b}c"));
        assert_eq!(label(l, "re"), Some("\\d+"), "unknown escapes are kept");
        assert_eq!(v, 1500.0);
    }

    #[test]
    fn malformed_lines_are_counted_not_fatal() {
        let s = parse(
            "good 1\n\
             no_value\n\
             bad{l=\"unterminated} 1\n\
             bad{=\"x\"} 1\n\
             bad{l=x} 1\n\
             9starts_with_digit 1\n\
             bad_value abc\n\
             also_good{a=\"b\"} -Inf\n",
        );
        assert_eq!(s.skipped, 6);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s.get("also_good", &labels(&[("a", "b")])),
            Some(f64::NEG_INFINITY)
        );
    }

    #[test]
    fn increase_handles_resets() {
        assert_eq!(increase(10.0, 15.0), 5.0);
        assert_eq!(increase(10.0, 10.0), 0.0);
        // Restarted: the new process counted 3 since.
        assert_eq!(increase(10.0, 3.0), 3.0);
        assert_eq!(increase(1.0, f64::NAN), 0.0);
    }

    #[test]
    fn hit_rate_of_nothing_is_unknown() {
        assert_eq!(hit_rate(80.0, 20.0), Some(0.8));
        assert_eq!(hit_rate(0.0, 5.0), Some(0.0));
        assert_eq!(hit_rate(0.0, 0.0), None);
    }

    #[test]
    fn quantile_matches_prometheus_histogram_quantile() {
        // 100 observations: 50 up to 1 ms, 40 in (1 ms, 2.5 ms], 10 in (2.5 ms, 5 ms].
        let b = [
            (0.005, 100.0),
            (0.001, 50.0),
            (f64::INFINITY, 100.0),
            (0.0025, 90.0),
        ];
        // rank 50 hits the first bucket's top exactly.
        assert_eq!(quantile(0.5, &b), Some(0.001));
        // rank 70: 20 of 40 into (0.001, 0.0025].
        let p70 = quantile(0.7, &b).expect("p70");
        assert!((p70 - 0.00175).abs() < 1e-12, "{p70}");
        // rank 99: 9 of 10 into (0.0025, 0.005].
        let p99 = quantile(0.99, &b).expect("p99");
        assert!((p99 - 0.00475).abs() < 1e-12, "{p99}");
        // rank 25 in the first bucket interpolates from zero.
        let p25 = quantile(0.25, &b).expect("p25");
        assert!((p25 - 0.0005).abs() < 1e-12, "{p25}");
    }

    #[test]
    fn quantile_edge_cases() {
        // Rank in +Inf: the largest finite bound, as Prometheus.
        assert_eq!(
            quantile(0.99, &[(0.001, 10.0), (f64::INFINITY, 100.0)]),
            Some(0.001)
        );
        assert_eq!(quantile(0.5, &[(0.001, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &[(0.001, 5.0)]), None, "no +Inf bucket");
        assert_eq!(quantile(0.5, &[]), None);
        // Non-monotonic counts are evened out: 60 at le=0.002 is read as 70.
        let q = quantile(0.5, &[(0.001, 70.0), (0.002, 60.0), (f64::INFINITY, 100.0)]).expect("q");
        assert!((q - 0.000_714_285_714).abs() < 1e-9, "{q}");
    }

    fn page(hits: u32, misses: u32, gets: u32, errors: u32) -> Samples {
        parse(&format!(
            "respguard_cache_hits_total{{command=\"GET\",namespace=\"session\"}} {hits}\n\
             respguard_cache_misses_total{{command=\"GET\",namespace=\"session\"}} {misses}\n\
             respguard_commands_total{{command=\"GET\",namespace=\"session\",result=\"ok\"}} {gets}\n\
             respguard_commands_total{{command=\"GET\",namespace=\"session\",result=\"error\"}} {errors}\n\
             respguard_commands_total{{command=\"DEL\",namespace=\"_unmatched\",result=\"rejected\"}} 4\n\
             respguard_ttl_enforced_total{{namespace=\"session\",action=\"added\"}} 0\n\
             respguard_ttl_enforced_total{{namespace=\"session\",action=\"clamped\"}} {errors}\n"
        ))
    }

    #[test]
    fn report_rates_hit_rates_and_resets() {
        let prev = page(100, 50, 150, 1);
        let cur = page(190, 60, 250, 3);
        let r = report(&prev, &cur, 2.0);
        assert_eq!(r.namespaces.len(), 2);
        let s = &r.namespaces[0];
        assert_eq!(s.namespace, "session");
        assert_eq!((s.hits, s.misses), (90.0, 10.0));
        assert_eq!(s.hit_rate(), Some(0.9));
        assert_eq!(s.hit_rate_total(), Some(0.76));
        assert!(!s.low(), "the window decides");
        // 100 ok + 2 errors in 2 s.
        assert_eq!(s.ops_per_sec, 51.0);
        assert_eq!(r.namespaces[1].namespace, "_unmatched", "made-up ones last");
        assert_eq!(r.namespaces[1].ops_per_sec, 0.0);
        assert_eq!(r.commands[0].command, "GET");
        assert_eq!(r.commands[0].errors, 2.0);
        assert_eq!(r.commands[0].errors_total, 3.0);
        assert_eq!(r.commands[1].rejected_total, 4.0);
        // The zero `added` series is not listed.
        assert_eq!(r.ttl.len(), 1);
        assert_eq!(r.ttl[0].labels, ["session", "clamped"]);
        assert_eq!((r.ttl[0].window, r.ttl[0].total), (2.0, 3.0));

        // A restart between the scrapes: counters start again from zero.
        let restarted = page(9, 1, 10, 0);
        let r = report(&prev, &restarted, 2.0);
        assert_eq!(r.namespaces[0].hits, 9.0);
        assert_eq!(r.namespaces[0].hit_rate(), Some(0.9));
        assert_eq!(r.namespaces[0].ops_per_sec, 5.0);
    }

    #[test]
    fn low_hit_rate_is_flagged() {
        let r = report(&page(0, 0, 0, 0), &page(70, 30, 100, 0), 1.0);
        assert!(r.namespaces[0].low());
        let mut out = Vec::new();
        render(&r, SocketAddr::from(([127, 0, 0, 1], 9090)), &mut out).expect("render");
        let text = String::from_utf8(out).expect("utf-8");
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with("session"))
            .expect("session row");
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            ["session", "100.0", "70", "30", "70.0%", "70.0%", "LOW"]
        );
    }

    fn latency_page(scale: f64) -> Samples {
        // Total: 100 commands, half under 1 ms, all under 2.5 ms. Upstream: half under 0.5 ms,
        // all under 1 ms. Sums: 150 ms total, 60 ms upstream.
        let lines = [
            ("command_duration", "0.0005", 0.0),
            ("command_duration", "0.001", 50.0),
            ("command_duration", "0.0025", 100.0),
            ("command_duration", "+Inf", 100.0),
            ("upstream_duration", "0.0005", 50.0),
            ("upstream_duration", "0.001", 100.0),
            ("upstream_duration", "0.0025", 100.0),
            ("upstream_duration", "+Inf", 100.0),
        ];
        let mut text = String::new();
        for (m, le, v) in lines {
            text.push_str(&format!(
                "respguard_{m}_seconds_bucket{{command=\"GET\",le=\"{le}\"}} {}\n",
                v * scale
            ));
        }
        text.push_str(&format!(
            "respguard_command_duration_seconds_sum{{command=\"GET\"}} {}\n\
             respguard_command_duration_seconds_count{{command=\"GET\"}} {}\n\
             respguard_upstream_duration_seconds_sum{{command=\"GET\"}} {}\n\
             respguard_upstream_duration_seconds_count{{command=\"GET\"}} {}\n",
            0.15 * scale,
            100.0 * scale,
            0.06 * scale,
            100.0 * scale
        ));
        parse(&text)
    }

    #[test]
    fn latency_split_from_buckets() {
        let r = report(&latency_page(1.0), &latency_page(3.0), 2.0);
        let all = &r.latency[0];
        assert_eq!(all.command, "ALL");
        assert_eq!(r.latency[1].command, "GET");
        assert_eq!(all.count, 200.0);
        assert_eq!(all.total.p50, Some(0.001));
        // Rank 198 of 200: 98 of 100 into (1 ms, 2.5 ms].
        let p99 = all.total.p99.expect("p99");
        assert!((p99 - 0.00247).abs() < 1e-12, "{p99}");
        assert_eq!(all.upstream.p50, Some(0.0005));
        let up99 = all.upstream.p99.expect("up p99");
        assert!((up99 - 0.00099).abs() < 1e-12, "{up99}");
        let proxy = all.proxy();
        assert!((proxy.p50.expect("p50") - 0.0005).abs() < 1e-12);
        assert!((proxy.p99.expect("p99") - 0.00148).abs() < 1e-12);
        // (0.30 - 0.12) / 200 = 0.9 ms.
        assert!((all.proxy_mean.expect("mean") - 0.0009).abs() < 1e-12);
        // No traffic: nothing to estimate.
        let idle = report(&latency_page(1.0), &latency_page(1.0), 2.0);
        assert_eq!(idle.latency.len(), 1);
        assert_eq!(idle.latency[0].total.p99, None);
        assert_eq!(idle.latency[0].proxy_mean, None);
    }

    #[test]
    fn formats() {
        assert_eq!(seconds(Some(0.000_25)), "250us");
        assert_eq!(seconds(Some(0.001_48)), "1.48ms");
        assert_eq!(seconds(Some(2.5)), "2.50s");
        assert_eq!(seconds(None), "-");
        assert_eq!(percent(Some(0.857_142)), "85.7%");
        assert_eq!(percent(None), "-");
        assert_eq!(count(-0.0), "0");
        assert_eq!(per_sec(-0.0), "0.0");
    }

    #[test]
    fn http_content_length_chunked_and_close_delimited() {
        let r = http_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            false,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!((r.code, r.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(
            http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", false),
            Ok(None)
        );
        assert!(http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", true).is_err());

        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                        4\r\nm 1\n\r\n6;ext=1\r\nn{} 2\n\r\n0\r\n\r\n";
        // Complete once the last chunk's size line is in; the trailer section is not awaited.
        for cut in 0..chunked.len() - 2 {
            assert_eq!(http_response(&chunked[..cut], false), Ok(None), "cut {cut}");
        }
        let r = http_response(chunked, false)
            .expect("valid")
            .expect("complete");
        assert_eq!(r.body, b"m 1\nn{} 2\n");

        let r = http_response(b"HTTP/1.0 503 Service Unavailable\r\n\r\nnot ready", true)
            .expect("valid")
            .expect("complete");
        assert_eq!(
            (r.code, r.status.as_str()),
            (503, "503 Service Unavailable")
        );
        assert_eq!(r.body, b"not ready");

        assert!(http_response(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
        assert!(http_response(b"", true).is_err());
    }
}
