//! The `respguard` binary: parse flags, load the configuration, bind, serve, drain on SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::BytesMut;
use respguard::codec::{encode_command, Limits};
use respguard::config::{Config, Overrides, UpstreamConfig, EXIT_BAD_CONFIG};
use respguard::policy::PolicyConfig;
use respguard::proxy::reload;
use respguard::upstream::Upstream;
use respguard::Proxy;

const USAGE: &str = "\
respguard: a policy-enforcing Redis (RESP) sidecar proxy

USAGE:
    respguard --config FILE [--listen ADDR] [--upstream URL] [--admin ADDR]
    respguard --check-config FILE
    respguard stats [--admin ADDR] [--interval 2s] [--once]
    respguard acl --config FILE [--user NAME]
    respguard audit --config FILE [--upstream URL] [--format table|json|markdown] ...

OPTIONS:
    --config FILE         YAML configuration (see config/example.yaml)
    --listen ADDR         address for clients, e.g. 0.0.0.0:6380 (env RESPGUARD_LISTEN)
    --upstream URL        redis://[user[:password]@]host:port[/db], rediss://... (TLS),
                          or unix:///path.sock
                          (env RESPGUARD_UPSTREAM)
    --admin ADDR          HTTP address for /healthz, /readyz, /metrics (env RESPGUARD_ADMIN)
    --check-config FILE   validate FILE; exit 0 if valid, 64 listing every problem if not
    stats                 live hit rates, ops/s and policy actions from a running proxy's
                          admin port (default 127.0.0.1:9090, or $RESPGUARD_ADMIN)
    acl                   print the ACL SETUSER commands for the Redis user respguard
                          should connect as (the policy's keys and commands, for
                          redis-cli); --user defaults to the upstream URL's user
    audit                 measure an existing Redis against the policy (audit --help)
    -h, --help            this text
    -V, --version         the version

ENVIRONMENT:
    RESPGUARD_UPSTREAM_PASSWORD   upstream password (wins over the URL and password_file)
    RESPGUARD_LOG                 log filter, e.g. info, debug, respguard=debug
";

struct Args {
    config: Option<PathBuf>,
    check: bool,
    overrides: Overrides,
}

