//! The container's stdio: pipes, or a pty received through the runtime's console socket.
//!
//! Owns the monitor's ends: the stdout/stderr read ends (or the pty master), the stdin write
//! end with its small backlog, and the console socket while `create` runs. Without a
//! terminal, stdout and stderr are separate pipes (so the streams stay distinguishable) and
//! stdin is a pipe with `--stdin`, else `/dev/null`; runc and crun hand their own stdio to the
//! container's init. With a terminal, the runtime connects to `console.sock` and sends the pty
//! master with SCM_RIGHTS; everything read from it is stdout. Must not interpret the bytes.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::container_log::Stream;
use crate::sys;

pub const CONSOLE_SOCKET: &str = "console.sock";

/// Stdin input buffered for a container that is not reading.
const MAX_STDIN_BACKLOG: usize = 64 * 1024;

/// ASCII EOT (^D): end of input on a terminal in canonical mode.
const EOT: u8 = 0x04;

/// The runtime process's stdio for `create`.
pub struct RuntimeStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// The monitor's side while `create` runs.
pub enum Pending {
    Pipes {
        stdout: File,
        stderr: File,
        stdin: Option<File>,
    },
    Terminal {
        listener: UnixListener,
        path: PathBuf,
        /// Read end of the runtime's stderr (its error message, if any).
        runtime_stderr: File,
        master: Option<File>,
    },
}

fn dev_null(write: bool) -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")?;
    Ok(f.into())
}

/// Creates the container's stdio in `dir`.
pub fn prepare(dir: &Path, terminal: bool, stdin: bool) -> io::Result<(Pending, RuntimeStdio)> {
    if terminal {
        let path = dir.join(CONSOLE_SOCKET);
        let listener = crate::control::bind(&path)?;
        let (err_r, err_w) = sys::pipe()?;
        sys::set_nonblocking(err_r.as_fd())?;
        let rt = RuntimeStdio {
            stdin: dev_null(false)?,
            stdout: dev_null(true)?,
            stderr: err_w,
        };
        return Ok((
            Pending::Terminal {
                listener,
                path,
                runtime_stderr: err_r.into(),
                master: None,
            },
            rt,
        ));
    }
    let (out_r, out_w) = sys::pipe()?;
    let (err_r, err_w) = sys::pipe()?;
    sys::set_nonblocking(out_r.as_fd())?;
    sys::set_nonblocking(err_r.as_fd())?;
    let (stdin_monitor, stdin_runtime) = if stdin {
        let (in_r, in_w) = sys::pipe()?;
        sys::set_nonblocking(in_w.as_fd())?;
        (Some(File::from(in_w)), in_r)
    } else {
        (None, dev_null(false)?)
    };
    Ok((
        Pending::Pipes {
            stdout: out_r.into(),
            stderr: err_r.into(),
            stdin: stdin_monitor,
        },
        RuntimeStdio {
            stdin: stdin_runtime,
            stdout: out_w,
            stderr: err_w,
        },
    ))
}

