//! The OCI runtime boundary: [`OciRuntime`] and its real implementation [`Monitored`] (runc or
//! crun, with every container created through `crius-conmon`).
//!
//! The only place that builds runtime argv. Everything is blocking (callers use
//! `spawn_blocking`), except [`Monitored::exec_sync`] which is async so that its timeout can
//! kill what it started without tying up a blocking thread.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::error::{Error, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{runtime} {op} {id}: {message}")]
    Failed {
        runtime: String,
        op: &'static str,
        id: String,
        message: String,
    },
    #[error("{runtime} {op} {id}: container does not exist")]
    NotFound {
        runtime: String,
        op: &'static str,
        id: String,
    },
    #[error("exec in {id} timed out after {timeout:?}")]
    Timeout { id: String, timeout: Duration },
    #[error("start {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
}

impl RuntimeError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RuntimeError::NotFound { .. } => ErrorKind::NotFound,
            RuntimeError::Timeout { .. } => ErrorKind::DeadlineExceeded,
            RuntimeError::Failed { .. } | RuntimeError::Spawn { .. } => ErrorKind::Internal,
        }
    }
}

impl From<RuntimeError> for Error {
    fn from(e: RuntimeError) -> Error {
        match e.kind() {
            ErrorKind::NotFound => Error::NotFound(e.to_string()),
            ErrorKind::DeadlineExceeded => Error::DeadlineExceeded(e.to_string()),
            _ => Error::Internal(e.to_string()),
        }
    }
}

/// What the monitor needs to create a container.
#[derive(Debug, Clone)]
pub struct CreateRequest<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    /// The monitor's directory (sockets, pid files, exit record).
    pub monitor_dir: &'a Path,
    pub log_path: &'a Path,
    pub terminal: bool,
    pub stdin: bool,
    pub stdin_once: bool,
}

/// A created container: its init pid and its monitor's pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    pub pid: u32,
    pub monitor_pid: u32,
}

/// Output of a synchronous exec.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// The most ExecSync keeps of each stream (kubelet's own limit is 16 MiB).
pub const EXEC_OUTPUT_LIMIT: usize = 16 << 20;

/// An OCI runtime for one RuntimeClass handler.
pub trait OciRuntime: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// Whether the runtime applies the `rro` (recursive read-only) mount option.
    fn supports_rro(&self) -> bool;
    /// Whether the runtime makes idmapped mounts from a mount's own `uidMappings`/`gidMappings`.
    fn supports_idmap(&self) -> bool;
    /// Creates the container (not started) under a new monitor.
    fn create(&self, req: &CreateRequest<'_>) -> Result<Created, RuntimeError>;
    fn start(&self, id: &str) -> Result<(), RuntimeError>;
    /// Sends `signal` to the container's init (or every process with `all`).
    fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), RuntimeError>;
    /// Deletes the runtime's state of the container; missing is fine.
    fn delete(&self, id: &str) -> Result<(), RuntimeError>;
    /// `update --resources -` with the OCI `LinuxResources` JSON.
    fn update(&self, id: &str, resources: &serde_json::Value) -> Result<(), RuntimeError>;
    /// The command line of `exec` for `cmd`, with its pid written to `pid_file`.
    fn exec_command(&self, id: &str, pid_file: &Path, cmd: &[String], tty: bool) -> Command;
}

/// runc or crun, with containers created through `crius-conmon run`.
#[derive(Debug, Clone)]
pub struct Monitored {
    pub name: String,
    pub binary: PathBuf,
    pub root: PathBuf,
    pub monitor: PathBuf,
    /// From `<runtime> features` at start (runc ≥ 1.1 lists its mount options; crun 1.8 has no
    /// `features` command and no `rro`).
    pub rro: bool,
    /// `idmap` among the mount options of `features` (runc ≥ 1.2; not runc 1.1.5, not crun 1.8.1
    /// which has no `features`).
    pub idmap: bool,
}

