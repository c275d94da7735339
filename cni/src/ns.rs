//! Pinned pod namespaces (net, ipc, uts) without a long-lived process, and running code inside a
//! network namespace.
//!
//! A namespace is created by a dedicated, short-lived thread that unshares it, optionally sets the
//! hostname, bind-mounts `/proc/thread-self/ns/<kind>` onto `<dir>/<kind>` and exits; the bind
//! mount keeps the namespace alive. Code that must run inside a netns runs on its own fresh thread
//! after `setns`, so no pooled thread (tokio's blocking pool included) ever changes namespace.
//!
//! Owns: the pin files and their mounts. Must not: know about pods, CNI or the daemon's store,
//! nor touch the calling thread's namespaces.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::{netlink, sys};

/// A kind of namespace that can be pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NsKind {
    Net,
    Ipc,
    Uts,
    /// A pod's user namespace. Pinned like the others but never created here: a thread of a
    /// multi-threaded process cannot unshare one (the daemon asks `crius-conmon userns`).
    User,
}

impl NsKind {
    pub const ALL: [NsKind; 4] = [NsKind::Net, NsKind::Ipc, NsKind::Uts, NsKind::User];

    /// The file name under `/proc/<pid>/ns/` and under the pin directory.
    pub fn name(self) -> &'static str {
        match self {
            NsKind::Net => "net",
            NsKind::Ipc => "ipc",
            NsKind::Uts => "uts",
            NsKind::User => "user",
        }
    }

    fn clone_flag(self) -> libc::c_int {
        match self {
            NsKind::Net => libc::CLONE_NEWNET,
            NsKind::Ipc => libc::CLONE_NEWIPC,
            NsKind::Uts => libc::CLONE_NEWUTS,
            NsKind::User => libc::CLONE_NEWUSER,
        }
    }
}

/// Errors of namespace handling; every message names the path or namespace involved.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("invalid hostname {0:?}")]
    InvalidHostname(String),
    #[error("namespace thread for {path} panicked")]
    ThreadPanicked { path: PathBuf },
    #[error("spawn namespace thread for {path}: {source}")]
    Spawn { path: PathBuf, source: io::Error },
}

