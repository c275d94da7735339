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
    #[error("start {what}: {source}{}", missing_hint(source))]
    Spawn {
        what: String,
        source: std::io::Error,
    },
}

/// What to do about a binary that is not there: a node set up wrongly, not a daemon fault.
fn missing_hint(source: &std::io::Error) -> &'static str {
    match source.kind() {
        std::io::ErrorKind::NotFound => {
            " (not installed where configured: a bare name is looked up on PATH, crius-conmon \
             first beside the crius binary; set the handler's `path`/`monitor_path` or \
             [runtime] monitor_path)"
        }
        _ => "",
    }
}

impl RuntimeError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RuntimeError::NotFound { .. } => ErrorKind::NotFound,
            RuntimeError::Timeout { .. } => ErrorKind::DeadlineExceeded,
            RuntimeError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::FailedPrecondition
            }
            RuntimeError::Failed { .. } | RuntimeError::Spawn { .. } => ErrorKind::Internal,
        }
    }
}

impl From<RuntimeError> for Error {
    fn from(e: RuntimeError) -> Error {
        match e.kind() {
            ErrorKind::NotFound => Error::NotFound(e.to_string()),
            ErrorKind::DeadlineExceeded => Error::DeadlineExceeded(e.to_string()),
            ErrorKind::FailedPrecondition => Error::FailedPrecondition(e.to_string()),
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

/// A container as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeState {
    /// `creating`, `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// The container's init (host pid; 0 once stopped).
    pub pid: u32,
}

impl RuntimeState {
    /// Whether the container's init runs (started or not).
    pub fn is_alive(&self) -> bool {
        matches!(self.status.as_str(), "created" | "running" | "paused") && self.pid != 0
    }
}

/// Parses `<runtime> state` output.
fn parse_state(out: &[u8]) -> Option<RuntimeState> {
    let v: serde_json::Value = serde_json::from_slice(out).ok()?;
    Some(RuntimeState {
        status: v["status"].as_str()?.to_string(),
        pid: v["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0),
    })
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
    /// What the runtime knows of the container (`<runtime> state`): `None` when it has no such
    /// container.
    fn state(&self, id: &str) -> Result<Option<RuntimeState>, RuntimeError>;
    /// Deletes the runtime's state of the container; missing is fine.
    fn delete(&self, id: &str) -> Result<(), RuntimeError>;
    /// `update --resources -` with the OCI `LinuxResources` JSON.
    fn update(&self, id: &str, resources: &serde_json::Value) -> Result<(), RuntimeError>;
    /// The command line of an `exec` of the OCI process in `files.process_file` (the only way
    /// an exec is started: its identity, command and terminal all come from that file), with its
    /// host pid written to `files.pid_file`.
    fn exec_command(&self, id: &str, files: &ExecFiles) -> Command;
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
        // The monitor starts here and runs `<runtime> create` under it: one span for both.
        let _in_span = tracing::info_span!(
            "runtime.create",
            container_id = %req.id,
            runtime = %self.name,
            monitor = %self.monitor.display(),
        )
        .entered();
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
        let _in_span =
            tracing::info_span!("runtime.start", container_id = %id, runtime = %self.name)
                .entered();
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

    fn state(&self, id: &str) -> Result<Option<RuntimeState>, RuntimeError> {
        let mut cmd = self.base();
        cmd.arg("state").arg(id);
        let out = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| RuntimeError::Spawn {
                what: format!("{} state", self.binary.display()),
                source,
            })?;
        let failed = |message: String| RuntimeError::Failed {
            runtime: self.name.clone(),
            op: "state",
            id: id.to_string(),
            message,
        };
        if !out.status.success() {
            let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
            // runc: "container does not exist"; crun: "error opening file `…/status`: No such
            // file or directory".
            if message.contains("does not exist") || message.contains("No such file") {
                return Ok(None);
            }
            return Err(failed(message));
        }
        parse_state(&out.stdout).map(Some).ok_or_else(|| {
            failed(format!(
                "unexpected state output {:?}",
                String::from_utf8_lossy(&out.stdout)
            ))
        })
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

    fn exec_command(&self, id: &str, files: &ExecFiles) -> Command {
        let mut c = self.base();
        c.arg("exec")
            .arg("--pid-file")
            .arg(&files.pid_file)
            .arg("--process")
            .arg(&files.process_file)
            .arg(id);
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

/// The files of one exec in a container's monitor dir: the OCI process the runtime runs
/// (`--process`) and the pid file it writes (`--pid-file`). Both are removed when dropped.
#[derive(Debug)]
pub struct ExecFiles {
    pub pid_file: PathBuf,
    pub process_file: PathBuf,
}

impl ExecFiles {
    /// The exec'd process's host pid, once the runtime has written it.
    fn pid(&self) -> Option<rustix::process::Pid> {
        std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw)
    }
}

impl Drop for ExecFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pid_file);
        let _ = std::fs::remove_file(&self.process_file);
    }
}

/// How long the runtime's exec process gets to collect the process it started after that was
/// killed, before it is killed itself.
const REAP_GRACE: Duration = Duration::from_secs(10);

/// An exec whose runtime process (`<runtime> exec`) is still running. Ending it kills the
/// exec'd process with everything it started, then waits for the runtime's process to exit:
/// the runtime is the exec'd process's parent and reaps it, so when [`RunningExec::end`]
/// returns nothing of the exec is left, not even a zombie in a pod's shared PID namespace.
/// Dropped without [`RunningExec::end`] (a client that cancelled, a session torn down), the
/// same happens on a background task.
struct RunningExec {
    id: String,
    child: Option<tokio::process::Child>,
    files: Option<ExecFiles>,
}

impl RunningExec {
    /// Kills the exec and waits until its runtime process is gone.
    async fn end(mut self) {
        if let (Some(child), Some(files)) = (self.child.take(), self.files.take()) {
            end_exec(&self.id, child, files).await;
        }
    }

