//! SPDY/3.1 framing and connections, as Kubernetes streaming speaks them.
//!
//! Exec, Attach and PortForward clients (kubelet's proxy, client-go, crictl) upgrade an HTTP/1.1
//! connection to `SPDY/3.1` and then speak SPDY/3 frames as Go's `moby/spdystream` writes them.
//! This module owns the wire format (control and data frames, the name/value header block, its
//! zlib compression with the SPDY/3 dictionary, one zlib stream per direction per connection) and
//! a [`Connection`]: a reader task and a writer task over the upgraded byte stream, the stream
//! table, PING replies and GOAWAY. It must not do the HTTP upgrade, interpret stream headers
//! (`streamtype`, `port`, ...) or know about containers: that is `remotecommand` / `portforward`.
//!
//! What a Go peer expects, and what we therefore do (from spdystream's `connection.go`):
//! - The server answers every SYN_STREAM with a SYN_REPLY (empty headers) before using the stream;
//!   spdystream drops DATA for a stream it opened until that reply arrived. Stream ids must grow:
//!   a SYN_STREAM whose id is not above the last one is answered with RST_STREAM(PROTOCOL_ERROR).
//! - No flow control: spdystream never sends WINDOW_UPDATE and ignores the ones it receives
//!   (and SETTINGS), writing DATA frames as fast as TCP takes them. So do we: WINDOW_UPDATE and
//!   SETTINGS are read and ignored, never sent. Back-pressure is TCP's: when a stream's reader is
//!   slow, its bounded buffer fills and the reader task stops reading the socket.
//! - PING: a ping whose id has the peer's parity (client odd, server even) is echoed as is; one
//!   with ours answers [`Connection::ping`]. client-go pings every few seconds.
//! - GOAWAY ends the connection (spdystream stops reading at once); [`Connection::close`] sends
//!   GOAWAY(OK) with the last stream id we accepted, after every frame queued before it.
//! - DATA for a stream that was closed or reset is dropped silently (as spdystream does); DATA for
//!   an id that was never opened is answered with RST_STREAM(INVALID_STREAM), as the spec asks.
//! - Header names go out lowercased, repeated names joined by NUL into one value (spdystream's
//!   `http.Header` encoding); incoming values are split on NUL again.
//!
//! Bounds (peer input never panics, never buffers without limit): control frames over 1 MiB, a
//! header block inflating past 1 MiB, bad counts or lengths are protocol errors that end the
//! connection (after a GOAWAY(PROTOCOL_ERROR)); each stream buffers at most 16 chunks of 32 KiB;
//! the outgoing queue holds at most 32 DATA frames of at most 32 KiB, then writers wait.
//!
//! For users: without flow control, a stream whose buffer is full stops the whole connection's
//! reading (replies, pings and other streams included) until it is read, as in spdystream; so
//! read every stream you keep, or drop its reader (its data is then discarded). Dropping every
//! handle of a stream we have not half-closed sends RST_STREAM(CANCEL); shut the writer down
//! first for a clean end.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::error::ErrorKind;

/// Header name/value pairs; names are lowercase.
pub type Headers = Vec<(String, String)>;

/// The SPDY version we speak (and the only one spdystream speaks).
const VERSION: u16 = 3;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// FLAG_FIN of data frames and of SYN_STREAM / SYN_REPLY / HEADERS.
const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL of SYN_STREAM: the opener will not receive on the stream.
const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes (SPDY/3 section 2.6.3).
const RST_PROTOCOL_ERROR: u32 = 1;
const RST_INVALID_STREAM: u32 = 2;
const RST_REFUSED_STREAM: u32 = 3;
const RST_CANCEL: u32 = 5;

/// GOAWAY status codes.
const GOAWAY_OK: u32 = 0;
const GOAWAY_PROTOCOL_ERROR: u32 = 1;

/// Stream ids are 31 bits.
const MAX_STREAM_ID: u32 = 0x7fff_ffff;
/// The 24-bit length field's maximum.
const MAX_FRAME_LEN: usize = (1 << 24) - 1;
/// Largest control frame we accept (they carry only header blocks; spdystream's are tiny).
const MAX_CONTROL_FRAME: usize = 1 << 20;
/// Largest inflated header block we accept.
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Largest DATA payload we write, and the chunk size incoming DATA is buffered in.
const MAX_DATA_CHUNK: usize = 32 << 10;
/// Chunks buffered per incoming stream before the reader task stops reading the socket.
const STREAM_BUFFER_CHUNKS: usize = 16;
/// DATA frames queued for the writer task (all streams together) before writers wait.
const WRITE_QUEUE_FRAMES: usize = 32;
/// Frames the peer makes us send (PING echoes, SYN_REPLY, RST) queued before we stop reading.
const PEER_CONTROL_QUEUE: usize = 64;
/// Streams opened by the peer and not yet taken from the receiver; more are refused.
const INCOMING_STREAMS: usize = 32;
/// How long `close` waits for the queued frames and the GOAWAY to be written.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// After our GOAWAY, how long we keep draining the socket so that closing it does not reset
/// the connection under data the peer has not read yet.
const LINGER: Duration = Duration::from_secs(1);
/// Bytes the writer task gathers before one write to the socket.
const WRITE_BATCH: usize = 64 << 10;

