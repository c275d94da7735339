//! The monitor process: runs `create`, then one `poll(2)` loop until the container exits.
//!
//! Owns the order of things: monitor dir files, the runtime's `create`, reporting to the
//! launcher, the loop (output → log and attach clients, control requests, attach input →
//! stdin, SIGCHLD → reaping, OOM events), and the end (drain output, flush the log, write the
//! exit record atomically, remove the sockets, exit). Single-threaded; signals arrive through a
//! signalfd, so SIGTERM and friends are read and ignored: only the container's exit ends the
//! monitor. Must not start, stop or delete a created container (the daemon does), except the
//! `delete --force` that undoes a failed `create`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crius_proto::monitor::{
    request, response, ExitRecord, PingResponse, ReopenLogResponse, ResizeResponse, StateResponse,
};
use prost::Message;

use crate::attach::{Attach, Input};
use crate::cli::RunConfig;
use crate::container_io::{self, Chunk, ContainerIo};
use crate::container_log::{ContainerLog, Timestamp};
use crate::control::{self, Control};
use crate::oom_watcher::OomWatcher;
use crate::{runtime, sys};

/// File names inside the monitor dir.
pub const CONTROL_SOCKET: &str = "monitor.sock";
pub const ATTACH_SOCKET: &str = "attach.sock";
pub const MONITOR_PID: &str = "monitor.pid";
pub const CONTAINER_PID: &str = "container.pid";
pub const EXIT_FILE: &str = "exit";

/// How long the runtime's `create` may take before the monitor gives up on it.
const CREATE_TIMEOUT: Duration = Duration::from_secs(120);

