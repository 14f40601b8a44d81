//! The TCP side of a shard: accept loops on the shared port (SO_REUSEPORT)
//! and on the shard's own port, one task per connection that reads frames,
//! runs requests concurrently (bounded per connection) and writes responses
//! as they complete, matched by id. Also the `/metrics` endpoint.
//!
//! Sketch (one core, loopback): a request costs ~2 µs of kernel time for
//! its share of a `recv` and a `send`; what the read loop adds must stay
//! well below that. So a request the engine answers on its first poll is
//! answered inline: decoded in place, its response written into one
//! output buffer (the commonest responses directly, the others through
//! the connection's reused flatbuffer builder), which the read loop sends
//! with a single `send` per batch. Requests that block (durable writes,
//! disk reads, the mesh) wait in the connection's set of waiting requests,
//! which the read loop polls whenever it would wait and between batches;
//! their responses go out with the read loop's next send. Whatever a full
//! socket left unsent goes out from the connection's writer task.
//!
//! Memory per connection is bounded: the read buffer holds at most one
//! frame (`frame_bytes_max`) plus one read; at most
//! `inflight_per_connection_max` requests wait, and reading pauses while
//! that many wait or while `OUTBOX_BYTES_MAX` of responses are unsent, so
//! a client that never reads its responses stops being read from instead
//! of growing the server.

use crate::metrics::{render_prometheus, OpKind, ShardMetrics};
use crate::shard::{written_response, Handling, Shard, Started};
use bytes::{Buf, BytesMut};
use flatbuffers::FlatBufferBuilder;
use futures_lite::io::WriteHalf;
use futures_lite::Stream;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use futures_util::stream::FuturesUnordered;
use glommio::channels::local_channel;
use glommio::net::Preallocated;
use glommio::net::{TcpListener, TcpStream};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;
use tessera_engine::QueuedWrite;
use tessera_protocol::frame::{peek_frame, put_frame, LENGTH_BYTES};
use tessera_protocol::message::decode_request;
use tessera_protocol::{ErrorCode, Request, Response, Token};

const READ_CHUNK_BYTES: usize = 64 << 10;

/// The socket's receive buffer is `READ_CHUNK_BYTES`; the read loop copies
/// out of it in pieces of this size (a read of at least the buffer's size
/// would bypass it, and with it the completion reads).
const COPY_CHUNK_BYTES: usize = 16 << 10;

/// Requests decoded ahead of running them (see `Shard::prefetch`).
const DECODE_AHEAD: usize = crate::shard::PREFETCH_MAX;

/// Output and builder buffers larger than this are dropped after use
/// instead of kept for the connection's next responses.
const BUFFER_KEEP_BYTES_MAX: usize = 256 << 10;

fn op_kind(r: &Request) -> OpKind {
    match r {
        Request::Hello { .. } => OpKind::Hello,
        Request::Ping => OpKind::Ping,
        Request::Get { .. } => OpKind::Get,
        Request::Put { .. } => OpKind::Put,
        Request::Delete { .. } => OpKind::Delete,
        Request::Scan { .. } => OpKind::Scan,
        Request::Batch { .. } => OpKind::Batch,
        Request::Stats => OpKind::Stats,
        Request::Topology => OpKind::Topology,
        Request::ReadAt { .. } => OpKind::ReadAt,
        Request::Txn { .. } => OpKind::Txn,
    }
}

