//! Wire contracts owned by crius: the monitor control protocol (`monitor.proto`).
//!
//! Owns the generated message types and the framing (varint length prefix).
//! Must not grow transport or runtime logic: both ends bring their own I/O.

/// Generated types of `crius.monitor.v1`.
pub mod monitor {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/crius.monitor.v1.rs"));
}

use prost::Message;

/// Largest frame either end accepts; larger frames are refused, never allocated.
pub const MAX_FRAME: usize = 1 << 20;

/// Errors of the framing layer.
#[derive(Debug)]
pub enum FrameError {
    /// The peer announced a frame larger than [`MAX_FRAME`].
    TooLarge(usize),
    /// The bytes did not decode as the expected message.
    Decode(prost::DecodeError),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge(n) => write!(f, "frame of {n} bytes exceeds limit of {MAX_FRAME}"),
            FrameError::Decode(e) => write!(f, "decode frame: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Encodes `msg` as one length-delimited frame.
pub fn encode_frame<M: Message>(msg: &M) -> Vec<u8> {
    msg.encode_length_delimited_to_vec()
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame, else the message and
/// the number of bytes it used.
pub fn decode_frame<M: Message + Default>(buf: &[u8]) -> Result<Option<(M, usize)>, FrameError> {
    let mut cursor = buf;
    let len = match prost::encoding::decode_varint(&mut cursor) {
        Ok(len) => len as usize,
        // A varint is at most 10 bytes; fewer bytes than that may just be incomplete.
        Err(_) if buf.len() < 10 => return Ok(None),
        Err(e) => return Err(FrameError::Decode(e)),
    };
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let header = buf.len() - cursor.len();
    if cursor.len() < len {
        return Ok(None);
    }
    let msg = M::decode(&cursor[..len]).map_err(FrameError::Decode)?;
    Ok(Some((msg, header + len)))
}

#[cfg(test)]
mod tests {
    use super::monitor::{request, PingRequest, Request};
    use super::*;

    #[test]
    fn frame_round_trip_and_partial_input() {
        let req = Request {
            id: 7,
            kind: Some(request::Kind::Ping(PingRequest {})),
        };
        let mut bytes = encode_frame(&req);
        bytes.extend_from_slice(&encode_frame(&req));
        let one = bytes.len() / 2;
        assert!(decode_frame::<Request>(&bytes[..one - 1])
            .unwrap()
            .is_none());
        let (got, used) = decode_frame::<Request>(&bytes).unwrap().unwrap();
        assert_eq!(got, req);
        assert_eq!(used, one);
    }

    #[test]
    fn oversized_frame_is_refused() {
        let mut bytes = Vec::new();
        prost::encoding::encode_varint((MAX_FRAME + 1) as u64, &mut bytes);
        assert!(matches!(
            decode_frame::<Request>(&bytes),
            Err(FrameError::TooLarge(_))
        ));
    }
}
