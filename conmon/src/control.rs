//! The control socket (`monitor.sock`): `crius-proto` requests in, responses out.
//!
//! Owns the listener, the connections and their frame buffers. Answers each request through a
//! handler the monitor passes in, in order. A frame that cannot be decoded gets an
//! `ErrorResponse` and the connection is closed after it (the byte stream cannot be trusted to
//! resynchronise); a request of a kind this monitor does not know gets an `ErrorResponse` and
//! the connection stays open. Must never block: all sockets are non-blocking, and a client
//! that stops reading its answers is dropped.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use crius_proto::monitor::{request, response, ErrorResponse, Request, Response};
use crius_proto::{decode_frame, encode_frame, MAX_FRAME};

/// Unanswered output a connection may accumulate before it is dropped.
const MAX_PENDING_OUT: usize = 1 << 20;

pub struct Control {
    listener: UnixListener,
    conns: Vec<Conn>,
}

struct Conn {
    stream: UnixStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// Close once `outbuf` is written (after a garbled frame).
    closing: bool,
    dead: bool,
}

/// The mode of the monitor's sockets: only root (the daemon) may connect.
pub const SOCKET_MODE: u32 = 0o600;

/// Binds a non-blocking unix listener at `path`, replacing a stale socket file. The socket is
/// created 0600 (umask 0177 while binding, then an explicit chmod), whatever the umask the
/// monitor was started with.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let old = crate::sys::umask(0o177);
    let bound = UnixListener::bind(path);
    crate::sys::umask(old);
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

impl Control {
    pub fn new(listener: UnixListener) -> Self {
        Self {
            listener,
            conns: Vec::new(),
        }
    }

    pub fn listener_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Connections to poll: (index, fd, poll events).
    pub fn conns(&self) -> impl Iterator<Item = (usize, BorrowedFd<'_>, i16)> {
        self.conns
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.dead)
            .map(|(i, c)| {
                let mut events = 0;
                if !c.closing {
                    events |= libc::POLLIN;
                }
                if !c.outbuf.is_empty() {
                    events |= libc::POLLOUT;
                }
                (i, c.stream.as_fd(), events)
            })
    }

    pub fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_ok() {
                self.conns.push(Conn {
                    stream,
                    inbuf: Vec::new(),
                    outbuf: Vec::new(),
                    closing: false,
                    dead: false,
                });
            }
        }
    }

    /// Handles poll results for connection `i`, answering requests with `handle`.
    pub fn on_event(
        &mut self,
        i: usize,
        revents: i16,
        handle: &mut dyn FnMut(request::Kind) -> response::Kind,
    ) {
        let Some(conn) = self.conns.get_mut(i) else {
            return;
        };
        if revents & libc::POLLIN != 0 && !conn.closing {
            conn.read_requests(handle);
        } else if revents & (libc::POLLHUP | libc::POLLERR) != 0 && conn.outbuf.is_empty() {
            conn.dead = true;
        }
        conn.flush();
    }

    /// Forgets closed connections (indices change: call after dispatching a poll round).
    pub fn sweep(&mut self) {
        self.conns.retain(|c| !c.dead);
    }
}

impl Conn {
    fn read_requests(&mut self, handle: &mut dyn FnMut(request::Kind) -> response::Kind) {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    // The peer is done sending; still answer what it sent.
                    self.closing = true;
                    break;
                }
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
            if self.inbuf.len() > MAX_FRAME + 16 {
                break;
            }
        }
        let mut used = 0;
        loop {
            match decode_frame::<Request>(&self.inbuf[used..]) {
                Ok(Some((req, n))) => {
                    used += n;
                    let kind = match req.kind {
                        Some(kind) => handle(kind),
                        None => error("empty or unsupported request kind".into()),
                    };
                    self.queue(&Response {
                        id: req.id,
                        kind: Some(kind),
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    self.queue(&Response {
                        id: 0,
                        kind: Some(error(format!("bad request frame: {e}"))),
                    });
                    self.closing = true;
                    used = self.inbuf.len();
                    break;
                }
            }
        }
        self.inbuf.drain(..used);
        if self.inbuf.is_empty() {
            self.inbuf = Vec::new();
        }
        if self.closing && self.outbuf.is_empty() {
            self.dead = true;
        }
    }

    fn queue(&mut self, resp: &Response) {
        self.outbuf.extend_from_slice(&encode_frame(resp));
        if self.outbuf.len() > MAX_PENDING_OUT {
            self.dead = true;
        }
    }

    fn flush(&mut self) {
        while !self.outbuf.is_empty() && !self.dead {
            match self.stream.write(&self.outbuf) {
                Ok(0) => self.dead = true,
                Ok(n) => {
                    self.outbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.dead = true,
            }
        }
        if self.outbuf.is_empty() {
            self.outbuf = Vec::new();
            if self.closing {
                self.dead = true;
            }
        }
    }
}

pub fn error(message: String) -> response::Kind {
    response::Kind::Error(ErrorResponse { message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crius_proto::monitor::PingResponse;

    fn answer(bytes: &[u8]) -> (Vec<Response>, bool) {
        let dir = std::env::temp_dir().join(format!(
            "crius-control-{}-{}",
            std::process::id(),
            bytes.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let mut control = Control::new(bind(&path).unwrap());
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, SOCKET_MODE, "{mode:o}");
        }
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(bytes).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        control.accept();
        let mut handle = |_: request::Kind| {
            response::Kind::Ping(PingResponse {
                version: "v".into(),
                pid: 1,
            })
        };
        control.on_event(0, libc::POLLIN, &mut handle);
        let dead = control.conns[0].dead;
        control.sweep();
        let mut out = Vec::new();
        client.read_to_end(&mut out).unwrap_or_default();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut resps = Vec::new();
        let mut rest = out.as_slice();
        while let Some((r, n)) = decode_frame::<Response>(rest).unwrap() {
            resps.push(r);
            rest = &rest[n..];
        }
        (resps, dead)
    }

    #[test]
    fn garbled_frame_gets_an_error_and_closes() {
        let (resps, dead) = answer(&[0x05, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(resps.len(), 1, "{resps:?}");
        assert!(matches!(resps[0].kind, Some(response::Kind::Error(_))));
        assert!(dead);
    }
}
