//! Pod sysctls: which are namespaced, and writing them inside the pod's namespaces.
//!
//! Only sysctls the kernel scopes by namespace may be set per pod (the Kubernetes list):
//! `kernel.shm*`, `kernel.msg*`, `kernel.sem`, `fs.mqueue.*` (IPC namespace) and `net.*`
//! (network namespace). Names use dots or, Kubernetes-style, slashes (`net/ipv4/conf/eth0.1/x`,
//! where dots are part of a component). Must not write anything outside the pod's namespaces.

use std::path::{Path, PathBuf};

use crius_cni::NsKind;

use super::record::{NamespaceModes, NsMode};
use crate::error::Error;

/// The namespace a sysctl belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Ipc,
    Net,
}

/// Converts a slash-separated name to the dotted form (dots inside components become slashes).
fn dotted(name: &str) -> String {
    if name
        .find(['.', '/'])
        .is_some_and(|i| name.as_bytes()[i] == b'/')
    {
        name.chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                c => c,
            })
            .collect()
    } else {
        name.to_string()
    }
}

/// The namespace of a dotted sysctl name, or `None` if it is not namespaced.
pub fn scope(name: &str) -> Option<Scope> {
    const IPC_EXACT: &[&str] = &["kernel.sem"];
    const IPC_PREFIX: &[&str] = &["kernel.shm", "kernel.msg", "fs.mqueue."];
    if name.starts_with("net.") {
        Some(Scope::Net)
    } else if IPC_EXACT.contains(&name) || IPC_PREFIX.iter().any(|p| name.starts_with(p)) {
        Some(Scope::Ipc)
    } else {
        None
    }
}

/// The file under `/proc/sys` of a dotted name.
pub fn proc_path(name: &str) -> PathBuf {
    let rel: String = name
        .chars()
        .map(|c| match c {
            '.' => '/',
            '/' => '.',
            c => c,
        })
        .collect();
    Path::new("/proc/sys").join(rel)
}

/// Checks a pod sysctl and returns its dotted name.
pub fn validate(name: &str, value: &str, ns: &NamespaceModes) -> Result<String, Error> {
    let invalid = |why: &str| Error::InvalidArgument(format!("sysctl {name:?}: {why}"));
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c));
    let dotted = dotted(name);
    if name.is_empty() || !ok_chars || dotted.split('.').any(|p| p.is_empty() || p == "/") {
        return Err(invalid("not a valid sysctl name"));
    }
    if dotted.split(['.', '/']).any(|p| p == ".." || p.is_empty()) {
        return Err(invalid("not a valid sysctl name"));
    }
    if value.contains(['\n', '\0']) {
        return Err(invalid("the value must be a single line"));
    }
    match scope(&dotted) {
        None => Err(invalid(
            "not a namespaced sysctl (only kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.* and net.* may be set per pod)",
        )),
        Some(Scope::Net) if ns.network == NsMode::Node => Err(invalid(
            "net.* sysctls cannot be set on a hostNetwork pod",
        )),
        Some(Scope::Ipc) if ns.ipc == NsMode::Node => Err(invalid(
            "IPC sysctls cannot be set on a pod that uses the host's IPC namespace",
        )),
        Some(_) => Ok(dotted),
    }
}

/// Writes each sysctl inside the namespace pinned at `net` or `ipc`. Blocking.
pub fn apply<'a>(
    sysctls: impl IntoIterator<Item = (&'a String, &'a String)>,
    net: Option<&Path>,
    ipc: Option<&Path>,
) -> Result<(), Error> {
    for (name, value) in sysctls {
        let (kind, ns) = match scope(name) {
            Some(Scope::Net) => (NsKind::Net, net),
            Some(Scope::Ipc) => (NsKind::Ipc, ipc),
            None => (NsKind::Net, None),
        };
        let Some(ns) = ns else {
            return Err(Error::InvalidArgument(format!(
                "sysctl {name:?}: the pod has no namespace of its own for it"
            )));
        };
        let path = proc_path(name);
        let value_nl = format!("{value}\n");
        let target = path.clone();
        let written = crius_cni::in_namespaces(&[(kind, ns.to_path_buf())], move || {
            std::fs::write(&target, value_nl.as_bytes())
        })
        .map_err(|e| Error::Internal(format!("sysctl {name}: {e}")))?;
        if let Err(e) = written {
            let msg = format!("sysctl {name}={value:?} ({}): {e}", path.display());
            return Err(match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidInput => {
                    Error::InvalidArgument(msg)
                }
                _ => Error::Internal(msg),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_ns() -> NamespaceModes {
        NamespaceModes {
            network: NsMode::Pod,
            pid: NsMode::Container,
            ipc: NsMode::Pod,
            target_id: String::new(),
        }
    }

    #[test]
    fn namespaced_names_are_accepted_in_both_spellings() {
        let ns = pod_ns();
        assert_eq!(
            validate("net.ipv4.ip_forward", "1", &ns).unwrap(),
            "net.ipv4.ip_forward"
        );
        assert_eq!(
            validate("net/ipv4/conf/eth0.100/rp_filter", "1", &ns).unwrap(),
            "net.ipv4.conf.eth0/100.rp_filter"
        );
        assert_eq!(
            proc_path("net.ipv4.conf.eth0/100.rp_filter"),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
        assert!(validate("kernel.shmmax", "1", &ns).is_ok());
        assert!(validate("kernel.sem", "1 2 3 4", &ns).is_ok());
        assert!(validate("fs.mqueue.msg_max", "1", &ns).is_ok());
    }

    #[test]
    fn others_are_refused_with_the_name() {
        let ns = pod_ns();
        for bad in [
            "kernel.panic",
            "vm.swappiness",
            "net..x",
            "net.a/../b",
            "",
            "net.x y",
        ] {
            let err = validate(bad, "1", &ns).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert!(validate("net.ipv4.ip_forward", "1\n2", &ns).is_err());
        let host_ipc = NamespaceModes {
            ipc: NsMode::Node,
            ..pod_ns()
        };
        assert!(validate("kernel.shmmax", "1", &host_ipc).is_err());
    }
}
