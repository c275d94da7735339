//! Containers: OCI spec generation now; lifecycle, rootfs and the monitor land with issue 5.
//!
//! Owns the container records and everything under `<runroot>/containers`. Must not build CRI
//! responses (handlers do).

pub mod spec;
