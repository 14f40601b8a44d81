//! Typed requests and responses, and their conversion to and from the
//! flatbuffers in `schema/tessera.fbs`. Decoding runs the flatbuffers
//! verifier and the configured [`Limits`] before anything is used; every
//! failure names the request id (0 if it could not be read) and the error
//! code to answer with.

use crate::direct;
use crate::frame::{put_frame, Limits};
use crate::wire;
use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, VerifierOptions, WIPOffset};

/// Error codes sent to clients (mirror of `wire::ErrorCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Internal,
    BadFrame,
    UnknownOperation,
    UnsupportedVersion,
    KeyTooLarge,
    ValueTooLarge,
    BatchTooLarge,
    InvalidArgument,
    CrossShardBatch,
    Storage,
    Corruption,
    Unavailable,
    TimestampTooOld,
    Conflict,
    Unauthenticated,
}

impl ErrorCode {
    fn to_wire(self) -> wire::ErrorCode {
        match self {
            ErrorCode::Internal => wire::ErrorCode::Internal,
            ErrorCode::BadFrame => wire::ErrorCode::BadFrame,
            ErrorCode::UnknownOperation => wire::ErrorCode::UnknownOperation,
            ErrorCode::UnsupportedVersion => wire::ErrorCode::UnsupportedVersion,
            ErrorCode::KeyTooLarge => wire::ErrorCode::KeyTooLarge,
            ErrorCode::ValueTooLarge => wire::ErrorCode::ValueTooLarge,
            ErrorCode::BatchTooLarge => wire::ErrorCode::BatchTooLarge,
            ErrorCode::InvalidArgument => wire::ErrorCode::InvalidArgument,
            ErrorCode::CrossShardBatch => wire::ErrorCode::CrossShardBatch,
            ErrorCode::Storage => wire::ErrorCode::Storage,
            ErrorCode::Corruption => wire::ErrorCode::Corruption,
            ErrorCode::Unavailable => wire::ErrorCode::Unavailable,
            ErrorCode::TimestampTooOld => wire::ErrorCode::TimestampTooOld,
            ErrorCode::Conflict => wire::ErrorCode::Conflict,
            ErrorCode::Unauthenticated => wire::ErrorCode::Unauthenticated,
        }
    }

    fn from_wire(code: wire::ErrorCode) -> ErrorCode {
        match code {
            wire::ErrorCode::BadFrame => ErrorCode::BadFrame,
            wire::ErrorCode::UnknownOperation => ErrorCode::UnknownOperation,
            wire::ErrorCode::UnsupportedVersion => ErrorCode::UnsupportedVersion,
            wire::ErrorCode::KeyTooLarge => ErrorCode::KeyTooLarge,
            wire::ErrorCode::ValueTooLarge => ErrorCode::ValueTooLarge,
            wire::ErrorCode::BatchTooLarge => ErrorCode::BatchTooLarge,
            wire::ErrorCode::InvalidArgument => ErrorCode::InvalidArgument,
            wire::ErrorCode::CrossShardBatch => ErrorCode::CrossShardBatch,
            wire::ErrorCode::Storage => ErrorCode::Storage,
            wire::ErrorCode::Corruption => ErrorCode::Corruption,
            wire::ErrorCode::Unavailable => ErrorCode::Unavailable,
            wire::ErrorCode::TimestampTooOld => ErrorCode::TimestampTooOld,
            wire::ErrorCode::Conflict => ErrorCode::Conflict,
            wire::ErrorCode::Unauthenticated => ErrorCode::Unauthenticated,
            _ => ErrorCode::Internal,
        }
    }

    /// The name used in docs and CLI output.
    pub fn name(self) -> &'static str {
        self.to_wire().variant_name().unwrap_or("Internal")
    }
}

/// One write of a Batch or a Txn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// `ttl_ms`: expires this many milliseconds after the write's
    /// timestamp; 0: never.
    Put {
        key: Bytes,
        value: Bytes,
        ttl_ms: u64,
    },
    Delete {
        key: Bytes,
    },
}

impl BatchOp {
    /// A put that never expires.
    pub fn put(key: impl Into<Bytes>, value: impl Into<Bytes>) -> BatchOp {
        BatchOp::Put {
            key: key.into(),
            value: value.into(),
            ttl_ms: 0,
        }
    }
}

impl BatchOp {
    pub fn key(&self) -> &Bytes {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key } => key,
        }
    }
}

/// A transaction condition, checked at the transaction's timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Exists(Bytes),
    Missing(Bytes),
    Equals(Bytes, Bytes),
    /// The key's newest version (put or delete) has this timestamp; 0: none.
    VersionIs(Bytes, u64),
}

impl Condition {
    pub fn key(&self) -> &Bytes {
        match self {
            Condition::Exists(k)
            | Condition::Missing(k)
            | Condition::Equals(k, _)
            | Condition::VersionIs(k, _) => k,
        }
    }
}

/// A key read by a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadValue {
    pub key: Bytes,
    pub value: Option<Bytes>,
    /// Timestamp of the newest version at or below the read (0: none).
    pub version: u64,
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnOutcome {
    pub committed: bool,
    /// The transaction's timestamp (its commit timestamp if committed).
    pub ts: u64,
    /// Index of the condition that did not hold.
    pub failed_condition: Option<u32>,
    /// The reads, in request order.
    pub reads: Vec<ReadValue>,
}