/// The SPDY/3 header compression dictionary (SPDY/3 draft section 2.6.10.1), byte for byte as
/// in spdystream's `spdy/dictionary.go`. Its Adler-32 is [`DICTIONARY_ADLER32`].
#[rustfmt::skip]
const DICTIONARY: [u8; 1423] = [
    0x00, 0x00, 0x00, 0x07, 0x6f, 0x70, 0x74, 0x69, 0x6f, 0x6e, 0x73, 0x00, 0x00, 0x00, 0x04, 0x68,
    0x65, 0x61, 0x64, 0x00, 0x00, 0x00, 0x04, 0x70, 0x6f, 0x73, 0x74, 0x00, 0x00, 0x00, 0x03, 0x70,
    0x75, 0x74, 0x00, 0x00, 0x00, 0x06, 0x64, 0x65, 0x6c, 0x65, 0x74, 0x65, 0x00, 0x00, 0x00, 0x05,
    0x74, 0x72, 0x61, 0x63, 0x65, 0x00, 0x00, 0x00, 0x06, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x00,
    0x00, 0x00, 0x0e, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x2d, 0x63, 0x68, 0x61, 0x72, 0x73, 0x65,
    0x74, 0x00, 0x00, 0x00, 0x0f, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x2d, 0x65, 0x6e, 0x63, 0x6f,
    0x64, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x0f, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x2d, 0x6c,
    0x61, 0x6e, 0x67, 0x75, 0x61, 0x67, 0x65, 0x00, 0x00, 0x00, 0x0d, 0x61, 0x63, 0x63, 0x65, 0x70,
    0x74, 0x2d, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x73, 0x00, 0x00, 0x00, 0x03, 0x61, 0x67, 0x65, 0x00,
    0x00, 0x00, 0x05, 0x61, 0x6c, 0x6c, 0x6f, 0x77, 0x00, 0x00, 0x00, 0x0d, 0x61, 0x75, 0x74, 0x68,
    0x6f, 0x72, 0x69, 0x7a, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x0d, 0x63, 0x61, 0x63,
    0x68, 0x65, 0x2d, 0x63, 0x6f, 0x6e, 0x74, 0x72, 0x6f, 0x6c, 0x00, 0x00, 0x00, 0x0a, 0x63, 0x6f,
    0x6e, 0x6e, 0x65, 0x63, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x0c, 0x63, 0x6f, 0x6e, 0x74,
    0x65, 0x6e, 0x74, 0x2d, 0x62, 0x61, 0x73, 0x65, 0x00, 0x00, 0x00, 0x10, 0x63, 0x6f, 0x6e, 0x74,
    0x65, 0x6e, 0x74, 0x2d, 0x65, 0x6e, 0x63, 0x6f, 0x64, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x10,
    0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x2d, 0x6c, 0x61, 0x6e, 0x67, 0x75, 0x61, 0x67, 0x65,
    0x00, 0x00, 0x00, 0x0e, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x2d, 0x6c, 0x65, 0x6e, 0x67,
    0x74, 0x68, 0x00, 0x00, 0x00, 0x10, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x2d, 0x6c, 0x6f,
    0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x0b, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e,
    0x74, 0x2d, 0x6d, 0x64, 0x35, 0x00, 0x00, 0x00, 0x0d, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74,
    0x2d, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x00, 0x00, 0x00, 0x0c, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e,
    0x74, 0x2d, 0x74, 0x79, 0x70, 0x65, 0x00, 0x00, 0x00, 0x04, 0x64, 0x61, 0x74, 0x65, 0x00, 0x00,
    0x00, 0x04, 0x65, 0x74, 0x61, 0x67, 0x00, 0x00, 0x00, 0x06, 0x65, 0x78, 0x70, 0x65, 0x63, 0x74,
    0x00, 0x00, 0x00, 0x07, 0x65, 0x78, 0x70, 0x69, 0x72, 0x65, 0x73, 0x00, 0x00, 0x00, 0x04, 0x66,
    0x72, 0x6f, 0x6d, 0x00, 0x00, 0x00, 0x04, 0x68, 0x6f, 0x73, 0x74, 0x00, 0x00, 0x00, 0x08, 0x69,
    0x66, 0x2d, 0x6d, 0x61, 0x74, 0x63, 0x68, 0x00, 0x00, 0x00, 0x11, 0x69, 0x66, 0x2d, 0x6d, 0x6f,
    0x64, 0x69, 0x66, 0x69, 0x65, 0x64, 0x2d, 0x73, 0x69, 0x6e, 0x63, 0x65, 0x00, 0x00, 0x00, 0x0d,
    0x69, 0x66, 0x2d, 0x6e, 0x6f, 0x6e, 0x65, 0x2d, 0x6d, 0x61, 0x74, 0x63, 0x68, 0x00, 0x00, 0x00,
    0x08, 0x69, 0x66, 0x2d, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x00, 0x00, 0x00, 0x13, 0x69, 0x66, 0x2d,
    0x75, 0x6e, 0x6d, 0x6f, 0x64, 0x69, 0x66, 0x69, 0x65, 0x64, 0x2d, 0x73, 0x69, 0x6e, 0x63, 0x65,
    0x00, 0x00, 0x00, 0x0d, 0x6c, 0x61, 0x73, 0x74, 0x2d, 0x6d, 0x6f, 0x64, 0x69, 0x66, 0x69, 0x65,
    0x64, 0x00, 0x00, 0x00, 0x08, 0x6c, 0x6f, 0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00,
    0x0c, 0x6d, 0x61, 0x78, 0x2d, 0x66, 0x6f, 0x72, 0x77, 0x61, 0x72, 0x64, 0x73, 0x00, 0x00, 0x00,
    0x06, 0x70, 0x72, 0x61, 0x67, 0x6d, 0x61, 0x00, 0x00, 0x00, 0x12, 0x70, 0x72, 0x6f, 0x78, 0x79,
    0x2d, 0x61, 0x75, 0x74, 0x68, 0x65, 0x6e, 0x74, 0x69, 0x63, 0x61, 0x74, 0x65, 0x00, 0x00, 0x00,
    0x13, 0x70, 0x72, 0x6f, 0x78, 0x79, 0x2d, 0x61, 0x75, 0x74, 0x68, 0x6f, 0x72, 0x69, 0x7a, 0x61,
    0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x05, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x00, 0x00, 0x00,
    0x07, 0x72, 0x65, 0x66, 0x65, 0x72, 0x65, 0x72, 0x00, 0x00, 0x00, 0x0b, 0x72, 0x65, 0x74, 0x72,
    0x79, 0x2d, 0x61, 0x66, 0x74, 0x65, 0x72, 0x00, 0x00, 0x00, 0x06, 0x73, 0x65, 0x72, 0x76, 0x65,
    0x72, 0x00, 0x00, 0x00, 0x02, 0x74, 0x65, 0x00, 0x00, 0x00, 0x07, 0x74, 0x72, 0x61, 0x69, 0x6c,
    0x65, 0x72, 0x00, 0x00, 0x00, 0x11, 0x74, 0x72, 0x61, 0x6e, 0x73, 0x66, 0x65, 0x72, 0x2d, 0x65,
    0x6e, 0x63, 0x6f, 0x64, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x07, 0x75, 0x70, 0x67, 0x72, 0x61,
    0x64, 0x65, 0x00, 0x00, 0x00, 0x0a, 0x75, 0x73, 0x65, 0x72, 0x2d, 0x61, 0x67, 0x65, 0x6e, 0x74,
    0x00, 0x00, 0x00, 0x04, 0x76, 0x61, 0x72, 0x79, 0x00, 0x00, 0x00, 0x03, 0x76, 0x69, 0x61, 0x00,
    0x00, 0x00, 0x07, 0x77, 0x61, 0x72, 0x6e, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x10, 0x77, 0x77,
    0x77, 0x2d, 0x61, 0x75, 0x74, 0x68, 0x65, 0x6e, 0x74, 0x69, 0x63, 0x61, 0x74, 0x65, 0x00, 0x00,
    0x00, 0x06, 0x6d, 0x65, 0x74, 0x68, 0x6f, 0x64, 0x00, 0x00, 0x00, 0x03, 0x67, 0x65, 0x74, 0x00,
    0x00, 0x00, 0x06, 0x73, 0x74, 0x61, 0x74, 0x75, 0x73, 0x00, 0x00, 0x00, 0x06, 0x32, 0x30, 0x30,
    0x20, 0x4f, 0x4b, 0x00, 0x00, 0x00, 0x07, 0x76, 0x65, 0x72, 0x73, 0x69, 0x6f, 0x6e, 0x00, 0x00,
    0x00, 0x08, 0x48, 0x54, 0x54, 0x50, 0x2f, 0x31, 0x2e, 0x31, 0x00, 0x00, 0x00, 0x03, 0x75, 0x72,
    0x6c, 0x00, 0x00, 0x00, 0x06, 0x70, 0x75, 0x62, 0x6c, 0x69, 0x63, 0x00, 0x00, 0x00, 0x0a, 0x73,
    0x65, 0x74, 0x2d, 0x63, 0x6f, 0x6f, 0x6b, 0x69, 0x65, 0x00, 0x00, 0x00, 0x0a, 0x6b, 0x65, 0x65,
    0x70, 0x2d, 0x61, 0x6c, 0x69, 0x76, 0x65, 0x00, 0x00, 0x00, 0x06, 0x6f, 0x72, 0x69, 0x67, 0x69,
    0x6e, 0x31, 0x30, 0x30, 0x31, 0x30, 0x31, 0x32, 0x30, 0x31, 0x32, 0x30, 0x32, 0x32, 0x30, 0x35,
    0x32, 0x30, 0x36, 0x33, 0x30, 0x30, 0x33, 0x30, 0x32, 0x33, 0x30, 0x33, 0x33, 0x30, 0x34, 0x33,
    0x30, 0x35, 0x33, 0x30, 0x36, 0x33, 0x30, 0x37, 0x34, 0x30, 0x32, 0x34, 0x30, 0x35, 0x34, 0x30,
    0x36, 0x34, 0x30, 0x37, 0x34, 0x30, 0x38, 0x34, 0x30, 0x39, 0x34, 0x31, 0x30, 0x34, 0x31, 0x31,
    0x34, 0x31, 0x32, 0x34, 0x31, 0x33, 0x34, 0x31, 0x34, 0x34, 0x31, 0x35, 0x34, 0x31, 0x36, 0x34,
    0x31, 0x37, 0x35, 0x30, 0x32, 0x35, 0x30, 0x34, 0x35, 0x30, 0x35, 0x32, 0x30, 0x33, 0x20, 0x4e,
    0x6f, 0x6e, 0x2d, 0x41, 0x75, 0x74, 0x68, 0x6f, 0x72, 0x69, 0x74, 0x61, 0x74, 0x69, 0x76, 0x65,
    0x20, 0x49, 0x6e, 0x66, 0x6f, 0x72, 0x6d, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x32, 0x30, 0x34, 0x20,
    0x4e, 0x6f, 0x20, 0x43, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x33, 0x30, 0x31, 0x20, 0x4d, 0x6f,
    0x76, 0x65, 0x64, 0x20, 0x50, 0x65, 0x72, 0x6d, 0x61, 0x6e, 0x65, 0x6e, 0x74, 0x6c, 0x79, 0x34,
    0x30, 0x30, 0x20, 0x42, 0x61, 0x64, 0x20, 0x52, 0x65, 0x71, 0x75, 0x65, 0x73, 0x74, 0x34, 0x30,
    0x31, 0x20, 0x55, 0x6e, 0x61, 0x75, 0x74, 0x68, 0x6f, 0x72, 0x69, 0x7a, 0x65, 0x64, 0x34, 0x30,
    0x33, 0x20, 0x46, 0x6f, 0x72, 0x62, 0x69, 0x64, 0x64, 0x65, 0x6e, 0x34, 0x30, 0x34, 0x20, 0x4e,
    0x6f, 0x74, 0x20, 0x46, 0x6f, 0x75, 0x6e, 0x64, 0x35, 0x30, 0x30, 0x20, 0x49, 0x6e, 0x74, 0x65,
    0x72, 0x6e, 0x61, 0x6c, 0x20, 0x53, 0x65, 0x72, 0x76, 0x65, 0x72, 0x20, 0x45, 0x72, 0x72, 0x6f,
    0x72, 0x35, 0x30, 0x31, 0x20, 0x4e, 0x6f, 0x74, 0x20, 0x49, 0x6d, 0x70, 0x6c, 0x65, 0x6d, 0x65,
    0x6e, 0x74, 0x65, 0x64, 0x35, 0x30, 0x33, 0x20, 0x53, 0x65, 0x72, 0x76, 0x69, 0x63, 0x65, 0x20,
    0x55, 0x6e, 0x61, 0x76, 0x61, 0x69, 0x6c, 0x61, 0x62, 0x6c, 0x65, 0x4a, 0x61, 0x6e, 0x20, 0x46,
    0x65, 0x62, 0x20, 0x4d, 0x61, 0x72, 0x20, 0x41, 0x70, 0x72, 0x20, 0x4d, 0x61, 0x79, 0x20, 0x4a,
    0x75, 0x6e, 0x20, 0x4a, 0x75, 0x6c, 0x20, 0x41, 0x75, 0x67, 0x20, 0x53, 0x65, 0x70, 0x74, 0x20,
    0x4f, 0x63, 0x74, 0x20, 0x4e, 0x6f, 0x76, 0x20, 0x44, 0x65, 0x63, 0x20, 0x30, 0x30, 0x3a, 0x30,
    0x30, 0x3a, 0x30, 0x30, 0x20, 0x4d, 0x6f, 0x6e, 0x2c, 0x20, 0x54, 0x75, 0x65, 0x2c, 0x20, 0x57,
    0x65, 0x64, 0x2c, 0x20, 0x54, 0x68, 0x75, 0x2c, 0x20, 0x46, 0x72, 0x69, 0x2c, 0x20, 0x53, 0x61,
    0x74, 0x2c, 0x20, 0x53, 0x75, 0x6e, 0x2c, 0x20, 0x47, 0x4d, 0x54, 0x63, 0x68, 0x75, 0x6e, 0x6b,
    0x65, 0x64, 0x2c, 0x74, 0x65, 0x78, 0x74, 0x2f, 0x68, 0x74, 0x6d, 0x6c, 0x2c, 0x69, 0x6d, 0x61,
    0x67, 0x65, 0x2f, 0x70, 0x6e, 0x67, 0x2c, 0x69, 0x6d, 0x61, 0x67, 0x65, 0x2f, 0x6a, 0x70, 0x67,
    0x2c, 0x69, 0x6d, 0x61, 0x67, 0x65, 0x2f, 0x67, 0x69, 0x66, 0x2c, 0x61, 0x70, 0x70, 0x6c, 0x69,
    0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x2f, 0x78, 0x6d, 0x6c, 0x2c, 0x61, 0x70, 0x70, 0x6c, 0x69,
    0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x2f, 0x78, 0x68, 0x74, 0x6d, 0x6c, 0x2b, 0x78, 0x6d, 0x6c,
    0x2c, 0x74, 0x65, 0x78, 0x74, 0x2f, 0x70, 0x6c, 0x61, 0x69, 0x6e, 0x2c, 0x74, 0x65, 0x78, 0x74,
    0x2f, 0x6a, 0x61, 0x76, 0x61, 0x73, 0x63, 0x72, 0x69, 0x70, 0x74, 0x2c, 0x70, 0x75, 0x62, 0x6c,
    0x69, 0x63, 0x70, 0x72, 0x69, 0x76, 0x61, 0x74, 0x65, 0x6d, 0x61, 0x78, 0x2d, 0x61, 0x67, 0x65,
    0x3d, 0x67, 0x7a, 0x69, 0x70, 0x2c, 0x64, 0x65, 0x66, 0x6c, 0x61, 0x74, 0x65, 0x2c, 0x73, 0x64,
    0x63, 0x68, 0x63, 0x68, 0x61, 0x72, 0x73, 0x65, 0x74, 0x3d, 0x75, 0x74, 0x66, 0x2d, 0x38, 0x63,
    0x68, 0x61, 0x72, 0x73, 0x65, 0x74, 0x3d, 0x69, 0x73, 0x6f, 0x2d, 0x38, 0x38, 0x35, 0x39, 0x2d,
    0x31, 0x2c, 0x75, 0x74, 0x66, 0x2d, 0x2c, 0x2a, 0x2c, 0x65, 0x6e, 0x71, 0x3d, 0x30, 0x2e,
];

/// Adler-32 of [`DICTIONARY`]: the dictionary id in the zlib header of every header stream.
const DICTIONARY_ADLER32: u32 = 0xe3c6_a7c2;

/// Errors of the SPDY layer.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("spdy connection i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer sent something SPDY/3 (or spdystream) does not allow.
    #[error("spdy protocol error: {0}")]
    Protocol(String),
    /// A header block could not be (de)compressed.
    #[error("spdy header compression: {0}")]
    Compression(String),
    /// The peer answered the stream with RST_STREAM.
    #[error("spdy stream {stream_id} reset by the peer (status {status})")]
    Reset { stream_id: u32, status: u32 },
    /// The connection has ended (GOAWAY, close, EOF or an error).
    #[error("spdy connection closed")]
    Closed,
}

impl SpdyError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SpdyError::Protocol(_) | SpdyError::Compression(_) => ErrorKind::InvalidArgument,
            SpdyError::Io(_) | SpdyError::Reset { .. } | SpdyError::Closed => {
                ErrorKind::Unavailable
            }
        }
    }
}

fn protocol(msg: impl Into<String>) -> SpdyError {
    SpdyError::Protocol(msg.into())
}

// ---------------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------------

/// One SPDY/3 frame, decoded (header blocks inflated and parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        /// 3 bits, 0 = highest.
        priority: u8,
        slot: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        /// (flags, id, value)
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Vec<u8>,
    },
}

/// The 8-byte frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    Control {
        version: u16,
        kind: u16,
        flags: u8,
        len: usize,
    },
    Data {
        stream_id: u32,
        flags: u8,
        len: usize,
    },
}

