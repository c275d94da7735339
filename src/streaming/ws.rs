//! WebSocket transport for streaming sessions, as Kubernetes' `wsstream` and client-go's
//! WebSocket executors speak it.
//!
//! Two modes over one upgraded connection (the HTTP upgrade itself is the server's):
//! - **channels** (exec, attach): every message is `[channel byte][payload]`, channels 0 stdin,
//!   1 stdout, 2 stderr, 3 error, 4 resize; binary messages, or with a `base64.` protocol text
//!   messages whose channel is an ASCII digit and whose payload is base64. With
//!   `v5.channel.k8s.io` the message `[255, channel]` is the client's close signal for that
//!   channel (stdin's end). The session ends with a Close(1000) frame after everything written.
//!   The same channel mode, with two channels per port, carries kubelet's WebSocket
//!   port-forward protocol (`v4.channel.k8s.io`, [`super::portforward::serve_websocket`]).
//! - **tunnel** (port-forward, `SPDY/3.1+portforward.k8s.io`): binary messages carry the bytes
//!   of an SPDY connection, which [`super::portforward`] serves as over plain SPDY.
//!
//! Owns framing and the reader/writer tasks. Must not know what the channels carry.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use hyper::body::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::PollSender;

use super::remotecommand::{Channels, Reader, Streams, Writer};

/// Remote command protocols over WebSocket, preferred first (`wsstream`'s list).
pub const REMOTECOMMAND_PROTOCOLS: [&str; 9] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "v3.channel.k8s.io",
    "v3.base64.channel.k8s.io",
    "v2.channel.k8s.io",
    "v2.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];
/// Port-forward over WebSocket: client-go's tunneling dialer (SPDY inside) first, then the
/// channel protocol kubelet also serves (ports from the URL's query).
pub const PORTFORWARD_PROTOCOLS: [&str; 3] = [
    PORTFORWARD_TUNNEL,
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
];
/// The tunneling protocol: binary messages carry an SPDY/3.1 connection.
pub const PORTFORWARD_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// The v5 close signal's first byte.
const STREAM_CLOSE: u8 = 255;
/// Channel numbers.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// Largest message accepted from a client.
const MAX_MESSAGE: usize = 1 << 20;
/// Largest payload per message we send.
const MAX_CHUNK: usize = 32 << 10;
/// Messages queued for the writer task before writers wait.
const WRITE_QUEUE: usize = 32;
/// Buffer of a channel the client writes, before the reader task waits.
const READ_BUFFER: usize = 64 << 10;
/// After our Close frame, how long we wait for the client's.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

type Io = Pin<Box<dyn IoStream>>;

/// What the upgraded connection must be.
pub trait IoStream: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> IoStream for T {}

/// A WebSocket connection after the upgrade, before its mode is chosen.
pub struct Upgraded {
    ws: Box<WebSocketStream<Io>>,
}

impl Upgraded {
    /// Wraps the upgraded byte stream (the handshake was done by the HTTP server).
    pub async fn new(io: impl IoStream + 'static) -> Upgraded {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let io: Io = Box::pin(io);
        Upgraded {
            ws: Box::new(WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await),
        }
    }
}

impl Upgraded {
    /// The client side of an upgraded connection (for tests and tools that dial the server).
    pub async fn client(io: impl IoStream + 'static) -> Upgraded {
        let io: Io = Box::pin(io);
        Upgraded {
            ws: Box::new(WebSocketStream::from_raw_socket(io, Role::Client, None).await),
        }
    }
}

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key)
}

/// What the writer task sends.
enum Out {
    /// A payload for a channel.
    Data(u8, Vec<u8>),
    /// Bytes of the tunnel.
    Raw(Vec<u8>),
    /// The end: a Close(1000) frame after everything queued.
    Close,
}

/// The client's end of a WebSocket session: when it left, and how to end it.
#[derive(Clone)]
pub struct Handle {
    out: mpsc::Sender<Out>,
    closed: watch::Receiver<bool>,
}

impl Handle {
    /// Resolves when the client went away (a Close frame, EOF or an error).
    pub async fn closed(&self) {
        let mut closed = self.closed.clone();
        let _ = closed.wait_for(|c| *c).await;
    }

