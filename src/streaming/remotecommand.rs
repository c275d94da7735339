//! Exec and attach sessions over SPDY, as Kubernetes' `remotecommand` server speaks them.
//!
//! Over SPDY the client opens one stream per channel (`streamtype` header: `error`, `stdin`,
//! `stdout`, `stderr`, `resize`) and the session waits for every expected one (within 30 s);
//! over WebSocket every channel exists from the start ([`super::ws`]). Both give the same
//! [`Streams`]. Then the process runs (exec) or the monitor's attach socket is joined (attach),
//! data is copied, and the outcome goes on the error stream: from protocol v4 on a
//! `metav1.Status` JSON (`Success`, or `Failure` with reason `NonZeroExitCode` and the exit code
//! as an `ExitCode` cause); with older protocols the error text only. Resize messages are JSON
//! `{"Width":W,"Height":H}` objects back to back.
//!
//! Owns the stream bookkeeping, data copying and status encoding. Must not build runtime argv
//! (the container domain spawns the exec) or parse the monitor's attach framing beyond reading it.

use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::spdy::{Connection, Stream};
use super::ws;
use crate::daemon::Daemon;

/// How long the client has to open every stream it announced.
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// An attach that detaches at the end of the client's stdin first delivers output until none
/// came for this long...
pub const DETACH_QUIET: Duration = Duration::from_millis(200);
/// ...or for at most this long.
pub const DETACH_DRAIN: Duration = Duration::from_secs(2);

/// Which channels a session carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channels {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub resize: bool,
}

impl Channels {
    /// The channels of a request: no separate stderr with a terminal; a resize channel with a
    /// terminal from protocol v3 on.
    pub fn of(stdin: bool, stdout: bool, stderr: bool, tty: bool, protocol: &str) -> Channels {
        Channels {
            stdin,
            stdout,
            stderr: stderr && !tty,
            resize: tty && version(protocol) >= 3,
        }
    }

    fn expected(&self) -> usize {
        1 + [self.stdin, self.stdout, self.stderr, self.resize]
            .iter()
            .filter(|b| **b)
            .count()
    }
}

