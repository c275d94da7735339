//! crius: a Kubernetes CRI container runtime.
//!
//! The library holds the whole daemon so that handler tests, e2e helpers and benchmarks can build
//! it; `main.rs` is only the composition root. See `docs/architecture.md` for the module map.

#![deny(unsafe_code)]

pub mod app;
pub mod authority;
pub mod cgroups;
pub mod config;
pub mod container;
pub mod daemon;
pub mod error;
pub mod events;
pub mod idmap;
pub mod image;
pub mod keyed;
pub mod lifecycle;
pub mod memory;
pub mod metrics;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod socket;
pub mod store;
pub mod streaming;
pub mod telemetry;
pub mod util;