    /// Sends a Close frame after everything queued so far.
    pub async fn close(&self) {
        let _ = self.out.send(Out::Close).await;
    }
}

/// An `AsyncWrite` whose writes become messages.
struct MessageWriter {
    /// `None`: tunnel bytes.
    channel: Option<u8>,
    out: PollSender<Out>,
}

impl AsyncWrite for MessageWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if ready!(self.out.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = buf.len().min(MAX_CHUNK);
        let item = match self.channel {
            Some(c) => Out::Data(c, buf[..n].to_vec()),
            None => Out::Raw(buf[..n].to_vec()),
        };
        match self.out.send_item(item) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(_) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// A channel's end is not signalled (as in `wsstream`); the tunnel's end is the Close frame.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.channel.is_some() {
            return Poll::Ready(Ok(()));
        }
        if ready!(self.out.poll_reserve(cx)).is_ok() {
            let _ = self.out.send_item(Out::Close);
        }
        self.out.close();
        Poll::Ready(Ok(()))
    }
}

/// Where the reader task puts what the client sends.
enum Inbound {
    /// Channel mode: by channel number, the writing end of each channel the client writes.
    Channels {
        pipes: Vec<Option<DuplexStream>>,
        base64: bool,
        close_signal: bool,
    },
    /// Tunnel mode: the bytes of the tunnel.
    Tunnel(Option<DuplexStream>),
}

/// The channels of a channel-mode connection: for each channel number, what the client wrote
/// (for the numbers in `readable`) and a writer to the client.
pub struct Opened {
    pub handle: Handle,
    pub readers: Vec<Option<Reader>>,
    pub writers: Vec<Option<Writer>>,
}

/// Starts channel mode with `count` channels under `protocol` (base64 framing for a `base64.`
/// protocol, the close signal from v5 on).
pub fn open(upgraded: Upgraded, protocol: &str, count: u8, readable: &[u8]) -> Opened {
    let base64 = protocol.contains("base64.");
    let (out_tx, out_rx) = mpsc::channel(WRITE_QUEUE);
    let (closed_tx, closed_rx) = watch::channel(false);
    let mut pipes = Vec::new();
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for channel in 0..count {
        if readable.contains(&channel) {
            let (ours, theirs) = tokio::io::duplex(READ_BUFFER);
            pipes.push(Some(ours));
            readers.push(Some(Box::new(theirs) as Reader));
        } else {
            pipes.push(None);
            readers.push(None);
        }
        writers.push(Some(Box::new(MessageWriter {
            channel: Some(channel),
            out: PollSender::new(out_tx.clone()),
        }) as Writer));
    }
    let inbound = Inbound::Channels {
        pipes,
        base64,
        close_signal: super::remotecommand::version(protocol) >= 5,
    };
    start(upgraded, inbound, out_rx, closed_tx, base64);
    Opened {
        handle: Handle {
            out: out_tx,
            closed: closed_rx,
        },
        readers,
        writers,
    }
}

/// Starts a remote command session for `protocol` with the channels of the request.
pub fn channels(upgraded: Upgraded, protocol: &str, want: Channels) -> (Handle, Streams) {
    let mut readable = Vec::new();
    if want.stdin {
        readable.push(STDIN);
    }
    if want.resize {
        readable.push(RESIZE);
    }
    let Opened {
        handle,
        mut readers,
        mut writers,
    } = open(upgraded, protocol, RESIZE + 1, &readable);
    let mut take_w = |c: u8| writers.get_mut(usize::from(c)).and_then(Option::take);
    let streams = Streams {
        error: take_w(ERROR),
        stdout: if want.stdout { take_w(STDOUT) } else { None },
        stderr: if want.stderr { take_w(STDERR) } else { None },
        stdin: readers.get_mut(usize::from(STDIN)).and_then(Option::take),
        resize: readers.get_mut(usize::from(RESIZE)).and_then(Option::take),
    };
    (handle, streams)
}

