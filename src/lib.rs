//! respguard: a RESP (Redis protocol) sidecar proxy that enforces a cache policy.
//!
//! Modules in the order a command flows through them:
//!
//! - [`transport`]: the client's stream, TCP or Unix (a Unix listener or a TLS bridge).
//! - [`listener`]: accepts clients, enforces the client limit, drains on shutdown; [`Proxy`]
//!   is the handle to a running proxy.
//! - [`connection`]: one task per client; batches reads and writes, pairs replies with
//!   commands, tracks connection state (RESP3, pub/sub, MULTI, MONITOR).
//! - [`codec`]: bounded, non-recursive scanning of RESP requests and replies.
//! - [`command`]: the command table: one row per Redis command with its key positions,
//!   read/write flags and TTL-bearing arguments.
//! - [`policy`]: the policy stages, returning a [`policy::Verdict`] per command.
//! - [`multiplex`]: shared upstream connections for clients without connection state, and the
//!   rule for when a client is pinned to its own.
//! - [`upstream`]: connecting to Redis (TCP or Unix socket) and the proxy's handshake.
//! - [`tls`]: certificate material, handshakes with named causes, and the bridge that gives
//!   the session a plain stream for a TLS connection.
//! - [`metrics`]: counters and histograms, recorded once per command after its reply.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` over HTTP.
//! - [`config`]: the YAML file, overrides, validation with every problem located.
//! - [`reload`]: applying a changed configuration without a restart.
//! - [`stats`]: `respguard stats`, the terminal view of a running proxy's metrics.
//! - [`audit`]: `respguard audit`, an existing Redis measured against the policy.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod cluster;
pub mod codec;
pub mod command;
pub mod config;
pub mod connection;
pub mod listener;
pub mod metrics;
pub mod multiplex;
pub mod policy;
pub mod reload;
pub mod stats;
pub mod tls;
pub mod transport;
pub mod upstream;

pub use config::Config;
pub use listener::Proxy;
