//! Accepts any HTTP/2 `:authority` on the CRI unix socket.
//!
//! gRPC C-core clients (Python `grpcio` since 1.57, Ruby, C++, C#) send the percent-encoded
//! socket path (`%2Frun%2Fcrius%2Fcrius.sock`) as `:authority` for `unix:` targets, grpc-java the
//! plain path. `h2`, under tonic, refuses both while it decodes the HEADERS frame and resets the
//! stream with PROTOCOL_ERROR (hyperium/h2#487), before any tower layer could see the request;
//! containerd and CRI-O accept them. On a unix socket the authority names nothing (the socket
//! already is the peer), so [`AuthorityFix`] sits between the accepted stream and hyper and
//! rewrites every header block the client sends: it decodes it (HPACK, with the client's dynamic
//! table), replaces an `:authority` that is not a valid URI authority by `localhost`, and
//! re-encodes the block with literals only, never indexed, so the server's decoder table stays
//! empty and cannot disagree with anything. Everything else (the preface, DATA, SETTINGS, ...)
//! passes through unchanged, and the server's bytes are not touched.
//!
//! A header block that does not decode, or breaks the framing rules, switches the connection to
//! plain pass-through: h2 then sees the client's bytes as sent and answers the protocol error
//! itself. Header blocks are bounded by [`MAX_HEADER_BLOCK`]. Must not interpret requests.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http::uri::Authority;
use tonic::transport::server::Connected;

/// The client connection preface, passed through as is.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Largest frame payload every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE minimum).
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// Largest header block (all its frames) that is rewritten; a larger one passes through, and
/// hyper refuses it for its size anyway.
pub const MAX_HEADER_BLOCK: usize = 256 << 10;
/// What replaces an invalid authority.
const REPLACEMENT: &[u8] = b"localhost";

/// A header block being collected: a HEADERS frame and its CONTINUATIONs.
struct Block {
    stream_id: u32,
    end_stream: bool,
    /// The PRIORITY fields of the HEADERS frame (stream dependency and weight), if present.
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as received, for pass-through after an error.
    raw: Vec<u8>,
}

/// The client → server byte stream rewriter (see the module doc).
struct Rewriter {
    /// Received, not yet processed.
    input: Vec<u8>,
    /// Processed, not yet handed to hyper.
    output: Vec<u8>,
    /// Bytes of the preface still to pass through.
    preface_left: usize,
    /// Payload bytes of a frame being passed through as they arrive.
    forward_left: usize,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    /// After an error: everything passes through as is.
    passthrough: bool,
}

impl Rewriter {
    fn new() -> Rewriter {
        Rewriter {
            input: Vec::new(),
            output: Vec::new(),
            preface_left: PREFACE_LEN,
            forward_left: 0,
            block: None,
            decoder: loona_hpack::Decoder::new(),
            passthrough: false,
        }
    }

    /// Moves everything that can be processed from `input` to `output`.
    fn process(&mut self) {
        loop {
            if self.passthrough {
                self.output.append(&mut self.input);
                return;
            }
            if self.preface_left > 0 || self.forward_left > 0 {
                let left = self.preface_left.max(self.forward_left);
                let n = left.min(self.input.len());
                self.output.extend(self.input.drain(..n));
                if self.preface_left > 0 {
                    self.preface_left -= n;
                } else {
                    self.forward_left -= n;
                }
                if n < left {
                    return;
                }
                continue;
            }
            if self.input.len() < FRAME_HEADER_LEN {
                return;
            }
            let len = usize::from(self.input[0]) << 16
                | usize::from(self.input[1]) << 8
                | usize::from(self.input[2]);
            let kind = self.input[3];
            let flags = self.input[4];
            let stream_id =
                u32::from_be_bytes([self.input[5], self.input[6], self.input[7], self.input[8]])
                    & 0x7fff_ffff;
            if kind != HEADERS && kind != CONTINUATION {
                if self.block.is_some() {
                    // Only CONTINUATION may follow an unfinished block: h2 says so itself.
                    self.give_up("a frame interrupts a header block");
                    continue;
                }
                self.output.extend(self.input.drain(..FRAME_HEADER_LEN));
                self.forward_left = len;
                continue;
            }
            let collected = self.block.as_ref().map_or(0, |b| b.raw.len());
            if collected + FRAME_HEADER_LEN + len > MAX_HEADER_BLOCK {
                self.give_up("header block too large to rewrite");
                continue;
            }
            if self.input.len() < FRAME_HEADER_LEN + len {
                return;
            }
            let frame: Vec<u8> = self.input.drain(..FRAME_HEADER_LEN + len).collect();
            if let Err(why) = self.frame(kind, flags, stream_id, &frame) {
                // What was held back, then this frame, then everything as it comes.
                self.give_up(why);
                self.output.extend_from_slice(&frame);
            }
        }
    }

