//! Client identities (`policy.clients`) against a real Redis: a web app that owns
//! `user_profile` and `session`, an analytics worker that owns `analytics`, and a reporter
//! that may read profiles into its own namespace. They log in at the proxy with `AUTH`,
//! `HELLO 3 AUTH` or a client certificate; Redis only ever sees the proxy's own credential.
//! Refusals are Redis's `NOPERM` naming the identity and the namespace; the keys `SCAN` and
//! `KEYS` return are the ones the identity may read; a failed login is answered late and
//! counted, its password never logged; a reload changes what connected clients may do.

#[macro_use]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{metric, metrics_text, Raw, RedisServer, TempDir};

const WEB_PASSWORD: &str = "web-s3cret-pw";
const ANALYTICS_PASSWORD: &str = "analytics-s3cret-pw";
const REPORTER_PASSWORD: &str = "reporter-s3cret-pw";

/// The policy, with the password files in `dir`; `web_session` is the web app's access to
/// `session`, `with_analytics` keeps the analytics identity.
fn policy(dir: &Path, web_session: &str, with_analytics: bool) -> String {
    let file = |name: &str, pw: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!("{pw}\n")).expect("password file");
        p.display().to_string()
    };
    let web = file("web.pw", WEB_PASSWORD);
    let analytics = file("analytics.pw", ANALYTICS_PASSWORD);
    let reporter = file("reporter.pw", REPORTER_PASSWORD);
    let analytics_identity = if with_analytics {
        format!(
            r#"
    analytics:
      password_file: {analytics}
      certificate: [analytics.internal]
      namespaces: {{ analytics: readwrite }}
      commands: "+@all -@dangerous"
"#
        )
    } else {
        String::new()
    };
    format!(
        r#"
policy:
  scripts: declared_keys
  namespaces:
    user_profile:
      keys: ["user_profile:{{id}}"]
    session:
      keys: ["session:{{id}}", "session:{{id}}:{{device}}"]
    analytics:
      keys: ["analytics:{{metric}}:{{window}}"]
  clients:
    web:
      password_file: {web}
      certificate: [web.internal]
      namespaces: {{ user_profile: readwrite, session: {web_session} }}
      commands: "+@all -@dangerous"
      channels: ["notify:*"]
{analytics_identity}
    reporter:
      password_file: {reporter}
      namespaces: {{ analytics: readwrite, user_profile: read }}
      commands: "+@all"
    default:
      namespaces: {{ "*": none }}
      commands: "+@connection"
"#
    )
}

fn text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).trim_end().to_string()
}

fn assert_noperm(reply: &[u8], identity: &str, namespace: &str) {
    let t = text(reply);
    assert!(
        t.starts_with("-NOPERM ")
            && t.contains(&format!("'{identity}'"))
            && t.contains(&format!("'{namespace}'")),
        "expected NOPERM naming {identity} and {namespace}, got {t}"
    );
}

struct Env {
    redis: RedisServer,
    proxy: respguard::Proxy,
    dir: TempDir,
}

async fn env() -> Env {
    let redis = RedisServer::start();
    let dir = TempDir::new("identities");
    let proxy = common::proxy(&policy(dir.path(), "readwrite", true), &redis.url()).await;
    Env { redis, proxy, dir }
}

