//! Where a `PortForward` connects: TCP to `localhost:<port>` inside a ready pod's network
//! namespace (the host's for hostNetwork pods), as CRI-O and containerd do.
//!
//! Owns the pod lookup for port forwarding and the connect. The socket is created by a fresh
//! thread that joined the pod's pinned netns ([`crius_cni::in_netns`]) and keeps that namespace
//! when handed to tokio, so no pooled thread ever changes namespace. Must not copy data: the
//! streaming session does.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpStream;

use super::{SandboxState, Sandboxes};
use crate::error::{Error, Result};

/// How long a connect inside the pod may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A ready pod to forward ports of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub pod_id: String,
    /// The pinned network namespace; `None` for a hostNetwork pod.
    pub netns: Option<PathBuf>,
}

impl Sandboxes {
    /// The pod `id` (or unique prefix) as a port-forward target: `NotFound` for an unknown pod,
    /// `FailedPrecondition` when it is not ready (stopped: its network namespace is gone).
    pub fn port_forward_target(&self, id: &str) -> Result<Target> {
        let rec = self.resolve(id)?;
        if rec.state != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready: cannot forward its ports",
                rec.id
            )));
        }
        let netns = if rec.spec.host_network() {
            None
        } else {
            Some(rec.ns_path("net").ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "pod sandbox {} has no network namespace",
                    rec.id
                ))
            })?)
        };
        Ok(Target {
            pod_id: rec.id.clone(),
            netns,
        })
    }
}

/// Connects to `localhost:port` in the target's network namespace: `127.0.0.1` first, then
/// `::1` (a server may listen on either).
pub async fn connect(target: &Target, port: u16) -> io::Result<TcpStream> {
    let Some(netns) = target.netns.clone() else {
        return tokio::time::timeout(CONNECT_TIMEOUT, connect_host(port))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?;
    };
    let std = crate::telemetry::spawn_blocking(move || {
        crius_cni::in_netns(&netns, move || connect_localhost(port))
            .map_err(|e| io::Error::other(e.to_string()))?
    })
    .await
    .map_err(|e| io::Error::other(format!("connect task: {e}")))??;
    std.set_nonblocking(true)?;
    TcpStream::from_std(std)
}

fn localhost(port: u16) -> [SocketAddr; 2] {
    [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ]
}

/// Blocking connect, on the thread that joined the pod's netns.
fn connect_localhost(port: u16) -> io::Result<std::net::TcpStream> {
    let mut first = None;
    for addr in localhost(port) {
        match std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    Err(first.unwrap_or_else(|| io::Error::other("no address to connect to")))
}

async fn connect_host(port: u16) -> io::Result<TcpStream> {
    let mut first = None;
    for addr in localhost(port) {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    Err(first.unwrap_or_else(|| io::Error::other("no address to connect to")))
}