/// Accepts until the shard shuts down.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                if shard.shutting_down.get() {
                    return;
                }
                tracing::warn!(shard = shard.id, error = %e, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if shard.shutting_down.get() {
            return;
        }
        let open = shard.metrics.connections_open.get();
        if open as usize >= shard.config.connections_max {
            ShardMetrics::add(&shard.metrics.connections_refused, 1);
            let refusal = Response::error(ErrorCode::Unavailable, "too many connections").encode(0);
            let mut frame = Vec::new();
            put_frame(&mut frame, &refusal);
            glommio::spawn_local(async move {
                let mut stream = stream;
                let _ = stream.write_all(&frame).await;
                let _ = stream.close().await;
            })
            .detach();
            continue;
        }
        let served = shard.clone();
        shard.spawn_connection(async move {
            let shard = served;
            ShardMetrics::add(&shard.metrics.connections_open, 1);
            if let Err(e) = serve(&shard, stream).await {
                tracing::debug!(shard = shard.id, error = %e, "connection closed");
            }
            shard
                .metrics
                .connections_open
                .set(shard.metrics.connections_open.get() - 1);
        });
    }
}

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves one accepted connection: plain, or TLS once its handshake is
/// done (`--tls-cert`).
async fn serve(shard: &Rc<Shard>, stream: TcpStream) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    // The address the client reached: a shard on every address is
    // advertised at it (`Shard::topology`).
    let seen_at = stream.local_addr().ok().map(|a| a.ip());
    // Buffered, so that glommio can hand the kernel a read to complete
    // (an io_uring `RECV`) instead of arming a poll and then calling `recv`
    // itself: for a connection that sends one request at a time this is
    // one submission in place of a submission and a syscall, ~10% more
    // unpipelined requests a second on one core. A connection that streams
    // (reads of 1 KiB and more) stays on readiness and `recv`, which
    // coalesces bursts better (docs/architecture.md, vendor PATCHES.md).
    let stream = stream.buffered_with(Preallocated::new(READ_CHUNK_BYTES));
    let tls = shard.credentials.borrow().tls.clone();
    let Some(tls) = tls else {
        return serve_connection(shard, stream, seen_at).await;
    };
    let handshake = futures_rustls::TlsAcceptor::from(tls.config).accept(stream);
    let timeout = async {
        glommio::timer::sleep(TLS_HANDSHAKE_TIMEOUT).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        ))
    };
    match futures_lite::future::or(handshake, timeout).await {
        Ok(stream) => serve_connection(shard, stream, seen_at).await,
        Err(e) => {
            ShardMetrics::add(&shard.metrics.tls_handshake_failures, 1);
            tracing::debug!(shard = shard.id, error = %e, "TLS handshake failed");
            Err(e)
        }
    }
}

/// What a connection reads requests from and writes responses to.
trait Conn: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static {
    /// Whether bytes a write accepted may wait inside the stream until a
    /// flush (TLS encrypts into records it sends as the socket takes them).
    const BUFFERS_WRITES: bool;
}

type Plain = TcpStream<Preallocated>;

impl Conn for Plain {
    const BUFFERS_WRITES: bool = false;
}

impl Conn for futures_rustls::server::TlsStream<Plain> {
    const BUFFERS_WRITES: bool = true;
}

/// Response frames waiting to be sent, in completion order, by the read
/// loop ([`Outbox::send_now`]) or the connection's writer task. The read
/// loop encodes every response here: at once for requests the shard
/// answers without blocking (reads from memory, writes in `none` mode),
/// the others when they finish ([`WaitingSet`]).
struct Outbox<S: Conn> {
    frames: RefCell<Vec<u8>>,
    /// Builds every response of the connection (a builder per blocked
    /// request's response was an allocation each).
    builder: RefCell<FlatBufferBuilder<'static>>,
    /// The socket's sending half. The writer task holds it while it sends
    /// (what it sends was queued before anything still in `frames`); it is
    /// here otherwise, for [`Outbox::send_now`].
    socket: Cell<Option<WriteHalf<S>>>,
}

impl<S: Conn> Outbox<S> {
    /// [`Outbox::send_now`] if frames are queued; what it could not send
    /// goes to the writer task.
    async fn send_queued(&self, shard: &Shard, wake: &local_channel::LocalSender<()>) {
        let queued = !self.frames.borrow().is_empty();
        if queued && !self.send_now(shard).await {
            let _ = wake.try_send(());
        }
    }