/// Starts a tunnel: the returned byte stream carries what the binary messages carry.
pub fn tunnel(upgraded: Upgraded) -> impl AsyncRead + AsyncWrite + Send + Unpin + 'static {
    let (out_tx, out_rx) = mpsc::channel(WRITE_QUEUE);
    let (closed_tx, _) = watch::channel(false);
    let (ours, theirs) = tokio::io::duplex(READ_BUFFER);
    start(
        upgraded,
        Inbound::Tunnel(Some(ours)),
        out_rx,
        closed_tx,
        false,
    );
    let writer = MessageWriter {
        channel: None,
        out: PollSender::new(out_tx),
    };
    let (read_half, _unused_write_half) = tokio::io::split(theirs);
    tokio::io::join(read_half, writer)
}

/// Spawns the reader and writer tasks.
fn start(
    upgraded: Upgraded,
    inbound: Inbound,
    out: mpsc::Receiver<Out>,
    closed: watch::Sender<bool>,
    base64: bool,
) {
    let (sink, stream) = (*upgraded.ws).split();
    let (closing_tx, closing_rx) = watch::channel(false);
    tokio::spawn(write_loop(sink, out, base64, closing_tx));
    tokio::spawn(read_loop(stream, inbound, closed, closing_rx));
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<Io>, Message>,
    mut out: mpsc::Receiver<Out>,
    base64: bool,
    closing: watch::Sender<bool>,
) {
    while let Some(item) = out.recv().await {
        let message = match item {
            Out::Data(channel, data) if base64 => {
                let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
                text.push(char::from(b'0' + channel));
                base64::engine::general_purpose::STANDARD.encode_string(&data, &mut text);
                Message::text(text)
            }
            Out::Data(channel, mut data) => {
                data.insert(0, channel);
                Message::Binary(Bytes::from(data))
            }
            Out::Raw(data) => Message::Binary(Bytes::from(data)),
            Out::Close => {
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    })))
                    .await;
                break;
            }
        };
        if sink.send(message).await.is_err() {
            break;
        }
    }
    let _ = closing.send(true);
    let _ = sink.flush().await;
}

async fn read_loop(
    mut stream: futures_util::stream::SplitStream<WebSocketStream<Io>>,
    mut inbound: Inbound,
    closed: watch::Sender<bool>,
    mut closing: watch::Receiver<bool>,
) {
    let grace = async {
        let _ = closing.wait_for(|c| *c).await;
        tokio::time::sleep(CLOSE_GRACE).await;
    };
    tokio::pin!(grace);
    loop {
        let message = tokio::select! {
            m = stream.next() => m,
            () = &mut grace => break,
        };
        let message = match message {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "websocket read");
                break;
            }
            None => break,
        };
        let payload: Vec<u8> = match message {
            Message::Binary(b) => b.to_vec(),
            Message::Text(t) => t.as_bytes().to_vec(),
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        if !deliver(&mut inbound, payload).await {
            break;
        }
    }
    // The client is gone (or done): every channel it wrote ends.
    let _ = closed.send(true);
}

/// Hands a message to its channel; `false` ends the connection (a protocol error).
async fn deliver(inbound: &mut Inbound, payload: Vec<u8>) -> bool {
    match inbound {
        Inbound::Tunnel(pipe) => {
            if let Some(p) = pipe {
                if p.write_all(&payload).await.is_err() {
                    *pipe = None;
                }
            }
            true
        }
        Inbound::Channels {
            pipes,
            base64,
            close_signal,
        } => {
            let Some((&first, rest)) = payload.split_first() else {
                return true;
            };
            if *close_signal && first == STREAM_CLOSE {
                let [channel] = rest else {
                    return false;
                };
                if let Some(pipe) = pipes.get_mut(usize::from(*channel)) {
                    *pipe = None;
                }
                return true;
            }
            let (channel, data) = if *base64 {
                let Some(c) = first.checked_sub(b'0') else {
                    return true;
                };
                match base64::engine::general_purpose::STANDARD.decode(rest) {
                    Ok(d) => (c, d),
                    Err(_) => return false,
                }
            } else {
                (first, rest.to_vec())
            };
            let Some(slot) = pipes.get_mut(usize::from(channel)) else {
                return true;
            };
            if let Some(p) = slot {
                if p.write_all(&data).await.is_err() {
                    *slot = None;
                }
            }
            true
        }
    }
}
