//! respguard: a RESP (Redis protocol) sidecar proxy that enforces a cache policy.
//!
//! Modules in the order a command flows through them; each depends only on those below it in
//! the layer order checked by `scripts/check-layers`
//! (`diag`, `codec`, `command`, `net`, `policy`, `config`, `metrics`, `upstream`, `proxy`,
//! `audit`, `stats`):
//!
//! - [`net`]: byte streams (TCP, Unix, the TLS bridge) and reads and writes that never wait.
//! - [`proxy`]: the listener that accepts clients, the per-client session (request intake,
//!   reply pairing, transactions, pub/sub, MONITOR and `CLIENT REPLY`, driven by one
//!   `select!`), shared state and shutdown, the admin endpoint, reloads. [`Proxy`] is the
//!   handle to a running proxy.
//! - [`codec`]: bounded, non-recursive scanning of RESP requests and replies.
//! - [`command`]: the command table: one row per Redis command with its key positions,
//!   read/write flags and TTL-bearing arguments, and the traits respguard derives per row.
//! - [`policy`]: the policy stages, returning a [`policy::Verdict`] per command.
//! - [`upstream`]: how a session reaches Redis ([`upstream::Link`]): connecting and the
//!   proxy's handshake, shared connections for clients without connection state, dedicated
//!   ones for the rest.
//! - [`metrics`]: counters and histograms, recorded once per command after its reply.
//! - [`config`]: the YAML file, overrides, validation with every problem located.
//! - [`diag`]: configuration problems with file, line and field; durations and sizes.
//! - [`stats`]: `respguard stats`, the terminal view of a running proxy's metrics.
//! - [`audit`]: `respguard audit`, an existing Redis measured against the policy.
#![forbid(unsafe_code)]

pub mod audit;
pub mod codec;
pub mod command;
pub mod config;
pub mod diag;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod proxy;
pub mod stats;
pub mod upstream;

pub use config::Config;
pub use proxy::Proxy;