/// Signals read from the signalfd. Only SIGCHLD does something; the others are ignored so
/// that nothing but SIGKILL ends the monitor before its container.
const SIGNALS: [libc::c_int; 7] = [
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Size of the one read buffer shared by every descriptor.
const READ_BUF: usize = 32 * 1024;

/// Entry point of the monitor process (the launcher's grandchild). Reports the outcome of
/// `create` on `sync` and never returns.
pub fn run(cfg: RunConfig, mut sync: File) -> ! {
    // The daemon's stdout/stderr pipes must not stay open in a long-lived process.
    let _ = sys::null_stdio();
    if let Err(e) = std::env::set_current_dir(&cfg.dir) {
        report_and_exit(&mut sync, &format!("chdir {}: {e}", cfg.dir.display()));
    }
    if let Err(e) = sys::set_child_subreaper() {
        report_and_exit(&mut sync, &format!("set child subreaper: {e}"));
    }
    let mut monitor = match Monitor::create(&cfg) {
        Ok(m) => m,
        Err(msg) => report_and_exit(&mut sync, &msg),
    };
    let line = format!("ok {} {}\n", monitor.container_pid, std::process::id());
    if sync.write_all(line.as_bytes()).is_err() {
        // The launcher is gone, so the daemon never learned about this container: undo it.
        monitor.abandon();
        std::process::exit(1);
    }
    drop(sync);
    monitor.run_loop();
    monitor.finish()
}

fn report_and_exit(sync: &mut File, msg: &str) -> ! {
    let _ = sync.write_all(format!("error {msg}").as_bytes());
    std::process::exit(1)
}

struct Monitor {
    cfg: RunConfig,
    signals: File,
    log: ContainerLog,
    control: Control,
    attach: Attach,
    io: ContainerIo,
    oom: Option<OomWatcher>,
    container_pid: u32,
    status: Option<sys::ExitStatus>,
    /// Wall clock when the container was reaped (Unix ns).
    finished_at_ns: i64,
    buf: Vec<u8>,
}

/// What a polled descriptor belongs to.
#[derive(Clone, Copy)]
enum Token {
    Signals,
    Output(usize),
    Stdin,
    ControlListener,
    Control(usize),
    AttachListener,
    Attach(usize),
    Oom,
}

fn pollfd(fd: BorrowedFd<'_>, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    }
}

impl Monitor {
    /// Creates the monitor dir files and runs `create`; on failure undoes it and returns the
    /// message for the launcher.
    fn create(cfg: &RunConfig) -> Result<Self, String> {
        let dir = &cfg.dir;
        let signals: File = sys::signalfd(&SIGNALS)
            .map_err(|e| format!("signalfd: {e}"))?
            .into();
        write_atomic(dir, MONITOR_PID, std::process::id().to_string().as_bytes())
            .map_err(|e| format!("write {}: {e}", dir.join(MONITOR_PID).display()))?;
        let log = ContainerLog::open(cfg.log_path.clone(), cfg.log_max_line, cfg.terminal)
            .map_err(|e| format!("open log {}: {e}", cfg.log_path.display()))?;
        let bind = |name: &str| {
            control::bind(Path::new(name))
                .map_err(|e| format!("bind {}: {e}", dir.join(name).display()))
        };
        let control = Control::new(bind(CONTROL_SOCKET)?);
        let attach = match bind(ATTACH_SOCKET) {
            Ok(l) => Attach::new(l),
            Err(e) => {
                remove_sockets(dir);
                return Err(e);
            }
        };
        let created = run_create(cfg, &signals);
        let (io, container_pid) = match created {
            Ok(x) => x,
            Err(msg) => {
                delete_container(cfg);
                remove_sockets(dir);
                return Err(msg);
            }
        };
        let oom = OomWatcher::new(container_pid);
        Ok(Self {
            cfg: cfg.clone(),
            signals,
            log,
            control,
            attach,
            io,
            oom,
            container_pid,
            status: None,
            finished_at_ns: 0,
            buf: vec![0; READ_BUF],
        })
    }

    /// Undoes a successful create nobody will hear about.
    fn abandon(&mut self) {
        delete_container(&self.cfg);
        // The container's init dies with the runtime's delete; reap what is left.
        while sys::reap_one().is_some() {}
        remove_sockets(&self.cfg.dir);
    }

    fn run_loop(&mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut tokens: Vec<Token> = Vec::new();
        // The container may have exited already (killed between create and now).
        self.reap();
        while self.status.is_none() {
            fds.clear();
            tokens.clear();
            let mut add = |fd: BorrowedFd<'_>, events: i16, token: Token| {
                fds.push(pollfd(fd, events));
                tokens.push(token);
            };
            add(self.signals.as_fd(), libc::POLLIN, Token::Signals);
            for (i, out) in self.io.outputs.iter().enumerate() {
                if let Some(out) = out {
                    add(out.file.as_fd(), libc::POLLIN, Token::Output(i));
                }
            }
            if let Some(fd) = self.io.stdin.pending_fd() {
                add(fd, libc::POLLOUT, Token::Stdin);
            }
            add(
                self.control.listener_fd(),
                libc::POLLIN,
                Token::ControlListener,
            );
            for (i, fd, events) in self.control.conns() {
                add(fd, events, Token::Control(i));
            }
            add(
                self.attach.listener_fd(),
                libc::POLLIN,
                Token::AttachListener,
            );
            let input = self.io.stdin.accepts_input();
            for (i, fd, reading, queued) in self.attach.clients() {
                let mut events = if input && reading { libc::POLLIN } else { 0 };
                if queued {
                    events |= libc::POLLOUT;
                }
                add(fd, events, Token::Attach(i));
            }
            if let Some(oom) = &self.oom {
                add(oom.fd(), libc::POLLIN, Token::Oom);
            }
            if sys::poll(&mut fds, -1).is_err() {
                // Only EINVAL/ENOMEM are possible here; do not spin.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            for (pfd, &token) in fds.iter().zip(tokens.iter()) {
                if pfd.revents != 0 {
                    self.dispatch(token, pfd.revents);
                }
            }
            self.control.sweep();
            for _ in 0..self.attach.sweep() {
                self.io.stdin.client_left();
            }
        }
    }

    fn dispatch(&mut self, token: Token, revents: i16) {
        match token {
            Token::Signals => {
                drain(&mut self.signals);
                self.reap();
            }
            Token::Output(i) => {
                self.read_output(i);
            }
            Token::Stdin => self.io.stdin.on_writable(),
            Token::ControlListener => self.control.accept(),
            Token::Control(i) => {
                let Self {
                    control,
                    log,
                    io,
                    container_pid,
                    status,
                    finished_at_ns,
                    oom,
                    ..
                } = self;
                let exited = status.map(|s| (s, *finished_at_ns));
                let mut handle = |kind: request::Kind| {
                    handle_request(kind, log, io, *container_pid, exited, oom)
                };
                control.on_event(i, revents, &mut handle);
            }
            Token::AttachListener => self.attach.accept(),
            Token::Attach(i) => {
                if revents & libc::POLLOUT != 0 {
                    self.attach.on_writable(i);
                }
                if revents & libc::POLLIN != 0 {
                    match self.attach.read(i, &mut self.buf) {
                        Input::Data(n) => self.io.stdin.write(&self.buf[..n]),
                        // The client's input ended: with stdin-once, so does the container's.
                        Input::Closed => self.io.stdin.client_left(),
                        Input::None => {}
                    }
                } else if revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                    self.attach.hang_up(i);
                }
            }
            Token::Oom => {
                if let Some(oom) = &mut self.oom {
                    oom.on_readable();
                }
            }
        }
    }

    /// Reads one chunk of container output into the log and the attach clients.
    fn read_output(&mut self, i: usize) -> bool {
        let Some(out) = self.io.outputs[i].as_mut() else {
            return false;
        };
        let stream = out.stream;
        match out.read(&mut self.buf) {
            Chunk::Data(n) => {
                let data = &self.buf[..n];
                self.log.write(stream, data, Timestamp::now());
                self.attach.broadcast(stream, data);
                true
            }
            Chunk::Again => false,
            Chunk::Eof => {
                self.log.finish(stream, Timestamp::now());
                self.io.outputs[i] = None;
                false
            }
        }
    }

    /// Reaps every exited child; notes the container's status.
    fn reap(&mut self) {
        while let Some((pid, status)) = sys::reap_one() {
            if pid as u32 == self.container_pid {
                self.status = Some(status);
                self.finished_at_ns = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as i64)
                    .unwrap_or(0);
            }
        }
    }

    /// The container exited: drain, flush, record, clean up, exit.
    fn finish(mut self) -> ! {
        // Output written before the exit is in the pipe or pty already: read until EOF or
        // until nothing more is there (a descendant may keep a pipe open).
        for i in 0..self.io.outputs.len() {
            while self.read_output(i) {}
        }
        let now = Timestamp::now();
        for out in self.io.outputs.iter().flatten() {
            self.log.finish(out.stream, now);
        }
        self.attach.close_all();
        let status = self.status.unwrap_or(sys::ExitStatus::Exited(255));
        let record = exit_record(status, &mut self.oom, self.finished_at_ns);
        // Nothing else can report the exit; try again once if the disk hiccuped.
        if write_atomic(&self.cfg.dir, EXIT_FILE, &record.encode_to_vec()).is_err() {
            std::thread::sleep(Duration::from_millis(100));
            let _ = write_atomic(&self.cfg.dir, EXIT_FILE, &record.encode_to_vec());
        }
        remove_sockets(&self.cfg.dir);
        std::process::exit(0)
    }
}

