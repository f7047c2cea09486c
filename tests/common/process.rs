//! Child processes that cannot outlive the test that started them.
//!
//! A `Drop` guard is not enough: a test killed by a timeout or by `SIGKILL` runs no destructor,
//! and a redis-server or respguard left behind keeps its port and memory. Each child is started
//! through `sh`, which first puts a watcher in the background and then `exec`s the real program
//! (so the child's pid *is* the program's pid, which the port-ownership check relies on). The
//! watcher reads the child's stdin, a pipe whose only write end this process holds: when this
//! process ends, however it ends, the kernel closes that end, the read returns, and the watcher
//! sends `SIGKILL` to the program. No polling, no unsafe code, no parent-death signal.

use std::ffi::OsStr;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Started as `sh -c WATCH program args...`: `$0` is the program, `$@` its arguments, and `$$`
/// (in the subshell too) the shell's pid, which the program takes over at `exec`. The watcher
/// kills only the process it started with (same start time in `/proc/PID/stat`), never a
/// process that reused the pid after the child exited and was reaped.
const WATCH: &str = r#"exec 3<&0
(st=$(cut -d' ' -f22 /proc/$$/stat)
 cat <&3
 [ "$(cut -d' ' -f22 /proc/$$/stat 2>/dev/null)" = "$st" ] && kill -KILL $$) >/dev/null 2>&1 &
exec 3<&- </dev/null
exec "$0" "$@""#;

/// A command that runs `program` under the watcher; add arguments, environment and output
/// redirections as usual, then [`spawn`] it.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(WATCH).arg(program);
    c
}

/// A child started by [`spawn`]: killed on drop, and by its watcher if this process dies.
pub struct Guarded {
    child: Child,
    lifeline: Option<ChildStdin>,
}

/// Spawns a command made by [`command`]. Its stdin is the watcher's pipe; the write end is
/// close-on-exec, so no other child inherits it.
pub fn spawn(cmd: &mut Command) -> std::io::Result<Guarded> {
    let mut child = cmd.stdin(Stdio::piped()).spawn()?;
    let lifeline = child.stdin.take();
    Ok(Guarded { child, lifeline })
}

impl Guarded {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the child has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Whether the child is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `limit` for the child to exit by itself: its status and how long it took.
    pub async fn exit_within(&mut self, limit: Duration) -> Option<(ExitStatus, Duration)> {
        let t = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                return Some((status, t.elapsed()));
            }
            if t.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends `signal` (a name such as `TERM` or `HUP`) to the child.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.id());
    }

    /// Kills the child and reaps it. The watcher is told first (by closing the pipe) and the
    /// child is reaped only once it is gone, so the watcher never signals a reused pid.
    pub fn kill(&mut self) {
        if self.lifeline.take().is_none() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Resident memory of process `pid` in bytes (`VmRSS` in /proc/PID/status).
pub fn rss_bytes(pid: u32) -> usize {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let kb: usize = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}