/// The shared secret a server may require in `Hello` (`--auth-token-file`).
/// Its `Debug` does not show it, so requests can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Hello {
        protocol_version: u32,
        client_name: String,
        token: Option<Token>,
    },
    Ping,
    Get {
        key: Bytes,
    },
    /// `ttl_ms`: expires this many milliseconds after the write's
    /// timestamp; 0: never.
    Put {
        key: Bytes,
        value: Bytes,
        ttl_ms: u64,
    },
    Delete {
        key: Bytes,
    },
    Scan {
        start: Bytes,
        end: Option<Bytes>,
        limit: u32,
        /// `None`: the newest state.
        ts: Option<u64>,
    },
    Batch {
        ops: Vec<BatchOp>,
    },
    Stats,
    Topology,
    ReadAt {
        key: Bytes,
        ts: u64,
    },
    Txn {
        conditions: Vec<Condition>,
        reads: Vec<Bytes>,
        writes: Vec<BatchOp>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub shard: u32,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Error {
        code: ErrorCode,
        message: String,
    },
    Hello {
        protocol_version: u32,
        server_version: String,
        shards: u32,
        retention_ms: u64,
        /// The largest request frame the server reads (0: not said).
        frame_bytes_max: u64,
        /// The most operations a batch or a transaction may carry (0: not
        /// said).
        batch_ops_max: u32,
    },
    Pong,
    /// A Get's or a ReadAt's answer; `expires_at_ms`: when the key
    /// expires (Unix milliseconds) if it was written with a TTL.
    Get {
        value: Option<Bytes>,
        expires_at_ms: Option<u64>,
    },
    Written {
        ts: u64,
    },
    Scan {
        rows: Vec<(Bytes, Bytes)>,
        next_start: Option<Bytes>,
        /// When each row's key expires, in Unix milliseconds (0: never);
        /// empty when no row of the page expires.
        expires_at_ms: Vec<u64>,
    },
    Stats(Vec<Metric>),
    Topology {
        slots: u32,
        slot_owner: Vec<u16>,
        shards: Vec<(u32, String)>,
    },
    Txn(TxnOutcome),
}

impl Response {
    /// A Get's answer for a key without a TTL (or no key).
    pub fn value(value: Option<Bytes>) -> Response {
        Response::Get {
            value,
            expires_at_ms: None,
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}

/// Why a request frame cannot be served, and what to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.name())]
pub struct DecodeError {
    /// The request id, or 0 if the frame was unreadable.
    pub id: u64,
    pub code: ErrorCode,
    pub message: String,
}

fn verifier() -> VerifierOptions {
    VerifierOptions {
        max_depth: 16,
        max_tables: 100_000,
        ..VerifierOptions::default()
    }
}

fn bytes_of(v: Option<flatbuffers::Vector<'_, u8>>) -> Bytes {
    v.map(|v| Bytes::copy_from_slice(v.bytes()))
        .unwrap_or_default()
}

/// The checks every decoded key and value pass, for request `id`.
struct Checks<'a> {
    id: u64,
    limits: &'a Limits,
}

impl Checks<'_> {
    fn fail(&self, code: ErrorCode, message: String) -> DecodeError {
        DecodeError {
            id: self.id,
            code,
            message,
        }
    }

    fn key(&self, key: &[u8]) -> Result<(), DecodeError> {
        if key.is_empty() {
            Err(self.fail(ErrorCode::InvalidArgument, "key is empty".into()))
        } else if key.len() > self.limits.key_bytes_max {
            Err(self.fail(
                ErrorCode::KeyTooLarge,
                format!(
                    "key of {} bytes exceeds the limit of {}",
                    key.len(),
                    self.limits.key_bytes_max
                ),
            ))
        } else {
            Ok(())
        }
    }

    fn value(&self, value: &[u8]) -> Result<(), DecodeError> {
        if value.len() > self.limits.value_bytes_max {
            Err(self.fail(
                ErrorCode::ValueTooLarge,
                format!(
                    "value of {} bytes exceeds the limit of {}",
                    value.len(),
                    self.limits.value_bytes_max
                ),
            ))
        } else {
            Ok(())
        }
    }
}

/// Decodes and checks one request frame.
///
/// A get or put in the fixed layout [`crate::direct`] writes (what the
/// Rust SDK and the load generator send) is read without the generic
/// flatbuffers verifier; any other payload goes through it.
pub fn decode_request(buf: &[u8], limits: &Limits) -> Result<(u64, Request), DecodeError> {
    let Some((id, parsed)) = direct::parse_request(buf) else {
        return decode_verified_request(buf, limits);
    };
    let checks = Checks { id, limits };
    let request = match parsed {
        direct::Parsed::Get { key } => {
            checks.key(key)?;
            Request::Get {
                key: Bytes::copy_from_slice(key),
            }
        }
        direct::Parsed::Put { key, value, ttl_ms } => {
            checks.key(key)?;
            checks.value(value)?;
            Request::Put {
                key: Bytes::copy_from_slice(key),
                value: Bytes::copy_from_slice(value),
                ttl_ms,
            }
        }
    };
    Ok((id, request))
}

