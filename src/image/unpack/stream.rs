//! The byte side of unpacking: remembering whether the caller's reader failed, decompressing
//! (multi-frame zstd; gzip comes from flate2) and hashing the uncompressed tar into the diff_id.
//!
//! Everything here is a streaming `Read` adapter with a bounded buffer; nothing knows about tar
//! entries or the filesystem.

use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, Read};
use std::sync::atomic::Ordering;

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use sha2::{Digest, Sha256};

/// The first error the caller's reader returned, if any.
///
/// Decoders and the tar parser wrap or re-word the errors of the reader below them, so the
/// original is kept here: it tells a failed layer stream (digest mismatch, network) apart from a
/// corrupt layer.
#[derive(Default)]
pub(super) struct SourceFailure(RefCell<Option<io::Error>>);

impl SourceFailure {
    /// Takes the reader's original error, if it failed.
    pub(super) fn take(&self) -> Option<io::Error> {
        self.0.borrow_mut().take()
    }

    /// Keeps `error` (the first one only) and returns a copy for the decoders above.
    fn record(&self, error: io::Error) -> io::Error {
        let copy = io::Error::new(error.kind(), error.to_string());
        let mut slot = self.0.borrow_mut();
        if slot.is_none() {
            *slot = Some(error);
        }
        copy
    }
}

/// The caller's reader; records its first error in a [`SourceFailure`].
pub(super) struct Source<'a, R> {
    pub(super) inner: R,
    pub(super) failure: &'a SourceFailure,
}

impl<R: Read> Read for Source<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => Err(self.failure.record(e)),
            other => other,
        }
    }
}

/// Charges the bytes a layer unpacks to against its [`super::Limits`] and remembers which
/// limit was passed first (the decoders above re-word the error).
pub(super) struct Budget<'a> {
    limits: &'a super::Limits,
    stream: Cell<u64>,
    written: Cell<u64>,
    exceeded: Cell<Option<super::Exceeded>>,
}

impl<'a> Budget<'a> {
    pub(super) fn new(limits: &'a super::Limits) -> Self {
        Budget {
            limits,
            stream: Cell::new(0),
            written: Cell::new(0),
            exceeded: Cell::new(None),
        }
    }

    /// The limit passed, if one was.
    pub(super) fn exceeded(&self) -> Option<super::Exceeded> {
        self.exceeded.get()
    }

    fn fail(&self, what: super::Exceeded) -> io::Error {
        if self.exceeded.get().is_none() {
            self.exceeded.set(Some(what));
        }
        io::Error::other(what.to_string())
    }

    /// `n` more uncompressed bytes of the layer stream.
    fn charge_stream(&self, n: u64) -> io::Result<()> {
        let used = self.stream.get() + n;
        self.stream.set(used);
        let layer = self.limits.layer;
        if layer != 0 && used > layer {
            return Err(self.fail(super::Exceeded::Layer(layer)));
        }
        if let Some((max, shared)) = &self.limits.image {
            let total = shared.fetch_add(n, Ordering::Relaxed) + n;
            if *max != 0 && total > *max {
                return Err(self.fail(super::Exceeded::Image(*max)));
            }
        }
        Ok(())
    }

    /// `n` more bytes written to files: more than the stream holds for a sparse entry, whose
    /// holes come out as zeros.
    pub(super) fn charge_written(&self, n: u64) -> io::Result<()> {
        let used = self.written.get() + n;
        self.written.set(used);
        let layer = self.limits.layer;
        if layer != 0 && used > layer {
            return Err(self.fail(super::Exceeded::Layer(layer)));
        }
        Ok(())
    }
}

/// The uncompressed stream, charged to a [`Budget`]: fails once a limit is passed.
pub(super) struct Limited<'a, 'b, R> {
    pub(super) inner: R,
    pub(super) budget: &'b Budget<'a>,
}

impl<R: Read> Read for Limited<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.budget.charge_stream(n as u64)?;
        Ok(n)
    }
}

/// Passes bytes through while hashing and counting them.
pub(super) struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> Hashing<R> {
    pub(super) fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// `("sha256:<hex>", bytes)` of everything read so far.
    pub(super) fn finish(self) -> (String, u64) {
        let hex: String = self
            .hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (format!("sha256:{hex}"), self.size)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// A zstd decoder over every frame of the stream (the format allows several, and skippable
/// frames), unlike ruzstd's `StreamingDecoder` which stops after the first. Memory is bounded by
/// ruzstd's window limit.
pub(super) struct Zstd<R> {
    source: R,
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> Zstd<R> {
    pub(super) fn new(source: R) -> Self {
        Zstd {
            source,
            decoder: FrameDecoder::new(),
            in_frame: false,
        }
    }

    /// Starts the next frame. `Ok(false)` at the end of the stream.
    fn next_frame(&mut self) -> io::Result<bool> {
        loop {
            if self.source.fill_buf()?.is_empty() {
                return Ok(false);
            }
            match self.decoder.reset(&mut self.source) {
                Ok(()) => return Ok(true),
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => self.skip(u64::from(length))?,
                Err(e) => return Err(invalid(e)),
            }
        }
    }

    fn skip(&mut self, length: u64) -> io::Result<()> {
        let skipped = io::copy(&mut (&mut self.source).take(length), &mut io::sink())?;
        if skipped != length {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated zstd skippable frame",
            ));
        }
        Ok(())
    }

    /// Checks the frame's content checksum, when it has one.
    fn end_frame(&mut self) -> io::Result<()> {
        self.in_frame = false;
        match (
            self.decoder.get_checksum_from_data(),
            self.decoder.get_calculated_checksum(),
        ) {
            (Some(stored), Some(computed)) if stored != computed => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "zstd frame checksum mismatch: stored {stored:08x}, computed {computed:08x}"
                ),
            )),
            _ => Ok(()),
        }
    }
}

impl<R: BufRead> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if !self.next_frame()? {
                    return Ok(0);
                }
                self.in_frame = true;
            }
            while self.decoder.can_collect() < buf.len() && !self.decoder.is_finished() {
                let wanted = buf.len() - self.decoder.can_collect();
                self.decoder
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(wanted))
                    .map_err(invalid)?;
            }
            let n = self.decoder.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            self.end_frame()?;
        }
    }
}

fn invalid(e: FrameDecoderError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
}