/// The version of a remote command protocol: `v5.channel.k8s.io` is 5,
/// `v4.base64.channel.k8s.io` 4, `channel.k8s.io` (or none) 1.
pub fn version(protocol: &str) -> u8 {
    protocol
        .strip_prefix('v')
        .and_then(|rest| rest.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// A channel the client writes (stdin, resize).
pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// A channel the client reads (stdout, stderr, error).
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// The streams of a session, by channel, whatever the transport.
#[derive(Default)]
pub struct Streams {
    pub stdin: Option<Reader>,
    pub stdout: Option<Writer>,
    pub stderr: Option<Writer>,
    pub error: Option<Writer>,
    pub resize: Option<Reader>,
}

/// How the client reached the session.
pub enum Transport {
    /// An SPDY connection and the streams the client opens on it.
    Spdy(Connection, mpsc::Receiver<Stream>),
    /// A WebSocket connection, its channels not set up yet.
    WebSocket(ws::Upgraded),
}

/// The client's end of a running session.
#[derive(Clone)]
pub enum Peer {
    Spdy(Connection),
    WebSocket(ws::Handle),
}

impl Peer {
    /// Resolves when the client went away.
    pub async fn closed(&self) {
        match self {
            Peer::Spdy(c) => c.closed().await,
            Peer::WebSocket(h) => h.closed().await,
        }
    }

    /// Ends the connection after everything written so far.
    pub async fn close(&self) {
        match self {
            Peer::Spdy(c) => c.close().await,
            Peer::WebSocket(h) => h.close().await,
        }
    }
}

/// Waits for every stream `channels` needs. Unknown or unexpected stream types are reset.
pub async fn accept(
    incoming: &mut mpsc::Receiver<Stream>,
    channels: Channels,
) -> Result<Streams, String> {
    let mut got = Streams::default();
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while count < channels.expected() {
        let stream = match tokio::time::timeout_at(deadline, incoming.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err("the connection ended before every stream was opened".into()),
            Err(_) => {
                return Err(format!(
                    "timed out waiting for the client's streams ({count} of {})",
                    channels.expected()
                ))
            }
        };
        let kind = stream.header("streamtype").unwrap_or_default().to_string();
        let wanted = match kind.as_str() {
            "error" => got.error.is_none(),
            "stdin" => channels.stdin && got.stdin.is_none(),
            "stdout" => channels.stdout && got.stdout.is_none(),
            "stderr" => channels.stderr && got.stderr.is_none(),
            "resize" => channels.resize && got.resize.is_none(),
            _ => false,
        };
        if !wanted {
            tracing::debug!(stream_type = %kind, "unexpected stream reset");
            stream.reset();
            continue;
        }
        let (reader, writer) = stream.split();
        match kind.as_str() {
            "error" => got.error = Some(Box::new(writer)),
            "stdin" => got.stdin = Some(Box::new(reader)),
            "stdout" => got.stdout = Some(Box::new(writer)),
            "stderr" => got.stderr = Some(Box::new(writer)),
            _ => got.resize = Some(Box::new(reader)),
        }
        count += 1;
    }
    Ok(got)
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Failed(String),
}

/// The error stream's payload for `outcome` under `protocol` (`None`: nothing to write).
pub fn status_payload(protocol: &str, outcome: &Outcome) -> Option<Vec<u8>> {
    let v4 = version(protocol) >= 4;
    match outcome {
        Outcome::Exited(0) if v4 => Some(br#"{"metadata":{},"status":"Success"}"#.to_vec()),
        Outcome::Exited(0) => None,
        Outcome::Exited(code) if v4 => Some(
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            })
            .to_string()
            .into_bytes(),
        ),
        Outcome::Exited(code) => {
            Some(format!("command terminated with non-zero exit code: exit status {code}").into_bytes())
        }
        Outcome::Failed(message) if v4 => Some(
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "InternalError",
                "code": 500,
            })
            .to_string()
            .into_bytes(),
        ),
        Outcome::Failed(message) => Some(message.clone().into_bytes()),
    }
}

/// Writes the outcome, half-closes every stream we write, and closes the connection.
async fn finish(peer: &Peer, mut streams: Streams, protocol: &str, outcome: Outcome) {
    if let Some(mut error) = streams.error.take() {
        if let Some(payload) = status_payload(protocol, &outcome) {
            let _ = error.write_all(&payload).await;
        }
        let _ = error.shutdown().await;
    }
    for w in [streams.stdout.take(), streams.stderr.take()]
        .into_iter()
        .flatten()
    {
        let mut w = w;
        let _ = w.shutdown().await;
    }
    peer.close().await;
}

/// A terminal size as the client sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Splits the resize channel's bytes into sizes; keeps an unfinished object in `buf`.
pub fn parse_sizes(buf: &mut Vec<u8>) -> Result<Vec<TerminalSize>, String> {
    let mut out = Vec::new();
    let mut used = 0;
    {
        let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<TerminalSize>();
        loop {
            match it.next() {
                Some(Ok(size)) => {
                    out.push(size);
                    used = it.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(format!("bad resize message: {e}")),
                None => {
                    used = it.byte_offset();
                    break;
                }
            }
        }
    }
    buf.drain(..used);
    Ok(out)
}

/// Reads sizes from the resize channel and applies each with `apply` until the channel ends.
async fn follow_resizes(mut resize: Reader, apply: impl Fn(TerminalSize) + Send + 'static) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match resize.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > 64 << 10 {
                    tracing::debug!("resize channel sent garbage; ignoring it");
                    return;
                }
                match parse_sizes(&mut buf) {
                    Ok(sizes) => sizes.into_iter().for_each(&apply),
                    Err(e) => {
                        tracing::debug!(error = %e, "resize channel");
                        return;
                    }
                }
            }
        }
    }
}