/// [`decode_request`] through the flatbuffers verifier.
pub(crate) fn decode_verified_request(
    buf: &[u8],
    limits: &Limits,
) -> Result<(u64, Request), DecodeError> {
    let req = flatbuffers::root_with_opts::<wire::Request>(&verifier(), buf).map_err(|e| {
        DecodeError {
            id: 0,
            code: ErrorCode::BadFrame,
            message: format!("not a valid Request flatbuffer: {e}"),
        }
    })?;
    let id = req.id();
    let checks = Checks { id, limits };
    let fail = |code, message: String| checks.fail(code, message);
    let check_key = |key: &Bytes| checks.key(key);
    let check_value = |value: &Bytes| checks.value(value);
    let request = match req.op_type() {
        wire::Op::Hello => {
            let h = req.op_as_hello().expect("verified union");
            Request::Hello {
                protocol_version: h.protocol_version(),
                client_name: h.client_name().unwrap_or_default().to_string(),
                token: h.token().map(|t| Token(t.to_string())),
            }
        }
        wire::Op::Ping => Request::Ping,
        wire::Op::Get => {
            let key = bytes_of(req.op_as_get().expect("verified union").key());
            check_key(&key)?;
            Request::Get { key }
        }
        wire::Op::Put => {
            let p = req.op_as_put().expect("verified union");
            let (key, value) = (bytes_of(p.key()), bytes_of(p.value()));
            check_key(&key)?;
            check_value(&value)?;
            Request::Put {
                key,
                value,
                ttl_ms: p.ttl_ms(),
            }
        }
        wire::Op::Delete => {
            let key = bytes_of(req.op_as_delete().expect("verified union").key());
            check_key(&key)?;
            Request::Delete { key }
        }
        wire::Op::Scan => {
            let s = req.op_as_scan().expect("verified union");
            let end = s.end().map(|e| Bytes::copy_from_slice(e.bytes()));
            let limit = s.limit().min(limits.scan_rows_max as u32);
            if limit == 0 {
                return Err(fail(
                    ErrorCode::InvalidArgument,
                    "scan limit must be positive".into(),
                ));
            }
            Request::Scan {
                start: bytes_of(s.start()),
                end,
                limit,
                ts: (s.ts() != 0).then_some(s.ts()),
            }
        }
        wire::Op::ReadAt => {
            let r = req.op_as_read_at().expect("verified union");
            let key = bytes_of(r.key());
            check_key(&key)?;
            Request::ReadAt { key, ts: r.ts() }
        }
        wire::Op::Txn => {
            let t = req.op_as_txn().expect("verified union");
            let wire_conditions = t.conditions().unwrap_or_default();
            let wire_reads = t.reads().unwrap_or_default();
            let wire_writes = t.writes().unwrap_or_default();
            let total = wire_conditions.len() + wire_reads.len() + wire_writes.len();
            if total > limits.batch_ops_max {
                return Err(fail(
                    ErrorCode::BatchTooLarge,
                    format!(
                        "transaction of {total} conditions, reads and writes exceeds the limit of {}",
                        limits.batch_ops_max
                    ),
                ));
            }
            if total == 0 {
                return Err(fail(
                    ErrorCode::InvalidArgument,
                    "transaction is empty".into(),
                ));
            }
            let mut conditions = Vec::with_capacity(wire_conditions.len());
            for c in wire_conditions {
                let key = bytes_of(c.key());
                check_key(&key)?;
                conditions.push(match c.kind() {
                    wire::ConditionKind::Exists => Condition::Exists(key),
                    wire::ConditionKind::Missing => Condition::Missing(key),
                    wire::ConditionKind::Equals => {
                        let value = bytes_of(c.value());
                        check_value(&value)?;
                        Condition::Equals(key, value)
                    }
                    wire::ConditionKind::VersionIs => Condition::VersionIs(key, c.version()),
                    other => {
                        return Err(fail(
                            ErrorCode::UnknownOperation,
                            format!("unknown condition kind {}", other.0),
                        ))
                    }
                });
            }
            let mut reads = Vec::with_capacity(wire_reads.len());
            for r in wire_reads {
                let key = bytes_of(r.key());
                check_key(&key)?;
                reads.push(key);
            }
            let writes = decode_batch_ops(wire_writes, &check_key, &check_value, &fail)?;
            Request::Txn {
                conditions,
                reads,
                writes,
            }
        }
        wire::Op::Batch => {
            let b = req.op_as_batch().expect("verified union");
            let wire_ops = b.ops().unwrap_or_default();
            if wire_ops.len() > limits.batch_ops_max {
                return Err(fail(
                    ErrorCode::BatchTooLarge,
                    format!(
                        "batch of {} ops exceeds the limit of {}",
                        wire_ops.len(),
                        limits.batch_ops_max
                    ),
                ));
            }
            let ops = decode_batch_ops(wire_ops, &check_key, &check_value, &fail)?;
            Request::Batch { ops }
        }
        wire::Op::Stats => Request::Stats,
        wire::Op::Topology => Request::Topology,
        other => {
            return Err(fail(
                ErrorCode::UnknownOperation,
                format!("unknown operation {}", other.0),
            ))
        }
    };
    Ok((id, request))
}

