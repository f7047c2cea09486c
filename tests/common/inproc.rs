//! respguard started inside the test process (`respguard::Proxy`), in front of a real Redis.

use respguard::config::{Config, Overrides};
use respguard::Proxy;

use super::raw::{raw_proxy, Raw};
use super::servers::RedisServer;

/// Builds a config from YAML text plus the proxy's and upstream's addresses.
pub fn config(yaml: &str, upstream: &str) -> Config {
    let ov = Overrides {
        listen: Some(("--listen".into(), "127.0.0.1:0".into())),
        upstream: Some(("--upstream".into(), upstream.into())),
        admin: Some(("--admin".into(), "127.0.0.1:0".into())),
        upstream_password: None,
    };
    Config::parse(yaml, "test.yaml", &ov).unwrap_or_else(|e| panic!("test config invalid: {e}"))
}

/// Starts respguard in this process in front of `upstream`.
pub async fn proxy(yaml: &str, upstream: &str) -> Proxy {
    Proxy::start(config(yaml, upstream))
        .await
        .expect("proxy starts")
}

pub fn proxy_url(p: &Proxy) -> String {
    format!("redis://{}", p.local_addr)
}

pub async fn proxy_conn(p: &Proxy) -> redis::aio::MultiplexedConnection {
    redis::Client::open(proxy_url(p))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect through the proxy")
}

/// A real Redis with respguard in front of it (configured by `yaml`) and a raw connection to
/// each: `c` through the proxy (what the client sees), `d` straight to Redis (what was stored).
pub struct PolicyEnv {
    pub redis: RedisServer,
    pub proxy: Proxy,
    pub c: Raw,
    pub d: Raw,
}

pub async fn policy_env(yaml: &str) -> PolicyEnv {
    let redis = RedisServer::start();
    let proxy = proxy(yaml, &redis.url()).await;
    let c = raw_proxy(&proxy).await;
    let d = redis.raw().await;
    PolicyEnv { redis, proxy, c, d }
}