impl Pending {
    /// The console socket to poll while `create` runs, until the pty master arrived.
    pub fn console_listener(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Pending::Terminal {
                listener,
                master: None,
                ..
            } => Some(listener.as_fd()),
            _ => None,
        }
    }

    /// Accepts the runtime's console connection, if one is waiting, and receives the master.
    pub fn accept_console(&mut self) -> io::Result<()> {
        let Pending::Terminal {
            listener, master, ..
        } = self
        else {
            return Ok(());
        };
        if master.is_some() {
            return Ok(());
        }
        let conn = match listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let fd = sys::recv_fd(conn.as_fd())?
            .ok_or_else(|| io::Error::other("console socket closed without a terminal"))?;
        sys::set_nonblocking(fd.as_fd())?;
        *master = Some(fd.into());
        Ok(())
    }

    /// Whatever the runtime wrote to stderr so far (non-blocking).
    pub fn runtime_stderr(&mut self) -> Vec<u8> {
        let f = match self {
            Pending::Pipes { stderr, .. } => stderr,
            Pending::Terminal { runtime_stderr, .. } => runtime_stderr,
        };
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        while out.len() < 64 * 1024 {
            match f.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
        out
    }

    /// Removes the console socket, if any (after `create`, on success or failure).
    pub fn remove_console_socket(&self) {
        if let Pending::Terminal { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }

    /// `create` succeeded: the monitor's final view of the container's stdio.
    pub fn finish(mut self, stdin: bool, stdin_once: bool) -> io::Result<ContainerIo> {
        self.accept_console()?;
        self.remove_console_socket();
        match self {
            Pending::Pipes {
                stdout,
                stderr,
                stdin: input,
            } => Ok(ContainerIo {
                outputs: [
                    Some(Output {
                        stream: Stream::Stdout,
                        file: stdout,
                    }),
                    Some(Output {
                        stream: Stream::Stderr,
                        file: stderr,
                    }),
                ],
                stdin: Stdin::new(input, false, stdin_once),
                pty: None,
            }),
            Pending::Terminal { master, .. } => {
                let master = master.ok_or_else(|| io::Error::other("runtime sent no console"))?;
                let input = if stdin {
                    Some(master.try_clone()?)
                } else {
                    None
                };
                Ok(ContainerIo {
                    outputs: [
                        Some(Output {
                            stream: Stream::Stdout,
                            file: master.try_clone()?,
                        }),
                        None,
                    ],
                    stdin: Stdin::new(input, true, stdin_once),
                    pty: Some(master),
                })
            }
        }
    }
}

/// One output stream of the container.
pub struct Output {
    pub stream: Stream,
    pub file: File,
}

/// What reading an output produced.
pub enum Chunk {
    Data(usize),
    Again,
    Eof,
}

impl Output {
    pub fn read(&mut self, buf: &mut [u8]) -> Chunk {
        loop {
            return match self.file.read(buf) {
                Ok(0) => Chunk::Eof,
                Ok(n) => Chunk::Data(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Chunk::Again,
                // EIO on a pty master once every slave descriptor is closed: the end.
                Err(_) => Chunk::Eof,
            };
        }
    }
}

pub struct ContainerIo {
    /// stdout, stderr (pipes); or the pty master as stdout. `None` once at EOF.
    pub outputs: [Option<Output>; 2],
    pub stdin: Stdin,
    /// The pty master, for window size changes.
    pub pty: Option<File>,
}

/// The container's stdin as fed from attach clients.
pub struct Stdin {
    file: Option<File>,
    backlog: Vec<u8>,
    pty: bool,
    once: bool,
    /// No more input is accepted (stdin-once after the first client left).
    closed: bool,
}

impl Stdin {
    fn new(file: Option<File>, pty: bool, once: bool) -> Self {
        Self {
            file,
            backlog: Vec::new(),
            pty,
            once,
            closed: false,
        }
    }

    /// Whether attach clients may be read from now (input would not have to be dropped).
    pub fn accepts_input(&self) -> bool {
        self.file.is_none() || self.closed || self.backlog.len() < MAX_STDIN_BACKLOG
    }

    /// The descriptor to poll for writability while input is queued.
    pub fn pending_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.file {
            Some(f) if !self.backlog.is_empty() => Some(f.as_fd()),
            _ => None,
        }
    }

    /// Input from an attach client; dropped without `--stdin` or after stdin was closed.
    pub fn write(&mut self, data: &[u8]) {
        if self.closed || self.file.is_none() {
            return;
        }
        self.backlog.extend_from_slice(data);
        self.flush();
    }

    pub fn on_writable(&mut self) {
        self.flush();
    }

    /// An attach client finished its input (half-close) or disconnected: with `--stdin-once`,
    /// the container's stdin ends.
    pub fn client_left(&mut self) {
        if !self.once || self.closed || self.file.is_none() {
            return;
        }
        self.closed = true;
        if self.pty {
            // A pty cannot be half-closed: send the terminal's end-of-input character.
            self.backlog.push(EOT);
        }
        self.flush();
    }

    fn flush(&mut self) {
        let Some(f) = self.file.as_mut() else {
            return;
        };
        while !self.backlog.is_empty() {
            match f.write(&self.backlog) {
                Ok(n) if n > 0 => {
                    self.backlog.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // EPIPE: the container closed its stdin; drop input from now on.
                _ => {
                    self.file = None;
                    self.backlog = Vec::new();
                    return;
                }
            }
        }
        self.backlog = Vec::new();
        if self.closed && !self.pty {
            // Closing the write end is the container's EOF.
            self.file = None;
        }
    }
}
