//! Reloading: SIGHUP, or a change of the configuration file's content, re-reads the file;
//! the same trigger re-reads the TLS certificate files.
//!
//! Kubernetes updates a mounted ConfigMap by swapping a symlink, so the file is compared by
//! content, read through its path, rather than by inotify on the inode or by mtime. A file that
//! fails validation changes nothing: the old configuration stays in force and every problem is
//! logged and counted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::shared::Shared;
use crate::config::{Config, Overrides};

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

/// Every certificate, key and CA file in force, with its content (`None` if unreadable).
fn snapshot(cfg: &Config) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let files = cfg
        .upstream
        .tls
        .iter()
        .map(|t| &t.files)
        .chain(cfg.tls.iter().map(|t| &t.files));
    files
        .flat_map(|f| [&f.ca_file, &f.cert_file, &f.key_file])
        .flatten()
        .map(|p| (p.clone(), std::fs::read(p).ok()))
        .collect()
}

/// Rebuilds the TLS material from its files. A file that cannot be used changes nothing:
/// the material in force stays, the problem is logged and counted.
pub fn reload_tls_now(shared: &Shared) {
    let cfg = shared.config();
    let results = cfg
        .upstream
        .tls
        .iter()
        .map(|t| ("upstream.tls", t.reload()))
        .chain(cfg.tls.iter().map(|t| ("tls", t.reload())));
    for (section, r) in results {
        match r {
            Ok(()) => {
                shared.metrics.tls_reload(true);
                tracing::info!(
                    section,
                    "TLS certificates reloaded; new handshakes use them"
                );
            }
            Err(e) => {
                shared.metrics.tls_reload(false);
                tracing::error!(section, error = %e, "TLS certificate reload refused; the certificates in force stay");
            }
        }
    }
}

/// Re-reads the TLS files on SIGHUP and whenever their content changes (polled every
/// `every`; content rather than inode or mtime, for the symlink swap of a mounted secret).
pub async fn watch_tls(shared: std::sync::Weak<Shared>, every: Duration) {
    let Some(first) = shared.upgrade() else {
        return;
    };
    let mut last = snapshot(&first.config());
    if last.is_empty() {
        return;
    }
    drop(first);
    let mut trigger = Trigger::new(every);
    loop {
        let by_signal = trigger.next().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = snapshot(&shared.config());
        if by_signal || now != last {
            reload_tls_now(&shared);
            last = now;
        }
    }
}
