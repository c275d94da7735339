//! Network namespaces and CNI plugin execution for crius.
//!
//! Owns everything that speaks the CNI spec: loading network configurations from the conf dir,
//! (in issue 4) executing plugins and caching their results. Must not know about CRI types or the
//! daemon's state store: callers pass plain values in.

pub mod config;

pub use config::{ConfigError, NetworkConfigList};