impl NsError {
    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> NsError + 'a {
        move |source| NsError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the error is a missing path (e.g. a netns that was already removed).
    pub fn is_not_found(&self) -> bool {
        matches!(self, NsError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Namespaces pinned by bind mounts under one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedNamespaces {
    dir: PathBuf,
    kinds: Vec<NsKind>,
}

impl PinnedNamespaces {
    /// Namespaces that something else pinned at `dir/<kind>` (e.g. `crius-conmon userns`).
    pub fn adopt(dir: &Path, kinds: &[NsKind]) -> PinnedNamespaces {
        PinnedNamespaces {
            dir: dir.to_path_buf(),
            kinds: kinds.to_vec(),
        }
    }

    /// The directory holding the pin files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kinds that were pinned.
    pub fn kinds(&self) -> &[NsKind] {
        &self.kinds
    }

    /// The pin file of `kind`, if it was pinned.
    pub fn path(&self, kind: NsKind) -> Option<PathBuf> {
        self.kinds
            .contains(&kind)
            .then(|| self.dir.join(kind.name()))
    }

    /// The network namespace path (what CNI receives as `CNI_NETNS`), if one was pinned.
    pub fn net(&self) -> Option<PathBuf> {
        self.path(NsKind::Net)
    }

    /// Unmounts and deletes the pin files; idempotent.
    pub fn remove(&self) -> Result<(), NsError> {
        remove_pinned(&self.dir)
    }
}

/// Creates new namespaces of `kinds` and pins each at `dir/<kind>` (`dir` is created if needed).
///
/// The hostname, when given, is set in the new UTS namespace (which must then be requested). On
/// failure, whatever was pinned is removed again.
pub fn create_pinned(
    kinds: &[NsKind],
    dir: &Path,
    hostname: Option<&str>,
) -> Result<PinnedNamespaces, NsError> {
    let mut wanted: Vec<NsKind> = Vec::new();
    if kinds.contains(&NsKind::User) {
        return Err(NsError::Io {
            op: "create a user namespace from a thread at",
            path: dir.to_path_buf(),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    for kind in kinds {
        if !wanted.contains(kind) {
            wanted.push(*kind);
        }
    }
    if let Some(name) = hostname {
        if name.is_empty() || name.len() > 64 || name.contains('\0') {
            return Err(NsError::InvalidHostname(name.to_string()));
        }
        if !wanted.contains(&NsKind::Uts) {
            return Err(NsError::InvalidHostname(format!(
                "{name} (hostname needs a new uts namespace)"
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(NsError::io("create namespace dir", dir))?;
    for kind in &wanted {
        let path = dir.join(kind.name());
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(NsError::io("create namespace file", &path))?;
    }
    let pinned = PinnedNamespaces {
        dir: dir.to_path_buf(),
        kinds: wanted,
    };
    let result = run_on_fresh_thread(dir, || pin_on_this_thread(&pinned, hostname));
    match result.and_then(|r| r) {
        Ok(()) => Ok(pinned),
        Err(e) => {
            // Best effort, and only what we created: the original error is what matters.
            let _ = remove_kinds(dir, &pinned.kinds);
            Err(e)
        }
    }
}

/// Runs on a thread that exits right after: its namespaces die with it except for the pins.
fn pin_on_this_thread(pinned: &PinnedNamespaces, hostname: Option<&str>) -> Result<(), NsError> {
    let flags = pinned.kinds.iter().fold(0, |acc, k| acc | k.clone_flag());
    if flags != 0 {
        sys::unshare(flags).map_err(NsError::io("unshare namespaces for", &pinned.dir))?;
    }
    if let Some(name) = hostname {
        let uts = pinned.dir.join("uts");
        sys::sethostname(name).map_err(NsError::io("set hostname for", &uts))?;
    }
    for kind in &pinned.kinds {
        let src = PathBuf::from("/proc/thread-self/ns").join(kind.name());
        let dst = pinned.dir.join(kind.name());
        sys::bind_mount(&src, &dst).map_err(NsError::io("bind-mount namespace onto", &dst))?;
    }
    Ok(())
}

/// Unmounts (lazily) and deletes `dir/{net,ipc,uts,user}`; the directory itself is the caller's.
///
/// Idempotent: missing files and files that are not mount points are fine.
pub fn remove_pinned(dir: &Path) -> Result<(), NsError> {
    remove_kinds(dir, &NsKind::ALL)
}

fn remove_kinds(dir: &Path, kinds: &[NsKind]) -> Result<(), NsError> {
    for kind in kinds {
        let path = dir.join(kind.name());
        // A file may carry stacked mounts (e.g. a retried create); peel them all off.
        for _ in 0..8 {
            match sys::umount_detach(&path) {
                Ok(()) => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => break,
                Err(e) => return Err(NsError::io("unmount namespace", &path)(e)),
            }
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(NsError::io("remove namespace file", &path)(e)),
        }
    }
    Ok(())
}

/// Runs `f` on a new thread that first joins the network namespace at `path`.
///
/// The thread ends when `f` returns, so its namespace change never leaks to other work. A panic
/// in `f` is propagated to the caller.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NsError> {
    let ns = File::open(path).map_err(NsError::io("open netns", path))?;
    run_on_fresh_thread(path, move || {
        sys::setns(ns.as_fd(), libc::CLONE_NEWNET).map_err(NsError::io("enter netns", path))?;
        Ok(f())
    })?
}

/// Runs `f` on a new thread that first joins every namespace in `namespaces` (kind, pin path).
///
/// Used for writes that the kernel scopes by the writer's namespaces (IPC and net sysctls). Like
/// [`in_netns`], the thread ends when `f` returns.
pub fn in_namespaces<T: Send>(
    namespaces: &[(NsKind, PathBuf)],
    f: impl FnOnce() -> T + Send,
) -> Result<T, NsError> {
    let mut files = Vec::with_capacity(namespaces.len());
    for (kind, path) in namespaces {
        let file = File::open(path).map_err(NsError::io("open namespace", path))?;
        files.push((*kind, path.as_path(), file));
    }
    let first = namespaces
        .first()
        .map(|(_, p)| p.clone())
        .unwrap_or_default();
    run_on_fresh_thread(&first, move || {
        for (kind, path, file) in &files {
            sys::setns(file.as_fd(), kind.clone_flag())
                .map_err(NsError::io("enter namespace", path))?;
        }
        Ok(f())
    })?
}

fn run_on_fresh_thread<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NsError> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("crius-ns".into())
            .spawn_scoped(scope, f)
            .map_err(|source| NsError::Spawn {
                path: path.to_path_buf(),
                source,
            })?;
        match handle.join() {
            Ok(v) => Ok(v),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Brings up the loopback interface inside the network namespace at `netns` (rtnetlink, from a
/// thread that joined it).
pub fn loopback_up(netns: &Path) -> Result<(), NsError> {
    in_netns(netns, || netlink::set_link_up("lo"))?.map_err(NsError::io("bring up lo in", netns))
}

/// The IPv4/IPv6 addresses of `ifname` inside the network namespace at `netns` (kernel order;
/// empty when there is no such interface), read with an rtnetlink dump from a thread inside it.
pub fn interface_addrs(netns: &Path, ifname: &str) -> Result<Vec<IpAddr>, NsError> {
    in_netns(netns, || netlink::interface_addrs(ifname))?
        .map_err(NsError::io("list interface addresses in", netns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_without_uts_is_refused_before_any_syscall() {
        let dir = tempfile::tempdir().unwrap();
        let err = create_pinned(&[NsKind::Net], &dir.path().join("p"), Some("a")).unwrap_err();
        assert!(err.to_string().contains("uts"), "{err}");
        assert!(!dir.path().join("p").exists());
    }

    #[test]
    fn remove_of_missing_dir_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        remove_pinned(&dir.path().join("absent")).unwrap();
        remove_pinned(&dir.path().join("absent")).unwrap();
    }

    #[test]
    fn in_netns_of_missing_path_names_it() {
        let err = in_netns(Path::new("/nonexistent/netns"), || ()).unwrap_err();
        assert!(err.is_not_found());
        assert!(err.to_string().contains("/nonexistent/netns"), "{err}");
    }
}
