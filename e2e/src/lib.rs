//! The e2e harness, reused by every capability's tests: the real daemon under test
//! ([`daemon`]), reproducible test images ([`fixtures`]) and a loopback registry serving them
//! ([`registry`]), a raw HTTP/2 gRPC client for requests tonic cannot write ([`grpc_raw`]), a
//! private CNI network per test ([`network`]), a private cgroup parent ([`cgroups`]) and CRI pod
//! builders ([`pods`]). Tests live in `e2e/tests/`, one file per
//! capability; they run as root.

pub mod busybox;
pub mod cgroups;
pub mod daemon;
pub mod fixtures;
pub mod grpc_raw;
pub mod leaks;
pub mod network;
pub mod pods;
pub mod registry;
pub mod sweep;
