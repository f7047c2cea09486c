//! Policy inside pipelines, transactions and scripts, against real Redis: appended
//! `EXPIRE key ttl NX` commands join a `MULTI` and their replies are removed from the `EXEC`
//! array, so the client sees exactly the replies of what it queued; a refused command inside
//! `MULTI` aborts the transaction as Redis would (`EXECABORT`) and nothing of it is applied;
//! `WATCH` still aborts on a concurrent change; pipelines keep their order; the `redis` crate's
//! pipelines and atomic pipelines work unchanged.

mod common;

use bytes::BytesMut;
use common::{Raw, RedisServer};

const POLICY: &str = r#"
policy:
  denied_commands: [KEYS]
  namespaces:
    session:
      keys: ["session:{id}"]
      ttl: { default: 30m, min: 15m, max: 30m }
    rate_limit:
      keys: ["rate_limit:{action}:{id}"]
      ttl: { default: 5m, min: 5m, max: 15m }
"#;

fn text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).trim_end().to_string()
}

async fn setup() -> (RedisServer, respguard::Proxy, Raw, Raw) {
    let redis = RedisServer::start();
    let proxy = common::proxy(POLICY, &redis.url()).await;
    let c = Raw::connect(proxy.local_addr).await;
    let d = Raw::connect(format!("127.0.0.1:{}", redis.port).parse().expect("addr")).await;
    (redis, proxy, c, d)
}

async fn ttl(d: &mut Raw, key: &[u8]) -> i64 {
    text(&d.call(&[b"TTL", key]).await)
        .trim_start_matches(':')
        .parse()
        .unwrap_or(-3)
}