    /// Sends the queued frames from the calling task with one non-blocking
    /// write, if the writer task is not sending; returns whether all went
    /// out. What did not stays queued for the writer task, as does an
    /// error, which the writer task then meets and reports.
    ///
    /// The read loop calls this before it waits for more requests: for a
    /// connection with one request in flight, waking the writer task to
    /// send each response cost a task switch and a channel message per
    /// request (~3% of an unpipelined shard's CPU).
    async fn send_now(&self, shard: &Shard) -> bool {
        let Some(mut socket) = self.socket.take() else {
            return false;
        };
        let mut frames = std::mem::take(&mut *self.frames.borrow_mut());
        // Polled once and not awaited further: nothing else runs until the
        // socket and the frames are back.
        let written = futures_lite::future::poll_once(socket.write(&frames)).await;
        if let Some(Ok(n)) = written {
            ShardMetrics::add(&shard.metrics.bytes_out, n as u64);
            frames.drain(..n);
        }
        // What TLS took may wait in its records until flushed.
        let flushed = !S::BUFFERS_WRITES
            || matches!(
                futures_lite::future::poll_once(socket.flush()).await,
                Some(Ok(()))
            );
        self.socket.set(Some(socket));
        let all_sent = frames.is_empty() && flushed;
        if all_sent && frames.capacity() > BUFFER_KEEP_BYTES_MAX {
            // Idle connections should not each hold a burst's worth.
            frames = Vec::new();
        }
        let mut queued = self.frames.borrow_mut();
        if !queued.is_empty() {
            frames.extend_from_slice(&queued);
        }
        *queued = frames;
        all_sent
    }
}

/// Bytes of encoded responses a connection may hold before it stops reading
/// requests (a client that does not read its responses stops being read).
const OUTBOX_BYTES_MAX: usize = 1 << 20;