fn exit_record(
    status: sys::ExitStatus,
    oom: &mut Option<OomWatcher>,
    finished_at_ns: i64,
) -> ExitRecord {
    let (exit_code, signal) = match status {
        sys::ExitStatus::Exited(code) => (code, 0),
        sys::ExitStatus::Signaled(sig) => (128 + sig, sig),
    };
    let oom_killed = signal == libc::SIGKILL && oom.as_mut().is_some_and(|o| o.oom_killed());
    ExitRecord {
        exit_code,
        signal,
        oom_killed,
        finished_at_ns,
    }
}

fn handle_request(
    kind: request::Kind,
    log: &mut ContainerLog,
    io: &mut ContainerIo,
    container_pid: u32,
    exited: Option<(sys::ExitStatus, i64)>,
    oom: &mut Option<OomWatcher>,
) -> response::Kind {
    match kind {
        request::Kind::Ping(_) => response::Kind::Ping(PingResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
        }),
        request::Kind::ReopenLog(_) => match log.reopen() {
            Ok(()) => response::Kind::ReopenLog(ReopenLogResponse {}),
            Err(e) => control::error(format!("reopen log: {e}")),
        },
        request::Kind::State(_) => response::Kind::State(StateResponse {
            container_pid,
            exit: exited.map(|(s, at)| exit_record(s, oom, at)),
        }),
        request::Kind::Resize(r) => {
            let Some(pty) = &io.pty else {
                return control::error("resize: the container has no terminal".into());
            };
            let (Ok(cols), Ok(rows)) = (u16::try_from(r.width), u16::try_from(r.height)) else {
                return control::error(format!("resize: {}x{} is too large", r.width, r.height));
            };
            match sys::set_winsize(pty.as_fd(), cols, rows) {
                Ok(()) => response::Kind::Resize(ResizeResponse {}),
                Err(e) => control::error(format!("resize: {e}")),
            }
        }
    }
}

