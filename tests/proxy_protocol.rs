//! Proxy core, wire protocol: RESP2 and RESP3 replies pass through byte for byte
//! (maps, sets, doubles, booleans, big numbers, verbatim strings, push frames, attributes),
//! the reply scanner's attribute handling, inline commands (as telnet and redis-cli send
//! them, quoted arguments, Redis's own splitting rules), binary-safe keys and values, values
//! of 64 MB and more, and pipelining (500 commands in one write; the redis crate's pipeline).

#[macro_use]
mod common;

use std::time::Duration;

use common::{bulk, bulk_array, encode_many, raw_proxy, show, Raw, RedisServer};
use respguard::codec::{Limits, ProtocolError, ReplyScanner};

/// Runs `cmds` on a raw connection and returns every reply.
async fn replies(conn: &mut Raw, cmds: &[&[&[u8]]]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for c in cmds {
        out.push(conn.call(c).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_replies_are_byte_identical_to_redis() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let cmds: &[&[&[u8]]] = &[
        &[b"SET", b"k", b"v"],
        &[b"GET", b"k"],
        &[b"GET", b"missing"],
        &[b"INCR", b"n"],
        &[b"INCRBYFLOAT", b"f", b"1.5"],
        &[b"RPUSH", b"l", b"a", b"b", b"c"],
        &[b"LRANGE", b"l", b"0", b"-1"],
        &[b"LRANGE", b"nol", b"0", b"-1"],
        &[b"HSET", b"h", b"f", b"v"],
        &[b"HGETALL", b"h"],
        &[b"ZADD", b"z", b"1.5", b"m"],
        &[b"ZSCORE", b"z", b"m"],
        &[b"ZRANGE", b"z", b"0", b"-1", b"WITHSCORES"],
        &[b"SADD", b"s", b"x"],
        &[b"SMEMBERS", b"s"],
        &[b"GET", b"l"],
        &[b"NOSUCHCOMMAND", b"x"],
        &[b"GET"],
        &[b"MGET", b"k", b"missing", b"n"],
        &[b"TYPE", b"h"],
        &[b"EXISTS", b"k", b"n", b"zzz"],
        &[b"ECHO", b""],
    ];
    let mut via_proxy = raw_proxy(&proxy).await;
    let got = replies(&mut via_proxy, cmds).await;
    let mut direct = redis.raw().await;
    assert_resp!(direct.ask(&[b"FLUSHALL"]).await, b"+OK\r\n");
    let want = replies(&mut direct, cmds).await;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_resp!(g, w, "command {i}: proxy {} vs redis {}", show(g), show(w));
    }
    // A few exact values, so the comparison is not trusted blindly.
    assert_resp!(got[1], b"$1\r\nv\r\n");
    assert_resp!(got[2], b"$-1\r\n");
    assert_resp!(got[6], bulk_array(&[b"a", b"b", b"c"]));
    assert_resp!(got[7], b"*0\r\n");
    assert_resp!(
        got[15],
        &b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"[..]
    );
    assert_resp!(got[18], b"*3\r\n$1\r\nv\r\n$-1\r\n$1\r\n1\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_types_pass_through_hello_3() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let proxy = common::proxy("", &redis.url()).await;
    let mut c = raw_proxy(&proxy).await;
    let hello = c.ask(&[b"HELLO", b"3"]).await;
    assert!(
        hello.starts_with(b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"),
        "{}",
        show(&hello)
    );
    assert!(
        show(&hello).contains("$5\\r\\nproto\\r\\n:3\\r\\n"),
        "{}",
        show(&hello)
    );
    assert_resp!(c.ask(&[b"HSET", b"h", b"f", b"v"]).await, b":1\r\n");
    assert_resp!(
        c.ask(&[b"HGETALL", b"h"]).await,
        b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n"
    );
    assert_resp!(c.ask(&[b"SADD", b"s", b"a"]).await, b":1\r\n");
    assert_resp!(c.ask(&[b"SMEMBERS", b"s"]).await, b"~1\r\n$1\r\na\r\n");
    assert_resp!(c.ask(&[b"ZADD", b"z", b"1.5", b"m"]).await, b":1\r\n");
    assert_resp!(c.ask(&[b"ZSCORE", b"z", b"m"]).await, b",1.5\r\n");
    assert_resp!(c.ask(&[b"GET", b"missing"]).await, b"_\r\n");
    assert_resp!(
        c.ask(&[
            b"EVAL",
            b"redis.setresp(3); return redis.call('EXISTS', KEYS[1]) == 1",
            b"1",
            b"h"
        ])
        .await,
        b"#t\r\n"
    );
    // DEBUG PROTOCOL emits every RESP3 type, attributes and out-of-band pushes included.
    assert_resp!(
        c.ask(&[b"DEBUG", b"PROTOCOL", b"attrib"]).await,
        &b"|1\r\n$14\r\nkey-popularity\r\n*2\r\n$7\r\nkey:123\r\n:90\r\n$39\r\nSome real reply following the attribute\r\n"[..]
    );
    // The push is not the command's reply: it is passed through and the reply follows it.
    c.cmd(&[b"DEBUG", b"PROTOCOL", b"push"]).await;
    assert_resp!(c.reply().await, b">2\r\n$16\r\nserver-cpu-usage\r\n:42\r\n");
    assert_resp!(
        c.reply().await,
        &b"$40\r\nSome real reply following the push reply\r\n"[..]
    );
    assert_resp!(
        c.ask(&[b"DEBUG", b"PROTOCOL", b"bignum"]).await,
        b"(1234567999999999999999999999999999999\r\n"
    );
    assert_resp!(
        c.ask(&[b"DEBUG", b"PROTOCOL", b"verbatim"]).await,
        b"=29\r\ntxt:This is a verbatim\nstring\r\n"
    );
    assert_resp!(c.ask(&[b"DEBUG", b"PROTOCOL", b"false"]).await, b"#f\r\n");
    assert_resp!(
        c.ask(&[b"DEBUG", b"PROTOCOL", b"double"]).await,
        b",3.141\r\n"
    );
    assert_resp!(
        c.ask(&[b"DEBUG", b"PROTOCOL", b"map"]).await,
        b"%3\r\n:0\r\n#f\r\n:1\r\n#t\r\n:2\r\n#f\r\n"
    );
    // Still paired after all of that, and back to RESP2 with HELLO 2.
    assert_resp!(c.ask(&[b"PING"]).await, b"+PONG\r\n");
    let hello2 = c.ask(&[b"HELLO", b"2"]).await;
    assert!(hello2.starts_with(b"*14\r\n"), "{}", show(&hello2));
    assert_resp!(
        c.ask(&[b"HGETALL", b"h"]).await,
        b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
    );
    assert_resp!(c.ask(&[b"GET", b"missing"]).await, b"$-1\r\n");
    // RESP2 drops the attribute; the reply itself stays paired.
    assert_resp!(
        c.ask(&[b"DEBUG", b"PROTOCOL", b"attrib"]).await,
        &b"$39\r\nSome real reply following the attribute\r\n"[..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_pipeline_with_attributes_and_pushes_stays_in_order() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let proxy = common::proxy("", &redis.url()).await;
    let mut c = raw_proxy(&proxy).await;
    let hello = c.ask(&[b"HELLO", b"3"]).await;
    assert!(hello.starts_with(b"%7\r\n"), "{}", show(&hello));
    let mut cmds: Vec<&[&[u8]]> = Vec::new();
    for _ in 0..50 {
        cmds.push(&[b"DEBUG", b"PROTOCOL", b"attrib"]);
        cmds.push(&[b"DEBUG", b"PROTOCOL", b"push"]);
        cmds.push(&[b"ECHO", b"after"]);
    }
    c.send(&encode_many(&cmds)).await;
    for i in 0..50 {
        assert_resp!(
            c.reply().await,
            &b"|1\r\n$14\r\nkey-popularity\r\n*2\r\n$7\r\nkey:123\r\n:90\r\n$39\r\nSome real reply following the attribute\r\n"[..],
            "round {i}"
        );
        assert_resp!(c.reply().await, b">2\r\n$16\r\nserver-cpu-usage\r\n:42\r\n");
        assert_resp!(
            c.reply().await,
            &b"$40\r\nSome real reply following the push reply\r\n"[..]
        );
        assert_resp!(c.reply().await, b"$5\r\nafter\r\n", "round {i}");
    }
}

/// Scans `frame` whole and checks every strict prefix reports "incomplete".
fn scan_whole(frame: &[u8], limits: &Limits) -> respguard::codec::ReplyFrame {
    let mut s = ReplyScanner::new();
    for cut in 0..frame.len() {
        assert_eq!(
            s.scan(&frame[..cut], limits),
            Ok(None),
            "prefix of {cut} bytes of {}",
            show(frame)
        );
    }
    let mut with_tail = frame.to_vec();
    with_tail.extend_from_slice(b"+NEXT\r\n");
    let f = s
        .scan(&with_tail, limits)
        .unwrap_or_else(|e| panic!("{}: {e}", show(frame)))
        .unwrap_or_else(|| panic!("{} incomplete", show(frame)));
    assert_eq!(f.len, frame.len(), "{}", show(frame));
    f
}

#[test]
fn reply_scanner_handles_attributes() {
    let limits = Limits::default();
    // A top-level attribute: the frame is the attribute plus the value after it.
    let attr = b"|1\r\n+key-popularity\r\n*2\r\n$1\r\na\r\n:90\r\n";
    let f = scan_whole(&[&attr[..], b"$5\r\nvalue\r\n"].concat(), &limits);
    assert_eq!(f.kind, b'$');
    assert_eq!(f.value_at, attr.len());
    assert_eq!(f.count, 5);
    // An empty attribute before an aggregate value.
    let f = scan_whole(b"|0\r\n*2\r\n:1\r\n:2\r\n", &limits);
    assert_eq!((f.kind, f.value_at, f.count), (b'*', 4, 2));
    // Nested: an attribute inside an array counts, with its value, as one element.
    let f = scan_whole(b"*2\r\n|1\r\n+k\r\n+v\r\n:1\r\n:2\r\n", &limits);
    assert_eq!((f.kind, f.value_at, f.count), (b'*', 0, 2));
    // An attribute whose value is itself an attribute-prefixed map.
    let f = scan_whole(
        b"%1\r\n|1\r\n+a\r\n+b\r\n+key\r\n|0\r\n~2\r\n,1.5\r\n#t\r\n",
        &limits,
    );
    assert_eq!((f.kind, f.count), (b'%', 1));
    // An attribute before a push frame.
    let f = scan_whole(b"|1\r\n+a\r\n+b\r\n>2\r\n+x\r\n_\r\n", &limits);
    assert_eq!((f.kind, f.value_at, f.count), (b'>', 12, 2));
    // Every other RESP3 type as a leaf.
    for leaf in [
        &b"_\r\n"[..],
        b"#t\r\n",
        b",-inf\r\n",
        b"(12345678901234567890123\r\n",
        b"=8\r\ntxt:abcd\r\n",
        b"!5\r\nERR x\r\n",
        b"$-1\r\n",
        b"*-1\r\n",
    ] {
        let f = scan_whole(leaf, &limits);
        assert_eq!(f.kind, leaf[0]);
    }
}

#[test]
fn reply_scanner_bounds_depth_without_recursion() {
    let limits = Limits {
        max_depth: 8,
        ..Limits::default()
    };
    let nested = |depth: usize| {
        let mut v = b"*1\r\n".repeat(depth);
        v.extend_from_slice(b":1\r\n");
        v
    };
    let f = scan_whole(&nested(8), &limits);
    assert_eq!(f.kind, b'*');
    let mut s = ReplyScanner::new();
    assert_eq!(s.scan(&nested(9), &limits), Err(ProtocolError::TooDeep(8)));
    // Attributes nest too: each one counts as a level.
    assert_eq!(
        s.scan(&b"|1\r\n".repeat(20), &limits),
        Err(ProtocolError::TooDeep(8))
    );
    // By default there is no depth limit: a million levels scan without recursion.
    let deep = nested(1_000_000);
    let f = s.scan(&deep, &Limits::default());
    assert_eq!(f.map(|f| f.map(|f| f.len)), Ok(Some(deep.len())));
    // The scanner is reusable after an error.
    let f = s.scan(b"+OK\r\n", &limits);
    assert_eq!(f.map(|f| f.map(|f| f.len)), Ok(Some(5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_commands_as_telnet_sends_them() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut c = raw_proxy(&proxy).await;
    c.send(b"PING\r\n").await;
    assert_resp!(c.reply().await, b"+PONG\r\n");
    // netcat sends a bare LF; blank lines are skipped like Redis does.
    c.send(b"PING\n").await;
    assert_resp!(c.reply().await, b"+PONG\r\n");
    c.send(b"\r\n\r\n  ping   hello  \r\n").await;
    assert_resp!(c.reply().await, b"$5\r\nhello\r\n");
    // A line split across writes is joined.
    c.send(b"ECHO sp").await;
    assert!(
        c.read_timeout(Duration::from_millis(100)).await.is_none(),
        "no answer to half a line"
    );
    c.send(b"lit\r\n").await;
    assert_resp!(c.reply().await, b"$5\r\nsplit\r\n");
    // Inline and multibulk commands interleave in one write, replies in order.
    let mut mixed = b"SET k 1\r\n".to_vec();
    mixed.extend_from_slice(&encode_many(&[&[b"INCR", b"k"]]));
    mixed.extend_from_slice(b"INCR k\r\nGET k\n");
    c.send(&mixed).await;
    assert_resp!(c.reply().await, b"+OK\r\n");
    assert_resp!(c.reply().await, b":2\r\n");
    assert_resp!(c.reply().await, b":3\r\n");
    assert_resp!(c.reply().await, b"$1\r\n3\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_quoted_arguments() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut c = raw_proxy(&proxy).await;
    c.send(b"SET \"a b\" \"c\\nd\"\r\n").await;
    assert_resp!(c.reply().await, b"+OK\r\n");
    assert_resp!(c.ask(&[b"GET", b"a b"]).await, b"$3\r\nc\nd\r\n");
    c.send(b"SET 'it\\'s' \"\\x41\\x00B\\r\\n\\t\"\r\n").await;
    assert_resp!(c.reply().await, b"+OK\r\n");
    assert_resp!(c.ask(&[b"GET", b"it's"]).await, b"$6\r\nA\0B\r\n\t\r\n");
    c.send(b"ECHO \"\"\r\n").await;
    assert_resp!(c.reply().await, b"$0\r\n\r\n");
    // Same values reached Redis.
    let mut direct = redis.raw().await;
    assert_resp!(direct.ask(&[b"GET", b"a b"]).await, b"$3\r\nc\nd\r\n");
    assert_resp!(
        direct.ask(&[b"GET", b"it's"]).await,
        b"$6\r\nA\0B\r\n\t\r\n"
    );
}

/// Sends one inline line to `conn` and returns its reply and whether the connection closed.
async fn inline_outcome(conn: &mut Raw, line: &[u8]) -> (Vec<u8>, bool) {
    conn.send(line).await;
    let reply = conn.reply().await;
    let closed = conn.closed_within(Duration::from_millis(150)).await;
    (reply, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_unbalanced_quotes_match_redis() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    for line in [&b"ECHO \"abc\r\n"[..], b"ECHO \"a\"b\r\n", b"ECHO 'x\r\n"] {
        let mut p = raw_proxy(&proxy).await;
        let mut d = redis.raw().await;
        let got = inline_outcome(&mut p, line).await;
        let want = inline_outcome(&mut d, line).await;
        assert_resp!(
            want.0,
            &b"-ERR Protocol error: unbalanced quotes in request\r\n"[..]
        );
        assert_resp!(got.0, want.0, "{}", show(line));
        assert_eq!(got.1, want.1, "closed after {}", show(line));
    }
    // The proxy still serves.
    let mut c = raw_proxy(&proxy).await;
    assert_resp!(c.ask(&[b"PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_splitting_matches_redis() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    // Redis (sdssplitargs) skips any isspace() before an argument, but ends an unquoted
    // argument only at space, \t, \r, \n or NUL: a \v or \f inside one is part of it.
    let lines: &[&[u8]] = &[
        b"ECHO a\tb\r\n",
        b"\tECHO\t\tx\r\n",
        b"ECHO a\x0bb\r\n",
        b"ECHO a\x0cb\r\n",
        b"\x0b\x0cECHO y\r\n",
        b"ECHO \"q\"\x0b\r\n",
        b"ECHO \"\\x4g\"\r\n",
        b"ECHO \"\\q\\\\\"\r\n",
        b"ECHO 'a\\nb'\r\n",
    ];
    let mut differ = Vec::new();
    for line in lines {
        let mut p = raw_proxy(&proxy).await;
        let mut d = redis.raw().await;
        p.send(line).await;
        d.send(line).await;
        let want = d.reply().await;
        let got = p.reply().await;
        if got != want {
            differ.push(format!(
                "{}: proxy {} redis {}",
                show(line),
                show(&got),
                show(&want)
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "inline splitting differs:\n{}",
        differ.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_works_through_the_proxy() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let port = proxy.local_addr.port().to_string();
    let cli = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("redis-cli")
                .args(args)
                .output()
                .expect("redis-cli on PATH")
        })
    };
    let base = ["-h", "127.0.0.1", "-p", &port];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let out = cli(with(&["PING"])).await.expect("join");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "PONG\n");
    let out = cli(with(&["SET", "a b", "c\nd"])).await.expect("join");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
    let out = cli(with(&["--no-raw", "GET", "a b"])).await.expect("join");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "\"c\\nd\"\n");
    // redis-cli fed commands on stdin, the way scripts use it.
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("redis-cli");
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(b"INCR n\nINCR n\nGET n\n")
                .expect("write stdin");
        }
        child.wait_with_output().expect("redis-cli output")
    })
    .await
    .expect("join");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n2\n2\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_safe_keys_and_values() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let all: Vec<u8> = (0..=255u8).collect();
    let mut key = b"k\r\n".to_vec();
    key.extend_from_slice(&all);
    let mut value = all.clone();
    value.extend_from_slice(b"\r\n$3\r\n*1\r\n");
    value.extend_from_slice(&all);
    let mut c = raw_proxy(&proxy).await;
    assert_resp!(c.ask(&[b"SET", &key, &value]).await, b"+OK\r\n");
    assert_resp!(c.ask(&[b"GET", &key]).await, bulk(&value));
    assert_resp!(
        c.ask(&[b"STRLEN", &key]).await,
        format!(":{}\r\n", value.len()).into_bytes()
    );
    assert_resp!(
        c.ask(&[b"HSET", b"h", &all, &all]).await,
        b":1\r\n".to_vec()
    );
    assert_resp!(c.ask(&[b"HGETALL", b"h"]).await, bulk_array(&[&all, &all]));
    // Each byte as a one-byte key.
    for b in 0..=255u8 {
        assert_resp!(c.ask(&[b"SET", &[b], &[b, b]]).await, b"+OK\r\n");
    }
    let keys: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut mget: Vec<&[u8]> = vec![b"MGET"];
    mget.extend(keys.iter().map(|k| k.as_slice()));
    let want_items: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b, b]).collect();
    let want_refs: Vec<&[u8]> = want_items.iter().map(|v| v.as_slice()).collect();
    assert_resp!(c.ask(&mget).await, bulk_array(&want_refs));
    // What Redis stored is exactly what was sent.
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"GET", &key]).await, bulk(&value));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_64_mb_round_trip() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let len = 64 * 1024 * 1024 + 13;
    let value: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut con = common::proxy_conn(&proxy).await;
    let ok: String = redis::cmd("SET")
        .arg("big")
        .arg(&value)
        .query_async(&mut con)
        .await
        .expect("SET big");
    assert_eq!(ok, "OK");
    let got: Vec<u8> = redis::cmd("GET")
        .arg("big")
        .query_async(&mut con)
        .await
        .expect("GET big");
    assert!(
        got == value,
        "GET returned {} bytes, not the value",
        got.len()
    );
    let n: i64 = redis::cmd("STRLEN")
        .arg("big")
        .query_async(&mut con)
        .await
        .expect("STRLEN");
    assert_eq!(n, len as i64);
    // A raw client that reads the reply in small pieces gets the same bytes.
    let mut c = raw_proxy(&proxy).await;
    let reply = c.ask(&[b"GET", b"big"]).await;
    assert_eq!(reply.len(), len + format!("${len}\r\n\r\n").len());
    assert!(reply[reply.len() - len - 2..reply.len() - 2] == value[..]);
    assert_resp!(c.ask(&[b"PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_pipelined_commands_in_one_write() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut c = raw_proxy(&proxy).await;
    let cmds: Vec<&[&[u8]]> = vec![&[b"INCR", b"counter"]; 500];
    c.send(&encode_many(&cmds)).await;
    for i in 1..=500 {
        assert_resp!(
            c.reply().await,
            format!(":{i}\r\n").into_bytes(),
            "reply {i}"
        );
    }
    // Inline pipelines too.
    let inline = b"INCR counter\r\n".repeat(300);
    c.send(&inline).await;
    for i in 501..=800 {
        assert_resp!(
            c.reply().await,
            format!(":{i}\r\n").into_bytes(),
            "reply {i}"
        );
    }
    assert!(
        c.read_timeout(Duration::from_millis(100)).await.is_none(),
        "no extra replies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_mixing_large_and_small_replies_stays_ordered() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut c = raw_proxy(&proxy).await;
    let big = vec![b'x'; 300 * 1024];
    assert_resp!(c.ask(&[b"SET", b"big", &big]).await, b"+OK\r\n");
    let mut cmds: Vec<&[&[u8]]> = Vec::new();
    for _ in 0..40 {
        cmds.push(&[b"GET", b"big"]);
        cmds.push(&[b"INCR", b"n"]);
        cmds.push(&[b"GET", b"nothing"]);
    }
    c.send(&encode_many(&cmds)).await;
    let want_big = bulk(&big);
    for i in 1..=40 {
        assert!(c.reply().await == want_big, "big reply {i}");
        assert_resp!(c.reply().await, format!(":{i}\r\n").into_bytes());
        assert_resp!(c.reply().await, b"$-1\r\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crate_pipeline() {
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let mut con = common::proxy_conn(&proxy).await;
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("SET").arg(format!("key:{i}")).arg(i).ignore();
    }
    for i in 0..1000 {
        pipe.cmd("GET").arg(format!("key:{i}"));
    }
    let got: Vec<i64> = pipe.query_async(&mut con).await.expect("pipeline");
    assert_eq!(got, (0..1000).collect::<Vec<i64>>());
    // Transactions through the crate's atomic pipeline.
    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .cmd("INCR")
        .arg("t")
        .cmd("INCRBY")
        .arg("t")
        .arg(10)
        .query_async(&mut con)
        .await
        .expect("atomic pipeline");
    assert_eq!((a, b), (1, 11));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_client_still_gets_its_replies() {
    // `printf 'SET k v\r\nGET k\r\n' | nc host port` sends, shuts down its write side and
    // reads until EOF: Redis answers everything it received before the EOF. DEBUG SLEEP
    // makes sure the EOF is seen before the replies exist.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let proxy = common::proxy("", &redis.url()).await;
    let input = b"DEBUG SLEEP 0.1\r\nSET k v\r\nGET k\r\nPING\r\n";
    let want = b"+OK\r\n+OK\r\n$1\r\nv\r\n+PONG\r\n";
    for (who, addr) in [("redis", redis.addr()), ("proxy", proxy.local_addr)] {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(input).await.expect("write");
        s.shutdown().await.expect("shutdown write side");
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "{who}: no EOF within 3 s");
        assert_resp!(out, want, "{who}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_command_pipeline() {
    // Like `redis-cli --pipe`: a writer streams commands while replies stream back.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = RedisServer::start();
    let proxy = common::proxy("", &redis.url()).await;
    let n = 100_000;
    let s = tokio::net::TcpStream::connect(proxy.local_addr)
        .await
        .expect("connect");
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let cmds: Vec<&[&[u8]]> = vec![&[b"INCR", b"n"]; 1000];
        let chunk = encode_many(&cmds);
        for _ in 0..n / 1000 {
            w.write_all(&chunk).await.expect("write");
        }
        w
    });
    let mut want = Vec::new();
    for i in 1..=n {
        want.extend_from_slice(format!(":{i}\r\n").as_bytes());
    }
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(20), r.read_exact(&mut got))
        .await
        .expect("all replies within 20 s")
        .expect("read");
    assert!(got == want, "replies out of order or wrong");
    let _w = writer.await.expect("writer");
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"GET", b"n"]).await, bulk(n.to_string().as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_over_a_unix_socket() {
    let sock = std::env::temp_dir().join(format!(
        "respguard-test-{}-{}.sock",
        std::process::id(),
        common::free_port()
    ));
    let sock_str = sock.to_str().expect("utf-8 path").to_string();
    let redis = RedisServer::start_with(&["--unixsocket", &sock_str, "--unixsocketperm", "700"]);
    let proxy = common::proxy("", &format!("unix://{sock_str}")).await;
    let mut c = raw_proxy(&proxy).await;
    assert_resp!(c.ask(&[b"SET", b"k", b"over-unix"]).await, b"+OK\r\n");
    assert_resp!(c.ask(&[b"GET", b"k"]).await, bulk(b"over-unix"));
    let list = c.ask(&[b"CLIENT", b"INFO"]).await;
    assert!(
        String::from_utf8_lossy(&list).contains("addr=/"),
        "connected over the socket: {}",
        show(&list)
    );
    let mut d = redis.raw().await;
    assert_resp!(d.ask(&[b"GET", b"k"]).await, bulk(b"over-unix"));
    let _ = std::fs::remove_file(&sock);
}