async fn login(e: &Env, user: &str, pw: &str) -> Raw {
    let mut c = Raw::connect(e.proxy.local_addr).await;
    assert_resp!(
        c.call(&[b"AUTH", user.as_bytes(), pw.as_bytes()]).await,
        b"+OK\r\n"
    );
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_identity_reaches_only_its_namespaces() {
    let e = env().await;
    let mut web = login(&e, "web", WEB_PASSWORD).await;
    let mut ana = login(&e, "analytics", ANALYTICS_PASSWORD).await;
    let mut d = e.redis.raw().await;

    // Strings, hashes, lists, sets, sorted sets, streams: allowed in the own namespaces.
    assert_resp!(
        web.call(&[b"SET", b"user_profile:1", b"a"]).await,
        b"+OK\r\n"
    );
    assert_resp!(web.call(&[b"GET", b"user_profile:1"]).await, b"$1\r\na\r\n");
    assert_resp!(
        web.call(&[b"HSET", b"session:1", b"f", b"v"]).await,
        b":1\r\n"
    );
    assert_resp!(web.call(&[b"LPUSH", b"session:2", b"x"]).await, b":1\r\n");
    assert_resp!(web.call(&[b"SADD", b"session:3", b"x"]).await, b":1\r\n");
    assert_resp!(
        web.call(&[b"ZADD", b"session:4", b"1", b"x"]).await,
        b":1\r\n"
    );
    assert_resp!(ana.call(&[b"INCR", b"analytics:views:1h"]).await, b":1\r\n");
    let xadd = ana
        .call(&[b"XADD", b"analytics:events:1h", b"*", b"k", b"v"])
        .await;
    assert!(xadd.starts_with(b"$"), "{}", text(&xadd));

    // Refused: another identity's namespace, for reading and for writing.
    assert_noperm(
        &web.call(&[b"GET", b"analytics:views:1h"]).await,
        "web",
        "analytics",
    );
    assert_noperm(
        &web.call(&[b"INCR", b"analytics:views:1h"]).await,
        "web",
        "analytics",
    );
    assert_noperm(
        &ana.call(&[b"GET", b"user_profile:1"]).await,
        "analytics",
        "user_profile",
    );
    assert_noperm(
        &ana.call(&[b"HGETALL", b"session:1"]).await,
        "analytics",
        "session",
    );
    assert_noperm(
        &ana.call(&[b"LRANGE", b"session:2", b"0", b"-1"]).await,
        "analytics",
        "session",
    );
    assert_noperm(
        &ana.call(&[b"SMEMBERS", b"session:3"]).await,
        "analytics",
        "session",
    );
    assert_noperm(
        &ana.call(&[b"ZRANGE", b"session:4", b"0", b"-1"]).await,
        "analytics",
        "session",
    );
    assert_noperm(
        &ana.call(&[b"DEL", b"user_profile:1"]).await,
        "analytics",
        "user_profile",
    );
    assert_noperm(
        &web.call(&[b"XLEN", b"analytics:events:1h"]).await,
        "web",
        "analytics",
    );
    // The refused writes changed nothing.
    assert_resp!(
        d.call(&[b"GET", b"analytics:views:1h"]).await,
        b"$1\r\n1\r\n"
    );
    assert_resp!(d.call(&[b"EXISTS", b"user_profile:1"]).await, b":1\r\n");

    // Command categories: -@dangerous.
    let flush = text(&web.call(&[b"FLUSHALL"]).await);
    assert!(
        flush.starts_with("-NOPERM ") && flush.contains("'flushall'"),
        "{flush}"
    );

    // A client that did not log in is the default identity: connection commands only.
    let mut anon = Raw::connect(e.proxy.local_addr).await;
    assert_resp!(anon.call(&[b"PING"]).await, b"+PONG\r\n");
    let get = text(&anon.call(&[b"GET", b"user_profile:1"]).await);
    assert!(
        get.starts_with("-NOPERM ") && get.contains("'get'"),
        "{get}"
    );

    let m = metrics_text(&e.proxy).await;
    let analytics = metric(
        &m,
        "respguard_policy_rejections_total{namespace=\"analytics\",rule=\"permission\"}",
    );
    assert_eq!(
        analytics,
        Some(3.0),
        "{}",
        common::metric_lines(&m, "respguard_policy_rejections_total")
    );
    let session = metric(
        &m,
        "respguard_policy_rejections_total{namespace=\"session\",rule=\"permission\"}",
    );
    assert_eq!(session, Some(4.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_key_commands_mixing_namespaces_are_refused_whole() {
    let e = env().await;
    let mut web = login(&e, "web", WEB_PASSWORD).await;
    let mut rep = login(&e, "reporter", REPORTER_PASSWORD).await;
    let mut d = e.redis.raw().await;
    assert_resp!(
        d.call(&[b"MSET", b"user_profile:1", b"p", b"analytics:a:b", b"x"])
            .await,
        b"+OK\r\n"
    );

    assert_noperm(
        &web.call(&[b"MSET", b"session:1", b"a", b"analytics:a:b", b"b"])
            .await,
        "web",
        "analytics",
    );
    assert_resp!(d.call(&[b"EXISTS", b"session:1"]).await, b":0\r\n");
    assert_noperm(
        &web.call(&[b"MGET", b"user_profile:1", b"analytics:a:b"])
            .await,
        "web",
        "analytics",
    );
    assert_noperm(
        &web.call(&[b"DEL", b"session:1", b"analytics:a:b"]).await,
        "web",
        "analytics",
    );
    assert_resp!(d.call(&[b"EXISTS", b"analytics:a:b"]).await, b":1\r\n");

    // COPY reads its source and writes its destination.
    assert_resp!(
        rep.call(&[b"COPY", b"user_profile:1", b"analytics:copy:1"])
            .await,
        b":1\r\n"
    );
    assert_resp!(d.call(&[b"GET", b"analytics:copy:1"]).await, b"$1\r\np\r\n");
    assert_noperm(
        &rep.call(&[b"COPY", b"analytics:a:b", b"user_profile:2"])
            .await,
        "reporter",
        "user_profile",
    );
    assert_resp!(d.call(&[b"EXISTS", b"user_profile:2"]).await, b":0\r\n");
    // The reporter reads profiles but cannot change them.
    assert_resp!(rep.call(&[b"GET", b"user_profile:1"]).await, b"$1\r\np\r\n");
    assert_noperm(
        &rep.call(&[b"SET", b"user_profile:1", b"changed"]).await,
        "reporter",
        "user_profile",
    );
    // SORT ... STORE writes its destination.
    assert_resp!(
        d.call(&[b"RPUSH", b"analytics:list:1", b"2", b"1"]).await,
        b":2\r\n"
    );
    assert_resp!(
        rep.call(&[
            b"SORT",
            b"analytics:list:1",
            b"STORE",
            b"analytics:sorted:1"
        ])
        .await,
        b":2\r\n"
    );
    assert_noperm(
        &rep.call(&[b"SORT", b"analytics:list:1", b"STORE", b"user_profile:9"])
            .await,
        "reporter",
        "user_profile",
    );
    assert_resp!(d.call(&[b"EXISTS", b"user_profile:9"]).await, b":0\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_key_in_multi_aborts_exec_and_scripts_are_judged_by_their_declared_keys() {
    let e = env().await;
    let mut web = login(&e, "web", WEB_PASSWORD).await;
    let mut d = e.redis.raw().await;

    assert_resp!(web.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_resp!(
        web.call(&[b"SET", b"session:1", b"x"]).await,
        b"+QUEUED\r\n"
    );
    assert_noperm(
        &web.call(&[b"GET", b"analytics:a:b"]).await,
        "web",
        "analytics",
    );
    let exec = text(&web.call(&[b"EXEC"]).await);
    assert!(exec.starts_with("-EXECABORT"), "{exec}");
    assert_resp!(d.call(&[b"EXISTS", b"session:1"]).await, b":0\r\n");

    let script = b"return redis.call('SET', KEYS[1], ARGV[1])";
    assert_noperm(
        &web.call(&[b"EVAL", script, b"1", b"analytics:a:b", b"v"])
            .await,
        "web",
        "analytics",
    );
    assert_resp!(d.call(&[b"EXISTS", b"analytics:a:b"]).await, b":0\r\n");
    assert_resp!(
        web.call(&[b"EVAL", script, b"1", b"session:1", b"v"]).await,
        b"+OK\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_and_keys_list_only_readable_keys() {
    let e = env().await;
    let mut d = e.redis.raw().await;
    for k in [
        &b"user_profile:1"[..],
        b"session:1",
        b"session:2:phone",
        b"analytics:a:b",
        b"stray",
    ] {
        assert_resp!(d.call(&[b"SET", k, b"v"]).await, b"+OK\r\n");
    }
    let mut web = login(&e, "web", WEB_PASSWORD).await;
    let reply = web.call(&[b"SCAN", b"0", b"COUNT", b"1000"]).await;
    let direct = d.call(&[b"SCAN", b"0", b"COUNT", b"1000"]).await;
    // Same cursor as Redis's (all keys in one call: 0).
    assert!(
        reply.starts_with(b"*2\r\n$1\r\n0\r\n*3\r\n"),
        "{}",
        text(&reply)
    );
    assert!(
        direct.starts_with(b"*2\r\n$1\r\n0\r\n*5\r\n"),
        "{}",
        text(&direct)
    );
    let t = text(&reply);
    for k in ["user_profile:1", "session:1", "session:2:phone"] {
        assert!(t.contains(k), "{t}");
    }
    assert!(!t.contains("analytics") && !t.contains("stray"), "{t}");

    // KEYS is @dangerous, refused for web; the reporter may run it and sees its own keys.
    let mut rep = login(&e, "reporter", REPORTER_PASSWORD).await;
    let keys = text(&rep.call(&[b"KEYS", b"*"]).await);
    assert!(keys.starts_with("*2"), "{keys}");
    assert!(
        keys.contains("user_profile:1") && keys.contains("analytics:a:b"),
        "{keys}"
    );
    assert!(
        !keys.contains("session") && !keys.contains("stray"),
        "{keys}"
    );

    // Commands that reveal keys or their number without naming them are refused.
    for cmd in [
        &[&b"DBSIZE"[..]][..],
        &[b"RANDOMKEY"],
        &[b"INFO", b"keyspace"],
        &[b"INFO"],
    ] {
        let r = text(&rep.call(cmd).await);
        assert!(r.starts_with("-NOPERM ") && r.contains("'reporter'"), "{r}");
    }
    let monitor = text(&rep.call(&[b"MONITOR"]).await);
    assert!(monitor.starts_with("-NOPERM "), "{monitor}");
    let list = text(&rep.call(&[b"CLIENT", b"LIST"]).await);
    assert!(list.starts_with("-NOPERM "), "{list}");
    // Inside MULTI the reply could not be filtered: refused, and EXEC aborts.
    assert_resp!(rep.call(&[b"MULTI"]).await, b"+OK\r\n");
    let queued = text(&rep.call(&[b"KEYS", b"*"]).await);
    assert!(queued.starts_with("-NOPERM "), "{queued}");
    assert!(text(&rep.call(&[b"EXEC"]).await).starts_with("-EXECABORT"));
    // SORT BY reads keys it does not name.
    let sort = text(
        &rep.call(&[b"SORT", b"analytics:a:b", b"BY", b"session:*"])
            .await,
    );
    assert!(sort.starts_with("-"), "{sort}");
    // INFO sections without the keyspace are Redis's own.
    let info = text(&rep.call(&[b"INFO", b"server"]).await);
    assert!(info.contains("redis_version"), "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_3_auth_logs_in_and_reaches_redis_without_the_credentials() {
    let e = env().await;
    let mut c = Raw::connect(e.proxy.local_addr).await;
    let hello = c
        .call(&[b"HELLO", b"3", b"AUTH", b"web", WEB_PASSWORD.as_bytes()])
        .await;
    assert!(hello.starts_with(b"%"), "{}", text(&hello));
    assert!(text(&hello).contains("proto"), "{}", text(&hello));
    assert_resp!(c.call(&[b"SET", b"session:7", b"v"]).await, b"+OK\r\n");
    assert_noperm(
        &c.call(&[b"GET", b"analytics:a:b"]).await,
        "web",
        "analytics",
    );
    // RESP3 from here on: a map reply.
    let all = c.call(&[b"HGETALL", b"session:8"]).await;
    assert_resp!(all, b"%0\r\n");
    // RESET logs out, as in Redis: the default identity again.
    assert_resp!(c.call(&[b"RESET"]).await, b"+RESET\r\n");
    let after = text(&c.call(&[b"GET", b"session:7"]).await);
    assert!(
        after.starts_with("-NOPERM") && after.contains("'get'"),
        "{after}"
    );

    let mut bad = Raw::connect(e.proxy.local_addr).await;
    let r = bad.call(&[b"HELLO", b"3", b"AUTH", b"web", b"wrong"]).await;
    assert!(text(&r).starts_with("-WRONGPASS"), "{}", text(&r));
    // Still RESP2 and still the default identity.
    let get = text(&bad.call(&[b"GET", b"session:7"]).await);
    assert!(get.starts_with("-NOPERM"), "{get}");
    // HELLO without AUTH is a connection command the default identity may run.
    let hello = bad.call(&[b"HELLO", b"3"]).await;
    assert!(hello.starts_with(b"%"), "{}", text(&hello));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_with_a_version_redis_refuses_logs_nobody_in() {
    let e = env().await;
    let mut c = Raw::connect(e.proxy.local_addr).await;
    let pw = WEB_PASSWORD.as_bytes();
    // Redis's own replies: the version is checked before the AUTH option.
    assert_resp!(
        c.call(&[b"HELLO", b"4", b"AUTH", b"web", pw]).await,
        b"-NOPROTO unsupported protocol version\r\n"
    );
    assert_resp!(
        c.call(&[b"HELLO", b"x", b"AUTH", b"web", pw]).await,
        b"-ERR Protocol version is not an integer or out of range\r\n"
    );
    let get = text(&c.call(&[b"GET", b"session:7"]).await);
    assert!(
        get.starts_with("-NOPERM"),
        "still the default identity: {get}"
    );
    let hello = c.call(&[b"HELLO", b"2", b"AUTH", b"web", pw]).await;
    assert!(hello.starts_with(b"*"), "{}", text(&hello));
    assert_resp!(c.call(&[b"GET", b"session:none"]).await, b"$-1\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_channels_follow_the_identity() {
    let e = env().await;
    let mut web = login(&e, "web", WEB_PASSWORD).await;
    let refused = text(&web.call(&[b"PUBLISH", b"billing:1", b"x"]).await);
    assert!(
        refused.starts_with("-NOPERM") && refused.contains("channels"),
        "{refused}"
    );
    assert_resp!(web.call(&[b"PUBLISH", b"notify:1", b"x"]).await, b":0\r\n");
    let psub = text(&web.call(&[b"PSUBSCRIBE", b"*"]).await);
    assert!(psub.starts_with("-NOPERM"), "{psub}");
    let sub = text(&web.call(&[b"SUBSCRIBE", b"notify:1", b"billing:1"]).await);
    assert!(sub.starts_with("-NOPERM"), "{sub}");
    let ok = web.call(&[b"SUBSCRIBE", b"notify:1"]).await;
    assert!(text(&ok).contains("subscribe"), "{}", text(&ok));

    let mut pubr = login(&e, "web", WEB_PASSWORD).await;
    assert_resp!(
        pubr.call(&[b"PUBLISH", b"notify:1", b"hello"]).await,
        b":1\r\n"
    );
    let msg = text(&web.read().await);
    assert!(msg.contains("hello"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_are_delayed_counted_and_never_logged() {
    let redis = RedisServer::start();
    let dir = TempDir::new("identities-bin");
    let path = dir.write("respguard.yaml", &policy(dir.path(), "readwrite", true));
    let rg = common::Respguard::start(
        common::Launch::default()
            .arg("--config")
            .arg(&path)
            .arg("--upstream")
            .arg(redis.url())
            .env("RESPGUARD_LOG", "debug"),
    )
    .await;
    let mut c = Raw::connect(rg.listen).await;
    let mut other = login_addr(rg.listen, "web", WEB_PASSWORD).await;

    let t0 = Instant::now();
    c.cmd(&[b"AUTH", b"web", b"guess-one"]).await;
    // Another client is not held up while this one waits.
    let t1 = Instant::now();
    assert_resp!(other.call(&[b"PING"]).await, b"+PONG\r\n");
    assert!(
        t1.elapsed() < Duration::from_millis(150),
        "{:?}",
        t1.elapsed()
    );
    let r = c.read().await;
    let first = t0.elapsed();
    assert!(text(&r).starts_with("-WRONGPASS"), "{}", text(&r));
    assert!(
        first >= Duration::from_millis(190),
        "answered after {first:?}"
    );
    let t0 = Instant::now();
    let r = c.call(&[b"AUTH", b"no-such-user", b"guess-two"]).await;
    assert!(text(&r).starts_with("-WRONGPASS"), "{}", text(&r));
    assert!(
        t0.elapsed() >= Duration::from_millis(390),
        "second failure after {:?}",
        t0.elapsed()
    );
    // The right password still works, and the session goes on.
    assert_resp!(
        c.call(&[b"AUTH", b"web", WEB_PASSWORD.as_bytes()]).await,
        b"+OK\r\n"
    );
    assert_resp!(c.call(&[b"SET", b"session:1", b"v"]).await, b"+OK\r\n");

    let m = common::metrics_at(rg.admin).await;
    assert_eq!(
        metric(&m, "respguard_auth_failures_total{client=\"127.0.0.1\"}"),
        Some(2.0),
        "{}",
        common::metric_lines(&m, "respguard_auth_failures_total")
    );
    let log = rg
        .wait_log("client authentication failed")
        .await
        .expect("failure logged");
    for secret in ["guess-one", "guess-two", "no-such-user", WEB_PASSWORD] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

async fn login_addr(addr: std::net::SocketAddr, user: &str, pw: &str) -> Raw {
    let mut c = Raw::connect(addr).await;
    assert_resp!(
        c.call(&[b"AUTH", user.as_bytes(), pw.as_bytes()]).await,
        b"+OK\r\n"
    );
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_to_connected_clients_and_closes_removed_identities() {
    let e = env().await;
    let mut web = login(&e, "web", WEB_PASSWORD).await;
    let mut ana = login(&e, "analytics", ANALYTICS_PASSWORD).await;
    assert_resp!(web.call(&[b"SET", b"session:1", b"v"]).await, b"+OK\r\n");
    assert_resp!(
        ana.call(&[b"SET", b"analytics:a:b", b"v"]).await,
        b"+OK\r\n"
    );
    let mut subscriber = login(&e, "analytics", ANALYTICS_PASSWORD).await;
    assert_resp!(
        subscriber.call(&[b"SUBSCRIBE", b"notify:1"]).await,
        b"*3\r\n$9\r\nsubscribe\r\n$8\r\nnotify:1\r\n:1\r\n"
    );

    let cfg = common::config(&policy(e.dir.path(), "read", false), &e.redis.url());
    e.proxy.shared.install(cfg);

    // Same connection, next command: session is read-only now.
    assert_noperm(
        &web.call(&[b"SET", b"session:1", b"w"]).await,
        "web",
        "session",
    );
    assert_resp!(web.call(&[b"GET", b"session:1"]).await, b"$1\r\nv\r\n");
    // The analytics identity is gone: its connections are closed without waiting for a
    // command, a subscriber's included.
    assert!(ana.closed_within(Duration::from_secs(5)).await);
    assert!(subscriber.closed_within(Duration::from_secs(5)).await);
    let mut again = Raw::connect(e.proxy.local_addr).await;
    let r = text(
        &again
            .call(&[b"AUTH", b"analytics", ANALYTICS_PASSWORD.as_bytes()])
            .await,
    );
    assert!(r.starts_with("-WRONGPASS"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_narrows_channels_closes_the_subscribers_it_no_longer_allows() {
    let e = env().await;
    let mut on_notify = login(&e, "web", WEB_PASSWORD).await;
    assert_resp!(
        on_notify.call(&[b"SUBSCRIBE", b"notify:1"]).await,
        b"*3\r\n$9\r\nsubscribe\r\n$8\r\nnotify:1\r\n:1\r\n"
    );
    let mut on_pattern = login(&e, "web", WEB_PASSWORD).await;
    assert_resp!(
        on_pattern.call(&[b"PSUBSCRIBE", b"notify:*"]).await,
        b"*3\r\n$10\r\npsubscribe\r\n$8\r\nnotify:*\r\n:1\r\n"
    );
    // Subscribed, then unsubscribed: nothing left to lose.
    let mut was_subscribed = login(&e, "web", WEB_PASSWORD).await;
    assert_resp!(
        was_subscribed.call(&[b"SUBSCRIBE", b"notify:2"]).await,
        b"*3\r\n$9\r\nsubscribe\r\n$8\r\nnotify:2\r\n:1\r\n"
    );
    assert_resp!(
        was_subscribed.call(&[b"UNSUBSCRIBE"]).await,
        b"*3\r\n$11\r\nunsubscribe\r\n$8\r\nnotify:2\r\n:0\r\n"
    );
    let mut kept = login(&e, "web", WEB_PASSWORD).await;
    assert_resp!(
        kept.call(&[b"SUBSCRIBE", b"notify:3"]).await,
        b"*3\r\n$9\r\nsubscribe\r\n$8\r\nnotify:3\r\n:1\r\n"
    );

    let narrowed = policy(e.dir.path(), "readwrite", true).replace(
        r#"channels: ["notify:*"]"#,
        r#"channels: ["alerts:*", "notify:3"]"#,
    );
    assert!(narrowed.contains("alerts:*"));
    e.proxy
        .shared
        .install(common::config(&narrowed, &e.redis.url()));

    assert!(on_notify.closed_within(Duration::from_secs(5)).await);
    assert!(on_pattern.closed_within(Duration::from_secs(5)).await);
    assert_resp!(
        was_subscribed.call(&[b"GET", b"session:none"]).await,
        b"$-1\r\n"
    );
    // A subscriber the new rules allow keeps its subscription and gets messages.
    let mut publisher = login(&e, "web", WEB_PASSWORD).await;
    assert_resp!(
        publisher.call(&[b"PUBLISH", b"notify:3", b"hi"]).await,
        b":1\r\n"
    );
    assert_resp!(
        kept.read().await,
        b"*3\r\n$7\r\nmessage\r\n$8\r\nnotify:3\r\n$2\r\nhi\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_the_identity() {
    use common::{call_on, tls_connect, Pki};
    let redis = RedisServer::start();
    let dir = TempDir::new("identities-tls");
    let pki = Pki::new("identities");
    let server = pki.issue("proxy", &["127.0.0.1"]);
    let analytics = pki.issue("analytics-client", &["analytics.internal"]);
    let stranger = pki.issue("stranger", &["stranger.internal"]);
    let ca = pki.ca_file().display().to_string();
    let yaml = format!(
        "{}{}",
        common::tls_listener_yaml(&server, &[("ca_file", &ca), ("client_auth", "optional")]),
        policy(dir.path(), "readwrite", true)
    );
    let proxy = common::proxy(&yaml, &redis.url()).await;
    let addr = proxy.tls_addr.expect("tls listener");

    let mut c = tls_connect(addr, &pki, Some(&analytics))
        .await
        .expect("tls");
    assert_resp!(
        call_on(&mut c, &[b"SET", b"analytics:a:b", b"v"])
            .await
            .unwrap(),
        b"+OK\r\n"
    );
    assert_noperm(
        &call_on(&mut c, &[b"GET", b"session:1"]).await.unwrap(),
        "analytics",
        "session",
    );
    // A certificate naming no identity is the default identity.
    let mut s = tls_connect(addr, &pki, Some(&stranger)).await.expect("tls");
    let r = text(&call_on(&mut s, &[b"GET", b"analytics:a:b"]).await.unwrap());
    assert!(r.starts_with("-NOPERM") && r.contains("'default'"), "{r}");
    // ... and may still log in with a password.
    assert_resp!(
        call_on(&mut s, &[b"AUTH", b"web", WEB_PASSWORD.as_bytes()])
            .await
            .unwrap(),
        b"+OK\r\n"
    );
    assert_resp!(
        call_on(&mut s, &[b"SET", b"session:1", b"v"])
            .await
            .unwrap(),
        b"+OK\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crate_and_redis_cli_log_in_at_the_proxy() {
    let e = env().await;
    let url = format!("redis://web:{WEB_PASSWORD}@{}", e.proxy.local_addr);
    let client = redis::Client::open(url).expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect with credentials");
    let _: () = redis::cmd("SET")
        .arg("user_profile:5")
        .arg("v")
        .query_async(&mut con)
        .await
        .expect("set");
    let v: String = redis::cmd("GET")
        .arg("user_profile:5")
        .query_async(&mut con)
        .await
        .expect("get");
    assert_eq!(v, "v");
    let err = redis::cmd("GET")
        .arg("analytics:a:b")
        .query_async::<Option<String>>(&mut con)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("NOPERM"), "{err}");

    let bad = redis::Client::open(format!("redis://web:nope@{}", e.proxy.local_addr))
        .expect("client")
        .get_multiplexed_async_connection()
        .await;
    assert!(bad.is_err(), "a wrong password connected");

    let port = e.proxy.local_addr.port().to_string();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port, "--no-auth-warning"])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let ok = cli(&[
        "--user",
        "analytics",
        "--pass",
        ANALYTICS_PASSWORD,
        "SET",
        "analytics:x:y",
        "1",
    ]);
    assert_eq!(ok.trim(), "OK");
    let refused = cli(&[
        "--user",
        "analytics",
        "--pass",
        ANALYTICS_PASSWORD,
        "GET",
        "user_profile:5",
    ]);
    assert!(refused.contains("NOPERM"), "{refused}");
    let resp3 = cli(&[
        "-3",
        "--user",
        "web",
        "--pass",
        WEB_PASSWORD,
        "GET",
        "user_profile:5",
    ]);
    assert_eq!(resp3.trim(), "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_clients_auth_still_goes_to_redis() {
    let redis = RedisServer::start_with(&["--requirepass", "redis-pw"]);
    let yaml = "policy:\n  unknown_keys: allow\n";
    let proxy = common::proxy(yaml, &redis.url()).await;
    let mut c = Raw::connect(proxy.local_addr).await;
    let noauth = text(&c.call(&[b"GET", b"k"]).await);
    assert!(noauth.starts_with("-NOAUTH"), "{noauth}");
    assert_resp!(c.call(&[b"AUTH", b"redis-pw"]).await, b"+OK\r\n");
    assert_resp!(c.call(&[b"GET", b"k"]).await, b"$-1\r\n");
}
