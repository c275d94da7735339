//! The daemon's side of the monitor protocol: requests on a monitor's control socket and its
//! exit record, by monitor directory.
//!
//! Blocking (callers use `spawn_blocking`); every call has a deadline so a wedged monitor never
//! hangs an RPC.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crius_proto::monitor::{request, response, ExitRecord, Request, Response};
use crius_proto::{decode_frame, encode_frame};
use prost::Message;

/// Control socket, attach socket and exit record names inside a monitor dir.
pub const CONTROL_SOCKET: &str = "monitor.sock";
pub const ATTACH_SOCKET: &str = "attach.sock";
pub const EXIT_FILE: &str = "exit";

const TIMEOUT: Duration = Duration::from_secs(5);

/// Sends one request and returns the monitor's answer.
pub fn call(dir: &Path, kind: request::Kind) -> std::io::Result<response::Kind> {
    let path = dir.join(CONTROL_SOCKET);
    let mut stream = UnixStream::connect(&path)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let req = Request {
        id: 1,
        kind: Some(kind),
    };
    stream.write_all(&encode_frame(&req))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((resp, _)) =
            decode_frame::<Response>(&buf).map_err(|e| std::io::Error::other(e.to_string()))?
        {
            return resp
                .kind
                .ok_or_else(|| std::io::Error::other("empty monitor response"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("monitor at {} closed the connection", path.display()),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Asks the monitor to reopen the container log.
pub fn reopen_log(dir: &Path) -> std::io::Result<()> {
    match call(dir, request::Kind::ReopenLog(Default::default()))? {
        response::Kind::ReopenLog(_) => Ok(()),
        response::Kind::Error(e) => Err(std::io::Error::other(e.message)),
        other => Err(std::io::Error::other(format!(
            "unexpected monitor answer {other:?}"
        ))),
    }
}

/// Sets the container terminal's window size. Blocking.
pub fn resize(dir: &Path, width: u16, height: u16) -> std::io::Result<()> {
    let req = crius_proto::monitor::ResizeRequest {
        width: width.into(),
        height: height.into(),
    };
    match call(dir, request::Kind::Resize(req))? {
        response::Kind::Resize(_) => Ok(()),
        response::Kind::Error(e) => Err(std::io::Error::other(e.message)),
        other => Err(std::io::Error::other(format!(
            "unexpected monitor answer {other:?}"
        ))),
    }
}

/// The monitor's attach socket (see docs/monitor.md).
pub fn attach_socket(dir: &Path) -> std::path::PathBuf {
    dir.join(ATTACH_SOCKET)
}

/// Whether a monitor answers on its control socket.
pub fn is_alive(dir: &Path) -> bool {
    matches!(
        call(dir, request::Kind::Ping(Default::default())),
        Ok(response::Kind::Ping(_))
    )
}

/// The exit record, once the monitor wrote it.
pub fn read_exit(dir: &Path) -> Option<ExitRecord> {
    let bytes = std::fs::read(dir.join(EXIT_FILE)).ok()?;
    ExitRecord::decode(bytes.as_slice()).ok()
}