/// Copies `from` into `to` until EOF (or an error on either side), then half-closes `to`.
pub(crate) async fn pump(from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    pump_open(from, &mut to).await;
    let _ = to.shutdown().await;
}

/// Runs one session: sets up the streams, runs `body`, reports its outcome.
async fn session<F, Fut>(
    what: &str,
    container_id: &str,
    channels: Channels,
    protocol: &str,
    transport: Transport,
    body: F,
) where
    F: FnOnce(Streams, Peer) -> Fut,
    Fut: std::future::Future<Output = (Streams, Outcome)>,
{
    let (peer, streams) = match transport {
        Transport::Spdy(conn, mut incoming) => match accept(&mut incoming, channels).await {
            Ok(s) => (Peer::Spdy(conn), s),
            Err(e) => {
                tracing::warn!(container_id, error = %e, "{what} session");
                conn.close().await;
                return;
            }
        },
        Transport::WebSocket(upgraded) => {
            let (handle, streams) = ws::channels(upgraded, protocol, channels);
            (Peer::WebSocket(handle), streams)
        }
    };
    let (streams, outcome) = body(streams, peer.clone()).await;
    tracing::info!(container_id, outcome = ?outcome, "{what} session ended");
    finish(&peer, streams, protocol, outcome).await;
}

/// `Exec`: runs the command in the container with the session's streams.
pub async fn exec(
    daemon: Arc<Daemon>,
    req: cri::ExecRequest,
    protocol: &'static str,
    transport: Transport,
) {
    let channels = Channels::of(req.stdin, req.stdout, req.stderr, req.tty, protocol);
    let id = req.container_id.clone();
    session(
        "exec",
        &id,
        channels,
        protocol,
        transport,
        |mut streams, peer| async move {
            let outcome = run_exec(&daemon, &req, &mut streams, &peer).await;
            (streams, outcome)
        },
    )
    .await;
}