fn parse_head(b: &[u8; 8]) -> Head {
    let first = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let flags = b[4];
    let len = usize::from(b[5]) << 16 | usize::from(b[6]) << 8 | usize::from(b[7]);
    if first & 0x8000_0000 != 0 {
        Head::Control {
            version: ((first >> 16) & 0x7fff) as u16,
            kind: (first & 0xffff) as u16,
            flags,
            len,
        }
    } else {
        Head::Data {
            stream_id: first,
            flags,
            len,
        }
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_flags_len(out: &mut Vec<u8>, flags: u8, len: usize) -> Result<(), SpdyError> {
    if len > MAX_FRAME_LEN {
        return Err(protocol(format!(
            "frame payload of {len} bytes exceeds 24 bits"
        )));
    }
    put_u32(out, u32::from(flags) << 24 | len as u32);
    Ok(())
}

fn put_control_head(out: &mut Vec<u8>, kind: u16, flags: u8, len: usize) -> Result<(), SpdyError> {
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    put_flags_len(out, flags, len)
}

fn check_stream_id(stream_id: u32) -> Result<(), SpdyError> {
    if stream_id == 0 || stream_id > MAX_STREAM_ID {
        return Err(protocol(format!("invalid stream id {stream_id}")));
    }
    Ok(())
}

/// Appends the wire form of `frame` to `out`; header blocks go through `z`.
fn encode_frame(frame: &Frame, z: &mut HeaderEncoder, out: &mut Vec<u8>) -> Result<(), SpdyError> {
    match frame {
        Frame::SynStream {
            stream_id,
            associated_to,
            priority,
            slot,
            flags,
            headers,
        } => {
            check_stream_id(*stream_id)?;
            let block = z.encode(headers)?;
            put_control_head(out, TYPE_SYN_STREAM, *flags, 10 + block.len())?;
            put_u32(out, *stream_id);
            put_u32(out, associated_to & MAX_STREAM_ID);
            out.push((priority & 0x07) << 5);
            out.push(*slot);
            out.extend_from_slice(&block);
        }
        Frame::SynReply {
            stream_id,
            flags,
            headers,
        }
        | Frame::Headers {
            stream_id,
            flags,
            headers,
        } => {
            check_stream_id(*stream_id)?;
            let kind = if matches!(frame, Frame::SynReply { .. }) {
                TYPE_SYN_REPLY
            } else {
                TYPE_HEADERS
            };
            let block = z.encode(headers)?;
            put_control_head(out, kind, *flags, 4 + block.len())?;
            put_u32(out, *stream_id);
            out.extend_from_slice(&block);
        }
        Frame::RstStream { stream_id, status } => {
            check_stream_id(*stream_id)?;
            if *status == 0 {
                return Err(protocol("RST_STREAM with status 0"));
            }
            put_control_head(out, TYPE_RST_STREAM, 0, 8)?;
            put_u32(out, *stream_id);
            put_u32(out, *status);
        }
        Frame::Settings { flags, entries } => {
            put_control_head(out, TYPE_SETTINGS, *flags, 4 + 8 * entries.len())?;
            put_u32(out, entries.len() as u32);
            for (flag, id, value) in entries {
                put_u32(out, u32::from(*flag) << 24 | (id & 0x00ff_ffff));
                put_u32(out, *value);
            }
        }
        Frame::Ping { id } => {
            put_control_head(out, TYPE_PING, 0, 4)?;
            put_u32(out, *id);
        }
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => {
            put_control_head(out, TYPE_GOAWAY, 0, 8)?;
            put_u32(out, last_good_stream_id & MAX_STREAM_ID);
            put_u32(out, *status);
        }
        Frame::WindowUpdate { stream_id, delta } => {
            put_control_head(out, TYPE_WINDOW_UPDATE, 0, 8)?;
            put_u32(out, stream_id & MAX_STREAM_ID);
            put_u32(out, delta & 0x7fff_ffff);
        }
        Frame::Data {
            stream_id,
            flags,
            data,
        } => {
            check_stream_id(*stream_id)?;
            put_u32(out, *stream_id);
            put_flags_len(out, *flags, data.len())?;
            out.extend_from_slice(data);
        }
    }
    Ok(())
}

/// Reads big-endian fields from a frame payload or header block; running short is an error.
struct Fields<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Fields<'a> {
    fn new(b: &'a [u8], what: &'static str) -> Self {
        Fields { b, what }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], SpdyError> {
        if n > self.b.len() {
            return Err(protocol(format!(
                "truncated {}: {} bytes missing",
                self.what,
                n - self.b.len()
            )));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, SpdyError> {
        Ok(self.bytes(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, SpdyError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A 31-bit field (stream ids, window deltas): the reserved high bit is ignored.
    fn u31(&mut self) -> Result<u32, SpdyError> {
        Ok(self.u32()? & 0x7fff_ffff)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.b)
    }

    fn remaining(&self) -> usize {
        self.b.len()
    }
}

fn exact_len(what: &str, payload: &[u8], want: usize) -> Result<(), SpdyError> {
    if payload.len() != want {
        return Err(protocol(format!(
            "{what} frame of {} bytes, want {want}",
            payload.len()
        )));
    }
    Ok(())
}

/// Decodes a control frame's payload. Unknown frame types give `Ok(None)` (to be skipped).
/// Header blocks are inflated before anything else is checked, so that the shared zlib stream
/// stays in step even for a frame we then reject.
fn decode_control(
    kind: u16,
    flags: u8,
    payload: &[u8],
    z: &mut HeaderDecoder,
) -> Result<Option<Frame>, SpdyError> {
    let mut f = Fields::new(payload, "control frame");
    let frame = match kind {
        TYPE_SYN_STREAM => {
            let stream_id = f.u31()?;
            let associated_to = f.u31()?;
            let priority = f.u8()? >> 5;
            let slot = f.u8()?;
            let headers = z.decode(f.rest())?;
            check_stream_id(stream_id)?;
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                flags,
                headers,
            }
        }
        TYPE_SYN_REPLY | TYPE_HEADERS => {
            let stream_id = f.u31()?;
            let headers = z.decode(f.rest())?;
            check_stream_id(stream_id)?;
            if kind == TYPE_SYN_REPLY {
                Frame::SynReply {
                    stream_id,
                    flags,
                    headers,
                }
            } else {
                Frame::Headers {
                    stream_id,
                    flags,
                    headers,
                }
            }
        }
        TYPE_RST_STREAM => {
            exact_len("RST_STREAM", payload, 8)?;
            let stream_id = f.u31()?;
            let status = f.u32()?;
            check_stream_id(stream_id)?;
            if status == 0 {
                return Err(protocol(format!(
                    "RST_STREAM for stream {stream_id} with status 0"
                )));
            }
            Frame::RstStream { stream_id, status }
        }
        TYPE_SETTINGS => {
            let count = f.u32()? as usize;
            if count.checked_mul(8) != Some(f.remaining()) {
                return Err(protocol(format!(
                    "SETTINGS frame announces {count} entries in {} bytes",
                    payload.len()
                )));
            }
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                let flag_id = f.u32()?;
                let value = f.u32()?;
                entries.push(((flag_id >> 24) as u8, flag_id & 0x00ff_ffff, value));
            }
            Frame::Settings { flags, entries }
        }
        TYPE_PING => {
            exact_len("PING", payload, 4)?;
            Frame::Ping { id: f.u32()? }
        }
        TYPE_GOAWAY => {
            exact_len("GOAWAY", payload, 8)?;
            Frame::GoAway {
                last_good_stream_id: f.u31()?,
                status: f.u32()?,
            }
        }
        TYPE_WINDOW_UPDATE => {
            exact_len("WINDOW_UPDATE", payload, 8)?;
            Frame::WindowUpdate {
                stream_id: f.u31()?,
                delta: f.u31()?,
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(frame))
}

/// Decodes one whole frame from the front of `buf`: `Ok(None)` if more bytes are needed,
/// otherwise the frame (or `None` for a skipped unknown control frame) and the bytes it took.
#[cfg(test)]
fn decode_frame(
    buf: &[u8],
    z: &mut HeaderDecoder,
) -> Result<Option<(Option<Frame>, usize)>, SpdyError> {
    let Some(head) = buf.get(..8) else {
        return Ok(None);
    };
    let mut h = [0u8; 8];
    h.copy_from_slice(head);
    match parse_head(&h) {
        Head::Control {
            version,
            kind,
            flags,
            len,
        } => {
            check_control_head(version, len)?;
            let Some(payload) = buf.get(8..8 + len) else {
                return Ok(None);
            };
            Ok(Some((decode_control(kind, flags, payload, z)?, 8 + len)))
        }
        Head::Data {
            stream_id,
            flags,
            len,
        } => {
            check_stream_id(stream_id)?;
            let Some(payload) = buf.get(8..8 + len) else {
                return Ok(None);
            };
            Ok(Some((
                Some(Frame::Data {
                    stream_id,
                    flags,
                    data: payload.to_vec(),
                }),
                8 + len,
            )))
        }
    }
}

fn check_control_head(version: u16, len: usize) -> Result<(), SpdyError> {
    if version != VERSION {
        return Err(protocol(format!(
            "control frame of SPDY version {version}, we speak {VERSION}"
        )));
    }
    if len > MAX_CONTROL_FRAME {
        return Err(protocol(format!(
            "control frame of {len} bytes exceeds {MAX_CONTROL_FRAME}"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Header blocks
// ---------------------------------------------------------------------------------------------

/// The uncompressed name/value block: a 32-bit count, then for each pair a 32-bit length and
/// the lowercased name, a 32-bit length and the value. Repeated names are joined by NUL.
fn build_block(headers: &[(String, String)]) -> Result<Vec<u8>, SpdyError> {
    let mut merged: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let name = name.to_lowercase();
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push('\0');
                v.push_str(value);
            }
            None => merged.push((name, value.clone())),
        }
    }
    let mut out = Vec::new();
    put_u32(&mut out, merged.len() as u32);
    for (name, value) in &merged {
        for s in [name, value] {
            put_u32(
                &mut out,
                u32::try_from(s.len()).map_err(|_| protocol("header longer than 4 GiB"))?,
            );
            out.extend_from_slice(s.as_bytes());
        }
    }
    if out.len() > MAX_HEADER_BLOCK {
        return Err(protocol(format!(
            "header block of {} bytes exceeds {MAX_HEADER_BLOCK}",
            out.len()
        )));
    }
    Ok(out)
}

/// Parses an uncompressed name/value block; names are lowercased, values split on NUL.
fn parse_block(block: &[u8]) -> Result<Headers, SpdyError> {
    let mut f = Fields::new(block, "header block");
    let count = f.u32()? as usize;
    // Each pair takes at least 8 bytes: refuse counts the block cannot hold before allocating.
    if count > f.remaining() / 8 {
        return Err(protocol(format!(
            "header block announces {count} pairs in {} bytes",
            block.len()
        )));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let len = f.u32()? as usize;
        let name = String::from_utf8_lossy(f.bytes(len)?).to_lowercase();
        let len = f.u32()? as usize;
        let value = f.bytes(len)?;
        for v in value.split(|&b| b == 0) {
            headers.push((name.clone(), String::from_utf8_lossy(v).into_owned()));
        }
    }
    if f.remaining() != 0 {
        return Err(protocol(format!(
            "{} bytes after the header block",
            f.remaining()
        )));
    }
    Ok(headers)
}

/// Compresses outgoing header blocks: one zlib stream (with the SPDY/3 dictionary) for all
/// blocks this side sends, sync-flushed after each block, as spdystream's framer does.
struct HeaderEncoder {
    z: Compress,
}

impl HeaderEncoder {
    fn new() -> Result<Self, SpdyError> {
        // spdystream compresses with zlib.BestCompression.
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(&DICTIONARY)
            .map_err(|e| SpdyError::Compression(format!("setting the dictionary: {e}")))?;
        Ok(HeaderEncoder { z })
    }

    /// The compressed bytes of the block for `headers`.
    fn encode(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>, SpdyError> {
        let block = build_block(headers)?;
        let mut out = Vec::with_capacity(block.len() / 2 + 64);
        let base = self.z.total_in();
        // A sync flush is complete once all input is taken and deflate left output space unused.
        for _ in 0..1024 {
            let used = (self.z.total_in() - base) as usize;
            out.reserve(block.len() - used + 64);
            self.z
                .compress_vec(&block[used..], &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            let used = (self.z.total_in() - base) as usize;
            if used == block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
        Err(SpdyError::Compression(
            "deflate did not finish a header block".into(),
        ))
    }
}

/// Inflates incoming header blocks: the peer's one zlib stream, across frames.
struct HeaderDecoder {
    z: Decompress,
    finished: bool,
}

impl HeaderDecoder {
    fn new() -> Self {
        HeaderDecoder {
            z: Decompress::new(true),
            finished: false,
        }
    }

    fn decode(&mut self, compressed: &[u8]) -> Result<Headers, SpdyError> {
        parse_block(&self.inflate(compressed)?)
    }

    /// Inflates one frame's compressed block (all of it: the peer sync-flushes each block).
    fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let fail = |msg: String| SpdyError::Compression(msg);
        if input.is_empty() {
            return Err(protocol("empty header block"));
        }
        if self.finished {
            return Err(fail(
                "header block after the end of the peer's zlib stream".into(),
            ));
        }
        let mut out: Vec<u8> = Vec::with_capacity((input.len() * 4).clamp(64, MAX_HEADER_BLOCK));
        let base = self.z.total_in();
        loop {
            let used = (self.z.total_in() - base) as usize;
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(protocol(format!(
                        "header block inflates past {MAX_HEADER_BLOCK} bytes"
                    )));
                }
                out.reserve_exact(out.len().clamp(64, MAX_HEADER_BLOCK - out.len()));
            }
            let produced_before = out.len();
            let status =
                match self
                    .z
                    .decompress_vec(&input[used..], &mut out, FlushDecompress::Sync)
                {
                    Ok(status) => status,
                    Err(e) => match e.needs_dictionary() {
                        Some(DICTIONARY_ADLER32) => {
                            self.z
                                .set_dictionary(&DICTIONARY)
                                .map_err(|e| fail(format!("setting the dictionary: {e}")))?;
                            continue;
                        }
                        Some(other) => {
                            return Err(fail(format!("peer uses unknown dictionary {other:#010x}")))
                        }
                        None => return Err(fail(e.to_string())),
                    },
                };
            let now_used = (self.z.total_in() - base) as usize;
            if status == Status::StreamEnd {
                self.finished = true;
                if now_used != input.len() {
                    return Err(fail("bytes after the end of the peer's zlib stream".into()));
                }
                return Ok(out);
            }
            if now_used == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if now_used == used && out.len() == produced_before {
                if now_used == input.len() {
                    return Ok(out);
                }
                return Err(fail("inflate made no progress".into()));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connection
// ---------------------------------------------------------------------------------------------

/// Remote half of a stream, as its reader sees it once the buffered data is consumed.
const REMOTE_OPEN: u8 = 0;
/// The peer half-closed (FIN): the reader sees EOF.
const REMOTE_FIN: u8 = 1;
/// The stream was reset (either side): the reader sees `ConnectionReset`.
const REMOTE_RESET: u8 = 2;
/// The connection ended before the peer's FIN: the reader sees `UnexpectedEof`.
const REMOTE_GONE: u8 = 3;

/// Per-stream flags shared by the stream's handles and its table entry.
struct StreamFlags {
    remote: AtomicU8,
    /// We sent FIN (or may not send: unidirectional from the peer).
    local_closed: AtomicBool,
    /// RST_STREAM sent or received.
    reset: AtomicBool,
}

impl StreamFlags {
    fn new(remote_fin: bool, local_closed: bool) -> Arc<Self> {
        Arc::new(StreamFlags {
            remote: AtomicU8::new(if remote_fin { REMOTE_FIN } else { REMOTE_OPEN }),
            local_closed: AtomicBool::new(local_closed),
            reset: AtomicBool::new(false),
        })
    }

    /// Records how the remote half ended, unless it already had.
    fn end_remote(&self, how: u8) {
        let _ = self
            .remote
            .compare_exchange(REMOTE_OPEN, how, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// A stream in the connection's table.
struct Entry {
    flags: Arc<StreamFlags>,
    /// Where incoming DATA goes; `None` once the peer half-closed.
    data: Option<mpsc::Sender<Vec<u8>>>,
    /// For a stream we opened: resolved by the peer's SYN_REPLY or RST_STREAM.
    reply: Option<oneshot::Sender<Result<(), SpdyError>>>,
}

struct State {
    streams: HashMap<u32, Entry>,
    /// The id our next stream gets (odd for a client, even for a server).
    next_id: u32,
    /// The highest stream id the peer opened (0: none yet).
    last_peer_id: u32,
    next_ping_id: u32,
    pings: HashMap<u32, oneshot::Sender<()>>,
}

/// A frame for the writer task.
struct Outgoing {
    frame: Frame,
    /// Released once written: the budget that bounds the queue.
    permit: Option<OwnedSemaphorePermit>,
    /// Close the connection after writing this frame (our GOAWAY).
    last: bool,
}

struct Shared {
    server: bool,
    state: Mutex<State>,
    /// Every outgoing frame, in order. Unbounded as a channel; bounded by the two budgets (DATA
    /// from writers, frames the peer provokes) and by the application for the rest (one
    /// SYN_STREAM / RST / FIN per stream).
    out: mpsc::UnboundedSender<Outgoing>,
    data_budget: Arc<Semaphore>,
    peer_budget: Arc<Semaphore>,
    /// `close` was called (or a protocol error is being reported): no new streams or writes.
    closing: AtomicBool,
    /// The connection has ended.
    ended: AtomicBool,
    ended_tx: watch::Sender<bool>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Parity of the ids this side allocates (streams and pings): 0 for a server, 1 for a client.
    fn own_parity(&self) -> u32 {
        u32::from(!self.server)
    }

    fn send(&self, frame: Frame) {
        let _ = self.out.send(Outgoing {
            frame,
            permit: None,
            last: false,
        });
    }

    /// Queues a frame the peer made us send, waiting for room in the peer's budget.
    async fn send_for_peer(&self, frame: Frame) {
        if let Ok(permit) = self.peer_budget.clone().acquire_owned().await {
            let _ = self.out.send(Outgoing {
                frame,
                permit: Some(permit),
                last: false,
            });
        }
    }

    fn is_open(&self) -> bool {
        !self.ended.load(Ordering::SeqCst) && !self.closing.load(Ordering::SeqCst)
    }

    /// Registers a new stream and returns its handle and receiving end.
    fn add_stream(
        self: &Arc<Self>,
        st: &mut State,
        id: u32,
        remote_fin: bool,
        local_closed: bool,
        reply: Option<oneshot::Sender<Result<(), SpdyError>>>,
    ) -> (Arc<Handle>, mpsc::Receiver<Vec<u8>>) {
        let flags = StreamFlags::new(remote_fin, local_closed);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER_CHUNKS);
        st.streams.insert(
            id,
            Entry {
                flags: flags.clone(),
                data: if remote_fin { None } else { Some(tx) },
                reply,
            },
        );
        (
            Arc::new(Handle {
                id,
                shared: self.clone(),
                flags,
            }),
            rx,
        )
    }

    /// Removes a stream whose both halves are closed.
    fn forget_if_done(&self, st: &mut State, id: u32) {
        let done = st.streams.get(&id).is_some_and(|e| {
            e.data.is_none() && e.reply.is_none() && e.flags.local_closed.load(Ordering::SeqCst)
        });
        if done {
            st.streams.remove(&id);
        }
    }

    /// The peer half-closed `id`.
    fn remote_fin(&self, id: u32) {
        let mut st = self.state();
        if let Some(entry) = st.streams.get_mut(&id) {
            entry.flags.end_remote(REMOTE_FIN);
            entry.data = None;
        }
        self.forget_if_done(&mut st, id);
    }

    /// Was `id` ever opened on this connection (by either side)?
    fn was_opened(&self, st: &State, id: u32) -> bool {
        if id % 2 == self.own_parity() {
            id < st.next_id
        } else {
            id <= st.last_peer_id
        }
    }

    /// Ends the connection: every stream's reader sees the end, writers and `open` fail.
    fn end(&self, why: &str) {
        if self.ended.swap(true, Ordering::SeqCst) {
            return;
        }
        let streams = {
            let mut st = self.state();
            st.pings.clear();
            std::mem::take(&mut st.streams)
        };
        for entry in streams.values() {
            entry.flags.end_remote(REMOTE_GONE);
        }
        drop(streams);
        self.data_budget.close();
        self.peer_budget.close();
        self.ended_tx.send_replace(true);
        tracing::debug!(reason = why, "spdy connection ended");
    }

    async fn wait_ended(&self) {
        let mut rx = self.ended_tx.subscribe();
        let _ = rx.wait_for(|ended| *ended).await;
    }

    /// Queues GOAWAY(`status`) after everything queued so far and waits (bounded) for the
    /// writer to send it and end the connection.
    async fn close_with(&self, status: u32) {
        if !self.closing.swap(true, Ordering::SeqCst) && !self.ended.load(Ordering::SeqCst) {
            let last_good_stream_id = self.state().last_peer_id;
            let goaway = Outgoing {
                frame: Frame::GoAway {
                    last_good_stream_id,
                    status,
                },
                permit: None,
                last: true,
            };
            if self.out.send(goaway).is_err() {
                self.end("writer gone at close");
            }
        }
        if tokio::time::timeout(CLOSE_TIMEOUT, self.wait_ended())
            .await
            .is_err()
        {
            self.end("close timed out writing the queued frames");
        }
    }
}

/// A handle on an SPDY connection. Cheap to clone; the connection lives until `close`, a GOAWAY
/// from the peer, the peer's EOF or an error.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.shared.server)
            .field("ended", &self.shared.ended.load(Ordering::SeqCst))
            .finish()
    }
}

impl Connection {
    /// Server side over an upgraded connection: spawns the reader and writer tasks. Streams the
    /// peer opens arrive on the receiver, each already answered with a SYN_REPLY (empty headers)
    /// as Kubernetes' server does; when the receiver is full (32 streams not taken) or dropped,
    /// new streams are refused with RST_STREAM(REFUSED_STREAM).
    pub fn server<T>(io: T) -> (Connection, mpsc::Receiver<Stream>)
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::start(io, true)
    }

    /// Client side: the same, opening odd stream ids.
    pub fn client<T>(io: T) -> (Connection, mpsc::Receiver<Stream>)
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::start(io, false)
    }

    fn start<T>(io: T, server: bool) -> (Connection, mpsc::Receiver<Stream>)
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_STREAMS);
        let (ended_tx, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            server,
            state: Mutex::new(State {
                streams: HashMap::new(),
                next_id: if server { 2 } else { 1 },
                last_peer_id: 0,
                next_ping_id: if server { 2 } else { 1 },
                pings: HashMap::new(),
            }),
            out: out_tx,
            data_budget: Arc::new(Semaphore::new(WRITE_QUEUE_FRAMES)),
            peer_budget: Arc::new(Semaphore::new(PEER_CONTROL_QUEUE)),
            closing: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            ended_tx,
        });
        tokio::spawn(run_writer(shared.clone(), wr, out_rx));
        tokio::spawn(run_reader(shared.clone(), rd, incoming_tx));
        (Connection { shared }, incoming_rx)
    }

    /// Opens a stream with these headers and waits for the peer's SYN_REPLY. Fails with
    /// [`SpdyError::Reset`] if the peer refuses it, [`SpdyError::Closed`] if the connection ends.
    pub async fn open(&self, headers: Headers) -> Result<Stream, SpdyError> {
        let headers: Headers = headers
            .into_iter()
            .map(|(n, v)| (n.to_lowercase(), v))
            .collect();
        let (reply_tx, reply_rx) = oneshot::channel();
        let (handle, rx) = {
            let mut st = self.shared.state();
            if !self.shared.is_open() {
                return Err(SpdyError::Closed);
            }
            let id = st.next_id;
            if id > MAX_STREAM_ID {
                return Err(protocol("stream ids exhausted on this connection"));
            }
            st.next_id += 2;
            let opened = self
                .shared
                .add_stream(&mut st, id, false, false, Some(reply_tx));
            // Queued under the lock: stream ids must reach the peer in increasing order.
            self.shared.send(Frame::SynStream {
                stream_id: id,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags: 0,
                headers: headers.clone(),
            });
            opened
        };
        // If this future is dropped here, dropping `handle` resets the stream.
        match reply_rx.await {
            Ok(Ok(())) => Ok(Stream {
                handle,
                headers,
                rx,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SpdyError::Closed),
        }
    }

    /// Sends a PING and waits for the peer's echo.
    pub async fn ping(&self) -> Result<Duration, SpdyError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.shared.state();
            if self.shared.ended.load(Ordering::SeqCst) {
                return Err(SpdyError::Closed);
            }
            let id = st.next_ping_id;
            // spdystream's wrap-around, keeping the parity.
            st.next_ping_id = if id > 0x7fff_fffe {
                id - 0x7fff_fffe
            } else {
                id + 2
            };
            st.pings.insert(id, tx);
            id
        };
        let start = Instant::now();
        self.shared.send(Frame::Ping { id });
        rx.await.map_err(|_| SpdyError::Closed)?;
        Ok(start.elapsed())
    }

    /// Sends GOAWAY after every frame queued so far (data written before `close` is delivered)
    /// and closes the connection: both tasks end, every stream reader sees EOF or an error.
    /// Waits at most 10 s for the peer to take the queued frames.
    pub async fn close(&self) {
        self.shared.close_with(GOAWAY_OK).await;
    }

    /// Resolves when the connection has ended (peer EOF, I/O error, GOAWAY, `close`).
    pub async fn closed(&self) {
        self.shared.wait_ended().await;
    }
}

/// How the reader loop stopped.
enum ReadEnd {
    Eof,
    GoAway,
}

async fn run_reader<R>(
    shared: Arc<Shared>,
    rd: tokio::io::ReadHalf<R>,
    incoming: mpsc::Sender<Stream>,
) where
    R: AsyncRead + Send + Unpin + 'static,
{
    let mut rd = BufReader::with_capacity(64 << 10, rd);
    let result = tokio::select! {
        r = read_loop(&shared, &mut rd, &incoming) => Some(r),
        _ = shared.wait_ended() => None,
    };
    drop(incoming);
    match result {
        Some(Ok(ReadEnd::Eof)) => shared.end("peer closed the connection"),
        Some(Ok(ReadEnd::GoAway)) => shared.end("peer sent GOAWAY"),
        Some(Err(e @ (SpdyError::Protocol(_) | SpdyError::Compression(_)))) => {
            tracing::warn!(error = %e, "spdy peer broke the protocol; closing the connection");
            shared.close_with(GOAWAY_PROTOCOL_ERROR).await;
        }
        Some(Err(e)) => {
            tracing::debug!(error = %e, "spdy connection read failed");
            shared.end("read failed");
        }
        None => {
            // We closed (GOAWAY written): drain what the peer still sends for a moment, so that
            // closing the socket with unread data does not reset it under the peer's last reads.
            let drain = async {
                let mut scratch = [0u8; 8192];
                while let Ok(n) = rd.read(&mut scratch).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER, drain).await;
        }
    }
}

async fn read_loop<R>(
    shared: &Arc<Shared>,
    rd: &mut R,
    incoming: &mpsc::Sender<Stream>,
) -> Result<ReadEnd, SpdyError>
where
    R: AsyncRead + Unpin,
{
    let mut z = HeaderDecoder::new();
    let mut scratch = vec![0u8; MAX_DATA_CHUNK];
    loop {
        let mut head = [0u8; 8];
        let n = rd.read(&mut head).await?;
        if n == 0 {
            return Ok(ReadEnd::Eof);
        }
        rd.read_exact(&mut head[n..]).await?;
        match parse_head(&head) {
            Head::Control {
                version,
                kind,
                flags,
                len,
            } => {
                check_control_head(version, len)?;
                let mut payload = vec![0u8; len];
                rd.read_exact(&mut payload).await?;
                match decode_control(kind, flags, &payload, &mut z)? {
                    None => {
                        tracing::debug!(frame_type = kind, "spdy: ignoring unknown control frame")
                    }
                    Some(Frame::GoAway {
                        last_good_stream_id,
                        status,
                    }) => {
                        tracing::debug!(last_good_stream_id, status, "spdy: peer sent GOAWAY");
                        return Ok(ReadEnd::GoAway);
                    }
                    Some(frame) => on_control(shared, frame, incoming).await,
                }
            }
            Head::Data {
                stream_id,
                flags,
                len,
            } => {
                check_stream_id(stream_id)?;
                read_data(shared, rd, stream_id, flags, len, &mut scratch).await?;
            }
        }
    }
}

/// Where an incoming DATA frame goes.
enum Target {
    Deliver(mpsc::Sender<Vec<u8>>),
    /// A stream that exists or existed, but whose data nobody will read.
    Drop,
    /// An id that was never opened.
    Invalid,
}

async fn read_data<R>(
    shared: &Arc<Shared>,
    rd: &mut R,
    stream_id: u32,
    flags: u8,
    len: usize,
    scratch: &mut [u8],
) -> Result<(), SpdyError>
where
    R: AsyncRead + Unpin,
{
    let target = {
        let st = shared.state();
        match st.streams.get(&stream_id) {
            Some(Entry { data: Some(tx), .. }) => Target::Deliver(tx.clone()),
            Some(_) => Target::Drop,
            None if shared.was_opened(&st, stream_id) => Target::Drop,
            None => Target::Invalid,
        }
    };
    let (mut tx, invalid) = match target {
        Target::Deliver(tx) => (Some(tx), false),
        Target::Drop => (None, false),
        Target::Invalid => (None, true),
    };
    let mut left = len;
    while left > 0 {
        let n = left.min(MAX_DATA_CHUNK);
        left -= n;
        match &tx {
            Some(sender) => {
                let mut chunk = vec![0u8; n];
                rd.read_exact(&mut chunk).await?;
                // Waits while the stream's buffer is full: this is the back-pressure.
                if sender.send(chunk).await.is_err() {
                    tx = None; // the reader was dropped: discard the rest
                }
            }
            None => {
                rd.read_exact(&mut scratch[..n]).await?;
            }
        }
    }
    if invalid {
        tracing::debug!(stream_id, "spdy: DATA for a stream never opened");
        shared
            .send_for_peer(Frame::RstStream {
                stream_id,
                status: RST_INVALID_STREAM,
            })
            .await;
    } else if flags & FLAG_FIN != 0 {
        shared.remote_fin(stream_id);
    }
    Ok(())
}

async fn on_control(shared: &Arc<Shared>, frame: Frame, incoming: &mpsc::Sender<Stream>) {
    match frame {
        Frame::SynStream {
            stream_id,
            flags,
            headers,
            ..
        } => {
            on_syn_stream(shared, stream_id, flags, headers, incoming).await;
        }
        Frame::SynReply {
            stream_id, flags, ..
        } => {
            let reply = shared
                .state()
                .streams
                .get_mut(&stream_id)
                .and_then(|e| e.reply.take());
            match reply {
                Some(reply) => {
                    let _ = reply.send(Ok(()));
                }
                None => tracing::debug!(stream_id, "spdy: SYN_REPLY for no waiting stream ignored"),
            }
            if flags & FLAG_FIN != 0 {
                shared.remote_fin(stream_id);
            } else {
                let mut st = shared.state();
                shared.forget_if_done(&mut st, stream_id);
            }
        }
        Frame::RstStream { stream_id, status } => {
            let entry = shared.state().streams.remove(&stream_id);
            if let Some(entry) = entry {
                tracing::debug!(stream_id, status, "spdy: peer reset stream");
                entry.flags.reset.store(true, Ordering::SeqCst);
                entry.flags.end_remote(REMOTE_RESET);
                if let Some(reply) = entry.reply {
                    let _ = reply.send(Err(SpdyError::Reset { stream_id, status }));
                }
            }
        }
        Frame::Headers {
            stream_id, flags, ..
        } => {
            // spdystream hands these to a reader nobody in Kubernetes uses; only FIN matters.
            if flags & FLAG_FIN != 0 {
                shared.remote_fin(stream_id);
            }
        }
        Frame::Ping { id } => {
            if id % 2 != shared.own_parity() {
                shared.send_for_peer(Frame::Ping { id }).await;
            } else if let Some(waiter) = shared.state().pings.remove(&id) {
                let _ = waiter.send(());
            }
        }
        // spdystream ignores both (no flow control); so do we.
        Frame::Settings { .. } | Frame::WindowUpdate { .. } => {}
        // Handled by the read loop / never a control frame.
        Frame::GoAway { .. } | Frame::Data { .. } => {}
    }
}

async fn on_syn_stream(
    shared: &Arc<Shared>,
    stream_id: u32,
    flags: u8,
    headers: Headers,
    incoming: &mpsc::Sender<Stream>,
) {
    enum Verdict {
        Ignore,
        Invalid,
        Accept,
    }
    let verdict = {
        let mut st = shared.state();
        if !shared.is_open() {
            // spdystream drops new streams silently once GOAWAY was sent.
            Verdict::Ignore
        } else if stream_id % 2 == shared.own_parity() || stream_id <= st.last_peer_id {
            Verdict::Invalid
        } else {
            st.last_peer_id = stream_id;
            Verdict::Accept
        }
    };
    match verdict {
        Verdict::Ignore => {}
        Verdict::Invalid => {
            tracing::debug!(stream_id, "spdy: SYN_STREAM with an unexpected stream id");
            shared
                .send_for_peer(Frame::RstStream {
                    stream_id,
                    status: RST_PROTOCOL_ERROR,
                })
                .await;
        }
        Verdict::Accept => match incoming.try_reserve() {
            Ok(slot) => {
                let remote_fin = flags & FLAG_FIN != 0;
                let local_closed = flags & FLAG_UNIDIRECTIONAL != 0;
                let (handle, rx) = shared.add_stream(
                    &mut shared.state(),
                    stream_id,
                    remote_fin,
                    local_closed,
                    None,
                );
                // The reply is queued before the stream is handed out, so it precedes any DATA.
                shared
                    .send_for_peer(Frame::SynReply {
                        stream_id,
                        flags: 0,
                        headers: Vec::new(),
                    })
                    .await;
                slot.send(Stream {
                    handle,
                    headers,
                    rx,
                });
            }
            Err(_) => {
                tracing::debug!(stream_id, "spdy: refusing a stream nobody takes");
                shared
                    .send_for_peer(Frame::RstStream {
                        stream_id,
                        status: RST_REFUSED_STREAM,
                    })
                    .await;
            }
        },
    }
}

async fn run_writer<W>(
    shared: Arc<Shared>,
    mut wr: tokio::io::WriteHalf<W>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
) where
    W: AsyncWrite + Send + Unpin + 'static,
{
    let result = tokio::select! {
        r = write_loop(&mut wr, &mut rx) => r,
        _ = shared.wait_ended() => Ok(()),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "spdy connection write failed");
    }
    shared.end("writer finished");
}

async fn write_loop<W>(
    wr: &mut W,
    rx: &mut mpsc::UnboundedReceiver<Outgoing>,
) -> Result<(), SpdyError>
where
    W: AsyncWrite + Unpin,
{
    let mut z = HeaderEncoder::new()?;
    let mut buf = Vec::with_capacity(WRITE_BATCH + MAX_DATA_CHUNK + 64);
    let mut permits = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut last = false;
        while let Some(item) = next.take() {
            encode_frame(&item.frame, &mut z, &mut buf)?;
            permits.extend(item.permit);
            if item.last {
                last = true;
                break;
            }
            if buf.len() < WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        wr.write_all(&buf).await?;
        wr.flush().await?;
        buf.clear();
        permits.clear();
        if last {
            let _ = wr.shutdown().await;
            return Ok(());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// Shared by a stream's `Stream` / `StreamReader` / `StreamWriter`. When the last one goes, the
/// stream leaves the table, and if we never half-closed it the peer gets RST_STREAM(CANCEL).
struct Handle {
    id: u32,
    shared: Arc<Shared>,
    flags: Arc<StreamFlags>,
}

impl Handle {
    fn reset(&self, status: u32) {
        if self.flags.reset.swap(true, Ordering::SeqCst) {
            return;
        }
        self.flags.end_remote(REMOTE_RESET);
        self.shared.state().streams.remove(&self.id);
        if !self.shared.ended.load(Ordering::SeqCst) {
            self.shared.send(Frame::RstStream {
                stream_id: self.id,
                status,
            });
        }
    }

    fn writable(&self) -> io::Result<()> {
        if self.flags.reset.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("spdy stream {} was reset", self.id),
            ));
        }
        if !self.shared.is_open() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "spdy connection closed",
            ));
        }
        if self.flags.local_closed.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("spdy stream {} already half-closed", self.id),
            ));
        }
        Ok(())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if !self.flags.local_closed.load(Ordering::SeqCst) {
            self.reset(RST_CANCEL);
        } else {
            self.shared.state().streams.remove(&self.id);
        }
    }
}