/// Decodes and checks the ops of a Batch or the writes of a Txn.
fn decode_batch_ops<'a>(
    wire_ops: flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<wire::BatchOp<'a>>>,
    check_key: &dyn Fn(&Bytes) -> Result<(), DecodeError>,
    check_value: &dyn Fn(&Bytes) -> Result<(), DecodeError>,
    fail: &dyn Fn(ErrorCode, String) -> DecodeError,
) -> Result<Vec<BatchOp>, DecodeError> {
    let mut ops = Vec::with_capacity(wire_ops.len());
    for op in wire_ops {
        let key = bytes_of(op.key());
        check_key(&key)?;
        ops.push(match op.kind() {
            wire::BatchOpKind::Put => {
                let value = bytes_of(op.value());
                check_value(&value)?;
                BatchOp::Put {
                    key,
                    value,
                    ttl_ms: op.ttl_ms(),
                }
            }
            wire::BatchOpKind::Delete => BatchOp::Delete { key },
            other => {
                return Err(fail(
                    ErrorCode::UnknownOperation,
                    format!("unknown batch op kind {}", other.0),
                ))
            }
        });
    }
    Ok(ops)
}

/// Encodes batch ops (Batch ops or Txn writes).
fn encode_batch_ops<'b>(
    b: &mut FlatBufferBuilder<'b>,
    ops: &[BatchOp],
) -> WIPOffset<flatbuffers::Vector<'b, flatbuffers::ForwardsUOffset<wire::BatchOp<'b>>>> {
    let offsets: Vec<WIPOffset<wire::BatchOp>> = ops
        .iter()
        .map(|op| {
            let (kind, key, value, ttl_ms) = match op {
                BatchOp::Put { key, value, ttl_ms } => {
                    (wire::BatchOpKind::Put, key, Some(value), *ttl_ms)
                }
                BatchOp::Delete { key } => (wire::BatchOpKind::Delete, key, None, 0),
            };
            let key = Some(b.create_vector(key));
            let value = value.map(|v| b.create_vector(v));
            wire::BatchOp::create(
                b,
                &wire::BatchOpArgs {
                    kind,
                    key,
                    value,
                    ttl_ms,
                },
            )
        })
        .collect();
    b.create_vector(&offsets)
}

