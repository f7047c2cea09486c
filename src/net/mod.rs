//! The transport layer: byte streams and how they are read and written. Nothing here knows
//! RESP, the policy or the proxy's state.
//!
//! - [`stream`]: the client's stream (TCP, a Unix socket, or TLS), split into halves driven by
//!   readiness.
//! - [`io`]: reads and writes that never wait, and buffer sizing.
//! - [`tls`]: certificate material, handshakes with named causes, and the TLS stream: rustls
//!   driven over the socket's non-blocking reads and writes, with the same readiness calls.

pub mod io;
pub mod stream;
pub mod tls;
