//! Host cleanup after a daemon under test, whatever state the test left it in.
//!
//! Owns removing what one daemon instance put on the host outside its own process: monitor and
//! infra processes (`crius-conmon` with the instance's runroot on its command line), OCI runtime
//! containers under `<runroot>/runtimes/<handler>`, and mounts under the instance's directories.
//! Everything here is best effort and bounded; it must never touch what another instance (or
//! another test process) owns, so every match is on this instance's unique paths.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::network::run;

/// A process on the host: pid and its command line (NUL-separated arguments).
pub struct Process {
    pub pid: i32,
    pub args: Vec<String>,
}

/// Live processes (zombies have an empty command line and are skipped) matching `keep`.
pub fn processes(keep: impl Fn(&[String]) -> bool) -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (!args.is_empty() && keep(&args)).then_some(Process { pid, args })
        })
        .collect()
}

/// `crius-conmon` processes (monitors, pod infra, user namespace holders) of the instance whose
/// runroot is `runroot`.
pub fn monitors(runroot: &Path) -> Vec<Process> {
    let runroot = runroot.to_string_lossy().into_owned();
    processes(|args| {
        Path::new(&args[0]).file_name().and_then(|n| n.to_str()) == Some("crius-conmon")
            && args.iter().any(|a| a.starts_with(&runroot))
    })
}

/// Live (not a zombie) process `pid`.
pub fn alive(pid: u32) -> bool {
    pid != 0
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z ") && !s.contains(") X "))
            .unwrap_or(false)
}

/// SIGKILL to `pid` (never to a group: 0 and negative pids are ignored).
pub fn kill(pid: i32) {
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) has no memory effects.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// SIGKILLs the instance's monitors and waits (bounded) until they are gone.
pub fn kill_monitors(runroot: &Path) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = monitors(runroot);
        if left.is_empty() || Instant::now() > deadline {
            return;
        }
        for p in &left {
            kill(p.pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `delete --force` of every container the OCI runtimes still have state for under
/// `<runroot>/runtimes/<handler>/<id>`: kills its processes and removes its cgroup.
pub fn delete_runtime_containers(runroot: &Path) {
    let Ok(handlers) = std::fs::read_dir(runroot.join("runtimes")) else {
        return;
    };
    for handler in handlers.flatten() {
        let root = handler.path();
        let name = handler.file_name().to_string_lossy().into_owned();
        let Ok(ids) = std::fs::read_dir(&root) else {
            continue;
        };
        for id in ids.flatten().filter(|e| e.path().is_dir()) {
            let id = id.file_name().to_string_lossy().into_owned();
            // The handler's name is its binary for the defaults; other names try both.
            for binary in [name.as_str(), "runc", "crun"] {
                let root = root.to_string_lossy();
                if run(binary, &["--root", &root, "delete", "--force", &id]).0 {
                    break;
                }
            }
        }
    }
}

/// Undoes the octal escapes of a /proc/self/mountinfo path (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or under `dir`, latest mount first.
pub fn mount_points_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.reverse();
    found
}

/// Lazily unmounts everything at or under `dir`, deepest first (bounded rounds: a mount may
/// hide another one on the same path).
pub fn unmount_under(dir: &Path) {
    for _ in 0..5 {
        let mut points = mount_points_under(dir);
        if points.is_empty() {
            return;
        }
        // Stable: the latest of stacked mounts on one path stays first.
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for point in points {
            let _ = umount_detach(&point);
        }
    }
}

fn umount_detach(point: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(point.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Everything above for one instance: monitors first (so none reacts to what follows), then
/// the runtime's containers, then the mounts under `dir` (root and runroot live there).
pub fn all(dir: &Path, runroot: &Path) {
    kill_monitors(runroot);
    delete_runtime_containers(runroot);
    unmount_under(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_decodes_mountinfo_octal_escapes() {
        assert_eq!(unescape(r"/tmp/a\040b\134c"), r"/tmp/a b\c");
        assert_eq!(unescape(r"/plain/path"), "/plain/path");
        assert_eq!(unescape(r"/trailing\04"), r"/trailing\04");
    }
}
