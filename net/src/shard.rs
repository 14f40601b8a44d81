//! A shard: one engine on one executor, the keyspace slice its slots name,
//! and its end of the cross-shard mesh. Requests route here: operations on
//! keys this shard owns run on its engine; others travel over the mesh to
//! the owner and the reply comes back the same way. No locks: each shard
//! touches only its own state, and shards talk only by messages.
//!
//! Sketch: a mesh hop is two cross-core queue pushes and two wakeups
//! (~2-5 µs here), so shard-aware clients that send each request to the
//! owner's port skip it.

use crate::config::{Config, Credentials};
use crate::metrics::ShardMetrics;
use crate::slots::SlotMap;
use crate::txn::{vote_reply, TxnRequest};
use bytes::Bytes;
use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use tessera_engine::{
    CommitRecord, Engine, Error as EngineError, Phase, QueuedWrite, Row, TxnPart, Vote, WriteBatch,
    WriteStart,
};
use tessera_protocol::message::{BatchOp, Metric};
use tessera_protocol::{ErrorCode, Request, Response, PROTOCOL_VERSION, SLOTS};

/// Most point reads (and most writes) [`Shard::prefetch`] looks ahead over.
pub const PREFETCH_MAX: usize = 16;

/// Up to [`PREFETCH_MAX`] keys with their hashes.
#[derive(Default)]
struct KeyBatch<'a> {
    keys: [&'a [u8]; PREFETCH_MAX],
    hashes: [u64; PREFETCH_MAX],
    len: usize,
}

impl<'a> KeyBatch<'a> {
    fn push(&mut self, key: &'a [u8], hash: u64) {
        if self.len < PREFETCH_MAX {
            self.keys[self.len] = key;
            self.hashes[self.len] = hash;
            self.len += 1;
        }
    }

    fn keys(&self) -> &[&'a [u8]] {
        &self.keys[..self.len]
    }

    fn hashes(&self) -> &[u64] {
        &self.hashes[..self.len]
    }
}

/// Work one shard does for another (or for itself).
#[derive(Debug)]
pub enum ShardOp {
    Get(Bytes),
    /// Built where the request arrived, its wall-clock reading included
    /// (see [`WriteBatch::arrived_at`]).
    Write(WriteBatch),
    Scan {
        start: Bytes,
        end: Option<Bytes>,
        limit: usize,
        bytes_max: usize,
        ts: Option<u64>,
    },
    ReadAt {
        key: Bytes,
        ts: u64,
    },
    Stats,
    /// Can this shard take writes now (`Engine::write_health`)?
    Health,
    /// A participant's part of a transaction (see `txn.rs`).
    Txn {
        part: TxnPart,
        phase: Phase,
    },
    TxnAbort(u64),
    /// Does the coordinator's log hold a commit decision for each of these
    /// timestamps? (Asked at startup, one message per coordinator.)
    TxnStatus(Vec<u64>),
    /// The sender has resolved its in-doubt transactions.
    RecoveryDone,
}

#[derive(Debug)]
pub enum ShardReply {
    /// A read's value, and when its key expires if it does.
    Value(Option<(Bytes, Option<u64>)>),
    Written(u64),
    Rows(Vec<Row>),
    Stats(Vec<Metric>),
    /// `Err`: why writes would fail now.
    Health(Result<(), String>),
    /// A participant's vote and its clock (the coordinator observes it).
    Vote {
        vote: Vote,
        clock: u64,
    },
    /// Whether each timestamp of a [`ShardOp::TxnStatus`] committed.
    Status(Vec<bool>),
    Done,
    Error(ErrorCode, String),
}

/// What travels over the mesh.
#[derive(Debug)]
pub enum MeshMsg {
    Request {
        from: usize,
        tag: u64,
        op: ShardOp,
    },
    Reply {
        tag: u64,
        reply: ShardReply,
    },
    /// One-way, handled inline: the sender's commit records of these
    /// transactions are durable (the coordinator may forget a decision once
    /// every participant has said so).
    Durable {
        ts: Vec<u64>,
    },
    /// One-way, handled inline: the coordinator's commit decisions for
    /// these transactions are durable; the participant applies their
    /// prepared writes and logs their commits (`Shard::commit_participant`).
    Commit {
        ts: Vec<u64>,
    },
}