/// The mount options the runtime's `features` lists (OCI runtime-spec 1.1; runc ≥ 1.1 has it,
/// crun 1.8.1 has no `features` command: nothing). Blocking.
pub fn probe_mount_options(binary: &Path) -> Vec<String> {
    Command::new(binary)
        .arg("features")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| {
            v["mountOptions"].as_array().map(|opts| {
                opts.iter()
                    .filter_map(|o| o.as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

impl Monitored {
    fn base(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        cmd.stdin(Stdio::null());
        cmd
    }

    fn run(&self, op: &'static str, id: &str, cmd: Command) -> Result<(), RuntimeError> {
        self.run_with_input(op, id, cmd, None)
    }

    /// Runs `cmd` with `input` (small: it fits the pipe) on its stdin, if given.
    fn run_with_input(
        &self,
        op: &'static str,
        id: &str,
        mut cmd: Command,
        input: Option<&[u8]>,
    ) -> Result<(), RuntimeError> {
        let spawn_err = |source| RuntimeError::Spawn {
            what: format!("{} {op}", self.binary.display()),
            source,
        };
        if input.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
            use std::io::Write;
            // A runtime that exits without reading says why on stderr: its status decides.
            let _ = stdin.write_all(bytes);
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if out.status.success() {
            return Ok(());
        }
        let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if message.contains("does not exist") || message.contains("not found") {
            return Err(RuntimeError::NotFound {
                runtime: self.name.clone(),
                op,
                id: id.to_string(),
            });
        }
        Err(RuntimeError::Failed {
            runtime: self.name.clone(),
            op,
            id: id.to_string(),
            message: if message.is_empty() {
                out.status.to_string()
            } else {
                message
            },
        })
    }
}

impl OciRuntime for Monitored {
    fn name(&self) -> &str {
        &self.name
    }

    fn supports_rro(&self) -> bool {
        self.rro
    }

    fn supports_idmap(&self) -> bool {
        self.idmap
    }

    fn create(&self, req: &CreateRequest<'_>) -> Result<Created, RuntimeError> {
        let mut cmd = Command::new(&self.monitor);
        cmd.arg("run")
            .arg("--id")
            .arg(req.id)
            .arg("--bundle")
            .arg(req.bundle)
            .arg("--runtime")
            .arg(&self.binary)
            .arg("--runtime-root")
            .arg(&self.root)
            .arg("--dir")
            .arg(req.monitor_dir)
            .arg("--log-path")
            .arg(req.log_path);
        if req.terminal {
            cmd.arg("--terminal");
        }
        if req.stdin {
            cmd.arg("--stdin");
        }
        if req.stdin_once {
            cmd.arg("--stdin-once");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RuntimeError::Spawn {
                what: format!("monitor {}", self.monitor.display()),
                source,
            })?;
        let mut stdout = String::new();
        let mut stderr = String::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut stdout);
        }
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_string(&mut stderr);
        }
        let status = child.wait().map_err(|source| RuntimeError::Spawn {
            what: format!("monitor {}", self.monitor.display()),
            source,
        })?;
        let failed = |message: String| RuntimeError::Failed {
            runtime: self.name.clone(),
            op: "create",
            id: req.id.to_string(),
            message,
        };
        if !status.success() {
            let msg = stderr.trim();
            return Err(failed(if msg.is_empty() {
                format!("monitor exited with {status}")
            } else {
                msg.to_string()
            }));
        }
        parse_created(&stdout)
            .ok_or_else(|| failed(format!("unexpected monitor output {:?}", stdout.trim())))
    }

    fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let mut cmd = self.base();
        cmd.arg("start").arg(id);
        self.run("start", id, cmd)
    }

    fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), RuntimeError> {
        let mut cmd = self.base();
        cmd.arg("kill");
        if all {
            cmd.arg("--all");
        }
        cmd.arg(id).arg(signal.to_string());
        self.run("kill", id, cmd)
    }

    fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        let mut cmd = self.base();
        cmd.arg("delete").arg("--force").arg(id);
        match self.run("delete", id, cmd) {
            Err(RuntimeError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    /// The resources go on stdin (`--resources -`, runc 1.1 and crun 1.8 both read it): no
    /// file anybody else could plant or race.
    fn update(&self, id: &str, resources: &serde_json::Value) -> Result<(), RuntimeError> {
        let mut cmd = self.base();
        cmd.arg("update").arg("--resources").arg("-").arg(id);
        let json = resources.to_string();
        self.run_with_input("update", id, cmd, Some(json.as_bytes()))
    }

    fn exec_command(&self, id: &str, pid_file: &Path, cmd: &[String], tty: bool) -> Command {
        let mut c = self.base();
        c.arg("exec").arg("--pid-file").arg(pid_file);
        if tty {
            c.arg("--tty");
        }
        c.arg(id).args(cmd);
        c
    }
}

/// Parses the monitor's `pid=<n> monitor_pid=<m>` line.
fn parse_created(out: &str) -> Option<Created> {
    let mut pid = None;
    let mut monitor_pid = None;
    for word in out.split_whitespace() {
        if let Some(v) = word.strip_prefix("pid=") {
            pid = v.parse().ok();
        } else if let Some(v) = word.strip_prefix("monitor_pid=") {
            monitor_pid = v.parse().ok();
        }
    }
    Some(Created {
        pid: pid?,
        monitor_pid: monitor_pid?,
    })
}

/// Runs `cmd` (an exec of `runtime`) with a timeout, keeping at most [`EXEC_OUTPUT_LIMIT`] of
/// each stream. On timeout the exec'd process (its pid from `pid_file`) with every process it
/// started, and the runtime's exec process, are killed and [`RuntimeError::Timeout`] returned.
pub async fn exec_sync(
    id: &str,
    cmd: Command,
    pid_file: &Path,
    timeout: Option<Duration>,
) -> Result<ExecOutput, RuntimeError> {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| RuntimeError::Spawn {
        what: format!("exec in {id}"),
        source,
    })?;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let work = async {
        let read_out = read_bounded(out.as_mut());
        let read_err = read_bounded(err.as_mut());
        let (stdout, stderr) = tokio::join!(read_out, read_err);
        let status = child.wait().await;
        (stdout, stderr, status)
    };
    let result = match timeout {
        Some(t) => tokio::time::timeout(t, work).await.ok(),
        None => Some(work.await),
    };
    match result {
        Some((stdout, stderr, status)) => {
            let status = status.map_err(|source| RuntimeError::Spawn {
                what: format!("exec in {id}"),
                source,
            })?;
            use std::os::unix::process::ExitStatusExt;
            let exit_code = status
                .code()
                .or_else(|| status.signal().map(|s| 128 + s))
                .unwrap_or(-1);
            Ok(ExecOutput {
                stdout,
                stderr,
                exit_code,
            })
        }
        None => {
            if let Some(pid) = std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .and_then(rustix::process::Pid::from_raw)
            {
                kill_tree(pid);
            }
            Err(RuntimeError::Timeout {
                id: id.to_string(),
                timeout: timeout.unwrap_or_default(),
            })
        }
    }
}

/// A streaming exec: the runtime's `exec` process with the session's ends of its stdio.
pub struct ExecProcess {
    child: tokio::process::Child,
    id: String,
    pid_file: PathBuf,
    pub stdin: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
    pub stdout: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    pub stderr: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    /// The terminal's master side (a terminal exec), for resizes.
    pub terminal: Option<std::fs::File>,
}

impl ExecProcess {
    /// Waits for the exec to end: its exit code (128 + signal when killed).
    pub async fn wait(&mut self) -> std::io::Result<i32> {
        use std::os::unix::process::ExitStatusExt;
        let status = self.child.wait().await?;
        let _ = std::fs::remove_file(&self.pid_file);
        Ok(status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(-1))
    }

    /// Kills the exec'd process with everything it started, and the runtime's process.
    pub fn kill(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            kill_tree(pid);
        }
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.pid_file);
        tracing::debug!(container_id = %self.id, "streaming exec killed");
    }
}

