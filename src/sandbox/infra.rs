//! The pod infra process: PID 1 of a pod-level PID namespace, only for pods that ask for one.
//!
//! `crius-conmon infra` joins the pod's namespaces, unshares a PID namespace, forks PID 1 (which
//! only reaps zombies and exits on SIGTERM) and reports its host pid in a pid file; the launcher
//! exits at once, so crius waits for nothing long-lived. Containers join the PID namespace
//! through `/proc/<pid>/ns/pid`. Identity is pid + start time so a reused pid is never killed.
//! Everything here is blocking.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::record::Infra;
use crate::error::Error;

/// Starts the infra process; `namespaces` are `(flag name, path)` pairs (`--netns` ...).
pub fn start(
    monitor: &Path,
    pid_file: &Path,
    namespaces: &[(&str, &Path)],
) -> Result<Infra, Error> {
    let mut cmd = Command::new(monitor);
    cmd.arg("infra").arg("--pid-file").arg(pid_file);
    for (flag, path) in namespaces {
        cmd.arg(flag).arg(path);
    }
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Error::Internal(format!("start pod infra {}: {e}", monitor.display())))?;
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "pod infra process failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| Error::Internal(format!("read {}: {e}", pid_file.display())))?;
    let pid: u32 = text
        .trim()
        .parse()
        .map_err(|_| Error::Internal(format!("bad pid {text:?} in {}", pid_file.display())))?;
    let (_, start_time) = stat(pid).ok_or_else(|| {
        Error::Internal(format!("pod infra process {pid} exited right after start"))
    })?;
    Ok(Infra { pid, start_time })
}

/// Reads the pid file of an infra process (for cleanup of pods without a record).
pub fn from_pid_file(pid_file: &Path) -> Option<Infra> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let (_, start_time) = stat(pid)?;
    Some(Infra { pid, start_time })
}

/// `(state, start time)` from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Whether the infra process still runs (same pid and start time, not a zombie).
pub fn is_alive(infra: &Infra) -> bool {
    matches!(stat(infra.pid), Some((state, start)) if start == infra.start_time && state != 'Z' && state != 'X')
}

/// Kills the infra process (and with it every process of the pod's PID namespace) and waits
/// up to 5 s for it to be gone. Already gone is fine.
pub fn kill(infra: &Infra) -> Result<(), Error> {
    if !is_alive(infra) {
        return Ok(());
    }
    let pid = rustix::process::Pid::from_raw(infra.pid as i32)
        .ok_or_else(|| Error::Internal(format!("invalid infra pid {}", infra.pid)))?;
    match rustix::process::kill_process(pid, rustix::process::Signal::KILL) {
        Ok(()) => {}
        Err(rustix::io::Errno::SRCH) => return Ok(()),
        Err(e) => {
            return Err(Error::Internal(format!(
                "kill pod infra process {}: {e}",
                infra.pid
            )))
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_alive(infra) {
        if Instant::now() > deadline {
            return Err(Error::Internal(format!(
                "pod infra process {} did not exit after SIGKILL",
                infra.pid
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Clamps an `oom_score_adj` to what this process may set: without `CAP_SYS_RESOURCE` nothing
/// below our own current value is allowed.
pub fn clamp_oom_score_adj(requested: i64) -> i64 {
    let own: i64 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    requested.clamp(own.max(-1000), 1000)
}

/// Sets the `oom_score_adj` of `pid`, clamped.
pub fn set_oom_score_adj(pid: u32, requested: i64) -> Result<(), Error> {
    let value = clamp_oom_score_adj(requested);
    let path = format!("/proc/{pid}/oom_score_adj");
    std::fs::write(&path, value.to_string())
        .map_err(|e| Error::Internal(format!("write {path}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_changed_start_time_is_not() {
        let (_, start_time) = stat(std::process::id()).unwrap();
        let me = Infra {
            pid: std::process::id(),
            start_time,
        };
        assert!(is_alive(&me));
        assert!(!is_alive(&Infra {
            start_time: start_time + 1,
            ..me
        }));
    }

    #[test]
    fn oom_score_adj_never_goes_below_our_own() {
        let own: i64 = std::fs::read_to_string("/proc/self/oom_score_adj")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(clamp_oom_score_adj(-1000), own.max(-1000));
        assert_eq!(clamp_oom_score_adj(5000), 1000);
        assert_eq!(clamp_oom_score_adj(500), 500.max(own));
    }
}