/// Maps an engine error to what the client is told.
pub fn error_reply(e: &EngineError) -> ShardReply {
    let code = match e {
        EngineError::TooLarge { what: "key", .. } => ErrorCode::KeyTooLarge,
        EngineError::TooLarge { what: "value", .. } => ErrorCode::ValueTooLarge,
        EngineError::TooLarge { .. } => ErrorCode::BatchTooLarge,
        EngineError::Corruption { .. } => ErrorCode::Corruption,
        EngineError::TimestampTooOld { .. } => ErrorCode::TimestampTooOld,
        EngineError::TimestampInFuture { .. } => ErrorCode::InvalidArgument,
        EngineError::WaitTimeout { .. } => ErrorCode::Conflict,
        EngineError::Closed => ErrorCode::Unavailable,
        EngineError::Io { .. } | EngineError::Stalled(_) => ErrorCode::Storage,
        EngineError::InvalidOption(_) => ErrorCode::Internal,
    };
    ShardReply::Error(code, e.to_string())
}

pub struct Shard {
    pub id: usize,
    pub engine: Engine,
    pub slots: Arc<SlotMap>,
    pub config: Arc<Config>,
    /// Every shard's own address, filled once all shards are listening.
    pub addresses: Arc<OnceLock<Vec<String>>>,
    pub metrics: ShardMetrics,
    pub shutting_down: Cell<bool>,
    /// The connections being served, to cancel at shutdown (see
    /// [`Shard::close_connections`]), and the next one's number.
    connections: RefCell<HashMap<u64, glommio::task::JoinHandle<()>>>,
    next_connection: Cell<u64>,
    /// This shard's copy of the credentials and their generation (see
    /// [`crate::config::CredentialSource`]).
    pub credentials: RefCell<Credentials>,
    credentials_generation: Cell<u64>,
    /// Shards that have resolved their in-doubt transactions.
    pub(crate) recovered_peers: Cell<usize>,
    /// Commit decisions waiting for participants' durable commits: ts →
    /// participants still to report.
    pub(crate) pending_durable: RefCell<HashMap<u64, usize>>,
    /// Commits applied here whose records await logging (see
    /// `Shard::log_commits`), and whether a task is logging them.
    pub(crate) unlogged_commits: RefCell<Vec<(u64, CommitRecord)>>,
    pub(crate) commit_logger: Cell<bool>,
    /// Commit decisions to tell each participant (see
    /// `Shard::send_commits`), and whether a task is sending them.
    pub(crate) commit_outbox: RefCell<BTreeMap<usize, Vec<u64>>>,
    pub(crate) commit_sender: Cell<bool>,
    senders: Option<Senders<MeshMsg>>,
    pending: RefCell<HashMap<u64, oneshot::Sender<ShardReply>>>,
    next_tag: Cell<u64>,
}

impl Shard {
    pub fn new(
        id: usize,
        engine: Engine,
        slots: Arc<SlotMap>,
        config: Arc<Config>,
        addresses: Arc<OnceLock<Vec<String>>>,
        senders: Option<Senders<MeshMsg>>,
    ) -> Rc<Shard> {
        let (generation, credentials) = config.credentials.current();
        Rc::new(Shard {
            id,
            engine,
            slots,
            config,
            credentials: RefCell::new(credentials),
            credentials_generation: Cell::new(generation),
            addresses,
            metrics: ShardMetrics::default(),
            shutting_down: Cell::new(false),
            connections: RefCell::default(),
            next_connection: Cell::new(0),
            recovered_peers: Cell::new(0),
            pending_durable: RefCell::default(),
            unlogged_commits: RefCell::default(),
            commit_logger: Cell::new(false),
            commit_outbox: RefCell::default(),
            commit_sender: Cell::new(false),
            senders,
            pending: RefCell::default(),
            next_tag: Cell::new(0),
        })
    }

    /// Takes the latest credentials if they changed since this shard
    /// last looked.
    pub fn refresh_credentials(&self) {
        let source = &self.config.credentials;
        if source.generation() != self.credentials_generation.get() {
            let (generation, credentials) = source.current();
            *self.credentials.borrow_mut() = credentials;
            self.credentials_generation.set(generation);
        }
    }