async fn serve_connection<S: Conn>(
    shard: &Rc<Shard>,
    stream: S,
    seen_at: Option<std::net::IpAddr>,
) -> std::io::Result<()> {
    let (mut reader, writer) = futures_lite::io::split(stream);
    let outbox = Rc::new(Outbox {
        // Output buffers grow with the responses: reserved up front, two of
        // 64 KiB per connection were resident (in huge pages) for
        // connections that never sent a request.
        frames: RefCell::new(Vec::new()),
        builder: RefCell::new(FlatBufferBuilder::with_capacity(1024)),
        socket: Cell::new(Some(writer)),
    });
    // Wake-ups only: a full channel means a wake-up is already pending.
    let (wake, wakes) = local_channel::new_bounded::<()>(1);
    let (drained, drains) = local_channel::new_bounded::<()>(1);
    let write_task = {
        let (outbox, shard) = (outbox.clone(), shard.clone());
        glommio::spawn_local(async move {
            let mut sending = Vec::new();
            let mut reader_done = false;
            loop {
                std::mem::swap(&mut sending, &mut *outbox.frames.borrow_mut());
                if sending.is_empty() {
                    if S::BUFFERS_WRITES {
                        // The read loop's last send may have left records
                        // unflushed.
                        let mut socket = outbox.socket.take().expect("socket in place");
                        let flushed = socket.flush().await;
                        outbox.socket.set(Some(socket));
                        flushed?;
                    }
                    if reader_done {
                        break;
                    }
                    // `None`: the reader is gone; send what it left, then stop.
                    reader_done = wakes.recv().await.is_none();
                    continue;
                }
                let _ = drained.try_send(());
                ShardMetrics::add(&shard.metrics.bytes_out, sending.len() as u64);
                // The reader gives the socket back before it yields.
                let mut socket = outbox.socket.take().expect("socket in place");
                let mut sent = socket.write_all(&sending).await;
                if S::BUFFERS_WRITES && sent.is_ok() {
                    sent = socket.flush().await;
                }
                outbox.socket.set(Some(socket));
                sent?;
                sending.clear();
                if sending.capacity() > BUFFER_KEEP_BYTES_MAX {
                    // Idle connections should not each hold a burst's worth.
                    sending = Vec::new();
                }
            }
            let mut socket = outbox.socket.take().expect("socket in place");
            socket.flush().await?;
            std::io::Result::Ok(())
        })
    };
    let inflight_max = shard.config.inflight_per_connection_max;
    let mut waiting = WaitingSet::default();
    let limit = shard.config.limits.frame_bytes_max;
    // Frames are assembled here from the copied pieces; it grows for
    // larger frames and bursts.
    let mut buf = BytesMut::with_capacity(COPY_CHUNK_BYTES);
    let mut chunk = vec![0u8; COPY_CHUNK_BYTES];
    let mut decoded = VecDeque::with_capacity(DECODE_AHEAD);
    let mut too_large = None;
    // The batch's requests arrived together; the answers given inline
    // leave together once it is done: their latencies are recorded then,
    // with one clock read for the batch instead of two per request.
    let mut batch_start = Instant::now();
    let mut arrived_ms = None;
    let mut unrecorded: Vec<(OpKind, bool)> = Vec::with_capacity(DECODE_AHEAD);
    // With `--auth-token-file`, nothing but a Hello carrying the token is
    // served until one has arrived.
    // The token as the connection began: a reload changes it for new
    // connections only.
    let token = shard.credentials.borrow().token.clone();
    let mut authenticated = token.is_none();
    let result = 'read: loop {
        let mut read = reader.read(&mut chunk);
        let read = match futures_lite::future::poll_once(&mut read).await {
            Some(read) => read,
            None => loop {
                // About to wait for the peer: the answers so far go out
                // now. Not at the end of each batch: a peer that streams
                // has its next requests waiting, and their answers share
                // the send.
                outbox.send_queued(shard, &wake).await;
                // Then the peer's next bytes, or requests finishing.
                let next = futures_lite::future::poll_fn(|cx| {
                    if let Poll::Ready(read) = Pin::new(&mut read).poll(cx) {
                        return Poll::Ready(Some(read));
                    }
                    match waiting.answer_finished(cx, shard, &outbox) {
                        0 => Poll::Pending,
                        _ => Poll::Ready(None),
                    }
                });
                if let Some(read) = next.await {
                    break read;
                }
            },
        };
        let n = match read {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        ShardMetrics::add(&shard.metrics.bytes_in, n as u64);
        buf.extend_from_slice(&chunk[..n]);
        loop {
            // One read can hold thousands of small requests: the bound
            // is checked before each, not once per read.
            while outbox.frames.borrow().len() >= OUTBOX_BYTES_MAX {
                let _ = wake.try_send(());
                if drains.recv().await.is_none() {
                    break 'read Ok(());
                }
            }
            if decoded.is_empty() {
                record_batch(shard, batch_start, &mut unrecorded);
                if !waiting.is_empty() {
                    // Between batches, so that a peer that never lets the
                    // read loop wait still hears of its finished requests.
                    futures_lite::future::poll_fn(|cx| {
                        Poll::Ready(waiting.answer_finished(cx, shard, &outbox))
                    })
                    .await;
                }
                // Decode a batch, then let its reads start their cache
                // misses together before any of them runs.
                batch_start = Instant::now();
                while decoded.len() < DECODE_AHEAD && too_large.is_none() {
                    // Decoded in place: the request copies what it keeps.
                    match peek_frame(&mut buf, limit) {
                        Ok(Some(len)) => {
                            let frame = &buf[LENGTH_BYTES..LENGTH_BYTES + len];
                            decoded.push_back(decode_request(frame, &shard.config.limits));
                            buf.advance(LENGTH_BYTES + len);
                        }
                        Ok(None) => break,
                        Err(e) => too_large = Some(e),
                    }
                }
                if authenticated {
                    shard.prefetch(
                        decoded
                            .iter()
                            .filter_map(|r| r.as_ref().ok().map(|(_, r)| r)),
                    );
                }
                // One wall-clock reading for the batch's writes, made after
                // they all arrived (a reading per write was ~1.5% of the
                // CPU under 16-deep SETs).
                arrived_ms = decoded
                    .iter()
                    .any(|r| {
                        matches!(
                            r,
                            Ok((
                                _,
                                Request::Put { .. }
                                    | Request::Delete { .. }
                                    | Request::Batch { .. }
                            ))
                        )
                    })
                    .then(tessera_engine::clock::wall_ms);
            }
            let start = batch_start;
            let Some(request) = decoded.pop_front() else {
                let Some(too_large) = too_large.take() else {
                    break;
                };
                // The stream cannot be resynchronised: answer and close.
                let response = Response::error(ErrorCode::BadFrame, too_large.to_string());
                let now = Instant::now();
                answer(shard, (OpKind::Invalid, now, now), 0, &response, &outbox);
                break 'read Ok(());
            };
            let (id, request) = match request {
                Ok(decoded) => decoded,
                Err(e) => {
                    let response = Response::error(e.code, e.message);
                    let at = (OpKind::Invalid, start, Instant::now());
                    answer(shard, at, e.id, &response, &outbox);
                    continue;
                }
            };
            let kind = op_kind(&request);
            if !authenticated {
                match authenticate(shard, token.as_ref(), &request) {
                    Ok(()) => authenticated = true,
                    Err((response, close)) => {
                        answer(shard, (kind, start, Instant::now()), id, &response, &outbox);
                        if close {
                            break 'read Ok(());
                        }
                        continue;
                    }
                }
            }
            // Most reads, and writes in `none` mode, are answered at once,
            // without a future; most other requests complete on their first
            // poll. Either is answered here, with no task, channel or
            // allocation per response.
            let response = match request {
                Request::Topology => Started::Now(shard.topology(seen_at)),
                request => shard.start(request, arrived_ms),
            };
            let response = match response {
                Started::Now(response) => response,
                Started::Queued(write) => {
                    waiting.make_room(shard, &outbox, &wake, inflight_max).await;
                    waiting.queued.push_back((id, kind, start, write));
                    continue;
                }
                Started::Later(mut handling) => {
                    match futures_lite::future::poll_once(&mut handling).await {
                        Some(response) => response,
                        None => {
                            waiting.make_room(shard, &outbox, &wake, inflight_max).await;
                            waiting.set.push(Waiting {
                                id,
                                kind,
                                start,
                                handling,
                            });
                            continue;
                        }
                    }
                }
            };
            unrecorded.push((kind, matches!(response, Response::Error { .. })));
            encode(id, &response, &outbox);
        }
        record_batch(shard, batch_start, &mut unrecorded);
    };
    record_batch(shard, batch_start, &mut unrecorded);
    // Let the waiting requests finish and their responses go out.
    waiting
        .answer_until(shard, &outbox, &wake, WaitingSet::is_empty)
        .await;
    drop(wake);
    let written = write_task.await;
    result.and(written)
}

