//! Policy, audit mode, against real Redis: every command is forwarded unchanged —
//! what reaches Redis is exactly what the client sent (no added expiry, no clamping, refused
//! keys and denied commands executed) — while what enforce mode would have done is logged at
//! info level with the command, namespace and action, never the value, and the key only at
//! debug level.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use common::{Raw, RedisServer};

const POLICY: &str = r#"
policy:
  mode: audit
  denied_commands: [KEYS]
  namespaces:
    session:
      keys: ["session:{id}"]
      ttl: { default: 30m, min: 15m, max: 30m }
"#;

fn text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).trim_end().to_string()
}

/// Everything logged at info level and above in this test binary.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static Capture {
    static LOGS: OnceLock<Capture> = OnceLock::new();
    LOGS.get_or_init(|| {
        let cap = Capture::default();
        let writer = cap.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        cap
    })
}

fn logged() -> String {
    logs()
        .0
        .lock()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_forwards_unchanged_and_logs_what_enforce_would_do() {
    logs();
    let redis = RedisServer::start();
    let proxy = common::proxy(POLICY, &redis.url()).await;
    let mut c = Raw::connect(proxy.local_addr).await;
    let mut d = Raw::connect(format!("127.0.0.1:{}", redis.port).parse().expect("addr")).await;

    // No default expiry, no hidden EXPIRE, no clamping.
    assert_eq!(
        c.call(&[b"SET", b"session:secretkey", b"topsecretvalue"])
            .await,
        b"+OK\r\n"
    );
    assert_eq!(d.call(&[b"TTL", b"session:secretkey"]).await, b":-1\r\n");
    assert_eq!(
        c.call(&[b"HSET", b"session:h", b"f", b"v"]).await,
        b":1\r\n"
    );
    assert_eq!(d.call(&[b"TTL", b"session:h"]).await, b":-1\r\n");
    assert_eq!(
        c.call(&[b"SET", b"session:long", b"v", b"EX", b"86400"])
            .await,
        b"+OK\r\n"
    );
    assert_eq!(d.call(&[b"TTL", b"session:long"]).await, b":86400\r\n");
    assert_eq!(c.call(&[b"PERSIST", b"session:long"]).await, b":1\r\n");
    // Keys matching no namespace and denied commands reach Redis.
    assert_eq!(c.call(&[b"SET", b"user42", b"v"]).await, b"+OK\r\n");
    assert_eq!(d.call(&[b"EXISTS", b"user42"]).await, b":1\r\n");
    assert!(c.call(&[b"KEYS", b"*"]).await.starts_with(b"*4\r\n"));
    let r = text(&c.call(&[b"NO.SUCH", b"x"]).await);
    assert!(r.starts_with("-ERR unknown command"), "Redis answered: {r}");
    // Transactions are untouched too.
    c.call(&[b"MULTI"]).await;
    c.call(&[b"HSET", b"session:m", b"f", b"v"]).await;
    c.call(&[b"SET", b"bad", b"v"]).await;
    assert_eq!(c.call(&[b"EXEC"]).await, b"*2\r\n:1\r\n+OK\r\n");
    assert_eq!(d.call(&[b"TTL", b"session:m"]).await, b":-1\r\n");

    let log = logged();
    let has = |needle: &str| {
        log.lines()
            .any(|l| l.contains("enforce mode would have") && l.contains(needle))
    };
    assert!(
        has("command=\"SET\" namespace=\"session\" action=\"default\""),
        "{log}"
    );
    assert!(
        has("command=\"HSET\" namespace=\"session\" action=\"appended\""),
        "{log}"
    );
    assert!(has("namespace=\"session\" action=\"lowered\""), "{log}");
    assert!(
        has("command=\"PERSIST\" namespace=\"session\" action=\"persist\""),
        "{log}"
    );
    assert!(has("namespace=\"_unmatched\" action=\"naming\""), "{log}");
    assert!(
        has("command=\"KEYS\" namespace=\"_none\" action=\"denied_command\""),
        "{log}"
    );
    assert!(
        has("command=\"(unknown)\" namespace=\"_none\" action=\"unknown_command\""),
        "{log}"
    );
    // Never the value; the key only at debug level.
    assert!(!log.contains("topsecretvalue"), "{log}");
    assert!(!log.contains("secretkey"), "{log}");
}