/// One message built in a fresh builder, as a frame payload.
fn encode_payload(build: impl FnOnce(&mut FlatBufferBuilder<'_>)) -> Vec<u8> {
    let mut b = FlatBufferBuilder::with_capacity(128);
    build(&mut b);
    b.finished_data().to_vec()
}

/// One message built in the reused builder `b`, appended to `out` as a
/// frame.
fn append_frame<'b>(
    b: &mut FlatBufferBuilder<'b>,
    out: &mut Vec<u8>,
    build: impl FnOnce(&mut FlatBufferBuilder<'b>),
) {
    b.reset();
    build(b);
    put_frame(out, b.finished_data());
}

impl Request {
    /// Encodes the request as one flatbuffer (the frame payload).
    pub fn encode(&self, id: u64) -> Vec<u8> {
        encode_payload(|b| self.build(id, b))
    }

    /// Appends the request as one frame to `out`, built in `b` (reset
    /// first): a connection reuses one builder instead of allocating one
    /// per message.
    ///
    /// The commonest requests (get, put) are written straight into `out`
    /// in a fixed layout ([`crate::direct`]), without `b`.
    pub fn encode_frame(&self, id: u64, b: &mut FlatBufferBuilder<'_>, out: &mut Vec<u8>) {
        match self {
            Request::Get { key } => encode_get_frame(id, key, out),
            Request::Put { key, value, ttl_ms } => encode_put_frame(id, key, value, *ttl_ms, out),
            _ => append_frame(b, out, |b| self.build(id, b)),
        }
    }

    fn build(&self, id: u64, b: &mut FlatBufferBuilder<'_>) {
        let (op_type, op) = match self {
            Request::Hello {
                protocol_version,
                client_name,
                token,
            } => {
                let name = b.create_string(client_name);
                let token = token.as_ref().map(|t| b.create_string(&t.0));
                let o = wire::Hello::create(
                    b,
                    &wire::HelloArgs {
                        protocol_version: *protocol_version,
                        client_name: Some(name),
                        token,
                    },
                );
                (wire::Op::Hello, o.as_union_value())
            }
            Request::Ping => (
                wire::Op::Ping,
                wire::Ping::create(b, &wire::PingArgs {}).as_union_value(),
            ),
            Request::Get { key } => {
                let key = Some(b.create_vector(key));
                (
                    wire::Op::Get,
                    wire::Get::create(b, &wire::GetArgs { key }).as_union_value(),
                )
            }
            Request::Put { key, value, ttl_ms } => {
                let key = Some(b.create_vector(key));
                let value = Some(b.create_vector(value));
                let ttl_ms = *ttl_ms;
                (
                    wire::Op::Put,
                    wire::Put::create(b, &wire::PutArgs { key, value, ttl_ms }).as_union_value(),
                )
            }
            Request::Delete { key } => {
                let key = Some(b.create_vector(key));
                (
                    wire::Op::Delete,
                    wire::Delete::create(b, &wire::DeleteArgs { key }).as_union_value(),
                )
            }
            Request::Scan {
                start,
                end,
                limit,
                ts,
            } => {
                let start = Some(b.create_vector(start));
                let end = end.as_ref().map(|e| b.create_vector(e));
                let o = wire::Scan::create(
                    b,
                    &wire::ScanArgs {
                        start,
                        end,
                        limit: *limit,
                        ts: ts.unwrap_or(0),
                    },
                );
                (wire::Op::Scan, o.as_union_value())
            }
            Request::Batch { ops } => {
                let ops = Some(encode_batch_ops(b, ops));
                (
                    wire::Op::Batch,
                    wire::Batch::create(b, &wire::BatchArgs { ops }).as_union_value(),
                )
            }
            Request::ReadAt { key, ts } => {
                let key = Some(b.create_vector(key));
                (
                    wire::Op::ReadAt,
                    wire::ReadAt::create(b, &wire::ReadAtArgs { key, ts: *ts }).as_union_value(),
                )
            }
            Request::Txn {
                conditions,
                reads,
                writes,
            } => {
                let conditions: Vec<_> = conditions
                    .iter()
                    .map(|c| {
                        let (kind, value, version) = match c {
                            Condition::Exists(_) => (wire::ConditionKind::Exists, None, 0),
                            Condition::Missing(_) => (wire::ConditionKind::Missing, None, 0),
                            Condition::Equals(_, v) => (wire::ConditionKind::Equals, Some(v), 0),
                            Condition::VersionIs(_, v) => {
                                (wire::ConditionKind::VersionIs, None, *v)
                            }
                        };
                        let key = Some(b.create_vector(c.key()));
                        let value = value.map(|v| b.create_vector(v));
                        wire::Condition::create(
                            b,
                            &wire::ConditionArgs {
                                kind,
                                key,
                                value,
                                version,
                            },
                        )
                    })
                    .collect();
                let conditions = Some(b.create_vector(&conditions));
                let reads: Vec<_> = reads
                    .iter()
                    .map(|k| {
                        let key = Some(b.create_vector(k));
                        wire::Key::create(b, &wire::KeyArgs { key })
                    })
                    .collect();
                let reads = Some(b.create_vector(&reads));
                let writes = Some(encode_batch_ops(b, writes));
                (
                    wire::Op::Txn,
                    wire::Txn::create(
                        b,
                        &wire::TxnArgs {
                            conditions,
                            reads,
                            writes,
                        },
                    )
                    .as_union_value(),
                )
            }
            Request::Stats => (
                wire::Op::Stats,
                wire::Stats::create(b, &wire::StatsArgs {}).as_union_value(),
            ),
            Request::Topology => (
                wire::Op::Topology,
                wire::Topology::create(b, &wire::TopologyArgs {}).as_union_value(),
            ),
        };
        let root = wire::Request::create(
            b,
            &wire::RequestArgs {
                id,
                op_type,
                op: Some(op),
            },
        );
        b.finish(root, None);
    }
}

impl Response {
    /// Encodes the response as one flatbuffer (the frame payload).
    pub fn encode(&self, id: u64) -> Vec<u8> {
        encode_payload(|b| self.build(id, b))
    }

    /// Appends the response as one frame to `out`, built in `b` (reset
    /// first): a connection reuses one builder instead of allocating one
    /// per message.
    ///
    /// The commonest responses (pong, get, write) are written straight
    /// into `out` in a fixed layout ([`crate::direct`]), without `b`.
    pub fn encode_frame(&self, id: u64, b: &mut FlatBufferBuilder<'_>, out: &mut Vec<u8>) {
        match self {
            Response::Pong => direct::pong(out, id),
            Response::Get {
                value,
                expires_at_ms,
            } => direct::get(out, id, value.as_deref(), expires_at_ms.unwrap_or(0)),
            Response::Written { ts } => direct::written(out, id, *ts),
            _ => append_frame(b, out, |b| self.build(id, b)),
        }
    }

    fn build(&self, id: u64, b: &mut FlatBufferBuilder<'_>) {
        let (outcome_type, result) = match self {
            Response::Error { code, message } => {
                let message = Some(b.create_string(message));
                let o = wire::Error::create(
                    b,
                    &wire::ErrorArgs {
                        code: code.to_wire(),
                        message,
                    },
                );
                (wire::Outcome::Error, o.as_union_value())
            }
            Response::Hello {
                protocol_version,
                server_version,
                shards,
                retention_ms,
                frame_bytes_max,
                batch_ops_max,
            } => {
                let server_version = Some(b.create_string(server_version));
                let o = wire::HelloResult::create(
                    b,
                    &wire::HelloResultArgs {
                        protocol_version: *protocol_version,
                        server_version,
                        shards: *shards,
                        retention_ms: *retention_ms,
                        frame_bytes_max: *frame_bytes_max,
                        batch_ops_max: *batch_ops_max,
                    },
                );
                (wire::Outcome::HelloResult, o.as_union_value())
            }
            Response::Pong => (
                wire::Outcome::PingResult,
                wire::PingResult::create(b, &wire::PingResultArgs {}).as_union_value(),
            ),
            Response::Get {
                value,
                expires_at_ms,
            } => {
                let v = value.as_ref().map(|v| b.create_vector(v));
                let o = wire::GetResult::create(
                    b,
                    &wire::GetResultArgs {
                        found: value.is_some(),
                        value: v,
                        expires_at_ms: expires_at_ms.unwrap_or(0),
                    },
                );
                (wire::Outcome::GetResult, o.as_union_value())
            }
            Response::Written { ts } => (
                wire::Outcome::WriteResult,
                wire::WriteResult::create(b, &wire::WriteResultArgs { ts: *ts }).as_union_value(),
            ),
            Response::Scan {
                rows,
                next_start,
                expires_at_ms,
            } => {
                let offsets: Vec<_> = rows
                    .iter()
                    .enumerate()
                    .map(|(i, (k, v))| {
                        let key = Some(b.create_vector(k));
                        let value = Some(b.create_vector(v));
                        let expires_at_ms = expires_at_ms.get(i).copied().unwrap_or(0);
                        let row = wire::KeyValueArgs {
                            key,
                            value,
                            expires_at_ms,
                        };
                        wire::KeyValue::create(b, &row)
                    })
                    .collect();
                let rows = Some(b.create_vector(&offsets));
                let next_start = next_start.as_ref().map(|n| b.create_vector(n));
                let o = wire::ScanResult::create(b, &wire::ScanResultArgs { rows, next_start });
                (wire::Outcome::ScanResult, o.as_union_value())
            }
            Response::Stats(metrics) => {
                let offsets: Vec<_> = metrics
                    .iter()
                    .map(|m| {
                        let name = Some(b.create_string(&m.name));
                        wire::Metric::create(
                            b,
                            &wire::MetricArgs {
                                name,
                                shard: m.shard,
                                value: m.value,
                            },
                        )
                    })
                    .collect();
                let metrics = Some(b.create_vector(&offsets));
                let o = wire::StatsResult::create(b, &wire::StatsResultArgs { metrics });
                (wire::Outcome::StatsResult, o.as_union_value())
            }
            Response::Topology {
                slots,
                slot_owner,
                shards,
            } => {
                let owner = Some(b.create_vector(slot_owner));
                let offsets: Vec<_> = shards
                    .iter()
                    .map(|(shard, address)| {
                        let address = Some(b.create_string(address));
                        wire::ShardAddress::create(
                            b,
                            &wire::ShardAddressArgs {
                                shard: *shard,
                                address,
                            },
                        )
                    })
                    .collect();
                let shards = Some(b.create_vector(&offsets));
                let o = wire::TopologyResult::create(
                    b,
                    &wire::TopologyResultArgs {
                        slots: *slots,
                        slot_owner: owner,
                        shards,
                    },
                );
                (wire::Outcome::TopologyResult, o.as_union_value())
            }
            Response::Txn(outcome) => {
                let reads: Vec<_> = outcome
                    .reads
                    .iter()
                    .map(|r| {
                        let key = Some(b.create_vector(&r.key));
                        let value = r.value.as_ref().map(|v| b.create_vector(v));
                        wire::ReadValue::create(
                            b,
                            &wire::ReadValueArgs {
                                key,
                                found: r.value.is_some(),
                                value,
                                version: r.version,
                            },
                        )
                    })
                    .collect();
                let reads = Some(b.create_vector(&reads));
                let o = wire::TxnResult::create(
                    b,
                    &wire::TxnResultArgs {
                        committed: outcome.committed,
                        ts: outcome.ts,
                        failed_condition: outcome.failed_condition.map_or(-1, |i| i as i32),
                        reads,
                    },
                );
                (wire::Outcome::TxnResult, o.as_union_value())
            }
        };
        let root = wire::Response::create(
            b,
            &wire::ResponseArgs {
                id,
                outcome_type,
                outcome: Some(result),
            },
        );
        b.finish(root, None);
    }
}

fn verified_response(buf: &[u8]) -> Result<wire::Response<'_>, DecodeError> {
    flatbuffers::root_with_opts::<wire::Response>(&verifier(), buf).map_err(|e| DecodeError {
        id: 0,
        code: ErrorCode::BadFrame,
        message: format!("not a valid Response flatbuffer: {e}"),
    })
}

