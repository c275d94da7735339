//! Streaming server for Exec, Attach and PortForward: protocols and sessions.
//!
//! `server` listens on `[api] stream_address:stream_port`, keeps each RPC's request under a
//! single-use token ([`cache`]) and upgrades the client's connection to SPDY/3.1 ([`spdy`]);
//! [`remotecommand`] runs exec and attach sessions, [`portforward`] port-forward sessions.

pub mod cache;
pub mod idle;
pub mod portforward;
pub mod remotecommand;
pub mod server;
pub mod spdy;
pub mod tls;
pub mod ws;