    /// One HEADERS or CONTINUATION frame. On an error, `frame` is in no held block.
    fn frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream_id: u32,
        frame: &[u8],
    ) -> Result<(), &'static str> {
        let payload = &frame[FRAME_HEADER_LEN..];
        let block = match (kind, self.block.take()) {
            (HEADERS, None) => {
                let mut body = payload;
                let mut pad = 0;
                if flags & PADDED != 0 {
                    let (&n, rest) = body.split_first().ok_or("padded frame without a length")?;
                    pad = usize::from(n);
                    body = rest;
                }
                let mut priority = None;
                if flags & PRIORITY != 0 {
                    let fields = body.get(..5).ok_or("short priority fields")?;
                    priority = Some(fields.try_into().map_err(|_| "short priority fields")?);
                    body = &body[5..];
                }
                let end = body
                    .len()
                    .checked_sub(pad)
                    .ok_or("padding exceeds the frame")?;
                Block {
                    stream_id,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    fragment: body[..end].to_vec(),
                    raw: Vec::new(),
                }
            }
            (CONTINUATION, Some(mut block)) if block.stream_id == stream_id => {
                block.fragment.extend_from_slice(payload);
                block
            }
            (_, Some(block)) => {
                self.block = Some(block);
                return Err("another header block interrupts this one");
            }
            _ => return Err("CONTINUATION without a header block"),
        };
        let mut block = block;
        if flags & END_HEADERS == 0 {
            block.raw.extend_from_slice(frame);
            self.block = Some(block);
            return Ok(());
        }
        match self.decoder.decode(&block.fragment) {
            Ok(headers) => {
                let fragment = encode(&fix_authority(headers));
                write_block(&mut self.output, &block, &fragment);
                Ok(())
            }
            Err(_) => {
                self.block = Some(block);
                Err("header block does not decode")
            }
        }
    }

    /// Switches to pass-through: what is held back goes out as received.
    fn give_up(&mut self, why: &'static str) {
        tracing::debug!(
            reason = why,
            "cri socket: http/2 authority rewriting stopped"
        );
        if let Some(block) = self.block.take() {
            self.output.extend_from_slice(&block.raw);
        }
        self.passthrough = true;
    }
}

/// Replaces an `:authority` that `http` refuses (and so h2) by `localhost`.
fn fix_authority(mut headers: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    for (name, value) in &mut headers {
        if name.as_slice() == b":authority" && Authority::try_from(value.as_slice()).is_err() {
            *value = REPLACEMENT.to_vec();
        }
    }
    headers
}

/// HPACK literals without indexing, new names, no Huffman: the server's table stays empty.
fn encode(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        for s in [name, value] {
            // Writing to a Vec cannot fail.
            let _ = loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, &mut out);
            out.extend_from_slice(s);
        }
    }
    out
}

/// A HEADERS frame (with the block's END_STREAM and priority) and CONTINUATIONs for `fragment`.
fn write_block(out: &mut Vec<u8>, block: &Block, fragment: &[u8]) {
    let first_room = MAX_FRAME_PAYLOAD - if block.priority.is_some() { 5 } else { 0 };
    let (first, mut rest) = fragment.split_at(fragment.len().min(first_room));
    let mut flags = if block.end_stream { END_STREAM } else { 0 };
    if block.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
    frame_header(
        out,
        priority.len() + first.len(),
        HEADERS,
        flags,
        block.stream_id,
    );
    out.extend_from_slice(priority);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
        let flags = if after.is_empty() { END_HEADERS } else { 0 };
        frame_header(out, chunk.len(), CONTINUATION, flags, block.stream_id);
        out.extend_from_slice(chunk);
        rest = after;
    }
}

