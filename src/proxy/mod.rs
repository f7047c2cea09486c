//! The proxy itself: what runs per process and per client.
//!
//! - [`shared`]: state every task of one proxy shares, and the shutdown phase.
//! - [`listener`]: accepts clients (TCP, Unix socket, TLS), enforces the client limit, drains
//!   on shutdown; [`Proxy`] is the handle to a running proxy.
//! - [`session`]: one client's state machine and the task that drives its sockets.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` over HTTP.
//! - [`reload`]: applying a changed configuration or certificate files without a restart.

pub mod admin;
pub mod listener;
pub mod reload;
pub mod session;
pub mod shared;

pub use listener::Proxy;
pub use shared::{Shared, ShutdownPhase};
