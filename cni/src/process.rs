//! Running one child process with piped stdin/stdout/stderr and a hard deadline.
//!
//! The child must have been put in its own process group (`process_group(0)`): at the deadline
//! the whole group is killed, so a plugin's leftovers cannot hold the pipes open forever.
//! Owns: the child's lifetime and the I/O threads. Must not: know what CNI is.

use std::io::{Read, Write};
use std::process::{Command, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(crate) struct RunOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

pub(crate) enum RunError {
    Spawn(std::io::Error),
    Timeout,
}

/// Spawns `cmd`, feeds `stdin`, collects stdout/stderr, and kills its process group at the
/// deadline (also when a leftover child keeps the pipes open past the plugin's exit).
pub(crate) fn run_with_timeout(
    mut cmd: Command,
    stdin: Vec<u8>,
    timeout: Duration,
) -> Result<RunOutput, RunError> {
    let deadline = Instant::now() + timeout;
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    let pgid = child.id();
    let kill = |child: &mut std::process::Child| {
        let _ = crate::sys::kill_process_group(pgid);
        let _ = child.kill();
        let _ = child.wait();
    };
    let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>();
    let spawn_reader = |is_stdout: bool, stream: Option<Box<dyn Read + Send>>| {
        let tx = tx.clone();
        let Some(mut stream) = stream else {
            let _ = tx.send((is_stdout, Vec::new()));
            return Ok(());
        };
        std::thread::Builder::new()
            .name("crius-cni-io".into())
            .spawn(move || {
                let mut buf = Vec::new();
                let _ = stream.read_to_end(&mut buf);
                let _ = tx.send((is_stdout, buf));
            })
            .map(drop)
    };
    let readers = spawn_reader(true, child.stdout.take().map(|s| Box::new(s) as _))
        .and_then(|()| spawn_reader(false, child.stderr.take().map(|s| Box::new(s) as _)));
    if let Err(e) = readers {
        kill(&mut child);
        return Err(RunError::Spawn(e));
    }
    drop(tx);
    if let Some(mut pipe) = child.stdin.take() {
        // The config is small, but a plugin that never reads must not block us: write aside.
        let writer = std::thread::Builder::new()
            .name("crius-cni-io".into())
            .spawn(move || {
                let _ = pipe.write_all(&stdin);
            });
        if let Err(e) = writer {
            kill(&mut child);
            return Err(RunError::Spawn(e));
        }
    }
    // The exit is waited for on a pidfd (the child is ours and not reaped yet, so its pid
    // cannot have been reused): the wait ends when the plugin does. Polling with a growing
    // step, the fallback where there is no pidfd, noticed a 20 ms plugin at 31 ms.
    let pidfd = rustix::process::Pid::from_raw(pgid as i32).and_then(|pid| {
        rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
    });
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                kill(&mut child);
                return Err(RunError::Spawn(e));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            kill(&mut child);
            return Err(RunError::Timeout);
        }
        let left = deadline - now;
        let waited = pidfd
            .as_ref()
            .map(|fd| crate::sys::wait_exit(std::os::fd::AsFd::as_fd(fd), left));
        if !matches!(waited, Some(Ok(_))) {
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        // After exit, the pipes close unless something the plugin started still holds them.
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        match rx.recv_timeout(wait) {
            Ok((true, buf)) => stdout = buf,
            Ok((false, buf)) => stderr = buf,
            Err(_) => {
                let _ = crate::sys::kill_process_group(pgid);
                return Err(RunError::Timeout);
            }
        }
    }
    Ok(RunOutput {
        status,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;

    #[test]
    fn a_pidfd_wait_ends_with_the_exit_and_not_before() {
        use std::os::fd::AsFd;
        let pidfd_of = |child: &std::process::Child| {
            let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
            rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap()
        };
        // A child that keeps running: the wait times out and says so.
        let mut sleeper = Command::new("/bin/sleep").arg("30").spawn().unwrap();
        let fd = pidfd_of(&sleeper);
        assert!(!crate::sys::wait_exit(fd.as_fd(), Duration::from_millis(20)).unwrap());
        sleeper.kill().unwrap();
        // Killed: the wait sees the exit (well before its 30 s timeout, or the test would hang).
        assert!(crate::sys::wait_exit(fd.as_fd(), Duration::from_secs(30)).unwrap());
        sleeper.wait().unwrap();
        // One that exits by itself: seen, and its status is still there to reap.
        let mut quick = Command::new("/bin/sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let fd = pidfd_of(&quick);
        assert!(crate::sys::wait_exit(fd.as_fd(), Duration::from_secs(30)).unwrap());
        assert_eq!(quick.try_wait().unwrap().and_then(|s| s.code()), Some(3));
    }

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        cmd
    }

    #[test]
    fn collects_output_and_status() {
        let out = run_with_timeout(
            sh("cat; echo err >&2; exit 3"),
            b"in".to_vec(),
            Duration::from_secs(10),
        )
        .ok()
        .unwrap();
        assert_eq!(out.stdout, b"in");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn kills_at_deadline_including_grandchildren() {
        let start = Instant::now();
        let res = run_with_timeout(
            sh("sleep 30 & sleep 30"),
            Vec::new(),
            Duration::from_millis(300),
        );
        assert!(matches!(res, Err(RunError::Timeout)));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn leftover_child_holding_stdout_times_out() {
        let start = Instant::now();
        let res = run_with_timeout(
            sh("sleep 30 & exit 0"),
            Vec::new(),
            Duration::from_millis(300),
        );
        assert!(matches!(res, Err(RunError::Timeout)));
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
