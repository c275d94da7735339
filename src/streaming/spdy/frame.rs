//! SPDY/3 frames: the [`Frame`] type, the 8-byte frame header, encoding (header blocks
//! through the connection's [`HeaderEncoder`]) and decoding with every bound checked.
//!
//! Owns the wire format of frames. Must not keep connection state.

use super::*;

/// One SPDY/3 frame, decoded (header blocks inflated and parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Frame {
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
pub(super) enum Head {
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

pub(super) fn parse_head(b: &[u8; 8]) -> Head {
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

pub(super) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(super) fn put_flags_len(out: &mut Vec<u8>, flags: u8, len: usize) -> Result<(), SpdyError> {
    if len > MAX_FRAME_LEN {
        return Err(protocol(format!(
            "frame payload of {len} bytes exceeds 24 bits"
        )));
    }
    put_u32(out, u32::from(flags) << 24 | len as u32);
    Ok(())
}

pub(super) fn put_control_head(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u8,
    len: usize,
) -> Result<(), SpdyError> {
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    put_flags_len(out, flags, len)
}

pub(super) fn check_stream_id(stream_id: u32) -> Result<(), SpdyError> {
    if stream_id == 0 || stream_id > MAX_STREAM_ID {
        return Err(protocol(format!("invalid stream id {stream_id}")));
    }
    Ok(())
}

/// Appends the wire form of `frame` to `out`; header blocks go through `z`.
pub(super) fn encode_frame(
    frame: &Frame,
    z: &mut HeaderEncoder,
    out: &mut Vec<u8>,
) -> Result<(), SpdyError> {
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
pub(super) struct Fields<'a> {
    pub(super) b: &'a [u8],
    pub(super) what: &'static str,
}

impl<'a> Fields<'a> {
    pub(super) fn new(b: &'a [u8], what: &'static str) -> Self {
        Fields { b, what }
    }

    pub(super) fn bytes(&mut self, n: usize) -> Result<&'a [u8], SpdyError> {
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

    pub(super) fn u8(&mut self) -> Result<u8, SpdyError> {
        Ok(self.bytes(1)?[0])
    }

    pub(super) fn u32(&mut self) -> Result<u32, SpdyError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A 31-bit field (stream ids, window deltas): the reserved high bit is ignored.
    pub(super) fn u31(&mut self) -> Result<u32, SpdyError> {
        Ok(self.u32()? & 0x7fff_ffff)
    }

    pub(super) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.b)
    }

    pub(super) fn remaining(&self) -> usize {
        self.b.len()
    }
}

pub(super) fn exact_len(what: &str, payload: &[u8], want: usize) -> Result<(), SpdyError> {
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
pub(super) fn decode_control(
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
pub(super) fn decode_frame(
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

pub(super) fn check_control_head(version: u16, len: usize) -> Result<(), SpdyError> {
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