fn parse_args() -> Result<Args, String> {
    let mut overrides = Overrides::from_env();
    let mut config = None;
    let mut check = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "-V" | "--version" => {
                println!("respguard {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "--config" | "-c" => config = Some(PathBuf::from(value("--config")?)),
            "--check-config" => {
                config = Some(PathBuf::from(value("--check-config")?));
                check = true;
            }
            "--listen" => overrides.listen = Some(("--listen".into(), value("--listen")?)),
            "--upstream" => overrides.upstream = Some(("--upstream".into(), value("--upstream")?)),
            "--admin" => overrides.admin = Some(("--admin".into(), value("--admin")?)),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        config,
        check,
        overrides,
    })
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RESPGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// `respguard stats`: a terminal view of a running proxy's metrics.
fn stats_main(args: &[String]) -> ExitCode {
    let mut admin = std::env::var("RESPGUARD_ADMIN").unwrap_or_else(|_| "127.0.0.1:9090".into());
    let mut interval = Duration::from_secs(2);
    let mut once = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--admin" => match it.next() {
                Some(v) => admin = v.clone(),
                None => return usage_error("--admin needs a value"),
            },
            "--interval" => match it.next().map(|v| respguard::config::parse_duration(v)) {
                Some(Ok(d)) => interval = d,
                Some(Err(e)) => return usage_error(&e),
                None => return usage_error("--interval needs a value"),
            },
            "--once" => once = true,
            other => return usage_error(&format!("unknown stats argument {other:?}")),
        }
    }
    let addr = match admin.parse() {
        Ok(a) => a,
        Err(_) => return usage_error(&format!("{admin:?} is not an address (host:port)")),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("respguard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    match runtime.block_on(respguard::stats::run(addr, interval, once, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("respguard stats: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `respguard acl`: the Redis ACL user that mirrors the policy.
fn acl_main(args: &[String]) -> ExitCode {
    let mut path = None;
    let mut user = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => match it.next() {
                Some(v) => path = Some(PathBuf::from(v)),
                None => return usage_error("--config needs a value"),
            },
            "--user" => match it.next() {
                Some(v) => user = Some(v.clone()),
                None => return usage_error("--user needs a value"),
            },
            other => return usage_error(&format!("unknown acl argument {other:?}")),
        }
    }
    let Some(path) = path else {
        return usage_error("acl needs --config FILE");
    };
    let config = match Config::load(&path, &Overrides::from_env()) {
        Ok(c) => c,
        Err(errs) => {
            eprint!("respguard: configuration invalid: {errs}");
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    let user = user
        .or_else(|| config.upstream.username.clone())
        .unwrap_or_else(|| "respguard".to_string());
    let password = config.upstream.password.as_ref().map(|s| s.0.as_str());
    if password.is_none() {
        eprintln!("respguard: no upstream password is configured, so the user gets none and cannot log in: add one (ACL SETUSER {user} >...) and give respguard the same in upstream.password_file");
    }
    if config.policy.is_none() {
        eprintln!("respguard: the configuration has no policy: the user may run every command on every key");
    }
    for line in respguard::policy::acl::setuser_commands(config.policy.as_deref(), &user, password)
    {
        println!("{line}");
    }
    ExitCode::SUCCESS
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("respguard: {msg}\n\n{USAGE}");
    ExitCode::from(EXIT_BAD_CONFIG as u8)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some("stats") => return stats_main(&argv[2..]),
        Some("acl") => return acl_main(&argv[2..]),
        Some("audit") => return respguard::audit::cli::main(&argv[2..]),
        _ => {}
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("respguard: {e}\n\n{USAGE}");
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };

    // 1. configuration
    let loaded = match &args.config {
        Some(p) => Config::load(p, &args.overrides),
        None => Config::parse("", "(defaults)", &args.overrides),
    };
    let config = match loaded {
        Ok(c) => c,
        Err(errs) => {
            if args.check {
                eprint!("respguard: configuration invalid: {errs}");
            } else {
                eprint!("respguard: refusing to start: {errs}");
            }
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    if args.check {
        for w in &config.warnings {
            eprintln!("respguard: warning: {w}");
        }
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    init_logging();
    raise_open_file_limit();
    for w in &config.warnings {
        tracing::warn!("{w}");
    }

    // One worker runs on the current thread: no cross-thread wake-ups, which is cheapest
    // when the sidecar should use about one core.
    let mut builder = if config.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.workers);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("respguard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config, args.overrides))
}

/// Raises the soft open file limit to the hard one, as Redis does: each client may need two
/// descriptors, and the default soft limit (often 1024) is far below `max_clients`.
fn raise_open_file_limit() {
    let before = rlimit::Resource::NOFILE.get().map(|(soft, _)| soft);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) => match before {
            Ok(soft) if soft < now => {
                tracing::info!(from = soft, to = now, "open file limit raised");
            }
            _ => tracing::info!(open_files = now, "open file limit"),
        },
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
}

async fn run(config: Config, overrides: Overrides) -> ExitCode {
    let grace = config.shutdown_grace;
    let path = config.path.clone();
    tracing::info!(
        upstream = %config.upstream.addr,
        policy = config.policy.is_some(),
        "starting respguard {}",
        env!("CARGO_PKG_VERSION")
    );

    let check = (
        config.upstream.clone(),
        config.limits,
        config.policy.clone(),
    );

    // 2. bind and 3. spawn
    let proxy = match Proxy::start(config).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot bind");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = path {
        tokio::spawn(reload::watch(
            proxy.shared.clone(),
            path,
            overrides,
            Duration::from_secs(2),
        ));
    }

    if let (up, limits, Some(policy)) = check {
        tokio::spawn(check_upstream_user(up, limits, policy));
    }

    // 4. signal
    wait_for_signal().await;

    // 5. drain
    proxy.shutdown(grace).await;
    ExitCode::SUCCESS
}

/// Warns when the Redis user respguard connects as may run commands the policy denies: code
/// running inside Redis (scripts) is bounded by that user's ACL, not by respguard. Asks Redis
/// with `ACL DRYRUN`, once, at start; a user that may not ask is not an all-powerful one.
async fn check_upstream_user(up: UpstreamConfig, limits: Limits, policy: PolicyConfig) {
    use respguard::policy::acl;
    let conn = match Upstream::connect(&up, &limits).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "upstream user not checked");
            return;
        }
    };
    let whoami = match conn
        .call(b"*2\r\n$3\r\nACL\r\n$6\r\nWHOAMI\r\n", 1, &limits)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "upstream user not checked");
            return;
        }
    };
    // `$<len>\r\n<name>\r\n`; an error (an old Redis, no permission) skips the check.
    let Some(user) = whoami.first().and_then(|r| {
        let start = r.iter().position(|&b| b == b'\n')? + 1;
        (r.first() == Some(&b'$')).then(|| r.get(start..r.len().checked_sub(2)?))?
    }) else {
        return;
    };
    let probes = acl::dryrun_probes(&policy, user);
    if probes.is_empty() {
        return;
    }
    let mut req = BytesMut::new();
    for (_, argv) in &probes {
        encode_command(&mut req, argv.iter().map(Vec::as_slice));
    }
    let replies = match conn.call(&req, probes.len(), &limits).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "upstream user not checked");
            return;
        }
    };
    let user_name = String::from_utf8_lossy(user);
    match acl::open_doors(&probes, &replies) {
        None => {
            tracing::info!(user = %user_name, "the upstream Redis user may not run ACL DRYRUN, so it is not checked further")
        }
        Some(open) if open.is_empty() => {
            tracing::info!(user = %user_name, "the upstream Redis user may run none of the keyless commands the policy denies")
        }
        Some(open) => {
            tracing::warn!(
                user = %user_name,
                count = open.len(),
                commands = %open.join(", "),
                "the upstream Redis user may run commands the policy denies, and scripts run with its rights: connect respguard as the user `respguard acl --config FILE` prints"
            );
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
}