/// A new pseudo-terminal: (master, slave).
fn open_pty() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(std::ffi::OsStr::from_bytes(name.as_bytes()))?;
    Ok((master, slave.into()))
}

/// Sets a terminal's window size (the runtime passes it on to the container's terminal).
pub fn resize_terminal(terminal: &std::fs::File, width: u16, height: u16) {
    let size = rustix::termios::Winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    if let Err(e) = rustix::termios::tcsetwinsize(terminal, size) {
        tracing::debug!(error = %e, "terminal resize");
    }
}

/// Starts `cmd` (an `exec` command line of the runtime, see [`OciRuntime::exec_command`]) for a
/// streaming session. Without a terminal each wanted stream is a pipe. With one, the runtime
/// runs in its own session with a fresh pseudo-terminal as its controlling terminal (through
/// `setsid --ctty`): `<runtime> exec --tty` then relays between that terminal and the
/// container's, and follows its window size (SIGWINCH), so the session reads and writes the
/// master side.
pub fn spawn_exec(
    id: &str,
    cmd: Command,
    pid_file: &Path,
    tty: bool,
    stdin: bool,
    stdout: bool,
    stderr: bool,
) -> Result<ExecProcess, RuntimeError> {
    let spawn_err = |source| RuntimeError::Spawn {
        what: format!("exec in {id}"),
        source,
    };
    let mut terminal = None;
    let cmd = if tty {
        let (master, slave) = open_pty().map_err(spawn_err)?;
        let mut wrapped = Command::new("setsid");
        wrapped
            .arg("--ctty")
            .arg(cmd.get_program())
            .args(cmd.get_args());
        let slave = std::fs::File::from(slave);
        wrapped
            .stdin(slave.try_clone().map_err(spawn_err)?)
            .stdout(slave.try_clone().map_err(spawn_err)?)
            .stderr(slave);
        terminal = Some(std::fs::File::from(master));
        wrapped
    } else {
        let pipe = |wanted: bool| {
            if wanted {
                Stdio::piped()
            } else {
                Stdio::null()
            }
        };
        let mut cmd = cmd;
        cmd.stdin(pipe(stdin))
            .stdout(pipe(stdout))
            .stderr(pipe(stderr));
        cmd
    };
    let mut tokio_cmd = tokio::process::Command::from(cmd);
    tokio_cmd.kill_on_drop(true);
    let mut child = tokio_cmd.spawn().map_err(spawn_err)?;
    // The slave ends held by the command are closed now: only the runtime holds the terminal.
    drop(tokio_cmd);
    type Writer = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;
    type Reader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
    let (to_stdin, from_stdout, from_stderr): (Option<Writer>, Option<Reader>, Option<Reader>) =
        match &terminal {
            Some(master) => {
                let reader = master.try_clone().map_err(spawn_err)?;
                let writer = master.try_clone().map_err(spawn_err)?;
                (
                    stdin.then(|| Box::new(tokio::fs::File::from_std(writer)) as Writer),
                    stdout.then(|| Box::new(tokio::fs::File::from_std(reader)) as Reader),
                    None,
                )
            }
            None => (
                child.stdin.take().map(|w| Box::new(w) as Writer),
                child.stdout.take().map(|r| Box::new(r) as Reader),
                child.stderr.take().map(|r| Box::new(r) as Reader),
            ),
        };
    Ok(ExecProcess {
        child,
        id: id.to_string(),
        pid_file: pid_file.to_path_buf(),
        stdin: to_stdin,
        stdout: from_stdout,
        stderr: from_stderr,
        terminal,
    })
}