fn unknown_outcome(id: u64, outcome: wire::Outcome) -> DecodeError {
    DecodeError {
        id,
        code: ErrorCode::BadFrame,
        message: format!("unknown result type {}", outcome.0),
    }
}

/// Appends the frame of a `Get` request for `key`, as
/// [`Request::encode_frame`] would, from the key as it is.
pub fn encode_get_frame(id: u64, key: &[u8], out: &mut Vec<u8>) {
    direct::get_request(out, id, key);
}

/// Appends the frame of a `Put` request (`ttl_ms` 0: no TTL), as
/// [`Request::encode_frame`] would, from the key and value as they are.
pub fn encode_put_frame(id: u64, key: &[u8], value: &[u8], ttl_ms: u64, out: &mut Vec<u8>) {
    direct::put_request(out, id, key, value, ttl_ms);
}

/// A response's id and, if it is an error, its code: all a client that
/// does not look at results needs (the load generator). Verified as
/// [`decode_response`] does, but nothing is copied out.
pub fn response_status(buf: &[u8]) -> Result<(u64, Option<ErrorCode>), DecodeError> {
    let resp = verified_response(buf)?;
    let id = resp.id();
    let outcome = resp.outcome_type();
    if outcome == wire::Outcome::NONE || outcome.variant_name().is_none() {
        return Err(unknown_outcome(id, outcome));
    }
    let error = resp
        .outcome_as_error()
        .map(|e| ErrorCode::from_wire(e.code()));
    Ok((id, error))
}

