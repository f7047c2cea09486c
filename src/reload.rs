//! Reloading: SIGHUP, or a change of the configuration file's content, re-reads the file.
//!
//! Kubernetes updates a mounted ConfigMap by swapping a symlink, so the file is compared by
//! content, read through its path, rather than by inotify on the inode or by mtime. A file that
//! fails validation changes nothing: the old configuration stays in force and every problem is
//! logged and counted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Overrides};
use crate::listener::Shared;

/// Outcome of one reload attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    Applied,
    Unchanged,
    Refused(usize),
}

/// Re-reads `path` and installs it if valid.
pub fn reload_now(shared: &Shared, path: &Path, overrides: &Overrides) -> Reloaded {
    match Config::load(path, overrides) {
        Ok(cfg) => {
            shared.install(cfg);
            shared.metrics.config_reload(true);
            tracing::info!(file = %path.display(), "configuration reloaded");
            Reloaded::Applied
        }
        Err(errs) => {
            shared.metrics.config_reload(false);
            for p in &errs.0 {
                tracing::error!(problem = %p, "configuration reload refused; the previous configuration stays in force");
            }
            Reloaded::Refused(errs.0.len())
        }
    }
}

/// When to look at watched files again: on SIGHUP, or every `every` to poll their content.
pub struct Trigger {
    hup: Option<tokio::signal::unix::Signal>,
    tick: tokio::time::Interval,
}

impl Trigger {
    pub fn new(every: Duration) -> Trigger {
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Trigger { hup, tick }
    }

    /// Waits for the next look; true when SIGHUP asked for it.
    pub async fn next(&mut self) -> bool {
        let hup = &mut self.hup;
        tokio::select! {
            _ = self.tick.tick() => false,
            _ = async {
                match hup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => true,
        }
    }
}

/// Watches for SIGHUP and for content changes of `path` (polled every `every`).
pub async fn watch(shared: Arc<Shared>, path: PathBuf, overrides: Overrides, every: Duration) {
    let mut last = std::fs::read(&path).ok();
    let mut trigger = Trigger::new(every);
    loop {
        let by_signal = trigger.next().await;
        let now = std::fs::read(&path).ok();
        if by_signal || (now.is_some() && now != last) {
            if by_signal {
                tracing::info!("SIGHUP: reloading configuration");
            }
            reload_now(&shared, &path, &overrides);
            last = now;
        }
    }
}
