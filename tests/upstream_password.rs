//! The upstream password through the real binary: taken from `RESPGUARD_UPSTREAM_PASSWORD`,
//! else `upstream.password_file` (trailing newline removed), else the URL; and no password,
//! right or wrong, ever appears in the log (at debug level), in `/readyz` or in `/metrics`.

#[macro_use]
mod common;

use common::{http_get, Launch, Raw, RedisServer, Respguard, TempDir};

const ENV_PW: &str = "env-Pw-4q9Zt";
const FILE_PW: &str = "file-Pw-7LmXc";
const URL_PW: &str = "url-Pw-2VbNs";

/// Where each password is given for one run; `None` leaves that source out.
struct Sources {
    env: Option<&'static str>,
    file: Option<&'static str>,
    url: Option<&'static str>,
}

/// Starts Redis requiring `required` and the binary with `sources`; returns both once the
/// binary owns its ports (ready or not, as the password may be the wrong one).
async fn run(required: &str, sources: &Sources) -> (RedisServer, Respguard, TempDir) {
    let redis = RedisServer::start_with(&["--requirepass", required]);
    let dir = TempDir::new("password");
    let mut yaml = "upstream:\n".to_string();
    if let Some(pw) = sources.file {
        // As a Kubernetes secret mounts it: with a trailing newline.
        let path = dir.write("password", &format!("{pw}\n"));
        yaml.push_str(&format!("  password_file: {}\n", path.display()));
    }
    let config = dir.write("respguard.yaml", &yaml);
    let url = match sources.url {
        Some(pw) => format!("redis://:{pw}@127.0.0.1:{}", redis.port),
        None => redis.url(),
    };
    let mut launch = Launch::default()
        .arg("--config")
        .arg(&config)
        .arg("--upstream")
        .arg(url)
        .env("RESPGUARD_LOG", "debug");
    if let Some(pw) = sources.env {
        launch = launch.env("RESPGUARD_UPSTREAM_PASSWORD", pw);
    }
    launch.no_readyz = true;
    let rg = Respguard::start(launch).await;
    (redis, rg, dir)
}

/// Whether the proxy reaches Redis with the password it chose: a command through it
/// succeeds and `/readyz` turns 200, or the command fails on authentication and `/readyz`
/// says 503.
async fn authenticated(rg: &Respguard) -> bool {
    let mut c = Raw::connect(rg.listen).await;
    let reply = c.ask(&[b"SET", b"k", b"v"]).await;
    let admin = rg.admin;
    if reply == b"+OK\r\n" {
        let ready = common::eventually(std::time::Duration::from_secs(10), || async move {
            http_get(admin, "/readyz").await.0 == 200
        })
        .await;
        assert!(ready, "commands pass but /readyz is not 200");
        return true;
    }
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.contains("WRONGPASS") || text.contains("NOAUTH"),
        "{text:?}"
    );
    let (code, body) = http_get(admin, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    false
}

/// No password appears in the log, `/readyz` or `/metrics`.
async fn assert_no_password_shown(rg: &Respguard) {
    // A client protocol error is logged at debug level whatever the upstream does.
    let mut bad = Raw::connect(rg.listen).await;
    bad.send(b"*1\r\n+x\r\n").await;
    let answer = bad
        .rest_until_closed(std::time::Duration::from_secs(10))
        .await;
    assert!(
        answer.is_ok(),
        "not closed after a protocol error: {answer:?}"
    );
    assert!(
        rg.wait_log("client protocol error").await.is_ok(),
        "not logging at debug level"
    );
    let (_, ready) = http_get(rg.admin, "/readyz").await;
    let metrics = common::metrics_at(rg.admin).await;
    let log = rg.log_text();
    assert!(log.contains("DEBUG"), "the log is at debug level:\n{log}");
    for (what, text) in [("log", &log), ("/readyz", &ready), ("/metrics", &metrics)] {
        for pw in [ENV_PW, FILE_PW, URL_PW] {
            assert!(!text.contains(pw), "password {pw} in the {what}:\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_password_is_used_alone() {
    let sources = Sources {
        env: None,
        file: None,
        url: Some(URL_PW),
    };
    let (_redis, rg, _dir) = run(URL_PW, &sources).await;
    assert!(authenticated(&rg).await);
    assert_no_password_shown(&rg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_file_wins_over_the_url() {
    let sources = Sources {
        env: None,
        file: Some(FILE_PW),
        url: Some(URL_PW),
    };
    let (_redis, rg, _dir) = run(FILE_PW, &sources).await;
    assert!(
        authenticated(&rg).await,
        "the file's password, newline removed"
    );
    assert_no_password_shown(&rg).await;
    // With Redis requiring the URL's password instead, the file's is still the one sent.
    let (_redis, rg, _dir) = run(URL_PW, &sources).await;
    assert!(!authenticated(&rg).await, "the URL's password was used");
    assert_no_password_shown(&rg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_wins_over_the_file_and_the_url() {
    let sources = Sources {
        env: Some(ENV_PW),
        file: Some(FILE_PW),
        url: Some(URL_PW),
    };
    let (_redis, rg, _dir) = run(ENV_PW, &sources).await;
    assert!(authenticated(&rg).await);
    assert_no_password_shown(&rg).await;
    for other in [FILE_PW, URL_PW] {
        let (_redis, rg, _dir) = run(other, &sources).await;
        assert!(
            !authenticated(&rg).await,
            "{other} was used, not the environment's"
        );
        assert_no_password_shown(&rg).await;
    }
}