fn encode_all(cmds: &[&[&[u8]]]) -> Vec<u8> {
    let mut b = BytesMut::new();
    for c in cmds {
        respguard::codec::encode_command(&mut b, c.iter().copied());
    }
    b.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_shows_exactly_the_queued_replies() {
    let (_r, _p, mut c, mut d) = setup().await;
    assert_eq!(c.call(&[b"MULTI"]).await, b"+OK\r\n");
    for cmd in [
        &[&b"HSET"[..], b"session:1", b"f", b"v"][..],
        &[b"SET", b"session:2", b"v"],
        &[b"INCR", b"rate_limit:login:1"],
        &[b"MSET", b"session:3", b"a", b"session:4", b"b"],
        &[b"GET", b"session:2"],
    ] {
        assert_eq!(c.call(cmd).await, b"+QUEUED\r\n");
    }
    assert_eq!(
        c.call(&[b"EXEC"]).await,
        b"*5\r\n:1\r\n+OK\r\n:1\r\n+OK\r\n$1\r\nv\r\n".to_vec()
    );
    for key in [&b"session:1"[..], b"session:2", b"session:3", b"session:4"] {
        assert!((1790..=1800).contains(&ttl(&mut d, key).await));
    }
    assert!((290..=300).contains(&ttl(&mut d, b"rate_limit:login:1").await));
    // The connection is still paired correctly afterwards.
    assert_eq!(c.call(&[b"PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_command_aborts_the_transaction() {
    let (_r, _p, mut c, mut d) = setup().await;
    assert_eq!(c.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(
        c.call(&[b"HSET", b"session:1", b"f", b"v"]).await,
        b"+QUEUED\r\n"
    );
    let r = text(&c.call(&[b"SET", b"user42", b"v"]).await);
    assert!(r.starts_with("-POLICY key \"user42\""), "{r}");
    assert!(text(&c.call(&[b"PERSIST", b"session:1"]).await).starts_with("-POLICY"));
    assert_eq!(
        text(&c.call(&[b"EXEC"]).await),
        "-EXECABORT Transaction discarded because of previous errors."
    );
    assert_eq!(
        d.call(&[b"EXISTS", b"session:1", b"user42"]).await,
        b":0\r\n"
    );
    // A fresh transaction works.
    c.call(&[b"MULTI"]).await;
    c.call(&[b"SET", b"session:1", b"v"]).await;
    assert_eq!(c.call(&[b"EXEC"]).await, b"*1\r\n+OK\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_works_with_appended_commands() {
    let (_r, _p, mut c, mut d) = setup().await;
    assert_eq!(c.call(&[b"WATCH", b"session:w"]).await, b"+OK\r\n");
    assert_eq!(c.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(
        c.call(&[b"HSET", b"session:w", b"f", b"v"]).await,
        b"+QUEUED\r\n"
    );
    assert_eq!(c.call(&[b"EXEC"]).await, b"*1\r\n:1\r\n");
    assert!((1790..=1800).contains(&ttl(&mut d, b"session:w").await));
    let r = text(&c.call(&[b"WATCH", b"nope"]).await);
    assert!(r.starts_with("-POLICY key \"nope\""), "{r}");
}

/// A transaction aborted by WATCH answers `*-1` (a null array) even though hidden commands
/// were queued: the client must get the null reply, not a closed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_abort_with_appended_commands_answers_null() {
    let (_r, _p, mut c, mut d) = setup().await;
    assert_eq!(c.call(&[b"WATCH", b"session:w"]).await, b"+OK\r\n");
    assert_eq!(c.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(
        c.call(&[b"HSET", b"session:w", b"f", b"v"]).await,
        b"+QUEUED\r\n"
    );
    d.call(&[b"SET", b"session:w", b"other"]).await;
    assert_eq!(c.call(&[b"EXEC"]).await, b"*-1\r\n");
    assert_eq!(d.call(&[b"GET", b"session:w"]).await, b"$5\r\nother\r\n");
    assert_eq!(c.call(&[b"PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_keep_order_with_hidden_and_refused_commands() {
    let (_r, _p, mut c, mut d) = setup().await;
    let mut cmds: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut want: Vec<Vec<u8>> = Vec::new();
    for i in 0..200 {
        let key = format!("session:{i}").into_bytes();
        match i % 4 {
            0 => {
                cmds.push(vec![b"HSET".to_vec(), key, b"f".to_vec(), b"v".to_vec()]);
                want.push(b":1\r\n".to_vec());
            }
            1 => {
                cmds.push(vec![
                    b"SET".to_vec(),
                    key,
                    b"v".to_vec(),
                    b"EX".to_vec(),
                    b"99999".to_vec(),
                ]);
                want.push(b"+OK\r\n".to_vec());
            }
            2 => {
                cmds.push(vec![
                    b"SET".to_vec(),
                    format!("bad{i}").into_bytes(),
                    b"v".to_vec(),
                ]);
                want.push(format!("-POLICY key \"bad{i}\"").into_bytes());
            }
            _ => {
                cmds.push(vec![b"KEYS".to_vec(), b"*".to_vec()]);
                want.push(b"-POLICY KEYS is disabled here: use SCAN\r\n".to_vec());
            }
        }
    }
    let refs: Vec<Vec<&[u8]>> = cmds
        .iter()
        .map(|c| c.iter().map(Vec::as_slice).collect())
        .collect();
    let refs2: Vec<&[&[u8]]> = refs.iter().map(Vec::as_slice).collect();
    c.send(&encode_all(&refs2)).await;
    for (i, w) in want.iter().enumerate() {
        let got = c.read().await;
        assert!(
            got.starts_with(w),
            "reply {i}: {} (wanted {})",
            text(&got),
            text(w)
        );
    }
    for i in (0..200).step_by(4) {
        assert!((1790..=1800).contains(&ttl(&mut d, format!("session:{i}").as_bytes()).await));
        assert!((1790..=1800).contains(&ttl(&mut d, format!("session:{}", i + 1).as_bytes()).await));
    }
    assert_eq!(d.call(&[b"EXISTS", b"bad2", b"bad6"]).await, b":0\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crate_pipelines_and_transactions() {
    let (redis, proxy, _c, mut d) = setup().await;
    let mut con = common::proxy_conn(&proxy).await;
    let (a, b, n): (i64, String, i64) = redis::pipe()
        .cmd("HSET")
        .arg("session:p1")
        .arg("f")
        .arg("v")
        .cmd("SET")
        .arg("session:p2")
        .arg("v")
        .ignore()
        .cmd("GET")
        .arg("session:p2")
        .cmd("INCR")
        .arg("rate_limit:api:1")
        .query_async(&mut con)
        .await
        .expect("pipeline");
    assert_eq!((a, b.as_str(), n), (1, "v", 1));
    let (x, y): (i64, i64) = redis::pipe()
        .atomic()
        .cmd("SADD")
        .arg("session:t1")
        .arg("m")
        .cmd("LPUSH")
        .arg("session:t2")
        .arg("a")
        .arg("b")
        .query_async(&mut con)
        .await
        .expect("transaction");
    assert_eq!((x, y), (1, 2));
    for key in [
        &b"session:p1"[..],
        b"session:p2",
        b"session:t1",
        b"session:t2",
    ] {
        assert!((1790..=1800).contains(&ttl(&mut d, key).await));
    }
    let err = redis::cmd("SET")
        .arg("nope")
        .arg("v")
        .query_async::<()>(&mut con)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Some("POLICY"), "{err}");
    assert!(err.to_string().contains("matches no namespace"), "{err}");
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_and_functions() {
    let (_r, _p, mut c, mut d) = setup().await;
    let script =
        b"redis.call('HSET', KEYS[1], 'f', ARGV[1]); return redis.call('HGET', KEYS[1], 'f')";
    assert_eq!(
        c.call(&[b"EVAL", script, b"1", b"session:e", b"v"]).await,
        b"$1\r\nv\r\n"
    );
    assert!((1790..=1800).contains(&ttl(&mut d, b"session:e").await));
    // Script cache commands have no keys; EVALSHA keys are checked like EVAL's.
    let sha = c.call(&[b"SCRIPT", b"LOAD", script]).await;
    let sha = sha[sha.iter().position(|b| *b == b'\n').unwrap_or(0) + 1..sha.len() - 2].to_vec();
    assert_eq!(
        c.call(&[b"EVALSHA", &sha, b"1", b"session:f", b"w"]).await,
        b"$1\r\nw\r\n"
    );
    assert!((1790..=1800).contains(&ttl(&mut d, b"session:f").await));
    let r = text(&c.call(&[b"EVALSHA", &sha, b"1", b"other", b"w"]).await);
    assert!(r.starts_with("-POLICY key \"other\""), "{r}");
    // Inside MULTI too.
    c.call(&[b"MULTI"]).await;
    c.call(&[b"EVAL", script, b"1", b"session:g", b"x"]).await;
    assert_eq!(c.call(&[b"EXEC"]).await, b"*1\r\n$1\r\nx\r\n");
    assert!((1790..=1800).contains(&ttl(&mut d, b"session:g").await));
}