    /// Serves `connection` in a task of its own until it ends or the shard
    /// closes its connections.
    pub(crate) fn spawn_connection(
        self: &Rc<Self>,
        connection: impl Future<Output = ()> + 'static,
    ) {
        let id = self.next_connection.get();
        self.next_connection.set(id + 1);
        // The task may end before `spawn_local` returns; then it is not
        // registered at all.
        let ended = Rc::new(Cell::new(false));
        let task = {
            let (shard, ended) = (self.clone(), ended.clone());
            glommio::spawn_local(async move {
                connection.await;
                ended.set(true);
                shard.connections.borrow_mut().remove(&id);
            })
            .detach()
        };
        if !ended.get() {
            self.connections.borrow_mut().insert(id, task);
        }
    }

    /// Cancels every connection's task: at shutdown, after in-flight
    /// requests had their time. A connection a client kept open used to
    /// outlive an embedded server's stop: its task never ended, so its
    /// socket stayed open (the client's next request waited for its
    /// timeout instead of failing at once) and it kept the shard, engine
    /// included, in memory.
    pub fn close_connections(&self) {
        for (_, task) in self.connections.borrow_mut().drain() {
            task.cancel();
        }
    }

    /// Serves the mesh: one task per peer, each request in its own task.
    /// Returns the per-peer tasks; dropping them stops serving. Each waits
    /// for messages from a peer whose shard holds this one's senders, and
    /// this shard holds the peer's: left to end on their own at shutdown,
    /// none ever did, and every shard's engine and memory stayed with the
    /// tasks after its executor stopped.
    #[must_use = "dropping the tasks stops serving the mesh"]
    pub fn serve_mesh(
        self: &Rc<Self>,
        mut receivers: Receivers<MeshMsg>,
    ) -> Vec<glommio::Task<()>> {
        let mut tasks = Vec::new();
        for (_, rx) in receivers.streams() {
            let shard = self.clone();
            tasks.push(glommio::spawn_local(async move {
                while let Some(msg) = rx.recv().await {
                    match msg {
                        MeshMsg::Request { from, tag, op } => {
                            let shard = shard.clone();
                            glommio::spawn_local(async move {
                                let reply = shard.execute_local(op).await;
                                if let Some(s) = &shard.senders {
                                    if s.send_to(from, MeshMsg::Reply { tag, reply })
                                        .await
                                        .is_err()
                                    {
                                        tracing::warn!(
                                            shard = shard.id,
                                            peer = from,
                                            "mesh reply dropped"
                                        );
                                    }
                                }
                            })
                            .detach();
                        }
                        MeshMsg::Reply { tag, reply } => {
                            if let Some(tx) = shard.pending.borrow_mut().remove(&tag) {
                                let _ = tx.send(reply);
                            }
                        }
                        MeshMsg::Durable { ts } => shard.participants_durable(&ts),
                        MeshMsg::Commit { ts } => {
                            shard.engine.prefetch_prepared(&ts);
                            for ts in ts {
                                shard.commit_participant(ts);
                            }
                        }
                    }
                }
            }));
        }
        tasks
    }

    /// Sends a one-way message to `owner` (itself included).
    pub(crate) async fn notify(&self, owner: usize, msg: MeshMsg) {
        match (&self.senders, msg) {
            (_, MeshMsg::Durable { ts }) if owner == self.id => self.participants_durable(&ts),
            (Some(senders), msg) => {
                if senders.send_to(owner, msg).await.is_err() {
                    tracing::warn!(shard = self.id, peer = owner, "mesh notice dropped");
                }
            }
            (None, _) => {}
        }
    }

    /// Runs `op` on `owner`: here, or over the mesh.
    pub async fn execute(self: &Rc<Self>, owner: usize, op: ShardOp) -> ShardReply {
        if owner == self.id {
            return self.execute_local(op).await;
        }
        match self.send_request(owner, op).await {
            Ok(reply) => Self::await_reply(owner, reply).await,
            Err(failed) => failed,
        }
    }

