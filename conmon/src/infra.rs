//! `crius-conmon infra`: PID 1 of a pod-level PID namespace.
//!
//! The launcher (started by crius) leaves crius's session, joins the pod's namespaces given on
//! the command line, unshares a PID namespace and forks: the child is PID 1 there, points its
//! stdio at /dev/null, reaps zombies and exits on SIGTERM/SIGINT; the launcher writes the child's
//! host pid to `--pid-file` (temp file + rename) and exits, so nothing waits on it. With
//! `--userns` the pod's user namespace is joined first (the pod's other namespaces are owned by
//! it) and PID 1 runs as its root, which is an unprivileged id on the host.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;

use crate::sys;

pub fn main(args: &[String]) -> Result<(), String> {
    let mut pid_file: Option<PathBuf> = None;
    let mut namespaces: Vec<(libc::c_int, PathBuf)> = Vec::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .map(PathBuf::from)
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--pid-file" => pid_file = Some(value()?),
            // The pod's user namespace comes first: the others are owned by it.
            "--userns" => namespaces.insert(0, (libc::CLONE_NEWUSER, value()?)),
            "--netns" => namespaces.push((libc::CLONE_NEWNET, value()?)),
            "--ipcns" => namespaces.push((libc::CLONE_NEWIPC, value()?)),
            "--utsns" => namespaces.push((libc::CLONE_NEWUTS, value()?)),
            other => return Err(format!("unknown infra flag {other:?}")),
        }
    }
    let pid_file = pid_file.ok_or("--pid-file is required")?;
    sys::setsid().map_err(|e| format!("setsid: {e}"))?;
    for (flag, path) in &namespaces {
        let f = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
        sys::setns(f.as_fd(), *flag).map_err(|e| format!("join {}: {e}", path.display()))?;
    }
    let in_userns = namespaces
        .first()
        .is_some_and(|(flag, _)| *flag == libc::CLONE_NEWUSER);
    sys::unshare(libc::CLONE_NEWPID).map_err(|e| format!("unshare pid namespace: {e}"))?;
    match sys::fork().map_err(|e| format!("fork: {e}"))? {
        sys::Fork::Child => pid1(in_userns),
        sys::Fork::Parent(pid) => {
            let mut tmp = pid_file.clone().into_os_string();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            let write = || -> std::io::Result<()> {
                let mut f = File::create(&tmp)?;
                write!(f, "{pid}")?;
                std::fs::rename(&tmp, &pid_file)
            };
            write().map_err(|e| format!("write {}: {e}", pid_file.display()))
        }
    }
}

fn pid1(in_userns: bool) -> ! {
    let _ = sys::null_stdio();
    // In a pod user namespace PID 1 runs as the namespace's root, an unprivileged id outside.
    if in_userns && sys::become_ids(0, 0).is_err() {
        std::process::exit(1);
    }
    let set = match sys::block_all_signals() {
        Ok(set) => set,
        Err(_) => std::process::exit(1),
    };
    loop {
        match sys::wait_signal(&set) {
            Ok(libc::SIGCHLD) => sys::reap_all(),
            Ok(libc::SIGTERM) | Ok(libc::SIGINT) => std::process::exit(0),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => std::process::exit(1),
        }
    }
}
