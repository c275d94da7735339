//! Pod user namespaces: created and pinned by `crius-conmon userns` (a thread of the daemon
//! cannot unshare one), together with the pod's net/ipc/uts namespaces, which must be owned by
//! it for the containers that join them. Plus the startup probe that decides whether crius
//! offers user namespaces at all. Blocking.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};

use crius_cni::{NsKind, PinnedNamespaces};

use super::record::{IdMap, UserNamespace};
use crate::error::Error;

/// Creates the user namespace of `userns` and, owned by it, new namespaces of `kinds`, all
/// pinned under `dir`; the hostname is set in the new UTS namespace. Nothing stays on failure.
pub fn create_pinned(
    monitor: &Path,
    dir: &Path,
    kinds: &[NsKind],
    hostname: Option<&str>,
    userns: &UserNamespace,
) -> Result<PinnedNamespaces, Error> {
    let mut cmd = Command::new(monitor);
    cmd.arg("userns").arg("--dir").arg(dir);
    for m in UserNamespace::args(&userns.uids) {
        cmd.arg("--uid-map").arg(m);
    }
    for m in UserNamespace::args(&userns.gids) {
        cmd.arg("--gid-map").arg(m);
    }
    for kind in kinds {
        cmd.arg("--ns").arg(kind.name());
    }
    if let Some(name) = hostname {
        cmd.arg("--hostname").arg(name);
    }
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Error::Internal(format!("start {}: {e}", monitor.display())))?;
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "pod user namespace: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut all = vec![NsKind::User];
    all.extend_from_slice(kinds);
    Ok(PinnedNamespaces::adopt(dir, &all))
}

/// Whether pods may have user namespaces here: a throwaway user namespace is created and an
/// idmapped clone of `store_dir` (where image layers live) is staged under `scratch`. The error
/// says what is missing (helper, kernel support, filesystem support).
pub fn probe(monitor: &Path, scratch: &Path, store_dir: &Path) -> Result<(), String> {
    let ns_dir = scratch.join("ns");
    let one = |host_id| IdMap {
        container_id: 0,
        host_id,
        length: 1,
    };
    let userns = UserNamespace {
        uids: vec![one(65534)],
        gids: vec![one(65534)],
    };
    let result = (|| {
        create_pinned(monitor, &ns_dir, &[], None, &userns).map_err(|e| e.to_string())?;
        let user = ns_dir.join("user");
        let file = File::open(&user).map_err(|e| format!("open {}: {e}", user.display()))?;
        let mut staging = crate::idmap::Staging::new(&scratch.join("mnt"))
            .map_err(|e| format!("staging dir: {e}"))?;
        staging
            .add(store_dir, file.as_fd(), false)
            .map_err(|e| format!("idmapped mount of {}: {e}", store_dir.display()))?;
        staging.release().map_err(|e| e.to_string())
    })();
    let _ = crius_cni::remove_pinned(&ns_dir);
    let _ = std::fs::remove_dir(&ns_dir);
    let _ = std::fs::remove_dir(scratch);
    result
}
