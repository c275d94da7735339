//! `crius-conmon userns`: a pod's user namespace, and its net/ipc/uts namespaces owned by it,
//! pinned by bind mounts without a long-lived process.
//!
//! A thread of the multi-threaded daemon cannot create a user namespace, and the namespaces a
//! user-namespaced container joins must be owned by that user namespace. So this single-threaded
//! helper forks a child that unshares `CLONE_NEWUSER`; the parent (root in the initial user
//! namespace) writes the child's `uid_map`/`gid_map`; the child then unshares the requested
//! namespaces (owned by the new user namespace) and sets the hostname; the parent bind-mounts
//! `/proc/<child>/ns/{user,net,ipc,uts}` onto `--dir/<kind>` and lets the child exit. On any
//! failure nothing stays mounted and the exit status is 1 with the reason on stderr.
//!
//! Usage: `crius-conmon userns --dir DIR --uid-map C:H:L... --gid-map C:H:L... [--ns net|ipc|uts]...
//! [--hostname NAME]`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;

use crate::sys;

struct Args {
    dir: PathBuf,
    uid_map: String,
    gid_map: String,
    kinds: Vec<(&'static str, libc::c_int)>,
    hostname: Option<String>,
}

fn parse_map(value: &str, out: &mut String) -> Result<(), String> {
    let parts: Vec<&str> = value.split(':').collect();
    let nums: Vec<u32> = parts.iter().filter_map(|p| p.parse().ok()).collect();
    if parts.len() != 3 || nums.len() != 3 || nums[2] == 0 {
        return Err(format!(
            "bad id mapping {value:?} (want CONTAINER:HOST:LENGTH)"
        ));
    }
    out.push_str(&format!("{} {} {}\n", nums[0], nums[1], nums[2]));
    Ok(())
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut parsed = Args {
        dir: PathBuf::new(),
        uid_map: String::new(),
        gid_map: String::new(),
        kinds: Vec::new(),
        hostname: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--dir" => parsed.dir = PathBuf::from(value),
            "--uid-map" => parse_map(value, &mut parsed.uid_map)?,
            "--gid-map" => parse_map(value, &mut parsed.gid_map)?,
            "--hostname" => parsed.hostname = Some(value.clone()),
            "--ns" => {
                let kind = match value.as_str() {
                    "net" => ("net", libc::CLONE_NEWNET),
                    "ipc" => ("ipc", libc::CLONE_NEWIPC),
                    "uts" => ("uts", libc::CLONE_NEWUTS),
                    other => return Err(format!("unknown namespace kind {other:?}")),
                };
                if !parsed.kinds.contains(&kind) {
                    parsed.kinds.push(kind);
                }
            }
            other => return Err(format!("unknown userns flag {other:?}")),
        }
    }
    if parsed.dir.as_os_str().is_empty() {
        return Err("--dir is required".into());
    }
    if parsed.uid_map.is_empty() || parsed.gid_map.is_empty() {
        return Err("--uid-map and --gid-map are required".into());
    }
    if parsed.hostname.is_some() && !parsed.kinds.iter().any(|(n, _)| *n == "uts") {
        return Err("--hostname needs --ns uts".into());
    }
    Ok(parsed)
}

pub fn main(args: &[String]) -> Result<(), String> {
    let args = parse(args)?;
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| format!("create {}: {e}", args.dir.display()))?;
    let mut names = vec!["user"];
    names.extend(args.kinds.iter().map(|(n, _)| *n));
    for name in &names {
        let path = args.dir.join(name);
        File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("create {}: {e}", path.display()))?;
    }
    let (from_child, child_w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (child_r, to_child) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    match sys::fork().map_err(|e| format!("fork: {e}"))? {
        sys::Fork::Child => {
            drop(from_child);
            drop(to_child);
            let code = child(&args, File::from(child_w), File::from(child_r));
            sys::exit_now(code)
        }
        sys::Fork::Parent(pid) => {
            drop(child_w);
            drop(child_r);
            let mut from_child = File::from(from_child);
            let mut to_child = File::from(to_child);
            let result = parent(&args, &names, pid, &mut from_child, &mut to_child);
            if result.is_err() {
                sys::kill_hard(pid);
            }
            drop(to_child);
            let _ = sys::wait_pid(pid);
            if result.is_err() {
                for name in &names {
                    let path = args.dir.join(name);
                    let _ = sys::umount_detach(&path);
                    let _ = std::fs::remove_file(&path);
                }
            }
            result
        }
    }
}

/// Reads the child's report of one step: `+` or the error text.
fn step(from_child: &mut File, what: &str) -> Result<(), String> {
    let mut buf = [0u8; 256];
    let n = from_child
        .read(&mut buf)
        .map_err(|e| format!("{what}: {e}"))?;
    match &buf[..n] {
        [b'+'] => Ok(()),
        [] => Err(format!("{what}: the namespace child exited")),
        text => Err(format!("{what}: {}", String::from_utf8_lossy(text))),
    }
}

fn parent(
    args: &Args,
    names: &[&str],
    pid: libc::pid_t,
    from_child: &mut File,
    to_child: &mut File,
) -> Result<(), String> {
    step(from_child, "unshare user namespace")?;
    for (file, map) in [("uid_map", &args.uid_map), ("gid_map", &args.gid_map)] {
        let path = format!("/proc/{pid}/{file}");
        // One write(2): the kernel takes the map in a single call only.
        File::options()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write(map.as_bytes()))
            .map_err(|e| format!("write {path} ({}): {e}", map.trim().replace('\n', "; ")))?;
    }
    to_child
        .write_all(b"+")
        .map_err(|e| format!("signal namespace child: {e}"))?;
    step(from_child, "unshare pod namespaces")?;
    for name in names {
        let src = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
        let dst = args.dir.join(name);
        sys::bind_mount(&src, &dst).map_err(|e| format!("pin {}: {e}", dst.display()))?;
    }
    Ok(())
}

fn report(to_parent: &mut File, result: std::io::Result<()>, what: &str) -> bool {
    let msg = match result {
        Ok(()) => "+".to_string(),
        Err(e) => format!("{what}: {e}"),
    };
    to_parent.write_all(msg.as_bytes()).is_ok() && msg == "+"
}

fn child(args: &Args, mut to_parent: File, mut from_parent: File) -> libc::c_int {
    if !report(
        &mut to_parent,
        sys::unshare(libc::CLONE_NEWUSER),
        "unshare(CLONE_NEWUSER)",
    ) {
        return 1;
    }
    let mut go = [0u8; 1];
    if !matches!(from_parent.read(&mut go), Ok(1)) {
        return 1;
    }
    let flags = args.kinds.iter().fold(0, |acc, (_, f)| acc | f);
    let unshared = if flags == 0 {
        Ok(())
    } else {
        sys::unshare(flags)
    };
    let result = unshared.and_then(|()| match &args.hostname {
        Some(name) => sys::sethostname(name),
        None => Ok(()),
    });
    if !report(&mut to_parent, result, "unshare namespaces / set hostname") {
        return 1;
    }
    // Stay until the parent has pinned our namespaces and closes its end.
    let _ = from_parent.read(&mut go);
    0
}
