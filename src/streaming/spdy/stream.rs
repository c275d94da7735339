//! Streams of an SPDY connection: [`Stream`], its reading and writing halves, and the handle
//! that resets a stream dropped without a half-close.
//!
//! Owns per-stream I/O. Must not touch the socket (the connection's tasks do).

use super::*;

/// Shared by a stream's `Stream` / `StreamReader` / `StreamWriter`. When the last one goes, the
/// stream leaves the table, and if we never half-closed it the peer gets RST_STREAM(CANCEL).
pub(super) struct Handle {
    pub(super) id: u32,
    pub(super) shared: Arc<Shared>,
    pub(super) flags: Arc<StreamFlags>,
}

impl Handle {
    pub(super) fn reset(&self, status: u32) {
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

    pub(super) fn writable(&self) -> io::Result<()> {
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
    pub(super) handle: Arc<Handle>,
    pub(super) headers: Headers,
    pub(super) rx: mpsc::Receiver<Vec<u8>>,
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
    pub(super) handle: Arc<Handle>,
    pub(super) rx: mpsc::Receiver<Vec<u8>>,
    pub(super) chunk: Vec<u8>,
    pub(super) pos: usize,
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

pub(super) type Acquire = Pin<
    Box<dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> + Send + Sync>,
>;

/// The sending half: each write becomes DATA frames of at most 32 KiB, queued in order behind
/// a bounded budget (writes wait while 32 frames are queued); `poll_shutdown` sends an empty DATA
/// frame with FIN (half-close). `poll_flush` has nothing to do: frames are queued in order and
/// [`Connection::close`] writes every queued frame before its GOAWAY. Writes after the
/// connection ended fail with `BrokenPipe`, after a reset with `ConnectionReset`.
pub struct StreamWriter {
    pub(super) handle: Arc<Handle>,
    pub(super) acquire: Option<Acquire>,
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

    pub(super) fn poll_permit(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<OwnedSemaphorePermit>> {
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