/// Kills `root` and every descendant: each round stops what it finds (a stopped process cannot
/// fork), then everything found is killed. Descendants are found through the parent pids in
/// `/proc` (host pids, so this works across the container's pid namespace).
fn kill_tree(root: rustix::process::Pid) {
    use rustix::process::{kill_process, Signal};
    let mut found = vec![root];
    let _ = kill_process(root, Signal::STOP);
    for _ in 0..3 {
        let children = descendants(&found);
        if children.is_empty() {
            break;
        }
        for pid in &children {
            let _ = kill_process(*pid, Signal::STOP);
        }
        found.extend(children);
    }
    for pid in found {
        let _ = kill_process(pid, Signal::KILL);
    }
}

/// Processes whose parent is in `parents` and that are not in it themselves, transitively.
fn descendants(parents: &[rustix::process::Pid]) -> Vec<rustix::process::Pid> {
    let mut table = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the command (which may contain spaces) : state, ppid, ...
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if let Some(ppid) = ppid {
                table.push((pid, ppid));
            }
        }
    }
    let mut known: Vec<i32> = parents.iter().map(|p| p.as_raw_nonzero().get()).collect();
    let mut out = Vec::new();
    loop {
        let before = out.len();
        for (pid, ppid) in &table {
            if known.contains(ppid) && !known.contains(pid) {
                known.push(*pid);
                if let Some(p) = rustix::process::Pid::from_raw(*pid) {
                    out.push(p);
                }
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

async fn read_bounded<R: tokio::io::AsyncRead + Unpin>(stream: Option<&mut R>) -> Vec<u8> {
    let Some(stream) = stream else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = EXEC_OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_output_parses() {
        assert_eq!(
            parse_created("pid=42 monitor_pid=41\n"),
            Some(Created {
                pid: 42,
                monitor_pid: 41
            })
        );
        assert_eq!(parse_created("pid=42"), None);
        assert_eq!(parse_created("garbage"), None);
    }

    #[tokio::test]
    async fn exec_sync_times_out_and_kills_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let mut cmd = Command::new("sh");
        let child_file = dir.path().join("child");
        cmd.arg("-c").arg(format!(
            "echo $$ > {}; sleep 30 & echo $! > {}; exec sleep 30",
            pid_file.display(),
            child_file.display()
        ));
        let started = std::time::Instant::now();
        let err = exec_sync("c1", cmd, &pid_file, Some(Duration::from_millis(300)))
            .await
            .unwrap_err();
        assert!(matches!(err, RuntimeError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let child: u32 = std::fs::read_to_string(&child_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        for pid in [pid, child] {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false);
            assert!(!alive, "{pid} survived the timeout");
        }
    }

    #[tokio::test]
    async fn exec_sync_returns_output_and_code() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("echo out; echo err >&2; exit 3");
        let out = exec_sync("c1", cmd, &dir.path().join("pid"), None)
            .await
            .unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.exit_code, 3);
    }
}