/// A stream of the connection, as opened by either side.
pub struct Stream {
    handle: Arc<Handle>,
    headers: Headers,
    rx: mpsc::Receiver<Vec<u8>>,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.handle.id)
            .field("headers", &self.headers)
            .finish()
    }
}

impl Stream {
    pub fn id(&self) -> u32 {
        self.handle.id
    }

    /// The headers of the SYN_STREAM (names lowercase).
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The first value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn split(self) -> (StreamReader, StreamWriter) {
        let reader = StreamReader {
            handle: self.handle.clone(),
            rx: self.rx,
            chunk: Vec::new(),
            pos: 0,
        };
        let writer = StreamWriter {
            handle: self.handle,
            acquire: None,
        };
        (reader, writer)
    }

    /// RST_STREAM(CANCEL) this stream: both halves end here and at the peer.
    pub fn reset(&self) {
        self.handle.reset(RST_CANCEL);
    }
}

/// The receiving half: the stream's DATA in order; `Ok(0)` after the peer's FIN, an error
/// (`ConnectionReset`) after RST_STREAM, `UnexpectedEof` if the connection ended first.
pub struct StreamReader {
    handle: Arc<Handle>,
    rx: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamReader")
            .field("id", &self.handle.id)
            .finish()
    }
}

impl StreamReader {
    pub fn id(&self) -> u32 {
        self.handle.id
    }
}