    /// The exec ended by itself: nothing to kill.
    fn finished(mut self) {
        self.child = None;
    }
}

impl Drop for RunningExec {
    fn drop(&mut self) {
        let (Some(child), Some(files)) = (self.child.take(), self.files.take()) else {
            return;
        };
        let id = std::mem::take(&mut self.id);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move { end_exec(&id, child, files).await });
            }
            Err(_) => {
                if let Some(pid) = files.pid() {
                    kill_tree(pid);
                }
            }
        }
    }
}

async fn end_exec(id: &str, mut child: tokio::process::Child, files: ExecFiles) {
    // Kill what the exec started (its pid is known once the runtime wrote it)…
    let files = match crate::telemetry::spawn_blocking(move || {
        if let Some(pid) = files.pid() {
            kill_tree(pid);
        }
        files
    })
    .await
    {
        Ok(files) => files,
        Err(_) => return,
    };
    // …then let the runtime reap it and exit; kill the runtime if it does not.
    if tokio::time::timeout(REAP_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(container_id = %id, "the runtime's exec did not exit after its process was killed; killing it");
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    // A runtime killed before it wrote the pid file may still have started the process.
    let _ = crate::telemetry::spawn_blocking(move || {
        if let Some(pid) = files.pid() {
            kill_tree(pid);
        }
        drop(files);
    })
    .await;
    tracing::debug!(container_id = %id, "exec ended");
}

/// Runs `cmd` (an exec command line of the runtime, see [`OciRuntime::exec_command`]) with a
/// timeout, keeping at most [`EXEC_OUTPUT_LIMIT`] of each stream. On timeout the exec'd process
/// with every process it started is killed and reaped before [`RuntimeError::Timeout`] is
/// returned; if the caller goes away first (the client cancelled), the same happens in the
/// background.
pub async fn exec_sync(
    id: &str,
    cmd: Command,
    files: ExecFiles,
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
    let mut running = RunningExec {
        id: id.to_string(),
        child: Some(child),
        files: Some(files),
    };
    let result = {
        let Some(child) = running.child.as_mut() else {
            return Err(RuntimeError::Spawn {
                what: format!("exec in {id}"),
                source: std::io::Error::other("exec process missing"),
            });
        };
        let work = async {
            let read_out = read_bounded(out.as_mut());
            let read_err = read_bounded(err.as_mut());
            let (stdout, stderr) = tokio::join!(read_out, read_err);
            let status = child.wait().await;
            (stdout, stderr, status)
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, work).await.ok(),
            None => Some(work.await),
        }
    };
    match result {
        Some((stdout, stderr, status)) => {
            running.finished();
            let status = status.map_err(|source| RuntimeError::Spawn {
                what: format!("exec in {id}"),
                source,
            })?;
            Ok(ExecOutput {
                stdout,
                stderr,
                exit_code: exit_code(status),
            })
        }
        None => {
            drop((out, err));
            running.end().await;
            Err(RuntimeError::Timeout {
                id: id.to_string(),
                timeout: timeout.unwrap_or_default(),
            })
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// A streaming exec: the runtime's `exec` process with the session's ends of its stdio.
/// Dropping it kills the exec (see [`RunningExec`]).
pub struct ExecProcess {
    running: RunningExec,
    pub stdin: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
    pub stdout: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    pub stderr: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    /// The terminal's master side (a terminal exec), for resizes.
    pub terminal: Option<std::fs::File>,
}

impl ExecProcess {
    /// Waits for the exec to end: its exit code (128 + signal when killed).
    pub async fn wait(&mut self) -> std::io::Result<i32> {
        let child = self
            .running
            .child
            .as_mut()
            .ok_or_else(|| std::io::Error::other("exec already ended"))?;
        let status = child.wait().await?;
        // Ended by itself: nothing left to kill; the files go.
        self.running.child = None;
        self.running.files = None;
        Ok(exit_code(status))
    }

    /// Kills the exec'd process with everything it started, and waits until the runtime's
    /// process has reaped it and exited.
    pub async fn kill(&mut self) {
        let running = RunningExec {
            id: self.running.id.clone(),
            child: self.running.child.take(),
            files: self.running.files.take(),
        };
        running.end().await;
        tracing::debug!(container_id = %self.running.id, "streaming exec killed");
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
    files: ExecFiles,
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
        running: RunningExec {
            id: id.to_string(),
            child: Some(child),
            files: Some(files),
        },
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
    fn a_missing_binary_is_a_failed_precondition_that_says_where_to_configure_it() {
        let missing = RuntimeError::Spawn {
            what: "monitor crius-conmon".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        match Error::from(missing) {
            Error::FailedPrecondition(m) => {
                assert!(m.starts_with("start monitor crius-conmon: "), "{m}");
                assert!(m.contains("monitor_path"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        let denied = RuntimeError::Spawn {
            what: "runc create".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        match Error::from(denied) {
            Error::Internal(m) => assert!(!m.contains("monitor_path"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn runtime_state_parses() {
        let st =
            parse_state(br#"{"ociVersion":"1.0.2","id":"c","pid":42,"status":"running"}"#).unwrap();
        assert_eq!(
            st,
            RuntimeState {
                status: "running".into(),
                pid: 42
            }
        );
        assert!(st.is_alive());
        let st = parse_state(br#"{"id":"c","pid":0,"status":"stopped"}"#).unwrap();
        assert!(!st.is_alive());
        assert_eq!(parse_state(b"nonsense"), None);
    }

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

    fn files(dir: &Path) -> ExecFiles {
        ExecFiles {
            pid_file: dir.join("pid"),
            process_file: dir.join("process.json"),
        }
    }

    /// `sh` stands in for the runtime's exec and the exec'd process alike: it writes its pid to
    /// the pid file (and a copy that survives the exec), starts a background child, and sleeps.
    fn sleeper(dir: &Path) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "echo $$ > {0}/pid; echo $$ > {0}/pid.copy; sleep 30 & echo $! > {0}/child; exec sleep 30",
            dir.display()
        ));
        cmd
    }

    fn read_pid(path: &Path) -> Option<u32> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// Alive and not a zombie.
    fn running(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn exec_sync_times_out_and_kills_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let err = exec_sync(
            "c1",
            sleeper(dir.path()),
            files(dir.path()),
            Some(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, RuntimeError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid = read_pid(&dir.path().join("pid.copy")).unwrap();
        let child = read_pid(&dir.path().join("child")).unwrap();
        // The exec'd process was reaped before the error was returned: not even a zombie.
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} left behind"
        );
        assert!(!running(child), "{child} survived the timeout");
        assert!(!dir.path().join("pid").exists(), "pid file left behind");
    }

    #[tokio::test]
    async fn exec_sync_whose_caller_goes_away_kills_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid_copy = dir.path().join("pid.copy");
        let cancelled = tokio::time::timeout(
            Duration::from_millis(300),
            exec_sync("c1", sleeper(dir.path()), files(dir.path()), None),
        )
        .await;
        assert!(cancelled.is_err(), "the exec ended by itself");
        let pid = read_pid(&pid_copy).unwrap();
        let child = read_pid(&dir.path().join("child")).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while (running(pid) || running(child)) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !running(pid) && !running(child),
            "the cancelled exec runs on"
        );
    }

    #[tokio::test]
    async fn exec_sync_returns_output_and_code() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("echo out; echo err >&2; exit 3");
        let out = exec_sync("c1", cmd, files(dir.path()), None).await.unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.exit_code, 3);
    }
}
