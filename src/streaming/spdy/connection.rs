//! An SPDY connection: the reader and writer tasks over the upgraded byte stream, the stream
//! table, SYN_REPLY/RST_STREAM/PING/GOAWAY handling and back-pressure.
//!
//! Owns connection state. Must not know what streams carry.

use super::*;

/// Remote half of a stream, as its reader sees it once the buffered data is consumed.
pub(super) const REMOTE_OPEN: u8 = 0;
/// The peer half-closed (FIN): the reader sees EOF.
pub(super) const REMOTE_FIN: u8 = 1;
/// The stream was reset (either side): the reader sees `ConnectionReset`.
pub(super) const REMOTE_RESET: u8 = 2;
/// The connection ended before the peer's FIN: the reader sees `UnexpectedEof`.
pub(super) const REMOTE_GONE: u8 = 3;

/// Per-stream flags shared by the stream's handles and its table entry.
pub(super) struct StreamFlags {
    pub(super) remote: AtomicU8,
    /// We sent FIN (or may not send: unidirectional from the peer).
    pub(super) local_closed: AtomicBool,
    /// RST_STREAM sent or received.
    pub(super) reset: AtomicBool,
}

impl StreamFlags {
    pub(super) fn new(remote_fin: bool, local_closed: bool) -> Arc<Self> {
        Arc::new(StreamFlags {
            remote: AtomicU8::new(if remote_fin { REMOTE_FIN } else { REMOTE_OPEN }),
            local_closed: AtomicBool::new(local_closed),
            reset: AtomicBool::new(false),
        })
    }

    /// Records how the remote half ended, unless it already had.
    pub(super) fn end_remote(&self, how: u8) {
        let _ = self
            .remote
            .compare_exchange(REMOTE_OPEN, how, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// A stream in the connection's table.
pub(super) struct Entry {
    pub(super) flags: Arc<StreamFlags>,
    /// Where incoming DATA goes; `None` once the peer half-closed.
    pub(super) data: Option<mpsc::Sender<Vec<u8>>>,
    /// For a stream we opened: resolved by the peer's SYN_REPLY or RST_STREAM.
    pub(super) reply: Option<oneshot::Sender<Result<(), SpdyError>>>,
}

pub(super) struct State {
    pub(super) streams: HashMap<u32, Entry>,
    /// The id our next stream gets (odd for a client, even for a server).
    pub(super) next_id: u32,
    /// The highest stream id the peer opened (0: none yet).
    pub(super) last_peer_id: u32,
    pub(super) next_ping_id: u32,
    pub(super) pings: HashMap<u32, oneshot::Sender<()>>,
}

/// A frame for the writer task.
pub(super) struct Outgoing {
    pub(super) frame: Frame,
    /// Released once written: the budget that bounds the queue.
    pub(super) permit: Option<OwnedSemaphorePermit>,
    /// Close the connection after writing this frame (our GOAWAY).
    pub(super) last: bool,
}

pub(super) struct Shared {
    pub(super) server: bool,
    pub(super) state: Mutex<State>,
    /// Every outgoing frame, in order. Unbounded as a channel; bounded by the two budgets (DATA
    /// from writers, frames the peer provokes) and by the application for the rest (one
    /// SYN_STREAM / RST / FIN per stream).
    pub(super) out: mpsc::UnboundedSender<Outgoing>,
    pub(super) data_budget: Arc<Semaphore>,
    pub(super) peer_budget: Arc<Semaphore>,
    /// `close` was called (or a protocol error is being reported): no new streams or writes.
    pub(super) closing: AtomicBool,
    /// The connection has ended.
    pub(super) ended: AtomicBool,
    pub(super) ended_tx: watch::Sender<bool>,
}

impl Shared {
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Parity of the ids this side allocates (streams and pings): 0 for a server, 1 for a client.
    pub(super) fn own_parity(&self) -> u32 {
        u32::from(!self.server)
    }

    pub(super) fn send(&self, frame: Frame) {
        let _ = self.out.send(Outgoing {
            frame,
            permit: None,
            last: false,
        });
    }

    /// Queues a frame the peer made us send, waiting for room in the peer's budget.
    pub(super) async fn send_for_peer(&self, frame: Frame) {
        if let Ok(permit) = self.peer_budget.clone().acquire_owned().await {
            let _ = self.out.send(Outgoing {
                frame,
                permit: Some(permit),
                last: false,
            });
        }
    }

    pub(super) fn is_open(&self) -> bool {
        !self.ended.load(Ordering::SeqCst) && !self.closing.load(Ordering::SeqCst)
    }

    /// Registers a new stream and returns its handle and receiving end.
    pub(super) fn add_stream(
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
    pub(super) fn forget_if_done(&self, st: &mut State, id: u32) {
        let done = st.streams.get(&id).is_some_and(|e| {
            e.data.is_none() && e.reply.is_none() && e.flags.local_closed.load(Ordering::SeqCst)
        });
        if done {
            st.streams.remove(&id);
        }
    }

    /// The peer half-closed `id`.
    pub(super) fn remote_fin(&self, id: u32) {
        let mut st = self.state();
        if let Some(entry) = st.streams.get_mut(&id) {
            entry.flags.end_remote(REMOTE_FIN);
            entry.data = None;
        }
        self.forget_if_done(&mut st, id);
    }

    /// Was `id` ever opened on this connection (by either side)?
    pub(super) fn was_opened(&self, st: &State, id: u32) -> bool {
        if id % 2 == self.own_parity() {
            id < st.next_id
        } else {
            id <= st.last_peer_id
        }
    }

    /// Ends the connection: every stream's reader sees the end, writers and `open` fail.
    pub(super) fn end(&self, why: &str) {
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

    pub(super) async fn wait_ended(&self) {
        let mut rx = self.ended_tx.subscribe();
        let _ = rx.wait_for(|ended| *ended).await;
    }

    /// Queues GOAWAY(`status`) after everything queued so far and waits (bounded) for the
    /// writer to send it and end the connection.
    pub(super) async fn close_with(&self, status: u32) {
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
    pub(super) shared: Arc<Shared>,
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

    pub(super) fn start<T>(io: T, server: bool) -> (Connection, mpsc::Receiver<Stream>)
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
pub(super) enum ReadEnd {
    Eof,
    GoAway,
}

pub(super) async fn run_reader<R>(
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

pub(super) async fn read_loop<R>(
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
pub(super) enum Target {
    Deliver(mpsc::Sender<Vec<u8>>),
    /// A stream that exists or existed, but whose data nobody will read.
    Drop,
    /// An id that was never opened.
    Invalid,
}

pub(super) async fn read_data<R>(
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

pub(super) async fn on_control(
    shared: &Arc<Shared>,
    frame: Frame,
    incoming: &mpsc::Sender<Stream>,
) {
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

pub(super) async fn on_syn_stream(
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

pub(super) async fn run_writer<W>(
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

pub(super) async fn write_loop<W>(
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
