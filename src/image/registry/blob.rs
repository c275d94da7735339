//! A blob body that verifies itself while streaming.
//!
//! Owns digest and size verification of streamed blobs: a [`BlobReader`] hashes every byte it
//! hands out and fails the read that shows a mismatch (too many bytes, too few at EOF, wrong
//! sha256) with `io::ErrorKind::InvalidData` naming the digest. It never reports EOF for a
//! stream it has not verified. Must not buffer whole blobs or know where bytes go.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

/// Bytes received so far by a [`BlobReader`], readable from another task (pull metrics).
#[derive(Debug, Clone, Default)]
pub struct ByteCounter(Arc<AtomicU64>);

impl ByteCounter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

enum State {
    Reading,
    /// Exactly `size` bytes with the right digest were read; only EOF may follow.
    Verified,
    Failed(String),
}

/// A streamed blob checked against its descriptor's digest and size.
pub struct BlobReader {
    inner: Pin<Box<dyn AsyncRead + Send>>,
    digest: String,
    size: u64,
    read: u64,
    hasher: Sha256,
    counter: ByteCounter,
    state: State,
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("digest", &self.digest)
            .field("size", &self.size)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl BlobReader {
    /// Wraps `inner`, which must yield the blob `digest` (`sha256:...`) of `size` bytes.
    pub fn new(inner: Pin<Box<dyn AsyncRead + Send>>, digest: &str, size: u64) -> BlobReader {
        BlobReader {
            inner,
            digest: digest.to_string(),
            size,
            read: 0,
            hasher: Sha256::new(),
            counter: ByteCounter::default(),
            state: State::Reading,
        }
    }

    /// Bytes received so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// A handle on the byte count that outlives moving the reader into another task.
    pub fn counter(&self) -> ByteCounter {
        self.counter.clone()
    }

    /// The digest being verified.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    fn fail(&mut self, message: String) -> io::Error {
        self.state = State::Failed(message.clone());
        io::Error::new(io::ErrorKind::InvalidData, message)
    }

    /// All `size` bytes are in: compare the digest.
    fn finish(&mut self) -> io::Result<()> {
        let actual = format!(
            "sha256:{}",
            hex(&std::mem::take(&mut self.hasher).finalize())
        );
        if actual == self.digest {
            self.state = State::Verified;
            Ok(())
        } else {
            Err(self.fail(format!(
                "blob {}: digest mismatch: content hashes to {actual}",
                self.digest
            )))
        }
    }
}

impl AsyncRead for BlobReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let State::Failed(message) = &this.state {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                message.clone(),
            )));
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match this.inner.as_mut().poll_read(cx, buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => {
                return Poll::Ready(Err(io::Error::new(
                    e.kind(),
                    format!("blob {}: {e}", this.digest),
                )))
            }
            Poll::Ready(Ok(())) => {}
        }
        let n = buf.filled().len() - before;
        if n == 0 {
            // EOF from the registry.
            return Poll::Ready(match this.state {
                State::Verified => Ok(()),
                _ if this.read == this.size => this.finish(),
                _ => Err(this.fail(format!(
                    "blob {}: truncated: got {} of {} bytes",
                    this.digest, this.read, this.size
                ))),
            });
        }
        this.read += n as u64;
        this.counter.add(n as u64);
        if matches!(this.state, State::Verified) || this.read > this.size {
            // A failed read hands out nothing (tokio's read helpers insist).
            buf.set_filled(before);
            return Poll::Ready(Err(this.fail(format!(
                "blob {}: more than the {} bytes its descriptor says",
                this.digest, this.size
            ))));
        }
        this.hasher.update(&buf.filled()[before..]);
        if this.read == this.size {
            // Verify on the last byte: consumers that stop at the end of the data (gzip, tar)
            // may never ask for EOF.
            let verified = this.finish();
            if verified.is_err() {
                buf.set_filled(before);
            }
            return Poll::Ready(verified);
        }
        Poll::Ready(Ok(()))
    }
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn reader(data: &'static [u8], digest: &str, size: u64) -> BlobReader {
        BlobReader::new(Box::pin(data), digest, size)
    }

    #[tokio::test]
    async fn passes_matching_content_and_counts() {
        let data = b"hello world";
        let mut r = reader(data, &sha256_digest(data), data.len() as u64);
        let counter = r.counter();
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, data);
        assert_eq!((r.bytes_read(), counter.get()), (11, 11));
        // Reads after EOF stay EOF.
        assert_eq!(r.read(&mut [0u8; 4]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn empty_blob() {
        let mut r = reader(b"", &sha256_digest(b""), 0);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn refuses_wrong_digest_on_the_last_byte() {
        let wrong = sha256_digest(b"other");
        let mut r = reader(b"hello", &wrong, 5);
        let err = r.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains(&wrong), "{err}");
        // The failure sticks: never a later Ok(0).
        let err = r.read(&mut [0u8; 4]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn refuses_short_and_long_content() {
        let data = b"hello";
        let d = sha256_digest(data);
        let err = reader(data, &d, 6)
            .read_to_end(&mut Vec::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("truncated"), "{err}");
        let err = reader(data, &d, 4)
            .read_to_end(&mut Vec::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("more than"), "{err}");
        // Exactly `size` correct bytes followed by extra ones.
        let mut r = reader(b"helloEXTRA", &d, 5);
        let mut buf = [0u8; 5];
        r.read_exact(&mut buf).await.unwrap();
        let err = r.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
