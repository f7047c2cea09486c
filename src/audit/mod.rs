//! `respguard audit`: measures an existing Redis against the policy before the proxy goes in
//! front of it, with the proxy's own policy engine, so a key the audit calls a violation is
//! one the proxy would refuse or rewrite.
//!
//! - [`cli`]: flags, exit codes, Ctrl-C and output;
//! - [`conn`]: the control-plane connection (the proxy's handshake, pipelining, `--rate`);
//! - [`walk`]: `SCAN` batches, the per-key pipelines and the policy verdicts;
//! - [`report`]: bounded aggregates and the table / JSON / Markdown report;
//! - [`shape`]: key shapes (`user{n}`, `form:{uuid}`);
//! - [`suggest`]: writing the `--suggest-policy` file;
//! - [`fixttl`]: planning and applying `--fix-ttl`.
//!
//! Violations: a key in no namespace when `unknown_keys: reject`; a key without expiry, or
//! with a remaining TTL above the maximum, in a namespace with a `ttl` rule; a string or hash
//! value in which the sensitive rules find something. Remaining TTLs below a minimum are
//! reported but are not violations: they fall as keys age.

pub mod cli;
pub mod conn;
pub mod fixttl;
pub mod report;
pub mod shape;
pub mod suggest;
pub mod walk;

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::Config;
use crate::policy::Policy;

use conn::{Conn, ConnError};
use fixttl::FixPlan;
use report::{Aggregate, Report, RunInfo};

/// Exit code when violations were found.
pub const EXIT_VIOLATIONS: u8 = 1;
/// Exit code when Redis could not be reached or used (connection, auth, protocol, refused
/// command).
pub const EXIT_UPSTREAM: u8 = 2;
/// Exit code when the suggested policy could not be written.
pub const EXIT_SUGGEST: u8 = 3;
/// Exit code after Ctrl-C: the report printed is partial.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Report format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Markdown,
}

/// What to do, from the command line.
#[derive(Clone, Debug)]
pub struct Options {
    pub format: Format,
    /// Stop after this many keys.
    pub sample: Option<u64>,
    /// Most commands per second.
    pub rate: Option<u32>,
    /// `SCAN ... COUNT`.
    pub batch: usize,
    /// Largest value (by `MEMORY USAGE`) read for the sensitive rules.
    pub value_cap: usize,
    pub suggest_policy: Option<std::path::PathBuf>,
    pub fix_ttl: bool,
    pub apply: bool,
    /// Show progress on stderr (a terminal).
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            format: Format::Table,
            sample: None,
            rate: None,
            batch: 1000,
            value_cap: 64 * 1024,
            suggest_policy: None,
            fix_ttl: false,
            apply: false,
            progress: std::io::stderr().is_terminal(),
        }
    }
}

/// A stop request (Ctrl-C): checked between batches; it also ends `--rate` waits early.
#[derive(Debug, Default)]
pub struct Stop {
    flag: AtomicBool,
    wake: Notify,
}

impl Stop {
    pub fn request(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    pub fn stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Sleeps for `d`, or less if a stop is requested.
    pub async fn sleep(&self, d: Duration) {
        if self.stopped() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.wake.notified() => {}
        }
    }
}

/// The progress line on stderr: keys scanned of the `DBSIZE` estimate, rate, ETA.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    total: u64,
    last: Option<Instant>,
}

impl Progress {
    fn new(enabled: bool, total: u64) -> Self {
        Progress {
            enabled,
            total,
            last: None,
        }
    }

    fn update(&mut self, keys: u64, started: Instant) {
        if !self.enabled
            || self
                .last
                .is_some_and(|l| l.elapsed() < Duration::from_millis(250))
        {
            return;
        }
        self.last = Some(Instant::now());
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let rate = keys as f64 / secs;
        let eta = if rate > 0.0 && self.total > keys {
            format!("{:.0} s", (self.total - keys) as f64 / rate)
        } else {
            "-".into()
        };
        let pct = if self.total > 0 {
            (keys as f64 * 100.0 / self.total as f64).min(100.0)
        } else {
            100.0
        };
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r{keys} of ~{} keys ({pct:.0}%), {rate:.0} keys/s, ETA {eta}   ",
            self.total
        );
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.enabled && self.last.is_some() {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    /// The suggested policy, when asked for (or why it could not be made).
    pub suggestion: Option<Result<String, String>>,
}

/// Walks the configured upstream and builds the report. A stop request ends the walk after
/// the batches in flight (at most three); the report then says it is partial.
pub async fn run(config: &Config, opts: &Options, stop: &Stop) -> Result<Outcome, ConnError> {
    let default_policy = Policy::default();
    let policy: &Policy = config.policy.as_deref().unwrap_or(&default_policy);
    let started = Instant::now();
    let mut conn = Conn::connect(&config.upstream, &config.limits, opts.rate).await?;

    let mut replies = Vec::new();
    conn.push([&b"DBSIZE"[..]]);
    conn.send(&mut replies, stop).await?;
    let dbsize = match replies.first() {
        Some(redis_protocol::resp2::types::BytesFrame::Integer(n)) => {
            u64::try_from(*n).unwrap_or(0)
        }
        Some(other) => {
            return Err(ConnError::Unexpected {
                command: "DBSIZE",
                reply: conn::describe(other),
            })
        }
        None => 0,
    };

    let mut agg = Aggregate::new(policy);
    let mut fix = opts.fix_ttl.then(|| FixPlan::new(opts.apply));
    let mut progress = Progress::new(opts.progress, dbsize);
    let complete = {
        let mut walker = walk::Walker {
            conn: &mut conn,
            classifier: walk::Classifier::new(policy),
            opts,
            agg: &mut agg,
            fix: fix.as_mut(),
            stop,
            progress: &mut progress,
        };
        walker.run().await?
    };
    progress.finish();
    let partial = !complete && stop.stopped();
    let upstream = match config.upstream.db {
        0 => config.upstream.addr.to_string(),
        db => format!("{} db {db}", config.upstream.addr),
    };
    let report = Report::build(
        policy,
        &agg,
        RunInfo {
            upstream,
            partial,
            sampled: !complete && !partial,
            dbsize,
            commands: conn.commands,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        },
        fix.map(|f| f.report),
    );
    let source = config
        .path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the configuration".into());
    let suggestion = opts
        .suggest_policy
        .as_ref()
        .map(|_| suggest::suggest(policy, &agg, &config.upstream, &source));
    Ok(Outcome { report, suggestion })
}
