//! `respguard audit ...`: the flags, the runtime, Ctrl-C, where output goes and the exit code.
//!
//! The report goes to stdout (progress and errors to stderr), so `--format json > audit.json`
//! works in a CI job. Exit codes: 0 no violations, 1 violations found, 2 Redis unreachable or
//! unusable, 3 the suggested policy could not be written, 64 bad flags or configuration, 130
//! interrupted (the partial report is still printed).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{parse_size, Config, Overrides, EXIT_BAD_CONFIG};

use super::{
    run, Format, Options, Stop, EXIT_INTERRUPTED, EXIT_SUGGEST, EXIT_UPSTREAM, EXIT_VIOLATIONS,
};

pub const USAGE: &str = "\
respguard audit: measure an existing Redis against the policy

USAGE:
    respguard audit [--config FILE] [--upstream URL] [--sample N] [--rate OPS]
                    [--format table|json|markdown] [--suggest-policy FILE]
                    [--fix-ttl [--apply]] [--value-cap SIZE] [--batch N]

OPTIONS:
    --config FILE          the proxy's configuration: its policy and upstream (auth, db)
    --upstream URL         redis://[user[:password]@]host:port[/db] or unix:///path.sock
    --sample N             stop after N keys
    --rate OPS             at most OPS commands per second (default: as fast as Redis answers)
    --format F             table (default), json or markdown, on stdout
    --suggest-policy FILE  write a starting configuration from what was seen
    --fix-ttl              plan expiries for keys without one (PEXPIRE key default NX) and
                           above the maximum (PEXPIRE key max LT); a dry run without --apply
    --apply                with --fix-ttl: send those commands; values are never touched
    --value-cap SIZE       largest string or hash read for the sensitive rules (default 64KB)
    --batch N              SCAN COUNT (default 1000)

EXIT CODES:
    0 no violations, 1 violations found, 2 Redis unreachable or refused a command,
    3 the suggested policy could not be written, 64 bad flags or configuration,
    130 interrupted by Ctrl-C (the partial report is printed)
";

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("respguard audit: {msg}\n\n{USAGE}");
    ExitCode::from(EXIT_BAD_CONFIG as u8)
}

/// Entry point for `respguard audit ARGS`.
pub fn main(args: &[String]) -> ExitCode {
    let mut opts = Options::default();
    let mut overrides = Overrides::from_env();
    let mut config_path: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next().cloned());
        macro_rules! need {
            () => {
                match value() {
                    Some(v) => v,
                    None => return usage_error(&format!("{flag} needs a value")),
                }
            };
        }
        match flag {
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--config" | "-c" => config_path = Some(PathBuf::from(need!())),
            "--upstream" => overrides.upstream = Some(("--upstream".into(), need!())),
            "--sample" => match need!().parse::<u64>() {
                Ok(n) if n > 0 => opts.sample = Some(n),
                _ => return usage_error("--sample takes a positive number of keys"),
            },
            "--rate" => match need!().parse::<u32>() {
                Ok(n) if n > 0 => opts.rate = Some(n),
                _ => return usage_error("--rate takes a positive number of commands per second"),
            },
            "--batch" => match need!().parse::<usize>() {
                Ok(n) if (1..=100_000).contains(&n) => opts.batch = n,
                _ => return usage_error("--batch takes a number from 1 to 100000"),
            },
            "--value-cap" => match parse_size(&need!()) {
                Ok(n) => opts.value_cap = n,
                Err(e) => return usage_error(&format!("--value-cap: {e}")),
            },
            "--format" => {
                opts.format = match need!().as_str() {
                    "table" => Format::Table,
                    "json" => Format::Json,
                    "markdown" | "md" => Format::Markdown,
                    other => {
                        return usage_error(&format!(
                            "unknown format {other:?} (table, json or markdown)"
                        ))
                    }
                }
            }
            "--suggest-policy" => opts.suggest_policy = Some(PathBuf::from(need!())),
            "--fix-ttl" => opts.fix_ttl = true,
            "--apply" => opts.apply = true,
            other => return usage_error(&format!("unknown audit argument {other:?}")),
        }
    }
    if opts.apply && !opts.fix_ttl {
        return usage_error("--apply only goes with --fix-ttl");
    }
    if let Some(rate) = opts.rate {
        // Each key costs about three commands: keep one batch within about a tenth of a
        // second of the budget, so the pace is even rather than bursts and pauses.
        let per_batch = usize::try_from(rate / 30).unwrap_or(usize::MAX).max(10);
        opts.batch = opts.batch.min(per_batch);
    }
    let loaded = match &config_path {
        Some(p) => Config::load(p, &overrides),
        None => Config::parse("", "(defaults)", &overrides),
    };
    let config = match loaded {
        Ok(c) => c,
        Err(errs) => {
            eprint!("respguard audit: configuration invalid: {errs}");
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("respguard audit: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_UPSTREAM);
        }
    };
    runtime.block_on(async {
        let stop = std::sync::Arc::new(Stop::default());
        let on_signal = stop.clone();
        // Installed before the walk starts, so Ctrl-C never kills the process mid-report.
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
            Ok(mut sigint) => {
                tokio::spawn(async move {
                    if sigint.recv().await.is_some() {
                        eprintln!("\nrespguard audit: interrupted; finishing the batches in flight");
                        on_signal.request();
                    }
                });
            }
            Err(e) => eprintln!("respguard audit: cannot catch Ctrl-C ({e}); it will end the audit without a report"),
        }
        let outcome = match run(&config, &opts, &stop).await {
            Ok(o) => o,
            Err(e) => {
                eprintln!("respguard audit: {e}");
                return ExitCode::from(EXIT_UPSTREAM);
            }
        };
        let text = match opts.format {
            Format::Json => outcome.report.json() + "\n",
            Format::Table => outcome.report.text(false),
            Format::Markdown => outcome.report.text(true),
        };
        print!("{text}");
        let mut code = if outcome.report.partial {
            EXIT_INTERRUPTED
        } else if outcome.report.has_violations() {
            EXIT_VIOLATIONS
        } else {
            0
        };
        if let (Some(path), Some(s)) = (&opts.suggest_policy, outcome.suggestion) {
            match s.map(|yaml| std::fs::write(path, yaml).map_err(|e| e.to_string())) {
                Ok(Ok(())) => eprintln!("respguard audit: suggested policy written to {}", path.display()),
                Ok(Err(e)) | Err(e) => {
                    eprintln!("respguard audit: cannot write the suggested policy to {}: {e}", path.display());
                    code = EXIT_SUGGEST;
                }
            }
        }
        ExitCode::from(code)
    })
}