    /// Sends `op` to shard `owner` (another one) and returns where its
    /// reply will arrive, or the reply to report if it could not be sent.
    pub(crate) async fn send_request(
        &self,
        owner: usize,
        op: ShardOp,
    ) -> Result<oneshot::Receiver<ShardReply>, ShardReply> {
        let Some(senders) = &self.senders else {
            return Err(ShardReply::Error(
                ErrorCode::Internal,
                format!("no mesh route to shard {owner}"),
            ));
        };
        let tag = self.next_tag.get();
        self.next_tag.set(tag + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(tag, tx);
        ShardMetrics::add(&self.metrics.forwarded, 1);
        let msg = MeshMsg::Request {
            from: self.id,
            tag,
            op,
        };
        if senders.send_to(owner, msg).await.is_err() {
            self.pending.borrow_mut().remove(&tag);
            return Err(ShardReply::Error(
                ErrorCode::Unavailable,
                format!("shard {owner} is unavailable"),
            ));
        }
        Ok(rx)
    }

    /// The reply of a request [`Shard::send_request`] sent to `owner`.
    pub(crate) async fn await_reply(
        owner: usize,
        reply: oneshot::Receiver<ShardReply>,
    ) -> ShardReply {
        reply.await.unwrap_or_else(|_| {
            ShardReply::Error(ErrorCode::Unavailable, format!("shard {owner} went away"))
        })
    }

    pub(crate) async fn execute_local(self: &Rc<Self>, op: ShardOp) -> ShardReply {
        match op {
            ShardOp::Get(key) => self.get_local(&key).await,
            ShardOp::Write(batch) => self.write_local(batch).await,
            ShardOp::Scan {
                start,
                end,
                limit,
                bytes_max,
                ts,
            } => match Box::pin(self.engine.scan_bounded(
                &start,
                end.as_deref(),
                limit,
                bytes_max,
                ts,
            ))
            .await
            {
                Ok(rows) => ShardReply::Rows(rows),
                Err(e) => error_reply(&e),
            },
            ShardOp::ReadAt { key, ts } => match self.engine.read_at_with_expiry(&key, ts).await {
                Ok(v) => ShardReply::Value(v),
                Err(e) => error_reply(&e),
            },
            ShardOp::Txn { part, phase } => {
                vote_reply(self, Box::pin(self.engine.txn(part, phase)).await)
            }
            ShardOp::TxnAbort(ts) => {
                self.engine.abort_prepared(ts);
                ShardReply::Done
            }
            ShardOp::TxnStatus(ts) => {
                ShardReply::Status(ts.iter().map(|&ts| self.engine.committed(ts)).collect())
            }
            ShardOp::RecoveryDone => {
                self.peer_recovered();
                ShardReply::Done
            }
            ShardOp::Stats => {
                ShardReply::Stats(self.metrics.snapshot(self.id as u32, &self.engine.stats()))
            }
            ShardOp::Health => ShardReply::Health(self.engine.write_health()),
        }
    }

    async fn get_local(&self, key: &[u8]) -> ShardReply {
        match self.engine.get_with_expiry(key).await {
            Ok(v) => ShardReply::Value(v),
            Err(e) => error_reply(&e),
        }
    }

    async fn write_local(&self, batch: WriteBatch) -> ShardReply {
        written_reply(self.engine.write(batch).await)
    }

    /// Starts the cache misses the point reads among `requests` will take
    /// on this shard, so that a batch of pipelined reads waits for them
    /// together rather than one after another.
    pub fn prefetch<'a>(&self, requests: impl Iterator<Item = &'a Request>) {
        let (mut reads, mut writes) = (KeyBatch::default(), KeyBatch::default());
        let mut admissions = KeyBatch::default();
        for request in requests {
            let (key, batch) = match request {
                Request::Get { key } => (key, &mut reads),
                Request::Put { key, .. } | Request::Delete { key } => (key, &mut writes),
                Request::Txn { writes: ops, .. } => {
                    // Its admission here reads the ts cache of its keys.
                    for op in ops {
                        let (BatchOp::Put { key, .. } | BatchOp::Delete { key }) = op;
                        let hash = tessera_protocol::key_hash(key);
                        if self.slots.shard_of_hash(hash) == self.id {
                            admissions.push(key, hash);
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            // The routing hash is the engine's key hash.
            let hash = tessera_protocol::key_hash(key);
            if self.slots.shard_of_hash(hash) == self.id {
                batch.push(key, hash);
            }
        }
        if reads.len > 0 {
            self.engine.prefetch_reads(reads.keys(), reads.hashes());
        }
        if writes.len > 0 {
            self.engine.prefetch_writes(writes.keys(), writes.hashes());
        }
        if admissions.len > 0 {
            self.engine.prefetch_admissions(admissions.hashes());
        }
    }

    /// Starts `request`: its response if this shard has it at once, with
    /// no future to box and poll; a durable write, queued; or its future,
    /// boxed.
    ///
    /// At once: a get of a key this shard owns whose newest version is in
    /// memory ([`Engine::get_in_memory`](tessera_engine::Engine::get_in_memory)),
    /// and a put or delete of one in `none` mode
    /// ([`Engine::start_write`](tessera_engine::Engine::start_write)),
    /// which in the other modes queues the write instead.
    ///
    /// Otherwise a local get, put or delete gets a future of its own, a
    /// few hundred bytes where `handle`'s is ~1.5 KiB: each fresh 1.5 KiB
    /// allocation was cache misses of its own (~4% of the shard's CPU
    /// under 16-deep durable writes, when each waited in a future); even a
    /// get answered on its first poll, whose box is freed and reused at
    /// once, took ~10% less CPU with its own future.
    pub fn start(self: &Rc<Self>, request: Request, arrived_ms: Option<u64>) -> Started {
        let local = |key: &Bytes| self.slots.shard_of(key) == self.id && !self.shutting_down.get();
        let op = match request {
            Request::Put { key, value, ttl_ms } if local(&key) => {
                BatchOp::Put { key, value, ttl_ms }
            }
            Request::Delete { key } if local(&key) => BatchOp::Delete { key },
            Request::Get { key } if local(&key) => {
                if let Some(found) = self.engine.get_in_memory(&key) {
                    return Started::Now(into_response(ShardReply::Value(found)));
                }
                let shard = self.clone();
                return Started::Later(Box::pin(async move {
                    into_response(shard.get_local(&key).await)
                }));
            }
            request => {
                let shard = self.clone();
                return Started::Later(Box::pin(
                    async move { shard.handle(request, arrived_ms).await },
                ));
            }
        };
        match self.engine.start_write(write_batch([op], arrived_ms)) {
            WriteStart::Done(written) => Started::Now(written_response(written)),
            WriteStart::Queued(queued) => Started::Queued(queued),
            WriteStart::Back(batch) => {
                let shard = self.clone();
                Started::Later(Box::pin(async move {
                    into_response(shard.write_local(batch).await)
                }))
            }
        }
    }

    /// Answers one client request, routing by key.
    ///
    /// The server boxes this future for every request but a local get,
    /// put or delete ([`Shard::start`]), so its size is a
    /// per-request cost: the transaction, scan and cross-shard batch paths
    /// (several KiB of state) are boxed inside their arms.
    ///
    /// `arrived_ms` is a wall-clock reading made after the request arrived
    /// (the server reads the clock once per batch of requests): writes
    /// take their timestamps from it.
    pub async fn handle(self: &Rc<Self>, request: Request, arrived_ms: Option<u64>) -> Response {
        if self.shutting_down.get() {
            return Response::error(ErrorCode::Unavailable, "server is shutting down");
        }
        let n = self.slots.shards();
        match request {
            Request::Hello {
                protocol_version, ..
            } => {
                if protocol_version != PROTOCOL_VERSION {
                    return Response::error(
                        ErrorCode::UnsupportedVersion,
                        format!("server speaks protocol {PROTOCOL_VERSION}, client asked for {protocol_version}"),
                    );
                }
                Response::Hello {
                    protocol_version: PROTOCOL_VERSION,
                    server_version: env!("CARGO_PKG_VERSION").to_string(),
                    shards: n as u32,
                    retention_ms: self.config.engine.retention_ms,
                    frame_bytes_max: self.config.limits.frame_bytes_max as u64,
                    batch_ops_max: u32::try_from(self.config.limits.batch_ops_max)
                        .unwrap_or(u32::MAX),
                }
            }
            Request::Ping => Response::Pong,
            Request::Get { key } => {
                let owner = self.slots.shard_of(&key);
                into_response(self.execute(owner, ShardOp::Get(key)).await)
            }
            Request::Put { key, value, ttl_ms } => {
                let owner = self.slots.shard_of(&key);
                let op = BatchOp::Put { key, value, ttl_ms };
                into_response(
                    self.execute(owner, ShardOp::Write(write_batch([op], arrived_ms)))
                        .await,
                )
            }
            Request::Delete { key } => {
                let owner = self.slots.shard_of(&key);
                into_response(
                    self.execute(
                        owner,
                        ShardOp::Write(write_batch([BatchOp::Delete { key }], arrived_ms)),
                    )
                    .await,
                )
            }
            Request::Batch { ops } => {
                let Some(first) = ops.first() else {
                    return Response::error(ErrorCode::InvalidArgument, "batch is empty");
                };
                let owner = self.slots.shard_of(first.key());
                if ops.iter().any(|op| self.slots.shard_of(op.key()) != owner) {
                    // Atomic across shards through the transaction path.
                    return Box::pin(self.atomic_batch(ops)).await;
                }
                into_response(
                    self.execute(owner, ShardOp::Write(write_batch(ops, arrived_ms)))
                        .await,
                )
            }
            Request::Scan {
                start,
                end,
                limit,
                ts,
            } => Box::pin(self.scan(start, end, limit as usize, ts)).await,
            Request::ReadAt { key, ts } => {
                let owner = self.slots.shard_of(&key);
                into_response(self.execute(owner, ShardOp::ReadAt { key, ts }).await)
            }
            Request::Txn {
                conditions,
                reads,
                writes,
            } => {
                Box::pin(self.transaction(TxnRequest {
                    conditions,
                    reads,
                    writes,
                }))
                .await
            }
            Request::Stats => {
                let mut metrics = Vec::new();
                for shard in 0..n {
                    match self.execute(shard, ShardOp::Stats).await {
                        ShardReply::Stats(m) => metrics.extend(m),
                        other => return into_response(other),
                    }
                }
                Response::Stats(metrics)
            }
            Request::Topology => self.topology(None),
        }
    }

    /// Each shard's health, asked of all at once: `Err` says why writes
    /// would fail on it, or that it did not answer within `deadline`.
    pub async fn health(self: &Rc<Self>, deadline: std::time::Duration) -> Vec<Result<(), String>> {
        let n = self.slots.shards();
        let asks = (0..n).map(|shard| {
            let ask = async move {
                match self.execute(shard, ShardOp::Health).await {
                    ShardReply::Health(health) => health,
                    ShardReply::Error(_, why) => Err(why),
                    other => Err(format!("unexpected reply {other:?}")),
                }
            };
            let late = async move {
                glommio::timer::sleep(deadline).await;
                Err(format!("no answer within {} ms", deadline.as_millis()))
            };
            futures_lite::future::or(ask, late)
        });
        futures_util::future::join_all(asks).await
    }

    /// The slot map and each shard's address: at `--advertise-host` when
    /// given, else as bound. A shard listening on every address
    /// (`0.0.0.0`, `::`) is given as `seen_at`, the address the asking
    /// connection reached this server on, with the shard's port: a remote
    /// client handed `0.0.0.0:7879` connected to itself.
    pub fn topology(&self, seen_at: Option<std::net::IpAddr>) -> Response {
        let advertise = self.config.advertise_host.as_deref();
        let advertised =
            |address: &String| match (address.parse::<SocketAddr>(), advertise, seen_at) {
                (Ok(bound), Some(host), _) => match host.parse::<std::net::Ipv6Addr>() {
                    Ok(v6) => SocketAddr::new(v6.into(), bound.port()).to_string(),
                    Err(_) => format!("{host}:{}", bound.port()),
                },
                (Ok(bound), None, Some(ip)) if bound.ip().is_unspecified() => {
                    SocketAddr::new(ip.to_canonical(), bound.port()).to_string()
                }
                _ => address.clone(),
            };
        Response::Topology {
            slots: SLOTS,
            slot_owner: self.slots.owners().to_vec(),
            shards: self
                .addresses
                .get()
                .map(|a| {
                    a.iter()
                        .enumerate()
                        .map(|(i, s)| (i as u32, advertised(s)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Fans a scan out to every shard and merges the pages in key order.
    async fn scan(
        self: &Rc<Self>,
        start: Bytes,
        end: Option<Bytes>,
        limit: usize,
        ts: Option<u64>,
    ) -> Response {
        let n = self.slots.shards();
        let bytes_max = self.config.limits.scan_bytes_max;
        // Every shard at once: the others' pages are read on their cores
        // while this one reads its own.
        let ops = (0..n)
            .map(|shard| {
                let op = ShardOp::Scan {
                    start: start.clone(),
                    end: end.clone(),
                    limit,
                    bytes_max,
                    ts,
                };
                (shard, op)
            })
            .collect();
        let mut pages = Vec::with_capacity(n);
        for (_, reply) in self.fan_out(ops).await {
            match reply {
                ShardReply::Rows(r) => pages.push(r),
                other => return into_response(other),
            }
        }
        let (rows, more) = merge_pages(pages, limit, bytes_max);
        let next_start = rows.last().filter(|_| more).map(|last| {
            let mut next = Vec::with_capacity(last.key.len() + 1);
            next.extend_from_slice(&last.key);
            next.push(0);
            Bytes::from(next)
        });
        scan_response(rows, next_start)
    }
}

/// A page of rows as the client gets it: expiry times only if a row has
/// one.
fn scan_response(rows: Vec<Row>, next_start: Option<Bytes>) -> Response {
    let expires_at_ms = match rows.iter().any(|r| r.expires_at_ms.is_some()) {
        true => rows.iter().map(|r| r.expires_at_ms.unwrap_or(0)).collect(),
        false => Vec::new(),
    };
    Response::Scan {
        rows: rows.into_iter().map(|r| (r.key, r.value)).collect(),
        next_start,
        expires_at_ms,
    }
}

fn row_bytes(rows: &[Row]) -> usize {
    rows.iter().map(|r| r.key.len() + r.value.len()).sum()
}

/// Merges the shards' pages of one scan into the client's page, in key
/// order, and says whether the scan goes on after it. A shard's page that
/// filled its row limit or its byte budget may have stopped short of its
/// next key, so the merged page ends at the smallest last key of such
/// pages: every shard's rows up to there are all present. The page then
/// holds at most `limit` rows, and stops after the row that reaches
/// `bytes_max`.
fn merge_pages(pages: Vec<Vec<Row>>, limit: usize, bytes_max: usize) -> (Vec<Row>, bool) {
    let cut: Option<Bytes> = pages
        .iter()
        .filter(|p| p.len() >= limit || row_bytes(p) >= bytes_max)
        .filter_map(|p| p.last().map(|r| r.key.clone()))
        .min();
    let mut rows: Vec<Row> = pages.into_iter().flatten().collect();
    rows.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    let mut more = false;
    if let Some(cut) = &cut {
        let keep = rows.partition_point(|r| r.key <= cut);
        more = true;
        rows.truncate(keep);
    }
    let mut bytes = 0usize;
    let mut keep = rows.len().min(limit);
    for (i, r) in rows.iter().take(keep).enumerate() {
        bytes = bytes.saturating_add(r.key.len() + r.value.len());
        if bytes >= bytes_max {
            keep = i + 1;
            break;
        }
    }
    if keep < rows.len() {
        more = true;
        rows.truncate(keep);
    }
    (rows, more)
}

/// A request's run, boxed: it may outlive its first poll.
pub type Handling = Pin<Box<dyn Future<Output = Response>>>;

/// What [`Shard::start`] gives the server.
pub enum Started {
    /// The response.
    Now(Response),
    /// A durable write, queued: answer it with [`written_response`] once
    /// it is done.
    Queued(QueuedWrite),
    /// The request's future, not yet polled.
    Later(Handling),
}

/// The response to a write that is done.
pub fn written_response(written: Result<u64, EngineError>) -> Response {
    into_response(written_reply(written))
}

fn written_reply(written: Result<u64, EngineError>) -> ShardReply {
    match written {
        Ok(ts) => ShardReply::Written(ts),
        Err(e) => error_reply(&e),
    }
}

fn into_response(reply: ShardReply) -> Response {
    match reply {
        ShardReply::Value(v) => Response::Get {
            expires_at_ms: v.as_ref().and_then(|(_, at)| *at),
            value: v.map(|(value, _)| value),
        },
        ShardReply::Written(ts) => Response::Written { ts },
        ShardReply::Rows(rows) => scan_response(rows, None),
        ShardReply::Stats(m) => Response::Stats(m),
        ShardReply::Error(code, message) => Response::Error { code, message },
        other @ (ShardReply::Vote { .. }
        | ShardReply::Status(_)
        | ShardReply::Health(_)
        | ShardReply::Done) => Response::error(
            ErrorCode::Internal,
            format!("unexpected shard reply {other:?}"),
        ),
    }
}

/// The engine's batch of `ops`, taking its timestamp from `arrived_ms` if
/// given (see [`WriteBatch::arrived_at`]). Built straight from the request:
/// a vector of ops first, then the batch, was two allocations per write.
fn write_batch(ops: impl IntoIterator<Item = BatchOp>, arrived_ms: Option<u64>) -> WriteBatch {
    let ops = ops.into_iter();
    let mut batch = WriteBatch::with_capacity(ops.size_hint().0);
    if let Some(ms) = arrived_ms {
        batch.arrived_at(ms);
    }
    for op in ops {
        match op {
            BatchOp::Put { key, value, ttl_ms } => batch.put_with_ttl(key, value, ttl_ms),
            BatchOp::Delete { key } => batch.delete(key),
        };
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::merge_pages;
    use bytes::Bytes;
    use tessera_engine::Row;

    fn page(keys: &[&str], value_bytes: usize) -> Vec<Row> {
        keys.iter()
            .map(|k| Row {
                key: Bytes::from(k.to_string()),
                value: Bytes::from(vec![b'v'; value_bytes]),
                expires_at_ms: None,
            })
            .collect()
    }

    fn keys(rows: &[Row]) -> Vec<&str> {
        rows.iter()
            .map(|r| std::str::from_utf8(&r.key).unwrap())
            .collect()
    }

    #[test]
    fn pages_that_end_the_range_merge_whole() {
        let (rows, more) = merge_pages(vec![page(&["a", "c"], 1), page(&["b"], 1)], 10, 1000);
        assert_eq!((keys(&rows), more), (vec!["a", "b", "c"], false));
    }

    #[test]
    fn the_row_limit_cuts_the_merged_page() {
        let (rows, more) = merge_pages(vec![page(&["a", "c"], 1), page(&["b", "d"], 1)], 2, 1000);
        // Both pages are full: "c" is the smallest key a shard may have
        // stopped at, and two rows fit.
        assert_eq!((keys(&rows), more), (vec!["a", "b"], true));
    }

    #[test]
    fn a_page_cut_by_bytes_ends_the_merged_page_at_its_last_key() {
        // Shard 0 stopped after "b" (its budget spent); shard 1 ended its
        // range at "z". Keys between "b" and "z" on shard 0 are unknown, so
        // the page ends at "b" and "z" comes in the next one.
        let (rows, more) = merge_pages(vec![page(&["a", "b"], 60), page(&["c", "z"], 1)], 10, 100);
        assert_eq!((keys(&rows), more), (vec!["a", "b"], true));
    }

    #[test]
    fn the_merged_page_stops_after_the_row_that_spends_the_budget() {
        let (rows, more) = merge_pages(vec![page(&["a", "c"], 40), page(&["b", "d"], 40)], 10, 100);
        // 41 + 41 + 41 bytes: the third row reaches 100.
        assert_eq!((keys(&rows), more), (vec!["a", "b", "c"], true));
        let (rows, more) = merge_pages(vec![page(&["a"], 500), page(&[], 0)], 10, 100);
        assert_eq!(
            (keys(&rows), more),
            (vec!["a"], true),
            "one row over the budget still goes"
        );
    }
}