/// Lets a request through on a connection that has not authenticated yet:
/// only a Hello with the server's token. Otherwise returns the refusal and
/// whether to close the connection (after a wrong token: a client guessing
/// tokens pays a connection per guess).
fn authenticate(
    shard: &Shard,
    expected: Option<&Token>,
    request: &Request,
) -> Result<(), (Response, bool)> {
    use subtle::ConstantTimeEq;
    let Some(expected) = expected else {
        return Ok(());
    };
    let Request::Hello { token, .. } = request else {
        return Err((
            Response::error(
                ErrorCode::Unauthenticated,
                "this server requires a token: send Hello with it first",
            ),
            false,
        ));
    };
    // Constant time in the token's bytes (its length is not secret).
    let given = token.as_ref().map_or(&[][..], |t| t.0.as_bytes());
    if bool::from(given.ct_eq(expected.0.as_bytes())) {
        return Ok(());
    }
    ShardMetrics::add(&shard.metrics.auth_failures, 1);
    let why = if token.is_some() {
        "wrong token"
    } else {
        "this server requires a token and the Hello carried none"
    };
    tracing::warn!(shard = shard.id, "refused a connection's Hello: {why}");
    Err((Response::error(ErrorCode::Unauthenticated, why), true))
}

/// A request that did not finish on its first poll.
struct Waiting {
    id: u64,
    kind: OpKind,
    start: Instant,
    handling: Handling,
}

