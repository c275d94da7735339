//! Network namespaces and CNI plugin execution for crius.
//!
//! Owns everything that speaks the CNI spec and the pod's pinned namespaces:
//! - [`config`]: loading network configurations from the conf dir;
//! - [`ns`]: pinned net/ipc/uts namespaces, running code inside a netns, `lo` up, addresses;
//! - [`exec`]: running plugins for ADD/DEL/CHECK, with the result cache (`cache`, private);
//! - [`result`]: normalized ADD results.
//!
//! Everything is blocking (callers use `spawn_blocking`); there is no async runtime here. Must
//! not know about CRI types or the daemon's state store: callers pass plain values in. Raw
//! syscalls live only in the private `sys` module; rtnetlink requests in the private `netlink`
//! module.

mod cache;
pub mod config;
pub mod exec;
mod netlink;
pub mod ns;
mod process;
pub mod result;
mod sys;
pub mod watch;

pub use config::{ConfigError, NetworkConfigList};
pub use exec::{Attachment, Cni, CniError, CniErrorKind, DEFAULT_PLUGIN_TIMEOUT};
pub use ns::{
    create_pinned, in_namespaces, in_netns, interface_addrs, loopback_up, remove_pinned, NsError,
    NsKind, PinnedNamespaces,
};
pub use result::{CniResult, Dns, Interface, IpCidr, IpConfig, ResultError, Route};
