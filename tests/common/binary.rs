//! The real `respguard` binary as a child process: started on free ports it is verified to
//! own, ready only once its `/readyz` says so, killed on drop or when the test process dies.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::ports::{free_port, listens};
use super::process::{self, Guarded};
use super::prom::try_http_get;

pub const BIN: &str = env!("CARGO_BIN_EXE_respguard");

/// The binary with a clean environment: no `RESPGUARD_*` variable of the test runner's leaks
/// in, and logs at `info`.
pub fn respguard_command() -> Command {
    let mut c = Command::new(BIN);
    clean_env(&mut c);
    c
}

fn clean_env(c: &mut Command) {
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("RESPGUARD_") {
            c.env_remove(var);
        }
    }
    c.env("RESPGUARD_LOG", "info");
}

/// A scratch directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "respguard-{name}-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        TempDir(d)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` in the directory; returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How to start the binary: arguments (e.g. `--config FILE`, `--upstream URL`) and extra
/// environment; `--listen` and `--admin` are added with free ports.
#[derive(Default, Clone)]
pub struct Launch {
    pub args: Vec<std::ffi::OsString>,
    pub env: Vec<(String, String)>,
    /// Wait for `/readyz` to answer 200 (Redis reachable through the proxy's credentials);
    /// when false, only for both ports to be ours.
    pub no_readyz: bool,
}

impl Launch {
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Launch {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Launch {
        self.env.push((k.into(), v.into()));
        self
    }
}

/// The running binary.
pub struct Respguard {
    child: Guarded,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// Where its stderr (the log) goes.
    pub log: PathBuf,
    _dir: TempDir,
    extra_dirs: Vec<TempDir>,
}

impl Respguard {
    /// Starts the binary as `launch` says and waits (up to 20 s per attempt) until it owns its
    /// client and admin ports and, unless `no_readyz`, `/readyz` is 200. A port taken by
    /// another process in the meantime is retried elsewhere.
    pub async fn start(launch: Launch) -> Respguard {
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(&launch).await {
                Ok(rg) => return rg,
                Err(why) => last = why,
            }
        }
        panic!("respguard did not start on any of 5 port pairs; last attempt: {last}");
    }

    async fn try_start(launch: &Launch) -> Result<Respguard, String> {
        let (listen, admin) = (free_port(), free_port());
        let dir = TempDir::new("bin");
        let log = dir.0.join("stderr.log");
        let mut cmd = process::command(BIN);
        clean_env(&mut cmd);
        cmd.args(&launch.args)
            .arg("--listen")
            .arg(format!("127.0.0.1:{listen}"))
            .arg("--admin")
            .arg(format!("127.0.0.1:{admin}"))
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let child = process::spawn(&mut cmd).expect("spawn respguard");
        let mut rg = Respguard {
            child,
            listen: ([127, 0, 0, 1], listen).into(),
            admin: ([127, 0, 0, 1], admin).into(),
            log,
            _dir: dir,
            extra_dirs: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = rg.child.try_wait() {
                return Err(format!("exited with {status}: {}", rg.log_text()));
            }
            let pid = rg.child.id();
            if listens(pid, listen) && listens(pid, admin) {
                if launch.no_readyz {
                    return Ok(rg);
                }
                if let Ok((200, _)) = try_http_get(rg.admin, "/readyz").await {
                    return Ok(rg);
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not ready within 20 s (ports owned: {}/{}): {}",
                    listens(pid, listen),
                    listens(pid, admin),
                    rg.log_text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`TERM`, `HUP`, ...) to the binary.
    pub fn signal(&self, signal: &str) {
        self.child.signal(signal);
    }

    /// Waits up to `limit` for the binary to exit: its status and how long it took.
    pub async fn exit_within(&mut self, limit: Duration) -> Option<(ExitStatus, Duration)> {
        self.child.exit_within(limit).await
    }

    /// Everything the binary has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 10 s) until the log contains `needle`; the log so far either way.
    pub async fn wait_log(&self, needle: &str) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log_text();
            if log.contains(needle) {
                return Ok(log);
            }
            if Instant::now() >= deadline {
                return Err(log);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the binary in front of `upstream` with the configuration `yaml` (a file in its
    /// own scratch directory).
    pub async fn start_yaml(yaml: &str, upstream: &str) -> Respguard {
        let dir = TempDir::new("conf");
        let path = dir.write("respguard.yaml", yaml);
        let mut rg = Respguard::start(
            Launch::default()
                .arg("--config")
                .arg(&path)
                .arg("--upstream")
                .arg(upstream),
        )
        .await;
        rg.extra_dirs.push(dir);
        rg
    }

    /// The binary's resident memory in bytes.
    pub fn rss(&self) -> usize {
        super::process::rss_bytes(self.pid())
    }
}