impl Future for Waiting {
    type Output = (u64, OpKind, Instant, Response);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = std::task::ready!(self.handling.as_mut().poll(cx));
        Poll::Ready((self.id, self.kind, self.start, response))
    }
}

/// A connection's requests that did not finish on their first poll
/// (durable writes, disk reads, the mesh), polled by the read loop
/// whenever it would wait. A request that finishes wakes the read loop
/// and only its own entry is polled again. A task per such request cost
/// its spawn, a wake-up and a poll of its own, a permit, and a message to
/// the writer task per response: ~10% of the shard's CPU under 16-deep
/// durable writes, where a group commit finishes ~400 requests at once.
///
/// Durable writes the engine queued without a future
/// ([`Started::Queued`]) wait in `queued`, in the order they were queued,
/// which is the order their groups complete: only the oldest is watched.
#[derive(Default)]
struct WaitingSet {
    set: FuturesUnordered<Waiting>,
    queued: VecDeque<(u64, OpKind, Instant, QueuedWrite)>,
}

impl WaitingSet {
    fn len(&self) -> usize {
        self.set.len() + self.queued.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Answers the requests that have finished, with one clock reading for
    /// all of them; returns how many. The rest wake `cx` when they finish.
    fn answer_finished<S: Conn>(
        &mut self,
        cx: &mut Context<'_>,
        shard: &Shard,
        outbox: &Outbox<S>,
    ) -> usize {
        let mut answered = 0;
        let mut now = None;
        while let Some((_, _, _, write)) = self.queued.front_mut() {
            let Poll::Ready(written) = write.poll_done(cx) else {
                break;
            };
            let (id, kind, start, _) = self.queued.pop_front().expect("a front");
            let now = *now.get_or_insert_with(Instant::now);
            answer(
                shard,
                (kind, start, now),
                id,
                &written_response(written),
                outbox,
            );
            answered += 1;
        }
        while let Poll::Ready(Some((id, kind, start, response))) =
            Pin::new(&mut self.set).poll_next(cx)
        {
            let now = *now.get_or_insert_with(Instant::now);
            answer(shard, (kind, start, now), id, &response, outbox);
            answered += 1;
        }
        answered
    }

    /// At most `inflight_max` requests wait: past that, reading pauses
    /// until some finish.
    async fn make_room<S: Conn>(
        &mut self,
        shard: &Shard,
        outbox: &Outbox<S>,
        wake: &local_channel::LocalSender<()>,
        inflight_max: usize,
    ) {
        if self.len() >= inflight_max {
            let room = |w: &WaitingSet| w.len() < inflight_max;
            self.answer_until(shard, outbox, wake, room).await;
        }
    }

    /// Answers requests as they finish, sending their responses, until
    /// `done` holds of the set.
    async fn answer_until<S: Conn>(
        &mut self,
        shard: &Shard,
        outbox: &Outbox<S>,
        wake: &local_channel::LocalSender<()>,
        done: impl Fn(&WaitingSet) -> bool,
    ) {
        while !done(self) {
            futures_lite::future::poll_fn(|cx| match self.answer_finished(cx, shard, outbox) {
                0 if !done(self) => Poll::Pending,
                _ => Poll::Ready(()),
            })
            .await;
            outbox.send_queued(shard, wake).await;
        }
    }
}

/// Records the outcome of a request that arrived at `start` and was
/// answered at `now`, and appends its response frame.
fn answer<S: Conn>(
    shard: &Shard,
    (kind, start, now): (OpKind, Instant, Instant),
    id: u64,
    response: &Response,
    outbox: &Outbox<S>,
) {
    let error = matches!(response, Response::Error { .. });
    let latency_us = now.saturating_duration_since(start).as_micros() as u64;
    shard.metrics.record(kind, latency_us, error);
    encode(id, response, outbox);
}

/// Records the outcomes of a batch's inline answers, all as old as the
/// batch.
fn record_batch(shard: &Shard, start: Instant, unrecorded: &mut Vec<(OpKind, bool)>) {
    if unrecorded.is_empty() {
        return;
    }
    let latency_us = start.elapsed().as_micros() as u64;
    for (kind, error) in unrecorded.drain(..) {
        shard.metrics.record(kind, latency_us, error);
    }
}

/// Appends a response frame.
fn encode<S: Conn>(id: u64, response: &Response, outbox: &Outbox<S>) {
    let mut builder = outbox.builder.borrow_mut();
    response.encode_frame(id, &mut builder, &mut outbox.frames.borrow_mut());
    // A builder keeps the capacity of the largest message it built: after a
    // large scan, start a small one rather than hold it for the
    // connection's life. (Unfinished, not finished, data: the commonest
    // responses are written without the builder, which may never have
    // finished a message.)
    if builder.unfinished_data().len() > BUFFER_KEEP_BYTES_MAX {
        *builder = FlatBufferBuilder::with_capacity(1024);
    }
}

/// How long the metrics endpoint waits for a request's head.
const METRICS_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long `GET /health` waits for a shard's answer (under the 1-s
/// timeout of a Kubernetes probe).
const HEALTH_DEADLINE: std::time::Duration = std::time::Duration::from_millis(500);

/// `GET /health`'s status and body: 200 when every shard answered and can
/// take writes, else 503; a line per shard either way.
fn health_page(shards: &[Result<(), String>]) -> (&'static str, String) {
    let status = match shards.iter().all(Result::is_ok) {
        true => "200 OK",
        false => "503 Service Unavailable",
    };
    let lines: String = shards
        .iter()
        .enumerate()
        .map(|(i, health)| match health {
            Ok(()) => format!("shard {i}: ok\n"),
            Err(why) => format!("shard {i}: {why}\n"),
        })
        .collect();
    (status, lines)
}

/// Serves `GET /metrics` in Prometheus text format, gathering every shard's
/// figures over the mesh, and `GET /health`: whether every shard answers
/// and can take writes.
pub async fn metrics_loop(shard: Rc<Shard>, listener: TcpListener) {
    while let Ok(mut stream) = listener.accept().await {
        if shard.shutting_down.get() {
            return;
        }
        let shard = shard.clone();
        glommio::spawn_local(async move {
            let read_head = async {
                let mut request = Vec::new();
                let mut chunk = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                Some(request)
            };
            // A client that never finishes its request does not hold its
            // connection (and a descriptor) for good.
            let give_up = async {
                glommio::timer::sleep(METRICS_REQUEST_TIMEOUT).await;
                None
            };
            let Some(request) = futures_lite::future::or(read_head, give_up).await else {
                return;
            };
            let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
            let mut words = line.split(|&b| b == b' ');
            let (method, target) = (words.next(), words.next().unwrap_or_default());
            // A query string (`?name[]=...`) is ignored: every family is sent.
            let path = target.split(|&b| b == b'?').next().unwrap_or_default();
            let (status, body) = match (method, path) {
                (Some(b"GET"), b"/metrics") => match shard.handle(Request::Stats, None).await {
                    Response::Stats(m) => ("200 OK", render_prometheus(&m)),
                    other => ("500 Internal Server Error", format!("{other:?}\n")),
                },
                (Some(b"GET"), b"/health") => health_page(&shard.health(HEALTH_DEADLINE).await),
                (_, b"/metrics" | b"/health") => (
                    "405 Method Not Allowed\r\nAllow: GET",
                    "only GET\n".to_string(),
                ),
                _ => (
                    "404 Not Found",
                    "try GET /metrics or GET /health\n".to_string(),
                ),
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.close().await;
        })
        .detach();
    }
}