impl AsyncRead for StreamReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.pos == this.chunk.len() {
            match ready!(this.rx.poll_recv(cx)) {
                Some(chunk) => {
                    this.chunk = chunk;
                    this.pos = 0;
                }
                None => {
                    let id = this.handle.id;
                    return Poll::Ready(match this.handle.flags.remote.load(Ordering::SeqCst) {
                        REMOTE_RESET => Err(io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            format!("spdy stream {id} was reset"),
                        )),
                        REMOTE_GONE => Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("spdy connection ended before stream {id} did"),
                        )),
                        _ => Ok(()),
                    });
                }
            }
        }
        let n = buf.remaining().min(this.chunk.len() - this.pos);
        buf.put_slice(&this.chunk[this.pos..this.pos + n]);
        this.pos += n;
        if this.pos == this.chunk.len() {
            this.chunk = Vec::new();
            this.pos = 0;
        }
        Poll::Ready(Ok(()))
    }
}

type Acquire = Pin<
    Box<dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> + Send + Sync>,
>;

/// The sending half: each write becomes DATA frames of at most 32 KiB, queued in order behind
/// a bounded budget (writes wait while 32 frames are queued); `poll_shutdown` sends an empty DATA
/// frame with FIN (half-close). `poll_flush` has nothing to do: frames are queued in order and
/// [`Connection::close`] writes every queued frame before its GOAWAY. Writes after the
/// connection ended fail with `BrokenPipe`, after a reset with `ConnectionReset`.
pub struct StreamWriter {
    handle: Arc<Handle>,
    acquire: Option<Acquire>,
}

