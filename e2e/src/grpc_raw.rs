//! A raw HTTP/2 gRPC client for what tonic cannot send: header blocks written byte by byte
//! (a grpc C-core style `:authority` that `http` refuses to build, literals indexed for later
//! requests) and a `grpc-timeout` the client does not enforce itself (tonic's channel answers
//! `Cancelled` on its own when it passes), so the test sees the daemon's answer.
//!
//! One stream at a time on one connection; the server's header blocks are decoded in order with
//! one HPACK decoder. Every read is bounded by [`CALL_TIMEOUT`].

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest wait for a call's end.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// HPACK representations, written as a client encoder would (no Huffman).
pub mod hpack {
    fn integer(out: &mut Vec<u8>, value: usize, prefix_bits: u8, leading: u8) {
        loona_hpack::encoder::encode_integer_into(value, prefix_bits, leading, out)
            .expect("write to a Vec");
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        integer(out, s.len(), 7, 0);
        out.extend_from_slice(s.as_bytes());
    }

    /// An indexed field (static 1..=61, dynamic from 62, newest first).
    pub fn indexed(out: &mut Vec<u8>, index: usize) {
        integer(out, index, 7, 0x80);
    }

    /// A literal with incremental indexing (it enters the dynamic table), name by index.
    pub fn indexing(out: &mut Vec<u8>, name_index: usize, value: &str) {
        integer(out, name_index, 6, 0x40);
        string(out, value);
    }

    /// A literal with incremental indexing and a new name.
    pub fn indexing_new(out: &mut Vec<u8>, name: &str, value: &str) {
        out.push(0x40);
        string(out, name);
        string(out, value);
    }

    /// Static table indices used by gRPC requests.
    pub const AUTHORITY: usize = 1;
    pub const METHOD_POST: usize = 3;
    pub const PATH: usize = 4;
    pub const SCHEME_HTTP: usize = 6;
    pub const CONTENT_TYPE: usize = 31;
}

/// How a call ended.
#[derive(Debug, Default)]
pub struct Call {
    /// Response headers and trailers, in order.
    pub headers: Vec<(String, String)>,
    /// The response body (gRPC length-prefixed messages).
    pub data: Vec<u8>,
    /// RST_STREAM or GOAWAY error code, if the stream was reset.
    pub reset: Option<u32>,
}

impl Call {
    /// `grpc-status`, if the call got that far.
    pub fn grpc_status(&self) -> Option<i32> {
        self.header("grpc-status").and_then(|s| s.parse().ok())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first response message, decoded.
    pub fn message<M: prost::Message + Default>(&self) -> Option<M> {
        let len = u32::from_be_bytes(self.data.get(1..5)?.try_into().ok()?) as usize;
        M::decode(self.data.get(5..5 + len)?).ok()
    }
}

/// A gRPC length-prefixed message.
pub fn grpc_message(message: &impl prost::Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend(body);
    out
}

/// One HTTP/2 connection to a unix socket.
pub struct Conn {
    stream: UnixStream,
    decoder: loona_hpack::Decoder<'static>,
    next_stream: u32,
}

/// The big-endian u32 at `at`; `u32::MAX` for a payload too short to hold one.
fn be_u32(payload: &[u8], at: usize) -> u32 {
    payload
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(u32::MAX, u32::from_be_bytes)
}

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

impl Conn {
    /// Connects and sends the preface and an empty SETTINGS frame.
    pub async fn connect(socket: &Path) -> Conn {
        let mut stream = UnixStream::connect(socket)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        stream.write_all(&hello).await.expect("write preface");
        Conn {
            stream,
            decoder: loona_hpack::Decoder::new(),
            next_stream: 1,
        }
    }

    /// Sends a request with `header_block` (HPACK, as built with [`hpack`]) and `body`, and
    /// reads until its stream ends.
    pub async fn call(&mut self, header_block: &[u8], body: &[u8]) -> Call {
        let id = self.next_stream;
        self.next_stream += 2;
        let mut out = frame(HEADERS, END_HEADERS, id, header_block);
        out.extend(frame(DATA, END_STREAM, id, body));
        self.stream.write_all(&out).await.expect("write request");
        tokio::time::timeout(CALL_TIMEOUT, self.read_call(id))
            .await
            .unwrap_or_else(|_| panic!("stream {id} did not end within {CALL_TIMEOUT:?}"))
    }

    async fn read_frame(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        let mut head = [0u8; 9];
        self.stream.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        self.stream.read_exact(&mut payload).await.ok()?;
        Some((head[3], head[4], id, payload))
    }

    async fn read_call(&mut self, id: u32) -> Call {
        let mut call = Call::default();
        let mut block: Vec<u8> = Vec::new();
        let mut block_ends_stream = false;
        loop {
            let Some((kind, flags, stream, mut payload)) = self.read_frame().await else {
                call.reset.get_or_insert(u32::MAX);
                return call;
            };
            if (kind == DATA || kind == HEADERS) && flags & PADDED != 0 {
                let pad = usize::from(payload.first().copied().unwrap_or(0));
                let end = payload.len().saturating_sub(pad);
                payload = payload.get(1..end).unwrap_or_default().to_vec();
            }
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    let ack = frame(SETTINGS, ACK, 0, &[]);
                    self.stream.write_all(&ack).await.expect("ack settings");
                }
                PING if flags & ACK == 0 => {
                    let pong = frame(PING, ACK, 0, &payload);
                    self.stream.write_all(&pong).await.expect("answer ping");
                }
                GOAWAY => {
                    call.reset = Some(be_u32(&payload, 4));
                    return call;
                }
                RST_STREAM if stream == id => {
                    call.reset = Some(be_u32(&payload, 0));
                    return call;
                }
                HEADERS | CONTINUATION => {
                    if kind == HEADERS {
                        if flags & PRIORITY != 0 {
                            payload.drain(..payload.len().min(5));
                        }
                        block_ends_stream = flags & END_STREAM != 0;
                    }
                    block.extend(payload);
                    if flags & END_HEADERS != 0 {
                        let headers = self
                            .decoder
                            .decode(&block)
                            .expect("decode response headers");
                        block.clear();
                        if stream == id {
                            call.headers.extend(headers.into_iter().map(|(n, v)| {
                                (
                                    String::from_utf8_lossy(&n).into_owned(),
                                    String::from_utf8_lossy(&v).into_owned(),
                                )
                            }));
                            if block_ends_stream {
                                return call;
                            }
                        }
                    }
                }
                DATA if stream == id => {
                    call.data.extend(payload);
                    if flags & END_STREAM != 0 {
                        return call;
                    }
                }
                _ => {}
            }
        }
    }
}

/// A gRPC request header block as grpc C-core writes its first one on a connection: method and
/// scheme from the static table, then `:path`, `:authority`, `content-type` and `te` as
/// literals with incremental indexing (later requests refer to them in the dynamic table), and
/// `extra` headers (new names, indexed too).
pub fn c_core_block(path: &str, authority: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    hpack::indexed(&mut b, hpack::METHOD_POST);
    hpack::indexed(&mut b, hpack::SCHEME_HTTP);
    hpack::indexing(&mut b, hpack::PATH, path);
    hpack::indexing(&mut b, hpack::AUTHORITY, authority);
    hpack::indexing(&mut b, hpack::CONTENT_TYPE, "application/grpc");
    hpack::indexing_new(&mut b, "te", "trailers");
    for (name, value) in extra {
        hpack::indexing_new(&mut b, name, value);
    }
    b
}
