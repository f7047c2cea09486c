//! Policy reload without restart (issue 3), with the real `respguard` binary: a changed file is
//! picked up within seconds, both edited in place and swapped the way Kubernetes updates a
//! mounted ConfigMap (the `..data` symlink); an invalid file keeps the old policy in force,
//! logs every problem and counts `respguard_config_reloads_total{result="error"}`; SIGHUP
//! reloads too.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, http_get, metric, Raw, RedisServer};

/// The binary under test, killed on drop.
struct Respguard {
    child: Child,
    listen: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    stderr: PathBuf,
}

impl Drop for Respguard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn yaml(listen: u16, admin: u16, redis: u16, namespaces: &[&str]) -> String {
    let mut s = format!(
        "listen: 127.0.0.1:{listen}\nadmin: 127.0.0.1:{admin}\nupstream:\n  url: redis://127.0.0.1:{redis}\n  connect_timeout: 1s\npolicy:\n  unknown_keys: reject\n  namespaces:\n"
    );
    for ns in namespaces {
        s.push_str(&format!(
            "    {ns}:\n      keys: [\"{ns}:{{id}}\"]\n      ttl: {{ default: 10m, max: 1h }}\n"
        ));
    }
    s
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("respguard-reload-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

async fn start(config: &Path, listen: u16, admin: u16, dir: &Path) -> Respguard {
    let stderr = dir.join("stderr.log");
    let child = Command::new(env!("CARGO_BIN_EXE_respguard"))
        .arg("--config")
        .arg(config)
        .env("RESPGUARD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("start respguard");
    let rg = Respguard {
        child,
        listen: format!("127.0.0.1:{listen}").parse().expect("addr"),
        admin: format!("127.0.0.1:{admin}").parse().expect("addr"),
        stderr,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(rg.admin).await.is_err()
        || tokio::net::TcpStream::connect(rg.listen).await.is_err()
    {
        assert!(Instant::now() < deadline, "respguard did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rg
}

/// Whether `SET key v` through the proxy is accepted, on a fresh connection.
async fn accepted(rg: &Respguard, key: &str) -> bool {
    let mut c = Raw::connect(rg.listen).await;
    let r = c.call(&[b"SET", key.as_bytes(), b"v"]).await;
    match r.first() {
        Some(b'+') => true,
        Some(b'-') if r.starts_with(b"-POLICY") => false,
        _ => panic!("unexpected reply {}", String::from_utf8_lossy(&r)),
    }
}

/// Waits up to 10 s for `key` to become accepted (or refused).
async fn becomes(rg: &Respguard, key: &str, want: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if accepted(rg, key).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn reloads(rg: &Respguard, result: &str) -> f64 {
    let (code, body) = http_get(rg.admin, "/metrics").await;
    assert_eq!(code, 200);
    metric(
        &body,
        &format!("respguard_config_reloads_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Replaces `link` with a symlink to `target` atomically (write a new link, rename over).
fn swap_symlink(dir: &Path, target: &str, link: &str) {
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join(link)).expect("rename symlink");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_file_applies_and_invalid_file_keeps_the_old_policy() {
    let redis = RedisServer::start();
    let (listen, admin) = (free_port(), free_port());
    let dir = temp_dir("edit");
    let path = dir.join("respguard.yaml");
    std::fs::write(&path, yaml(listen, admin, redis.port, &["a"])).expect("write");
    let rg = start(&path, listen, admin, &dir).await;
    assert!(accepted(&rg, "a:1").await);
    assert!(!accepted(&rg, "b:1").await);

    // A connection opened before the change sees the new policy too.
    let mut early = Raw::connect(rg.listen).await;
    std::fs::write(&path, yaml(listen, admin, redis.port, &["a", "b"])).expect("write");
    assert!(becomes(&rg, "b:1", true).await, "new policy not applied");
    assert_eq!(early.call(&[b"SET", b"b:2", b"v"]).await, b"+OK\r\n");
    assert!(reloads(&rg, "ok").await >= 1.0);

    // An invalid file: the old policy stays, every problem is logged, the error is counted.
    let broken = yaml(listen, admin, redis.port, &["a"])
        .replace("default: 10m, max: 1h", "default: 2h, max: 1h")
        .replace("unknown_keys: reject", "unknown_keys: sometimes");
    std::fs::write(&path, broken).expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads(&rg, "error").await < 1.0 {
        assert!(Instant::now() < deadline, "invalid config not counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        accepted(&rg, "b:3").await,
        "old policy (with b) must stay in force"
    );
    assert!(!accepted(&rg, "c:1").await);
    let log = std::fs::read_to_string(&rg.stderr).unwrap_or_default();
    assert!(log.contains("policy.unknown_keys"), "{log}");
    assert!(log.contains("policy.namespaces.a.ttl.default"), "{log}");

    // Fixed again: applies.
    std::fs::write(&path, yaml(listen, admin, redis.port, &["c"])).expect("write");
    assert!(becomes(&rg, "c:1", true).await);
    assert!(!accepted(&rg, "b:4").await);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_style_symlink_swap_applies() {
    let redis = RedisServer::start();
    let (listen, admin) = (free_port(), free_port());
    let dir = temp_dir("k8s");
    // Like a ConfigMap volume: config.yaml -> ..data/config.yaml, ..data -> ..v1
    for (v, ns) in [
        ("..v1", &["a"][..]),
        ("..v2", &["a", "b"]),
        ("..v3", &["z"]),
    ] {
        std::fs::create_dir_all(dir.join(v)).expect("dir");
        std::fs::write(
            dir.join(v).join("config.yaml"),
            yaml(listen, admin, redis.port, ns),
        )
        .expect("write");
    }
    std::fs::create_dir_all(dir.join("..bad")).expect("dir");
    std::fs::write(dir.join("..bad/config.yaml"), "policy: [not, a, map\n").expect("write");
    swap_symlink(&dir, "..v1", "..data");
    std::os::unix::fs::symlink("..data/config.yaml", dir.join("config.yaml")).expect("symlink");

    let rg = start(&dir.join("config.yaml"), listen, admin, &dir).await;
    assert!(!accepted(&rg, "b:1").await);
    swap_symlink(&dir, "..v2", "..data");
    assert!(
        becomes(&rg, "b:1", true).await,
        "swapped ConfigMap not applied"
    );

    swap_symlink(&dir, "..bad", "..data");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads(&rg, "error").await < 1.0 {
        assert!(Instant::now() < deadline, "invalid config not counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted(&rg, "b:2").await, "old policy must stay in force");

    swap_symlink(&dir, "..v3", "..data");
    assert!(becomes(&rg, "z:1", true).await);
    assert!(!accepted(&rg, "a:1").await);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    let redis = RedisServer::start();
    let (listen, admin) = (free_port(), free_port());
    let dir = temp_dir("hup");
    let path = dir.join("respguard.yaml");
    std::fs::write(&path, yaml(listen, admin, redis.port, &["a"])).expect("write");
    let rg = start(&path, listen, admin, &dir).await;
    let before = reloads(&rg, "ok").await;
    // The content is unchanged, so only the signal can cause a reload.
    let status = Command::new("kill")
        .args(["-HUP", &rg.child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads(&rg, "ok").await <= before {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted(&rg, "a:1").await);
    let _ = std::fs::remove_dir_all(&dir);
}