impl fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamWriter")
            .field("id", &self.handle.id)
            .finish()
    }
}

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.handle.id
    }

    fn poll_permit(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<OwnedSemaphorePermit>> {
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "spdy connection closed");
        if self.acquire.is_none() {
            match self.handle.shared.data_budget.clone().try_acquire_owned() {
                Ok(permit) => return Poll::Ready(Ok(permit)),
                Err(TryAcquireError::Closed) => return Poll::Ready(Err(closed())),
                Err(TryAcquireError::NoPermits) => {
                    self.acquire = Some(Box::pin(
                        self.handle.shared.data_budget.clone().acquire_owned(),
                    ));
                }
            }
        }
        let Some(acquire) = self.acquire.as_mut() else {
            return Poll::Ready(Err(closed()));
        };
        let result = ready!(acquire.as_mut().poll(cx));
        self.acquire = None;
        Poll::Ready(result.map_err(|_| closed()))
    }
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.handle.writable()?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let permit = ready!(this.poll_permit(cx))?;
        this.handle.writable()?;
        let n = buf.len().min(MAX_DATA_CHUNK);
        let frame = Frame::Data {
            stream_id: this.handle.id,
            flags: 0,
            data: buf[..n].to_vec(),
        };
        this.handle
            .shared
            .out
            .send(Outgoing {
                frame,
                permit: Some(permit),
                last: false,
            })
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "spdy connection closed"))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let handle = &self.handle;
        if handle.flags.local_closed.load(Ordering::SeqCst)
            || handle.flags.reset.load(Ordering::SeqCst)
        {
            return Poll::Ready(Ok(()));
        }
        handle.writable()?;
        handle.flags.local_closed.store(true, Ordering::SeqCst);
        handle.shared.send(Frame::Data {
            stream_id: handle.id,
            flags: FLAG_FIN,
            data: Vec::new(),
        });
        let mut st = handle.shared.state();
        handle.shared.forget_if_done(&mut st, handle.id);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn to_hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in data {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        b << 16 | a
    }

    /// Deterministic pseudo-random bytes.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect()
    }

    fn encode(frame: &Frame, z: &mut HeaderEncoder) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(frame, z, &mut out).unwrap();
        out
    }

    fn decode_one(bytes: &[u8], z: &mut HeaderDecoder) -> Result<Frame, SpdyError> {
        match decode_frame(bytes, z)? {
            Some((Some(frame), used)) => {
                assert_eq!(used, bytes.len(), "one frame, all bytes");
                Ok(frame)
            }
            Some((None, _)) => panic!("unknown frame"),
            None => Err(protocol("incomplete")),
        }
    }

    fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_control_head(&mut out, kind, flags, payload.len()).unwrap();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn dictionary_is_the_spdy3_dictionary() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(adler32(&DICTIONARY), DICTIONARY_ADLER32);
        assert!(DICTIONARY.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
        assert!(DICTIONARY.ends_with(b"utf-,*,enq=0."));
    }

    #[test]
    fn every_frame_type_round_trips() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags: 0,
                headers: h(&[("streamtype", "error")]),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_to: 1,
                priority: 7,
                slot: 2,
                flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
                headers: h(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")]),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: Vec::new(),
            },
            Frame::SynReply {
                stream_id: 3,
                flags: FLAG_FIN,
                headers: h(&[("status", "200")]),
            },
            Frame::RstStream {
                stream_id: 5,
                status: RST_CANCEL,
            },
            Frame::Settings {
                flags: 1,
                entries: vec![(1, 4, 100), (0, 7, 65536)],
            },
            Frame::Settings {
                flags: 0,
                entries: Vec::new(),
            },
            Frame::Ping { id: 0xffff_fffe },
            Frame::GoAway {
                last_good_stream_id: 7,
                status: GOAWAY_PROTOCOL_ERROR,
            },
            Frame::Headers {
                stream_id: 9,
                flags: FLAG_FIN,
                headers: h(&[("x", "")]),
            },
            Frame::WindowUpdate {
                stream_id: 11,
                delta: 65536,
            },
            Frame::Data {
                stream_id: 13,
                flags: 0,
                data: b"hello".to_vec(),
            },
            Frame::Data {
                stream_id: 13,
                flags: FLAG_FIN,
                data: Vec::new(),
            },
            Frame::Data {
                stream_id: MAX_STREAM_ID,
                flags: 0,
                data: noise(1, MAX_DATA_CHUNK),
            },
        ];
        // One encoder and one decoder for all: the header zlib stream spans frames.
        let mut enc = HeaderEncoder::new().unwrap();
        let mut dec = HeaderDecoder::new();
        let mut wire = Vec::new();
        for frame in &frames {
            wire.extend(encode(frame, &mut enc));
        }
        let mut rest = &wire[..];
        for frame in &frames {
            let (decoded, used) = decode_frame(rest, &mut dec).unwrap().unwrap();
            assert_eq!(decoded.as_ref(), Some(frame));
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        assert!(decode_frame(&[], &mut dec).unwrap().is_none());
    }

    #[test]
    fn fixed_frames_have_spdystreams_wire_layout() {
        let mut z = HeaderEncoder::new().unwrap();
        let cases = [
            (
                Frame::RstStream {
                    stream_id: 5,
                    status: RST_INVALID_STREAM,
                },
                "80030003000000080000000500000002",
            ),
            (Frame::Ping { id: 1 }, "800300060000000400000001"),
            (
                Frame::GoAway {
                    last_good_stream_id: 3,
                    status: 0,
                },
                "80030007000000080000000300000000",
            ),
            (
                Frame::WindowUpdate {
                    stream_id: 1,
                    delta: 4096,
                },
                "80030009000000080000000100001000",
            ),
            (
                Frame::Settings {
                    flags: 0,
                    entries: vec![(1, 4, 100)],
                },
                "800300040000000c000000010100000400000064",
            ),
            (
                Frame::Data {
                    stream_id: 3,
                    flags: 0,
                    data: b"ab".to_vec(),
                },
                "00000003000000026162",
            ),
            (
                Frame::Data {
                    stream_id: 3,
                    flags: FLAG_FIN,
                    data: Vec::new(),
                },
                "0000000301000000",
            ),
        ];
        for (frame, want) in cases {
            assert_eq!(to_hex(&encode(&frame, &mut z)), want, "{frame:?}");
        }
    }

    #[test]
    fn name_value_block_round_trips_and_merges_repeated_names() {
        // The exact block a Go client sends for `streamtype: stdout`.
        let block = build_block(&h(&[("Streamtype", "stdout")])).unwrap();
        assert_eq!(
            to_hex(&block),
            "000000010000000a73747265616d74797065000000067374646f7574"
        );
        assert_eq!(parse_block(&block).unwrap(), h(&[("streamtype", "stdout")]));

        let headers = h(&[
            ("port", "80"),
            ("X-Multi", "a"),
            ("requestid", "0"),
            ("x-multi", "b"),
            ("empty", ""),
        ]);
        let block = build_block(&headers).unwrap();
        // Four names: the repeated one is joined with NUL, as Go joins http.Header values.
        assert_eq!(&block[..4], &4u32.to_be_bytes());
        assert!(block.windows(3).any(|w| w == b"a\0b"));
        assert_eq!(
            parse_block(&block).unwrap(),
            h(&[
                ("port", "80"),
                ("x-multi", "a"),
                ("x-multi", "b"),
                ("requestid", "0"),
                ("empty", "")
            ])
        );
        assert_eq!(parse_block(&build_block(&[]).unwrap()).unwrap(), Vec::new());
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let mut bad: Vec<(&str, Vec<u8>)> = vec![
            (
                "short SYN_STREAM",
                control(TYPE_SYN_STREAM, 0, &[0, 0, 0, 1]),
            ),
            ("short SYN_REPLY", control(TYPE_SYN_REPLY, 0, &[0, 0])),
            (
                "short RST_STREAM",
                control(TYPE_RST_STREAM, 0, &[0, 0, 0, 1]),
            ),
            (
                "long RST_STREAM",
                control(TYPE_RST_STREAM, 0, &[0, 0, 0, 1, 0, 0, 0, 1, 0]),
            ),
            (
                "RST_STREAM status 0",
                control(TYPE_RST_STREAM, 0, &[0, 0, 0, 1, 0, 0, 0, 0]),
            ),
            (
                "RST_STREAM stream 0",
                control(TYPE_RST_STREAM, 0, &[0, 0, 0, 0, 0, 0, 0, 5]),
            ),
            (
                "SETTINGS count too high",
                control(TYPE_SETTINGS, 0, &[0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0, 1]),
            ),
            (
                "SETTINGS count overflow",
                control(TYPE_SETTINGS, 0, &[0xff, 0xff, 0xff, 0xff]),
            ),
            ("short SETTINGS", control(TYPE_SETTINGS, 0, &[0, 0])),
            ("short PING", control(TYPE_PING, 0, &[0, 0, 1])),
            (
                "GOAWAY without status",
                control(TYPE_GOAWAY, 0, &[0, 0, 0, 1]),
            ),
            (
                "long WINDOW_UPDATE",
                control(TYPE_WINDOW_UPDATE, 0, &[0; 12]),
            ),
            ("data for stream 0", hex("0000000000000001ff")),
        ];
        // Version 2, and a control frame over the 1 MiB bound (only the head is needed).
        let mut v2 = control(TYPE_PING, 0, &[0, 0, 0, 1]);
        v2[1] = 2;
        bad.push(("SPDY/2", v2));
        bad.push(("huge control frame", hex("8003000100ffffff")));
        for (what, bytes) in bad {
            let mut z = HeaderDecoder::new();
            let err = decode_frame(&bytes, &mut z).expect_err(what);
            assert!(matches!(err, SpdyError::Protocol(_)), "{what}: {err}");
        }

        // Name/value blocks.
        for (what, block) in [
            ("count beyond the block", hex("000003e8000000010000000000")),
            ("count of 2^32-1", hex("ffffffff")),
            ("name length beyond the block", hex("00000001ffffffff61")),
            ("truncated value", hex("000000010000000161000000056162")),
            ("bytes after the block", hex("00000000ff")),
            ("empty", Vec::new()),
        ] {
            assert!(
                matches!(parse_block(&block), Err(SpdyError::Protocol(_))),
                "{what}"
            );
        }

        // Compressed blocks: garbage, a foreign dictionary, a bomb, a missing sync flush.
        let mut z = HeaderDecoder::new();
        let err = decode_one(
            &control(TYPE_SYN_REPLY, 0, &hex("000000017801ffff0000")),
            &mut z,
        )
        .unwrap_err();
        assert!(matches!(err, SpdyError::Compression(_)), "{err}");

        let mut foreign = Compress::new(Compression::best(), true);
        foreign.set_dictionary(b"some other dictionary").unwrap();
        let mut compressed = Vec::with_capacity(256);
        foreign
            .compress_vec(
                &build_block(&[]).unwrap(),
                &mut compressed,
                FlushCompress::Sync,
            )
            .unwrap();
        let err = HeaderDecoder::new().decode(&compressed).unwrap_err();
        assert!(err.to_string().contains("unknown dictionary"), "{err}");

        let mut bomb = Compress::new(Compression::best(), true);
        bomb.set_dictionary(&DICTIONARY).unwrap();
        let mut block = build_block(&h(&[("a", "")])).unwrap();
        block.truncate(block.len() - 4);
        put_u32(&mut block, 2 << 20);
        block.resize(block.len() + (2 << 20), b'x');
        let mut compressed = Vec::with_capacity(64 << 10);
        bomb.compress_vec(&block, &mut compressed, FlushCompress::Sync)
            .unwrap();
        assert!(compressed.len() < 16 << 10);
        let err = HeaderDecoder::new().decode(&compressed).unwrap_err();
        assert!(err.to_string().contains("inflates past"), "{err}");

        // Python's zlib output of `streamtype: stdout` without its sync-flush tail.
        let truncated = hex("78f9e3c6a7c202a62346703a2b294a4dcc851625c014");
        assert!(HeaderDecoder::new().decode(&truncated).is_err());

        // Our own frames are checked too.
        let mut enc = HeaderEncoder::new().unwrap();
        let mut out = Vec::new();
        for frame in [
            Frame::Data {
                stream_id: 0,
                flags: 0,
                data: Vec::new(),
            },
            Frame::Data {
                stream_id: 1,
                flags: 0,
                data: vec![0; MAX_FRAME_LEN + 1],
            },
            Frame::RstStream {
                stream_id: 1,
                status: 0,
            },
            Frame::SynReply {
                stream_id: 0,
                flags: 0,
                headers: Vec::new(),
            },
        ] {
            assert!(encode_frame(&frame, &mut enc, &mut out).is_err());
        }
    }

    #[test]
    fn random_input_never_panics() {
        let prefixes: [&[u8]; 4] = [
            &[0x80, 0x03, 0x00, 0x01],
            &[0x80, 0x03, 0x00, 0x02],
            &[0x80, 0x03, 0x00, 0x08],
            &[],
        ];
        for seed in 0..3000u64 {
            let len = (seed as usize * 7919) % 300;
            let mut bytes = prefixes[(seed % 4) as usize].to_vec();
            bytes.extend(noise(seed, len));
            if bytes.len() >= 8 && bytes[0] & 0x80 != 0 {
                // Make the length field fit what follows, so the payload gets parsed.
                let payload = (bytes.len() - 8) as u32;
                bytes[5..8].copy_from_slice(&payload.to_be_bytes()[1..]);
                if seed % 3 == 0 {
                    // A valid zlib header with the SPDY dictionary id, then noise.
                    bytes.splice(
                        8 + 10.min(bytes.len() - 8)..8 + 10.min(bytes.len() - 8),
                        hex("78f9e3c6a7c2"),
                    );
                    let payload = (bytes.len() - 8) as u32;
                    bytes[5..8].copy_from_slice(&payload.to_be_bytes()[1..]);
                }
            }
            let mut z = HeaderDecoder::new();
            let _ = decode_frame(&bytes, &mut z);
            let _ = parse_block(&bytes);
            let _ = z.inflate(&bytes);
        }
    }

    /// Python's zlib (`zlib.compressobj(9, DEFLATED, 15, 8, Z_DEFAULT_STRATEGY, zdict=DICT)`,
    /// then `Z_SYNC_FLUSH` after each block), compressing two blocks on one stream object as a Go
    /// client does for its first two SYN_STREAMs: `streamtype: stdout`, then `port: 8080,
    /// requestid: 0, streamtype: data, x-multi: a\0b`.
    const PY_BLOCK_1: &str = "78f9e3c6a7c202a62346703a2b294a4dcc851625c0149b925f5a02000000ffff";
    const PY_BLOCK_2: &str =
        "02257d48d95c04665b1858180069ce22485c6682d238a301866e504104ce2715bab9a5392599e092962109000000ffff";

    #[test]
    fn python_zlib_header_blocks_decode_across_frames() {
        let mut z = HeaderDecoder::new();
        assert_eq!(
            z.decode(&hex(PY_BLOCK_1)).unwrap(),
            h(&[("streamtype", "stdout")])
        );
        assert_eq!(
            z.decode(&hex(PY_BLOCK_2)).unwrap(),
            h(&[
                ("port", "8080"),
                ("requestid", "0"),
                ("streamtype", "data"),
                ("x-multi", "a"),
                ("x-multi", "b")
            ])
        );
        // The second block alone is not a zlib stream: the state really spans frames.
        assert!(HeaderDecoder::new().decode(&hex(PY_BLOCK_2)).is_err());
    }

    /// Whole frames from node-spdy's parser tests (another zlib, another framer).
    #[test]
    fn node_spdy_frames_decode() {
        let syn_stream = hex(
            "800300010000002c0000000100000000000078f9e3c6a7c202e50e507ab442a45a77d7105006b32a4804974d8cfa00000000ffff",
        );
        let frame = decode_one(&syn_stream, &mut HeaderDecoder::new()).unwrap();
        assert_eq!(
            frame,
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags: 0,
                headers: h(&[(":method", "GET"), (":path", "/")]),
            }
        );
        let syn_reply = hex("80030002000000140000000178f9e3c6a7c202a6230600000000ffff");
        let frame = decode_one(&syn_reply, &mut HeaderDecoder::new()).unwrap();
        assert_eq!(
            frame,
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: Vec::new()
            }
        );
    }

    /// What our encoder produces for the two header sets of [`PY_BLOCK_1`] / [`PY_BLOCK_2`]
    /// (byte for byte what Python's zlib produced at the same level), checked once with Python's
    /// `zlib.decompressobj(zdict=DICT)` and again below when python3 is there. A change here
    /// needs that check again, not just a new constant.
    const OUR_BLOCK_1: &str = "78f9e3c6a7c202a62346703a2b294a4dcc851625c0149b925f5a02000000ffff";
    const OUR_BLOCK_2: &str =
        "02257d48d95c04665b1858180069ce22485c6682d238a301866e504104ce2715bab9a5392599e092962109000000ffff";

    /// Inflates `blocks` with Python's zlib, one decompressobj for all; `None` without python3.
    fn python_inflate(blocks: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
        let script = "import sys, zlib\n\
                      d = zlib.decompressobj(zdict=bytes.fromhex(sys.argv[1]))\n\
                      for b in sys.argv[2:]:\n    print(d.decompress(bytes.fromhex(b)).hex())\n";
        let mut cmd = std::process::Command::new("python3");
        cmd.arg("-c").arg(script).arg(to_hex(&DICTIONARY));
        cmd.args(blocks.iter().map(|b| to_hex(b)));
        let out = cmd.output().ok()?;
        assert!(
            out.status.success(),
            "python3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(hex)
                .collect(),
        )
    }

    #[test]
    fn our_header_blocks_are_what_python_zlib_reads() {
        let first = h(&[("streamtype", "stdout")]);
        let second = h(&[
            ("port", "8080"),
            ("requestid", "0"),
            ("streamtype", "data"),
            ("x-multi", "a"),
            ("x-multi", "b"),
        ]);
        let mut enc = HeaderEncoder::new().unwrap();
        let blocks = vec![enc.encode(&first).unwrap(), enc.encode(&second).unwrap()];
        // The zlib header names the SPDY/3 dictionary, and each block ends in a sync flush.
        assert_eq!(&blocks[0][..6], &hex("78f9e3c6a7c2")[..]);
        for block in &blocks {
            assert!(block.ends_with(&[0, 0, 0xff, 0xff]));
        }
        assert_eq!(to_hex(&blocks[0]), OUR_BLOCK_1);
        assert_eq!(to_hex(&blocks[1]), OUR_BLOCK_2);
        match python_inflate(&blocks) {
            Some(inflated) => {
                assert_eq!(
                    inflated,
                    vec![build_block(&first).unwrap(), build_block(&second).unwrap()]
                );
            }
            None => eprintln!("python3 not found: checked against the pinned bytes only"),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Connections
    // -----------------------------------------------------------------------------------------

    const WAIT: Duration = Duration::from_secs(10);

    async fn within<F: Future>(what: &str, fut: F) -> F::Output {
        tokio::time::timeout(WAIT, fut)
            .await
            .unwrap_or_else(|_| panic!("timed out: {what}"))
    }

    fn pair() -> (
        Connection,
        mpsc::Receiver<Stream>,
        Connection,
        mpsc::Receiver<Stream>,
    ) {
        let (a, b) = duplex(64 << 10);
        let (client, client_in) = Connection::client(a);
        let (server, server_in) = Connection::server(b);
        (client, client_in, server, server_in)
    }

    async fn read_all(r: &mut StreamReader) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        within("read to the end", r.read_to_end(&mut out)).await?;
        Ok(out)
    }

    /// A hand-driven peer on the other end of a duplex, for wire-level checks.
    struct RawPeer {
        io: DuplexStream,
        buf: Vec<u8>,
        enc: HeaderEncoder,
        dec: HeaderDecoder,
    }

    impl RawPeer {
        fn new(io: DuplexStream) -> Self {
            RawPeer {
                io,
                buf: Vec::new(),
                enc: HeaderEncoder::new().unwrap(),
                dec: HeaderDecoder::new(),
            }
        }

        async fn send_bytes(&mut self, bytes: &[u8]) {
            self.io.write_all(bytes).await.unwrap();
        }

        async fn send(&mut self, frame: Frame) {
            let bytes = encode(&frame, &mut self.enc);
            self.send_bytes(&bytes).await;
        }

        /// The next frame the connection sends; `None` at EOF.
        async fn next(&mut self) -> Option<Frame> {
            loop {
                if let Some((frame, used)) = decode_frame(&self.buf, &mut self.dec).unwrap() {
                    self.buf.drain(..used);
                    return Some(frame.unwrap());
                }
                let mut chunk = [0u8; 4096];
                let n = within("a frame", self.io.read(&mut chunk)).await.unwrap();
                if n == 0 {
                    return None;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }
    }

    fn syn_stream(stream_id: u32, headers: &[(&str, &str)]) -> Frame {
        Frame::SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            headers: h(headers),
        }
    }

    #[tokio::test]
    async fn streams_carry_data_both_ways_and_fin_is_eof() {
        let (client, mut client_in, server, mut server_in) = pair();
        let opened = within(
            "open",
            client.open(h(&[("streamtype", "stdout"), ("Port", "80")])),
        )
        .await
        .unwrap();
        let accepted = within("accept", server_in.recv()).await.unwrap();
        assert_eq!((opened.id(), accepted.id()), (1, 1));
        assert_eq!(
            accepted.headers(),
            &h(&[("streamtype", "stdout"), ("port", "80")])
        );
        assert_eq!(accepted.header("PORT"), Some("80"));
        assert_eq!(accepted.header("nope"), None);

        let (mut c_read, mut c_write) = opened.split();
        let (mut s_read, mut s_write) = accepted.split();
        c_write.write_all(b"ping from the client").await.unwrap();
        c_write.shutdown().await.unwrap();
        assert_eq!(
            read_all(&mut s_read).await.unwrap(),
            b"ping from the client"
        );
        // Half-closed: the other direction still works, and a second read is EOF again.
        assert_eq!(within("eof", s_read.read(&mut [0u8; 8])).await.unwrap(), 0);
        s_write.write_all(b"pong").await.unwrap();
        s_write.shutdown().await.unwrap();
        assert_eq!(read_all(&mut c_read).await.unwrap(), b"pong");
        let err = c_write.write_all(b"late").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);

        // The server opens streams too, with even ids, and both sides keep counting.
        let from_server = within("server open", server.open(h(&[("a", "b")])))
            .await
            .unwrap();
        let at_client = within("client accept", client_in.recv()).await.unwrap();
        assert_eq!(
            (from_server.id(), at_client.id(), at_client.header("a")),
            (2, 2, Some("b"))
        );
        let next = within("open again", client.open(h(&[("streamtype", "stderr")])))
            .await
            .unwrap();
        assert_eq!(next.id(), 3);
        assert_eq!(
            within("accept again", server_in.recv())
                .await
                .unwrap()
                .header("streamtype"),
            Some("stderr")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_mebibyte_arrives_intact_both_ways() {
        let (client, _client_in, _server, mut server_in) = pair();
        let stream = within("open", client.open(h(&[("streamtype", "data")])))
            .await
            .unwrap();
        let (mut c_read, mut c_write) = stream.split();
        let (mut s_read, mut s_write) = within("accept", server_in.recv()).await.unwrap().split();
        let up = noise(7, 1 << 20);
        let down = noise(8, (1 << 20) + 12345);
        let (up2, down2) = (up.clone(), down.clone());
        let c_send = tokio::spawn(async move {
            c_write.write_all(&up2).await.unwrap();
            c_write.shutdown().await.unwrap();
        });
        let s_send = tokio::spawn(async move {
            s_write.write_all(&down2).await.unwrap();
            s_write.shutdown().await.unwrap();
        });
        let (got_up, got_down) = tokio::join!(read_all(&mut s_read), read_all(&mut c_read));
        assert!(got_up.unwrap() == up, "client to server bytes differ");
        assert!(got_down.unwrap() == down, "server to client bytes differ");
        c_send.await.unwrap();
        s_send.await.unwrap();
    }

    #[tokio::test]
    async fn reset_by_the_peer_fails_reads_and_writes() {
        let (client, _client_in, _server, mut server_in) = pair();
        let stream = within("open", client.open(h(&[("streamtype", "resize")])))
            .await
            .unwrap();
        let accepted = within("accept", server_in.recv()).await.unwrap();
        accepted.reset();
        let (_, mut local_write) = accepted.split();
        assert_eq!(
            local_write.write(b"x").await.unwrap_err().kind(),
            io::ErrorKind::ConnectionReset
        );

        let (mut read, mut write) = stream.split();
        let err = within("read after reset", read.read(&mut [0u8; 16]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(
            write.write(b"x").await.unwrap_err().kind(),
            io::ErrorKind::ConnectionReset
        );
        // The connection itself is fine.
        within("ping", client.ping()).await.unwrap();
    }

    #[tokio::test]
    async fn streams_nobody_takes_are_refused() {
        let (client, client_in, server, _server_in) = pair();
        drop(client_in);
        let err = within("open", server.open(h(&[("x", "y")])))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                SpdyError::Reset {
                    stream_id: 2,
                    status: RST_REFUSED_STREAM
                }
            ),
            "{err}"
        );
        within("ping", client.ping()).await.unwrap();
    }

    #[tokio::test]
    async fn dropping_an_unfinished_stream_resets_it_for_the_peer() {
        let (client, _client_in, _server, mut server_in) = pair();
        let stream = within("open", client.open(h(&[("streamtype", "stdin")])))
            .await
            .unwrap();
        let (mut s_read, _s_write) = within("accept", server_in.recv()).await.unwrap().split();
        drop(stream);
        let err = within("read", s_read.read(&mut [0u8; 4]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn pings_are_answered_both_ways() {
        let (client, _client_in, server, _server_in) = pair();
        within("client ping", client.ping()).await.unwrap();
        within("server ping", server.ping()).await.unwrap();
        within("another client ping", client.ping()).await.unwrap();
    }

    #[tokio::test]
    async fn a_peers_ping_is_echoed_verbatim_and_settings_window_updates_are_ignored() {
        let (a, b) = duplex(64 << 10);
        let (server, _incoming) = Connection::server(b);
        let mut peer = RawPeer::new(a);
        peer.send_bytes(&hex("800300060000000400000001")).await;
        assert_eq!(peer.next().await, Some(Frame::Ping { id: 1 }));
        // SETTINGS and WINDOW_UPDATE get no answer; a ping with the server's parity is taken as a
        // reply (to nothing) and not echoed; unknown control frame types are skipped.
        peer.send(Frame::Settings {
            flags: 0,
            entries: vec![(0, 7, 65536)],
        })
        .await;
        peer.send(Frame::WindowUpdate {
            stream_id: 1,
            delta: 1,
        })
        .await;
        peer.send(Frame::Ping { id: 2 }).await;
        peer.send_bytes(&control(0x0a, 0, b"credential")).await;
        peer.send(Frame::Ping { id: 3 }).await;
        assert_eq!(peer.next().await, Some(Frame::Ping { id: 3 }));
        // And the server's own ping, answered by the peer.
        let ping = tokio::spawn(async move { server.ping().await });
        let Some(Frame::Ping { id }) = peer.next().await else {
            panic!("no ping")
        };
        assert_eq!(id % 2, 0);
        peer.send(Frame::Ping { id }).await;
        within("ping answer", ping).await.unwrap().unwrap();
    }

    /// A Go client's first two SYN_STREAMs, header blocks compressed by another zlib (Python's),
    /// read through one inflate stream; each answered by a SYN_REPLY with no headers.
    #[tokio::test]
    async fn go_client_syn_streams_are_accepted_and_replied() {
        let (a, b) = duplex(64 << 10);
        let (_server, mut incoming) = Connection::server(b);
        let mut peer = RawPeer::new(a);
        for (id, block) in [(1u32, PY_BLOCK_1), (3, PY_BLOCK_2)] {
            let mut payload = Vec::new();
            put_u32(&mut payload, id);
            put_u32(&mut payload, 0);
            payload.extend_from_slice(&[0, 0]);
            payload.extend(hex(block));
            peer.send_bytes(&control(TYPE_SYN_STREAM, 0, &payload))
                .await;
        }
        let mut accepted = Vec::new();
        for (id, streamtype) in [(1, "stdout"), (3, "data")] {
            assert_eq!(
                peer.next().await,
                Some(Frame::SynReply {
                    stream_id: id,
                    flags: 0,
                    headers: Vec::new()
                })
            );
            let stream = within("accept", incoming.recv()).await.unwrap();
            assert_eq!(
                (stream.id(), stream.header("streamtype")),
                (id, Some(streamtype))
            );
            accepted.push(stream);
        }
        let data = accepted.pop().unwrap();
        assert_eq!(data.header("port"), Some("8080"));
        assert_eq!(
            data.headers()
                .iter()
                .filter(|(n, _)| n == "x-multi")
                .count(),
            2
        );
        let (mut read, mut write) = data.split();
        peer.send(Frame::Data {
            stream_id: 3,
            flags: FLAG_FIN,
            data: b"GET /".to_vec(),
        })
        .await;
        assert_eq!(read_all(&mut read).await.unwrap(), b"GET /");
        write.write_all(b"200").await.unwrap();
        write.shutdown().await.unwrap();
        assert_eq!(
            peer.next().await,
            Some(Frame::Data {
                stream_id: 3,
                flags: 0,
                data: b"200".to_vec()
            })
        );
        assert_eq!(
            peer.next().await,
            Some(Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Vec::new()
            })
        );
        // Dropping a stream we never finished resets it.
        drop(accepted);
        assert_eq!(
            peer.next().await,
            Some(Frame::RstStream {
                stream_id: 1,
                status: RST_CANCEL
            })
        );
    }

    #[tokio::test]
    async fn bad_stream_ids_are_answered_with_rst_stream() {
        let (a, b) = duplex(64 << 10);
        let (server, mut incoming) = Connection::server(b);
        let mut peer = RawPeer::new(a);
        // DATA for a stream never opened: INVALID_STREAM.
        peer.send(Frame::Data {
            stream_id: 5,
            flags: 0,
            data: b"x".to_vec(),
        })
        .await;
        assert_eq!(
            peer.next().await,
            Some(Frame::RstStream {
                stream_id: 5,
                status: RST_INVALID_STREAM
            })
        );
        // A stream id with the server's parity, then one that does not grow: PROTOCOL_ERROR.
        peer.send(syn_stream(2, &[])).await;
        assert_eq!(
            peer.next().await,
            Some(Frame::RstStream {
                stream_id: 2,
                status: RST_PROTOCOL_ERROR
            })
        );
        peer.send(syn_stream(7, &[])).await;
        assert_eq!(
            peer.next().await,
            Some(Frame::SynReply {
                stream_id: 7,
                flags: 0,
                headers: Vec::new()
            })
        );
        let stream = within("accept", incoming.recv()).await.unwrap();
        peer.send(syn_stream(7, &[])).await;
        assert_eq!(
            peer.next().await,
            Some(Frame::RstStream {
                stream_id: 7,
                status: RST_PROTOCOL_ERROR
            })
        );
        // DATA for a stream that existed (now reset) is dropped without an answer.
        stream.reset();
        assert_eq!(
            peer.next().await,
            Some(Frame::RstStream {
                stream_id: 7,
                status: RST_CANCEL
            })
        );
        peer.send(Frame::Data {
            stream_id: 7,
            flags: 0,
            data: b"late".to_vec(),
        })
        .await;
        peer.send(Frame::Data {
            stream_id: 3,
            flags: 0,
            data: b"old id".to_vec(),
        })
        .await;
        peer.send(Frame::Ping { id: 9 }).await;
        assert_eq!(peer.next().await, Some(Frame::Ping { id: 9 }));
        drop(peer);
        within("closed", server.closed()).await;
    }

    #[tokio::test]
    async fn a_protocol_error_sends_goaway_and_ends_the_connection() {
        let (a, b) = duplex(64 << 10);
        let (server, _incoming) = Connection::server(b);
        let mut peer = RawPeer::new(a);
        peer.send(syn_stream(1, &[("streamtype", "error")])).await;
        assert!(matches!(
            peer.next().await,
            Some(Frame::SynReply { stream_id: 1, .. })
        ));
        // A 2 MiB control frame.
        peer.send_bytes(&hex("8003000100200000")).await;
        assert_eq!(
            peer.next().await,
            Some(Frame::GoAway {
                last_good_stream_id: 1,
                status: GOAWAY_PROTOCOL_ERROR
            })
        );
        within("closed", server.closed()).await;
        assert!(matches!(
            server.open(Vec::new()).await,
            Err(SpdyError::Closed)
        ));
    }

    #[tokio::test]
    async fn close_delivers_queued_data_then_goaway_ends_both_sides() {
        let (client, _client_in, server, mut server_in) = pair();
        let done = within("open", client.open(h(&[("streamtype", "error")])))
            .await
            .unwrap();
        let open = within("open", client.open(h(&[("streamtype", "stdout")])))
            .await
            .unwrap();
        let (_, mut s_done) = within("accept", server_in.recv()).await.unwrap().split();
        let (_s_open_read, mut s_open) = within("accept", server_in.recv()).await.unwrap().split();
        let (mut c_done, mut c_done_write) = done.split();
        let (mut c_open, _) = open.split();
        // Queued before close: delivered before the GOAWAY.
        let payload = noise(3, 300 << 10);
        s_open.write_all(&payload).await.unwrap();
        s_done.write_all(b"status").await.unwrap();
        s_done.shutdown().await.unwrap();
        within("close", server.close()).await;
        within("server closed", server.closed()).await;
        within("client closed", client.closed()).await;

        assert_eq!(read_all(&mut c_done).await.unwrap(), b"status");
        // The stream the server never finished: all its data, then an error (not a clean EOF).
        let mut got = vec![0u8; payload.len()];
        within("read", c_open.read_exact(&mut got)).await.unwrap();
        assert!(got == payload);
        let err = within("read", c_open.read(&mut [0u8; 1]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(
            c_done_write.write(b"x").await.unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        assert_eq!(
            s_open.write(b"x").await.unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        assert!(matches!(
            client.open(Vec::new()).await,
            Err(SpdyError::Closed)
        ));
        assert!(matches!(client.ping().await, Err(SpdyError::Closed)));
        within("close again", client.close()).await;
    }

    #[tokio::test]
    async fn the_peer_going_away_ends_the_connection() {
        let (a, b) = duplex(64 << 10);
        let (server, mut incoming) = Connection::server(b);
        let mut peer = RawPeer::new(a);
        peer.send(syn_stream(1, &[])).await;
        let (mut read, _write) = within("accept", incoming.recv()).await.unwrap().split();
        peer.send(Frame::Data {
            stream_id: 1,
            flags: 0,
            data: b"last words".to_vec(),
        })
        .await;
        peer.send(Frame::GoAway {
            last_good_stream_id: 0,
            status: GOAWAY_OK,
        })
        .await;
        within("closed", server.closed()).await;
        let mut got = [0u8; 10];
        within("buffered data", read.read_exact(&mut got))
            .await
            .unwrap();
        assert_eq!(&got, b"last words");
        assert!(read.read(&mut [0u8; 1]).await.is_err());
        assert!(within("incoming ends", incoming.recv()).await.is_none());

        // And plain EOF.
        let (a, b) = duplex(1024);
        let (server, _incoming) = Connection::server(b);
        drop(a);
        within("closed on eof", server.closed()).await;
    }

    #[tokio::test]
    async fn a_slow_reader_applies_back_pressure() {
        let (client, _client_in, _server, mut server_in) = pair();
        let stream = within("open", client.open(h(&[("streamtype", "stdin")])))
            .await
            .unwrap();
        let (_, mut write) = stream.split();
        let (mut read, _) = within("accept", server_in.recv()).await.unwrap().split();
        const TOTAL: usize = 16 << 20;
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        let writer = tokio::spawn(async move {
            let chunk = noise(5, 32 << 10);
            for _ in 0..TOTAL / chunk.len() {
                write.write_all(&chunk).await.unwrap();
                counter.fetch_add(chunk.len(), Ordering::SeqCst);
            }
            write.shutdown().await.unwrap();
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Stream buffer (512 KiB) + socket buffers + the write queue (1 MiB): nowhere near 16 MiB.
        let queued = sent.load(Ordering::SeqCst);
        assert!(
            queued > 0 && queued < 3 << 20,
            "{queued} bytes accepted by a stream nobody reads"
        );
        assert_eq!(read_all(&mut read).await.unwrap().len(), TOTAL);
        within("writer", writer).await.unwrap();
    }
}