fn frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream_id: u32) {
    // `len` is at most MAX_FRAME_PAYLOAD, well inside 24 bits.
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
}

/// An accepted CRI connection whose client header blocks are rewritten (see the module doc).
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> AuthorityFix<S> {
        AuthorityFix {
            inner,
            rewriter: Rewriter::new(),
            eof: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let out = &mut this.rewriter.output;
            if !out.is_empty() {
                let n = out.len().min(buf.remaining());
                buf.put_slice(&out[..n]);
                out.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // The peer is gone: what is held back (a partial frame) goes out as it came.
                this.eof = true;
                let r = &mut this.rewriter;
                if r.block.is_some() || !r.input.is_empty() {
                    r.give_up("the connection ended inside a frame");
                    r.process();
                }
                continue;
            }
            this.rewriter.input.extend_from_slice(read.filled());
            this.rewriter.process();
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame_header(&mut out, payload.len(), kind, flags, stream_id);
        out.extend_from_slice(payload);
        out
    }

    fn string(out: &mut Vec<u8>, s: &[u8]) {
        loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out).unwrap();
        out.extend_from_slice(s);
    }

    /// What grpc C-core sends first: `:authority` (static name 1) and `:path` (4) as literals
    /// with incremental indexing, so that later requests index them in the dynamic table.
    fn c_core_first_block(authority: &[u8]) -> Vec<u8> {
        let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
        b.push(0x44); // :path, indexed name, incremental indexing
        string(&mut b, b"/runtime.v1.RuntimeService/Version");
        b.push(0x41); // :authority
        string(&mut b, authority);
        b.push(0x40); // te: trailers, new name
        string(&mut b, b"te");
        string(&mut b, b"trailers");
        b
    }

    /// The second request: everything from the dynamic table (te 62, :authority 63, :path 64).
    const C_CORE_SECOND_BLOCK: [u8; 5] = [0x83, 0x86, 0x80 | 64, 0x80 | 63, 0x80 | 62];

    /// Frames (kind, flags, stream, payload) of a byte stream after the preface.
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let id = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            out.push((bytes[3], bytes[4], id, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }

    async fn rewrite(input: Vec<u8>) -> Vec<u8> {
        // Small reads: frames arrive split at every byte boundary the reader happens to pick.
        let mut fix = AuthorityFix::new(tokio_test_reader(input));
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.unwrap();
        out
    }

    /// A reader that returns at most 7 bytes per read.
    fn tokio_test_reader(data: Vec<u8>) -> impl AsyncRead + Unpin {
        struct Trickle(Vec<u8>, usize);
        impl AsyncRead for Trickle {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                let start = self.1;
                let n = (self.0.len() - start).min(7).min(buf.remaining());
                buf.put_slice(&self.0[start..start + n]);
                self.1 += n;
                Poll::Ready(Ok(()))
            }
        }
        Trickle(data, 0)
    }

    fn decode_all(blocks: &[Vec<u8>]) -> Vec<Vec<(String, String)>> {
        let mut d = loona_hpack::Decoder::new();
        blocks
            .iter()
            .map(|b| {
                d.decode(b)
                    .unwrap()
                    .into_iter()
                    .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                    .collect()
            })
            .collect()
    }

    /// Issue 11 item 5: grpc C-core's `:authority` for unix targets made h2 reset every stream.
    #[tokio::test]
    async fn c_core_authorities_become_localhost_and_later_indexed_requests_follow() {
        for authority in [
            &b"%2Frun%2Fcrius%2Fcrius.sock"[..],
            b"/run/crius/crius.sock",
            b"unix:/x",
        ] {
            let mut input = PREFACE.to_vec();
            input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
                                                 // The first block split over HEADERS (padded, with priority) and a CONTINUATION.
            let first = c_core_first_block(authority);
            let (a, b) = first.split_at(10);
            let mut payload = vec![3u8]; // pad length
            payload.extend_from_slice(&[0, 0, 0, 0, 15]); // priority
            payload.extend_from_slice(a);
            payload.extend_from_slice(&[0, 0, 0]);
            input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &payload));
            input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
            input.extend(frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0])); // DATA
            input.extend(frame(HEADERS, END_HEADERS, 3, &C_CORE_SECOND_BLOCK));
            input.extend(frame(0x0, END_STREAM, 3, &[0, 0, 0, 0, 0]));

            let out = rewrite(input).await;
            assert_eq!(&out[..PREFACE_LEN], PREFACE);
            let got = frames(&out[PREFACE_LEN..]);
            let kinds: Vec<_> = got.iter().map(|f| (f.0, f.1, f.2)).collect();
            assert_eq!(
                kinds,
                [
                    (0x4, 0, 0),
                    (HEADERS, PRIORITY | END_HEADERS, 1),
                    (0x0, END_STREAM, 1),
                    (HEADERS, END_HEADERS, 3),
                    (0x0, END_STREAM, 3),
                ]
            );
            assert_eq!(&got[1].3[..5], &[0, 0, 0, 0, 15]);
            assert_eq!(got[2].3, [0, 0, 0, 0, 0]);
            let blocks = decode_all(&[got[1].3[5..].to_vec(), got[3].3.clone()]);
            for headers in &blocks {
                let pairs: Vec<_> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                assert_eq!(
                    pairs,
                    [
                        (":method", "POST"),
                        (":scheme", "http"),
                        (":path", "/runtime.v1.RuntimeService/Version"),
                        (":authority", "localhost"),
                        ("te", "trailers"),
                    ]
                );
            }
        }
    }

    #[tokio::test]
    async fn valid_authorities_are_kept_and_large_blocks_are_split() {
        let mut input = PREFACE.to_vec();
        let mut block = c_core_first_block(b"localhost:50051");
        block.push(0x00);
        string(&mut block, b"x-big");
        string(&mut block, &vec![b'a'; 40_000]);
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
        let out = rewrite(input).await;
        let got = frames(&out[PREFACE_LEN..]);
        let kinds: Vec<_> = got.iter().map(|f| (f.0, f.1)).collect();
        assert_eq!(
            kinds,
            [
                (HEADERS, END_STREAM),
                (CONTINUATION, 0),
                (CONTINUATION, END_HEADERS)
            ]
        );
        assert!(got.iter().all(|f| f.3.len() <= MAX_FRAME_PAYLOAD));
        let fragment: Vec<u8> = got.iter().flat_map(|f| f.3.clone()).collect();
        let headers = &decode_all(&[fragment])[0];
        assert!(headers.contains(&(":authority".into(), "localhost:50051".into())));
        assert_eq!(headers.last().unwrap().1.len(), 40_000);
    }

    #[tokio::test]
    async fn broken_streams_pass_through_unchanged() {
        // A block that does not decode (index 99 is in no table), then more frames.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &[0x80 | 99]));
        input.extend(frame(0x0, END_STREAM, 1, b"abc"));
        assert_eq!(rewrite(input.clone()).await, input);
        // A DATA frame inside a header block.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0x83]));
        input.extend(frame(0x0, 0, 1, b"abc"));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &[0x86]));
        assert_eq!(rewrite(input.clone()).await, input);
        // A truncated frame at the end of the stream.
        let mut input = PREFACE.to_vec();
        input.extend(&frame(HEADERS, END_HEADERS, 1, &[0x83, 0x86])[..5]);
        assert_eq!(rewrite(input.clone()).await, input);
        // A block over the limit.
        let mut input = PREFACE.to_vec();
        let big = vec![0u8; MAX_HEADER_BLOCK];
        let mut payload = Vec::new();
        for chunk in big.chunks(MAX_FRAME_PAYLOAD) {
            payload.extend(frame(CONTINUATION, 0, 1, chunk));
        }
        let mut all = frame(HEADERS, 0, 1, &[0x83]);
        all.extend(payload);
        input.extend(&all);
        assert_eq!(rewrite(input.clone()).await, input);
    }
}
