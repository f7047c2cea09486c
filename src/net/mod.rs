//! The transport layer: byte streams and how they are read and written. Nothing here knows
//! RESP, the policy or the proxy's state.
//!
//! - [`stream`]: the client's stream (TCP, or a Unix socket: a Unix listener or the plain end
//!   of a TLS bridge), split into halves driven by readiness.
//! - [`io`]: reads and writes that never wait, and buffer sizing.
//! - [`tls`]: certificate material, handshakes with named causes, and the bridge that gives
//!   the session a plain stream for a TLS connection.

pub mod io;
pub mod stream;
pub mod tls;
