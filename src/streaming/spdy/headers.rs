//! SPDY/3 header blocks: the name/value block and its zlib compression with the SPDY/3
//! dictionary, one zlib stream per direction per connection.
//!
//! Owns header (de)compression. Must not interpret header names.

use super::*;

/// The uncompressed name/value block: a 32-bit count, then for each pair a 32-bit length and
/// the lowercased name, a 32-bit length and the value. Repeated names are joined by NUL.
pub(super) fn build_block(headers: &[(String, String)]) -> Result<Vec<u8>, SpdyError> {
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
pub(super) fn parse_block(block: &[u8]) -> Result<Headers, SpdyError> {
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
pub(super) struct HeaderEncoder {
    pub(super) z: Compress,
}

impl HeaderEncoder {
    pub(super) fn new() -> Result<Self, SpdyError> {
        // spdystream compresses with zlib.BestCompression.
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(&DICTIONARY)
            .map_err(|e| SpdyError::Compression(format!("setting the dictionary: {e}")))?;
        Ok(HeaderEncoder { z })
    }

    /// The compressed bytes of the block for `headers`.
    pub(super) fn encode(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>, SpdyError> {
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
pub(super) struct HeaderDecoder {
    pub(super) z: Decompress,
    pub(super) finished: bool,
}

impl HeaderDecoder {
    pub(super) fn new() -> Self {
        HeaderDecoder {
            z: Decompress::new(true),
            finished: false,
        }
    }

    pub(super) fn decode(&mut self, compressed: &[u8]) -> Result<Headers, SpdyError> {
        parse_block(&self.inflate(compressed)?)
    }

    /// Inflates one frame's compressed block (all of it: the peer sync-flushes each block).
    pub(super) fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
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
