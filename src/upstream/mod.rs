//! The upstream side: everything between a session and Redis.
//!
//! - [`connect`]: connecting (TCP, Unix socket, TLS), the proxy's handshake, one-off calls, and
//!   the halves of a connected socket.
//! - [`pool`]: shared connections that carry many stateless clients' commands at once.
//! - [`link`]: [`Link`], the one type a session talks to, whichever of these carries it.
//!
//! Nothing here knows the session or the listener: what it needs of the running proxy (the
//! configuration in force, the metrics) comes through [`Env`].

use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;

pub mod connect;
pub mod link;
pub mod pool;

pub use connect::{handshake_commands, handshake_len, UpRead, UpWrite, Upstream, UpstreamError};
pub use link::{Dedicated, Handle, Link, Ready};
pub use pool::{Job, Pool, SharedReply, CLIENT_BUFFER};

/// What upstream tasks read of the running proxy. Read on every use rather than copied at
/// start, so a reloaded configuration (limits) applies to them too.
pub trait Env: Send + Sync + 'static {
    /// The configuration in force.
    fn config(&self) -> Arc<Config>;
    /// Where upstream failures are counted.
    fn metrics(&self) -> &Metrics;
}
