//! Test harness: real `redis-server` instances on free loopback ports, respguard in front of
//! them (in this process, or the real binary), a raw RESP client for what client crates hide,
//! and Prometheus text read with the crate's own parser.
//!
//! - [`ports`]: free ports, and whether a process owns the listener on one.
//! - [`process`]: child processes that die with the test process, however it ends.
//! - [`servers`]: `redis-server` children ([`RedisServer`]), `INFO clients` waits.
//! - [`raw`]: the raw RESP connection ([`Raw`]).
//! - [`resp`]: expected frames, encoded commands, readable assertion messages.
//! - [`prom`]: the admin port over HTTP, metric values from `/metrics`.
//! - [`inproc`]: `respguard::Proxy` started in this process, [`PolicyEnv`].
//! - [`binary`]: the `respguard` binary as a child ([`Respguard`]).
//! - [`tls`]: test certificates ([`Pki`]) and a Redis with a TLS port ([`TlsRedis`]).
//! - [`cluster`]: a 3-primary, 3-replica Redis Cluster ([`RedisCluster`]).
//!
//! Everything is re-exported here, so tests name it `common::X`.
#![allow(dead_code, unused_imports)]

pub mod binary;
pub mod cluster;
pub mod inproc;
pub mod ports;
pub mod process;
pub mod prom;
pub mod raw;
pub mod resp;
pub mod servers;
pub mod tls;

use std::time::Duration;

pub use binary::*;
pub use cluster::*;
pub use inproc::*;
pub use ports::*;
pub use process::rss_bytes;
pub use prom::*;
pub use raw::*;
pub use resp::*;
pub use servers::*;
pub use tls::*;

/// Polls `f` every 10 ms until it is true or `timeout` passes; returns the last answer.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `assert_eq!` for RESP bytes: shows both sides as escaped text, not as byte arrays.
/// Use with `#[macro_use] mod common;`.
#[allow(unused_macros)]
macro_rules! assert_resp {
    ($got:expr, $want:expr $(,)?) => {
        $crate::common::check_resp(&$got, &$want, format_args!("reply mismatch"))
    };
    ($got:expr, $want:expr, $($arg:tt)+) => {
        $crate::common::check_resp(&$got, &$want, format_args!($($arg)+))
    };
}