/// Decodes one response frame (client side).
pub fn decode_response(buf: &[u8]) -> Result<(u64, Response), DecodeError> {
    let resp = verified_response(buf)?;
    let id = resp.id();
    let response = match resp.outcome_type() {
        wire::Outcome::Error => {
            let e = resp.outcome_as_error().expect("verified union");
            Response::Error {
                code: ErrorCode::from_wire(e.code()),
                message: e.message().unwrap_or_default().to_string(),
            }
        }
        wire::Outcome::HelloResult => {
            let h = resp.outcome_as_hello_result().expect("verified union");
            Response::Hello {
                protocol_version: h.protocol_version(),
                server_version: h.server_version().unwrap_or_default().to_string(),
                shards: h.shards(),
                retention_ms: h.retention_ms(),
                frame_bytes_max: h.frame_bytes_max(),
                batch_ops_max: h.batch_ops_max(),
            }
        }
        wire::Outcome::PingResult => Response::Pong,
        wire::Outcome::GetResult => {
            let g = resp.outcome_as_get_result().expect("verified union");
            Response::Get {
                value: g.found().then(|| bytes_of(g.value())),
                expires_at_ms: Some(g.expires_at_ms()).filter(|&at| at != 0),
            }
        }
        wire::Outcome::WriteResult => Response::Written {
            ts: resp.outcome_as_write_result().expect("verified union").ts(),
        },
        wire::Outcome::ScanResult => {
            let s = resp.outcome_as_scan_result().expect("verified union");
            let wire_rows = s.rows().unwrap_or_default();
            let rows = wire_rows
                .iter()
                .map(|kv| (bytes_of(kv.key()), bytes_of(kv.value())))
                .collect();
            let expires_at_ms = match wire_rows.iter().any(|kv| kv.expires_at_ms() != 0) {
                true => wire_rows.iter().map(|kv| kv.expires_at_ms()).collect(),
                false => Vec::new(),
            };
            Response::Scan {
                rows,
                next_start: s.next_start().map(|n| Bytes::copy_from_slice(n.bytes())),
                expires_at_ms,
            }
        }
        wire::Outcome::StatsResult => {
            let s = resp.outcome_as_stats_result().expect("verified union");
            Response::Stats(
                s.metrics()
                    .unwrap_or_default()
                    .iter()
                    .map(|m| Metric {
                        name: m.name().unwrap_or_default().to_string(),
                        shard: m.shard(),
                        value: m.value(),
                    })
                    .collect(),
            )
        }
        wire::Outcome::TopologyResult => {
            let t = resp.outcome_as_topology_result().expect("verified union");
            Response::Topology {
                slots: t.slots(),
                slot_owner: t
                    .slot_owner()
                    .map(|o| o.iter().collect())
                    .unwrap_or_default(),
                shards: t
                    .shards()
                    .unwrap_or_default()
                    .iter()
                    .map(|s| (s.shard(), s.address().unwrap_or_default().to_string()))
                    .collect(),
            }
        }
        wire::Outcome::TxnResult => {
            let t = resp.outcome_as_txn_result().expect("verified union");
            Response::Txn(TxnOutcome {
                committed: t.committed(),
                ts: t.ts(),
                failed_condition: u32::try_from(t.failed_condition()).ok(),
                reads: t
                    .reads()
                    .unwrap_or_default()
                    .iter()
                    .map(|r| ReadValue {
                        key: bytes_of(r.key()),
                        value: r.found().then(|| bytes_of(r.value())),
                        version: r.version(),
                    })
                    .collect(),
            })
        }
        other => return Err(unknown_outcome(id, other)),
    };
    Ok((id, response))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes() -> impl Strategy<Value = Bytes> {
        prop::collection::vec(any::<u8>(), 1..40).prop_map(Bytes::from)
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            Just(Request::Ping),
            Just(Request::Stats),
            Just(Request::Topology),
            (any::<u32>(), "[a-z]{0,8}", prop::option::of("[ -~]{0,12}")).prop_map(
                |(protocol_version, client_name, token)| Request::Hello {
                    protocol_version,
                    client_name,
                    token: token.map(Token),
                }
            ),
            bytes().prop_map(|key| Request::Get { key }),
            (bytes(), bytes(), prop_oneof![Just(0), any::<u64>()])
                .prop_map(|(key, value, ttl_ms)| Request::Put { key, value, ttl_ms }),
            bytes().prop_map(|key| Request::Delete { key }),
            (
                bytes(),
                prop::option::of(bytes()),
                1..100u32,
                prop::option::of(1..u64::MAX)
            )
                .prop_map(|(start, end, limit, ts)| Request::Scan {
                    start,
                    end,
                    limit,
                    ts
                }),
            (bytes(), any::<u64>()).prop_map(|(key, ts)| Request::ReadAt { key, ts }),
            (
                prop::collection::vec((0..4u8, bytes(), bytes(), any::<u64>()), 0..3),
                prop::collection::vec(bytes(), 0..3),
                batch_ops(),
            )
                .prop_filter("not empty", |(c, r, w)| !(c.is_empty()
                    && r.is_empty()
                    && w.is_empty()))
                .prop_map(|(conditions, reads, writes)| Request::Txn {
                    conditions: conditions
                        .into_iter()
                        .map(|(kind, key, value, version)| match kind {
                            0 => Condition::Exists(key),
                            1 => Condition::Missing(key),
                            2 => Condition::Equals(key, value),
                            _ => Condition::VersionIs(key, version),
                        })
                        .collect(),
                    reads,
                    writes,
                }),
            batch_ops().prop_map(|ops| Request::Batch { ops }),
        ]
    }

    fn batch_ops() -> impl Strategy<Value = Vec<BatchOp>> {
        prop::collection::vec((bytes(), prop::option::of((bytes(), any::<u64>()))), 0..5).prop_map(
            |ops| {
                ops.into_iter()
                    .map(|(key, v)| match v {
                        Some((value, ttl_ms)) => BatchOp::Put { key, value, ttl_ms },
                        None => BatchOp::Delete { key },
                    })
                    .collect()
            },
        )
    }

    proptest! {
        #[test]
        fn requests_round_trip(req in request(), id in any::<u64>()) {
            let buf = req.encode(id);
            prop_assert_eq!(decode_request(&buf, &Limits::default()), Ok((id, req)));
        }

        #[test]
        fn random_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(&buf, &Limits::default());
            let _ = decode_response(&buf);
            let _ = response_status(&buf);
        }
    }

    #[test]
    fn responses_round_trip() {
        let cases = vec![
            Response::error(ErrorCode::KeyTooLarge, "too big"),
            Response::value(Some(Bytes::from_static(b"v"))),
            Response::value(None),
            Response::Get {
                value: Some(Bytes::from_static(b"v")),
                expires_at_ms: Some(1_800_000_000_000),
            },
            Response::Written { ts: 42 },
            Response::Scan {
                rows: vec![(Bytes::from_static(b"a"), Bytes::from_static(b"1"))],
                next_start: Some(Bytes::from_static(b"b")),
                expires_at_ms: Vec::new(),
            },
            Response::Scan {
                rows: vec![
                    (Bytes::from_static(b"a"), Bytes::from_static(b"1")),
                    (Bytes::from_static(b"b"), Bytes::from_static(b"2")),
                ],
                next_start: None,
                expires_at_ms: vec![0, 1_800_000_000_000],
            },
            Response::Topology {
                slots: 4,
                slot_owner: vec![0, 1, 0, 1],
                shards: vec![(0, "127.0.0.1:1".into())],
            },
            Response::Hello {
                protocol_version: 1,
                server_version: "x".into(),
                shards: 2,
                retention_ms: 60_000,
                frame_bytes_max: 2 << 20,
                batch_ops_max: 1024,
            },
            Response::Txn(TxnOutcome {
                committed: false,
                ts: 99,
                failed_condition: Some(2),
                reads: vec![
                    ReadValue {
                        key: Bytes::from_static(b"a"),
                        value: None,
                        version: 0,
                    },
                    ReadValue {
                        key: Bytes::from_static(b"b"),
                        value: Some(Bytes::from_static(b"")),
                        version: 7,
                    },
                ],
            }),
            Response::Txn(TxnOutcome {
                committed: true,
                ts: 5,
                failed_condition: None,
                reads: vec![],
            }),
        ];
        // One reused builder appends frames that say what `encode`'s do
        // (the commonest are laid out directly, in other bytes).
        let mut builder = FlatBufferBuilder::with_capacity(16);
        let mut out = Vec::new();
        for (i, r) in cases.iter().enumerate() {
            r.encode_frame(i as u64, &mut builder, &mut out);
        }
        let mut stream = bytes::BytesMut::from(&out[..]);
        for (i, r) in cases.iter().enumerate() {
            let payload = crate::frame::next_frame(&mut stream, usize::MAX)
                .expect("a frame")
                .expect("whole");
            assert_eq!(decode_response(&payload), Ok((i as u64, r.clone())));
            assert_eq!(
                decode_response(&payload),
                decode_response(&r.encode(i as u64))
            );
        }
        assert!(stream.is_empty());
        for (i, r) in cases.into_iter().enumerate() {
            let buf = r.encode(i as u64);
            let error = match &r {
                Response::Error { code, .. } => Some(*code),
                _ => None,
            };
            assert_eq!(response_status(&buf), Ok((i as u64, error)));
            assert_eq!(decode_response(&buf), Ok((i as u64, r)));
        }
    }

    #[test]
    fn a_response_without_a_result_is_refused_whole_or_by_status() {
        let mut b = FlatBufferBuilder::new();
        let root = wire::Response::create(
            &mut b,
            &wire::ResponseArgs {
                id: 3,
                ..Default::default()
            },
        );
        b.finish(root, None);
        let buf = b.finished_data();
        assert_eq!(response_status(buf).unwrap_err().code, ErrorCode::BadFrame);
        assert_eq!(decode_response(buf).unwrap_err().code, ErrorCode::BadFrame);
    }

    #[test]
    fn limits_produce_their_error_codes() {
        let limits = Limits {
            key_bytes_max: 4,
            value_bytes_max: 4,
            ..Limits::default()
        };
        let big_key = Request::Get {
            key: Bytes::from_static(b"12345"),
        }
        .encode(7);
        let err = decode_request(&big_key, &limits).unwrap_err();
        assert_eq!((err.id, err.code), (7, ErrorCode::KeyTooLarge));
        let big_value = Request::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"12345"),
            ttl_ms: 0,
        }
        .encode(8);
        assert_eq!(
            decode_request(&big_value, &limits).unwrap_err().code,
            ErrorCode::ValueTooLarge
        );
        let empty = Request::Get { key: Bytes::new() }.encode(9);
        assert_eq!(
            decode_request(&empty, &limits).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            decode_request(b"garbage!", &limits).unwrap_err().code,
            ErrorCode::BadFrame
        );
    }
}

#[cfg(test)]
mod unknown_op {
    use super::*;

    #[test]
    fn an_unknown_union_type_is_an_unknown_operation_with_the_id() {
        let mut buf = Request::Ping.encode(9);
        let pos = buf
            .iter()
            .rposition(|&b| b == 2)
            .expect("the Ping union tag is 2");
        buf[pos] = 200;
        let err = decode_request(&buf, &Limits::default()).unwrap_err();
        assert_eq!(
            (err.id, err.code),
            (9, ErrorCode::UnknownOperation),
            "{err}"
        );
    }
}
