//! The attach socket (`attach.sock`): container output out, stdin in.
//!
//! Owns the listener and the attached clients. Every client receives all container output
//! from the moment it connected, framed as `[1 byte stream id: 2 stdout, 3 stderr]
//! [4 byte big-endian length][bytes]`; bytes a client sends are handed to the monitor as
//! stdin input, unframed. A client that half-closes (shuts down its write side) has finished
//! its input but still gets output until it hangs up, as with CRI-O's conmon. Must never block
//! the monitor: writes are non-blocking, and a client whose backlog exceeds [`MAX_BACKLOG`] is
//! dropped rather than slowing the container down.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};

use crate::container_log::Stream;

/// Output queued for one slow client before it is disconnected.
pub const MAX_BACKLOG: usize = 1 << 20;

/// The frame's stream id byte.
pub fn stream_id(stream: Stream) -> u8 {
    match stream {
        Stream::Stdout => 2,
        Stream::Stderr => 3,
    }
}

pub struct Attach {
    listener: UnixListener,
    clients: Vec<Client>,
}

struct Client {
    stream: UnixStream,
    backlog: Vec<u8>,
    /// The client shut down its write side: no more input, output still flows.
    input_done: bool,
    dead: bool,
}

/// What reading a client produced.
pub enum Input {
    /// `n` bytes of stdin input are in the buffer.
    Data(usize),
    /// Nothing to read right now.
    None,
    /// The client's input ended (a half-close or a hang-up).
    Closed,
}

impl Attach {
    pub fn new(listener: UnixListener) -> Self {
        Self {
            listener,
            clients: Vec::new(),
        }
    }

    pub fn listener_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Clients to poll: (index, fd, whether input may still come, whether output is queued).
    /// A client whose input ended is still polled: a hang-up is reported without asking.
    pub fn clients(&self) -> impl Iterator<Item = (usize, BorrowedFd<'_>, bool, bool)> {
        self.clients
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.dead)
            .map(|(i, c)| (i, c.stream.as_fd(), !c.input_done, !c.backlog.is_empty()))
    }

    pub fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_ok() {
                self.clients.push(Client {
                    stream,
                    backlog: Vec::new(),
                    input_done: false,
                    dead: false,
                });
            }
        }
    }

    /// Sends a chunk of container output to every client.
    pub fn broadcast(&mut self, stream: Stream, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let header = frame_header(stream, data.len());
        for c in self.clients.iter_mut().filter(|c| !c.dead) {
            if c.backlog.is_empty() {
                let written = write_frame(&mut c.stream, &header, data);
                match written {
                    Ok(n) if n == header.len() + data.len() => continue,
                    Ok(n) => {
                        let (h, d) = (n.min(header.len()), n.saturating_sub(header.len()));
                        c.backlog.extend_from_slice(&header[h..]);
                        c.backlog.extend_from_slice(&data[d..]);
                    }
                    Err(_) => c.dead = true,
                }
            } else {
                c.backlog.extend_from_slice(&header);
                c.backlog.extend_from_slice(data);
            }
            if c.backlog.len() > MAX_BACKLOG {
                c.dead = true;
            }
        }
    }

    /// Client `i` is writable: sends what is queued for it.
    pub fn on_writable(&mut self, i: usize) {
        if let Some(c) = self.clients.get_mut(i) {
            c.flush();
        }
    }

    /// Client `i` is readable: reads stdin input into `buf`. End of input is reported once; the
    /// client stays for output until it hangs up.
    pub fn read(&mut self, i: usize, buf: &mut [u8]) -> Input {
        let Some(c) = self.clients.get_mut(i) else {
            return Input::None;
        };
        if c.input_done {
            return Input::None;
        }
        loop {
            return match c.stream.read(buf) {
                Ok(0) => {
                    c.input_done = true;
                    Input::Closed
                }
                Ok(n) => Input::Data(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Input::None,
                Err(_) => {
                    c.dead = true;
                    Input::Closed
                }
            };
        }
    }

    /// Client `i` reported a hang-up or error.
    pub fn hang_up(&mut self, i: usize) {
        if let Some(c) = self.clients.get_mut(i) {
            c.dead = true;
        }
    }

    /// Forgets dropped clients; returns how many went away (indices change: call after
    /// dispatching a poll round).
    pub fn sweep(&mut self) -> usize {
        let before = self.clients.len();
        self.clients.retain(|c| !c.dead);
        before - self.clients.len()
    }

    /// The monitor is exiting: a last attempt to deliver queued output, then a clean end of
    /// stream. Unread input is discarded first, because closing a unix socket with data still
    /// queued makes the peer's next read fail with ECONNRESET instead of seeing EOF.
    pub fn close_all(&mut self) {
        let mut sink = [0u8; 4096];
        for c in &mut self.clients {
            c.flush();
            while matches!(c.stream.read(&mut sink), Ok(n) if n > 0) {}
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Client {
    fn flush(&mut self) {
        while !self.backlog.is_empty() && !self.dead {
            match self.stream.write(&self.backlog) {
                Ok(0) => self.dead = true,
                Ok(n) => {
                    self.backlog.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.dead = true,
            }
        }
        if self.backlog.is_empty() {
            self.backlog = Vec::new();
        }
    }
}

fn frame_header(stream: Stream, len: usize) -> [u8; 5] {
    let len = (len as u32).to_be_bytes();
    [stream_id(stream), len[0], len[1], len[2], len[3]]
}

/// Writes header and data with one `writev`, retrying on EINTR; `Ok(0..)` may be short.
fn write_frame(stream: &mut UnixStream, header: &[u8], data: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    let total = header.len() + data.len();
    while done < total {
        let slices = if done < header.len() {
            [IoSlice::new(&header[done..]), IoSlice::new(data)]
        } else {
            [
                IoSlice::new(&data[done - header.len()..]),
                IoSlice::new(&[]),
            ]
        };
        match stream.write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_reach_clients_and_slow_clients_are_dropped() {
        let dir = std::env::temp_dir().join(format!("crius-attach-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.sock");
        let mut attach = Attach::new(crate::control::bind(&path).unwrap());
        let mut fast = UnixStream::connect(&path).unwrap();
        let _slow = UnixStream::connect(&path).unwrap();
        attach.accept();
        attach.broadcast(Stream::Stderr, b"hello");
        let mut got = [0u8; 10];
        fast.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"\x03\x00\x00\x00\x05hello");
        // Nobody reads: the backlog grows past the limit and both clients are dropped.
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..(2 * MAX_BACKLOG / chunk.len() + 16) {
            attach.broadcast(Stream::Stdout, &chunk);
        }
        assert_eq!(attach.sweep(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_half_closed_client_still_gets_output() {
        let dir = std::env::temp_dir().join(format!("crius-attach-half-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.sock");
        let mut attach = Attach::new(crate::control::bind(&path).unwrap());
        let mut client = UnixStream::connect(&path).unwrap();
        attach.accept();
        client.write_all(b"in").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut buf = [0u8; 16];
        assert!(matches!(attach.read(0, &mut buf), Input::Data(2)));
        assert!(matches!(attach.read(0, &mut buf), Input::Closed));
        assert!(matches!(attach.read(0, &mut buf), Input::None));
        assert!(attach.clients().all(|(_, _, reading, _)| !reading));
        attach.broadcast(Stream::Stdout, b"out");
        let mut got = [0u8; 8];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"\x02\x00\x00\x00\x03out");
        assert_eq!(attach.sweep(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