async fn run_exec(
    daemon: &Daemon,
    req: &cri::ExecRequest,
    streams: &mut Streams,
    peer: &Peer,
) -> Outcome {
    let containers = match daemon.containers() {
        Ok(c) => c.clone(),
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let mut process = match containers
        .spawn_exec(
            &req.container_id,
            &req.cmd,
            req.tty,
            streams.stdin.is_some(),
            streams.stdout.is_some(),
            streams.stderr.is_some(),
        )
        .await
    {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    if let (Some(from), Some(to)) = (streams.stdin.take(), process.stdin.take()) {
        tokio::spawn(pump(from, to));
    }
    if let (Some(resize), Some(terminal)) = (streams.resize.take(), process.terminal.take()) {
        tokio::spawn(follow_resizes(resize, move |size| {
            crate::runtime::oci::resize_terminal(&terminal, size.width, size.height);
        }));
    }
    let out = match (process.stdout.take(), streams.stdout.take()) {
        (Some(from), Some(to)) => Some(tokio::spawn(pump(from, to))),
        _ => None,
    };
    let err = match (process.stderr.take(), streams.stderr.take()) {
        (Some(from), Some(to)) => Some(tokio::spawn(pump(from, to))),
        _ => None,
    };
    let finished = async {
        let status = process.wait().await;
        for task in [out, err].into_iter().flatten() {
            let _ = task.await;
        }
        status
    };
    tokio::select! {
        status = finished => match status {
            Ok(code) => Outcome::Exited(code),
            Err(e) => Outcome::Failed(e.to_string()),
        },
        _ = peer.closed() => {
            process.kill().await;
            Outcome::Failed("the client went away".into())
        }
    }
}

/// Copies `from` into `to` until either side ends, without shutting `to` down.
async fn pump_open(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// `Attach`: joins the container's monitor attach socket.
pub async fn attach(
    daemon: Arc<Daemon>,
    req: cri::AttachRequest,
    protocol: &'static str,
    transport: Transport,
) {
    let channels = Channels::of(req.stdin, req.stdout, req.stderr, req.tty, protocol);
    let id = req.container_id.clone();
    session(
        "attach",
        &id,
        channels,
        protocol,
        transport,
        |mut streams, peer| async move {
            let outcome = run_attach(&daemon, &req, &mut streams, &peer).await;
            (streams, outcome)
        },
    )
    .await;
}

async fn run_attach(
    daemon: &Daemon,
    req: &cri::AttachRequest,
    streams: &mut Streams,
    peer: &Peer,
) -> Outcome {
    let containers = match daemon.containers() {
        Ok(c) => c.clone(),
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let target = match containers.attach_target(&req.container_id) {
        Ok(t) => t,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let socket = match tokio::net::UnixStream::connect(&target.socket).await {
        Ok(s) => s,
        Err(e) => {
            return Outcome::Failed(format!(
                "connect to the attach socket {}: {e}",
                target.socket.display()
            ))
        }
    };
    // When the client's stdin ends, the socket's write side is shut down: the monitor takes
    // that as the end of this client's input (closing the container's stdin with stdin_once)
    // and goes on sending output.
    // Without stdin the write half stays open until the session ends: dropping it is a
    // half-close, which would end the container's stdin with stdin_once.
    let (mut from_monitor, to_monitor) = socket.into_split();
    let mut _idle_write_half = None;
    let stdin_done = match streams.stdin.take() {
        Some(stdin) => Some(tokio::spawn(pump(stdin, to_monitor))),
        None => {
            _idle_write_half = Some(to_monitor);
            None
        }
    };
    if let Some(resize) = streams.resize.take() {
        let dir = target.monitor_dir.clone();
        tokio::spawn(follow_resizes(resize, move |size| {
            let dir = dir.clone();
            crate::telemetry::spawn_blocking(move || {
                if let Err(e) = crate::runtime::monitor::resize(&dir, size.width, size.height) {
                    tracing::debug!(error = %e, "attach resize");
                }
            });
        }));
    }
    let mut stdout = streams.stdout.take();
    let mut stderr = streams.stderr.take();
    let tty = req.tty;
    // When output last arrived, in milliseconds since `started` (for the drain below).
    let started = tokio::time::Instant::now();
    let last_output = std::sync::atomic::AtomicU64::new(0);
    let copy = async {
        // Frames: [1 byte stream: 2 stdout, 3 stderr][4 byte big-endian length][bytes].
        let mut header = [0u8; 5];
        let mut buf = Vec::new();
        loop {
            if from_monitor.read_exact(&mut header).await.is_err() {
                break;
            }
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if len > crius_proto::MAX_FRAME {
                return Err(format!("attach frame of {len} bytes"));
            }
            buf.resize(len, 0);
            if from_monitor.read_exact(&mut buf).await.is_err() {
                break;
            }
            let target = if header[0] == 3 && !tty {
                stderr.as_mut()
            } else {
                stdout.as_mut()
            };
            if let Some(w) = target {
                if w.write_all(&buf).await.is_err() {
                    break;
                }
            }
            last_output.store(
                started.elapsed().as_millis() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        Ok(())
    };
    // As CRI-O: without stdin_once or a terminal, the end of the client's stdin detaches the
    // session; otherwise output goes on until the container ends it (stdin_once closed its
    // stdin) or the client leaves. Before detaching, output the last input caused is still
    // delivered: until [`DETACH_QUIET`] passes without output (at most [`DETACH_DRAIN`]), so
    // that `echo 'echo hello' | crictl attach -i` prints `hello`.
    let detach_on_stdin_end = !target.stdin_once && !req.tty;
    let stdin_ended = async {
        match stdin_done {
            Some(task) if detach_on_stdin_end => {
                let _ = task.await;
            }
            _ => std::future::pending().await,
        }
    };
    let drained = async {
        stdin_ended.await;
        let ended_at = started.elapsed();
        loop {
            tokio::time::sleep(DETACH_QUIET / 4).await;
            let now = started.elapsed();
            let last =
                Duration::from_millis(last_output.load(std::sync::atomic::Ordering::Relaxed));
            if now.saturating_sub(last.max(ended_at)) >= DETACH_QUIET
                || now.saturating_sub(ended_at) >= DETACH_DRAIN
            {
                return;
            }
        }
    };
    let result = tokio::select! {
        r = copy => r,
        () = drained => Ok(()),
        _ = peer.closed() => Err("the client went away".to_string()),
    };
    streams.stdout = stdout;
    streams.stderr = stderr;
    match result {
        Ok(()) => Outcome::Exited(0),
        Err(e) => Outcome::Failed(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn channels_follow_the_request_and_protocol() {
        let c = Channels::of(true, true, true, true, "v4.channel.k8s.io");
        assert!(!c.stderr && c.resize && c.stdin && c.stdout);
        assert_eq!(c.expected(), 4);
        let c = Channels::of(false, true, true, true, "v2.channel.k8s.io");
        assert!(!c.resize);
        assert_eq!(c.expected(), 2);
        let c = Channels::of(false, true, true, false, "v4.channel.k8s.io");
        assert_eq!(c.expected(), 3);
    }

    #[test]
    fn protocol_versions_cover_websocket_names() {
        assert_eq!(version("v5.channel.k8s.io"), 5);
        assert_eq!(version("v4.base64.channel.k8s.io"), 4);
        assert_eq!(version("v2.channel.k8s.io"), 2);
        assert_eq!(version("channel.k8s.io"), 1);
        assert_eq!(version("base64.channel.k8s.io"), 1);
        assert_eq!(version(""), 1);
        assert!(Channels::of(false, true, false, true, "v5.channel.k8s.io").resize);
        assert!(status_payload("v5.channel.k8s.io", &Outcome::Exited(0)).is_some());
    }

    #[test]
    fn status_payloads_match_kubernetes() {
        let v4 = "v4.channel.k8s.io";
        assert_eq!(
            status_payload(v4, &Outcome::Exited(0)).unwrap(),
            br#"{"metadata":{},"status":"Success"}"#
        );
        let failure: serde_json::Value =
            serde_json::from_slice(&status_payload(v4, &Outcome::Exited(3)).unwrap()).unwrap();
        assert_eq!(failure["status"], "Failure");
        assert_eq!(failure["reason"], "NonZeroExitCode");
        assert_eq!(failure["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failure["details"]["causes"][0]["message"], "3");
        let internal: serde_json::Value =
            serde_json::from_slice(&status_payload(v4, &Outcome::Failed("boom".into())).unwrap())
                .unwrap();
        assert_eq!(internal["message"], "boom");
        assert_eq!(internal["code"], 500);
        assert!(status_payload("v2.channel.k8s.io", &Outcome::Exited(0)).is_none());
        assert_eq!(
            status_payload("v3.channel.k8s.io", &Outcome::Failed("boom".into())).unwrap(),
            b"boom"
        );
    }

    #[test]
    fn resize_messages_split_across_reads() {
        let mut buf = br#"{"Width":80,"Height":24}{"Width":1"#.to_vec();
        let sizes = parse_sizes(&mut buf).unwrap();
        assert_eq!(
            sizes,
            [TerminalSize {
                width: 80,
                height: 24
            }]
        );
        buf.extend_from_slice(br#"00,"Height":50} "#);
        let sizes = parse_sizes(&mut buf).unwrap();
        assert_eq!(
            sizes,
            [TerminalSize {
                width: 100,
                height: 50
            }]
        );
        assert!(buf.iter().all(|b| b.is_ascii_whitespace()));
        let mut bad = b"nonsense".to_vec();
        assert!(parse_sizes(&mut bad).is_err());
    }
}