/// Runs `RUNTIME create` with the container's stdio and waits for it; returns the monitor's
/// side of the stdio and the container's pid.
fn run_create(cfg: &RunConfig, signals: &File) -> Result<(ContainerIo, u32), String> {
    let id = &cfg.id;
    let runtime = cfg.runtime.display();
    let (mut pending, rt_stdio) = container_io::prepare(&cfg.dir, cfg.terminal, cfg.stdin)
        .map_err(|e| format!("container {id} stdio: {e}"))?;
    let pid_file = cfg.dir.join(CONTAINER_PID);
    let _ = std::fs::remove_file(&pid_file);
    let console = cfg
        .terminal
        .then(|| cfg.dir.join(container_io::CONSOLE_SOCKET));
    let mut cmd = Command::new(&cfg.runtime);
    cmd.args(runtime::create_args(cfg, &pid_file, console.as_deref()))
        .stdin(Stdio::from(rt_stdio.stdin))
        .stdout(Stdio::from(rt_stdio.stdout))
        .stderr(Stdio::from(rt_stdio.stderr));
    sys::reset_signals_on_exec(&mut cmd);
    let spawned = cmd.spawn();
    drop(cmd);
    let mut child = spawned.map_err(|e| {
        pending.remove_console_socket();
        format!("run {runtime} create {id}: {e}")
    })?;
    // The Command and with it our copies of the runtime's stdio are gone, so the container's
    // end of each pipe is the only one left.
    let deadline = Instant::now() + CREATE_TIMEOUT;
    let mut signals_file = signals;
    let exit = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("wait for {runtime} create {id}: {e}")),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = child.kill();
            let _ = child.wait();
            pending.remove_console_socket();
            return Err(format!(
                "{runtime} create {id} timed out after {}s",
                CREATE_TIMEOUT.as_secs()
            ));
        }
        let mut fds = vec![pollfd(signals.as_fd(), libc::POLLIN)];
        if let Some(fd) = pending.console_listener() {
            fds.push(pollfd(fd, libc::POLLIN));
        }
        let _ = sys::poll(&mut fds, left.as_millis().min(60_000) as libc::c_int);
        if fds[0].revents != 0 {
            drain(&mut signals_file);
        }
        if fds.len() > 1 && fds[1].revents != 0 {
            if let Err(e) = pending.accept_console() {
                let _ = child.kill();
                let _ = child.wait();
                pending.remove_console_socket();
                return Err(format!("container {id} console: {e}"));
            }
        }
    };
    if !exit.success() {
        let stderr = pending.runtime_stderr();
        pending.remove_console_socket();
        let log = std::fs::read_to_string(runtime::log_path(cfg)).unwrap_or_default();
        let msg = runtime::error_message(&stderr, &log, format!("exited with {exit}"));
        return Err(format!("{runtime} create {id}: {msg}"));
    }
    let pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|&p| p > 0);
    let Some(pid) = pid else {
        pending.remove_console_socket();
        return Err(format!(
            "{runtime} create {id}: no pid in {}",
            pid_file.display()
        ));
    };
    let io = pending
        .finish(cfg.stdin, cfg.stdin_once)
        .map_err(|e| format!("container {id} console: {e}"))?;
    Ok((io, pid))
}

/// `RUNTIME delete --force ID`, output discarded; best effort.
fn delete_container(cfg: &RunConfig) {
    let mut cmd = Command::new(&cfg.runtime);
    cmd.args(runtime::delete_args(cfg))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    sys::reset_signals_on_exec(&mut cmd);
    let _ = cmd.status();
}

fn remove_sockets(dir: &Path) {
    for name in [CONTROL_SOCKET, ATTACH_SOCKET, container_io::CONSOLE_SOCKET] {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

/// Reads a non-blocking descriptor until it has nothing more.
fn drain(mut f: impl Read) {
    let mut buf = [0u8; 1024];
    while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
}

/// Writes `dir/name` atomically: temp file in `dir`, fsync, rename, fsync of `dir`.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}
