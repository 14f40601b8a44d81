"""The client: framing, pipelining, typed errors and shard-aware routing.

Every type on the wire comes from the code flatc generates from
``protocol/schema/tessera.fbs`` (``tessera.wire``); this module only builds
requests with it and turns responses into Python values.
"""

from __future__ import annotations

import enum
import math
import random
import select
import socket
import ssl
import struct
import time
from dataclasses import dataclass, field
from typing import Union
from collections.abc import Iterator, Sequence

import flatbuffers
import flatbuffers.table
import xxhash

from .wire import Batch as _batch
from .wire import BatchOp as _batch_op
from .wire import BatchOpKind as _batch_op_kind
from .wire import Condition as _condition
from .wire import ConditionKind as _condition_kind
from .wire import Delete as _delete
from .wire import Error as _error
from .wire import ErrorCode as _error_code
from .wire import Get as _get
from .wire import GetResult as _get_result
from .wire import Hello as _hello
from .wire import HelloResult as _hello_result
from .wire import Key as _key
from .wire import KeyValue as _key_value
from .wire import Op as _op
from .wire import Outcome as _outcome
from .wire import Ping as _ping
from .wire import Put as _put
from .wire import ReadAt as _read_at
from .wire import ReadValue as _read_value
from .wire import Request as _request
from .wire import Response as _response
from .wire import Scan as _scan
from .wire import ScanResult as _scan_result
from .wire import Stats as _stats
from .wire import StatsResult as _stats_result
from .wire import Topology as _topology
from .wire import TopologyResult as _topology_result
from .wire import Txn as _txn
from .wire import TxnResult as _txn_result
from .wire import WriteResult as _write_result

#: Seconds a connection may sit unused before ``Client`` checks, ahead of
#: its next request, whether the server closed it.
IDLE_CHECK_AFTER = 1.0

#: The protocol version this client speaks (``Hello.protocol_version``).
PROTOCOL_VERSION = 1

#: The largest request frame a server reads unless its hello says otherwise.
FRAME_BYTES_MAX_DEFAULT = 2 << 20

#: Largest response frame the client accepts.
RESPONSE_BYTES_MAX = 64 << 20

_LENGTH = struct.Struct("<I")

#: The server's error codes, named as in the schema.
ErrorCode = enum.IntEnum(
    "ErrorCode",
    {
        name: value
        for name, value in vars(_error_code.ErrorCode).items()
        if not name.startswith("_")
    },
)

Bytes = Union[bytes, bytearray, memoryview, str]


def _b(value: Bytes) -> bytes:
    """Keys and values: bytes as they are, str as UTF-8."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"expected bytes or str, got {type(value).__name__}")


# --- errors -----------------------------------------------------------------


class TesseraError(Exception):
    """Base of every error this package raises (besides ``OSError``)."""


class ServerError(TesseraError):
    """The server answered with an error; ``code`` says which kind."""

    def __init__(self, code: ErrorCode | int, message: str):
        self.code = code
        self.message = message
        name = code.name if isinstance(code, ErrorCode) else f"code {code}"
        super().__init__(f"server error {name}: {message}")


class ProtocolError(TesseraError):
    """The server sent something this client cannot understand."""


class RequestTooLarge(TesseraError, ValueError):
    """A request larger than the server reads in one frame; nothing was
    sent, and the connection stays usable. ``size`` and ``limit`` in bytes."""

    def __init__(self, size: int, limit: int):
        self.size = size
        self.limit = limit
        super().__init__(
            f"request of {size} bytes exceeds the server's frame limit of {limit} bytes"
            " (--frame-bytes-max); split it"
        )


class Timeout(TesseraError, TimeoutError):
    """No answer from the server within the connection's timeout."""


class ConnectionClosed(TesseraError, ConnectionError):
    """The server closed the connection."""


def closed_before_hello(error: ConnectionClosed, tls) -> ConnectionClosed:
    """``error``, raised by a connection's first hello, with a hint for a
    plain connection: a TLS server closes one that does not start with a
    handshake."""
    if tls is not None:
        return error
    return ConnectionClosed(f"{error} (if the server uses TLS, pass tls=...)")


# --- requests ---------------------------------------------------------------


def ttl_ms(ttl: float | None) -> int:
    """A TTL in seconds as whole milliseconds, rounded up (0: none)."""
    if ttl is None:
        return 0
    if ttl <= 0:
        raise ValueError(f"a TTL must be positive, got {ttl}")
    return math.ceil(ttl * 1000)


@dataclass(frozen=True)
class PutOp:
    """A put inside a batch or a transaction; ``ttl_ms`` as in ``Put``."""

    key: Bytes
    value: Bytes
    ttl_ms: int = 0


@dataclass(frozen=True)
class DeleteOp:
    """A delete inside a batch or a transaction."""

    key: Bytes


WriteOp = Union[PutOp, DeleteOp]


def _vector(b: flatbuffers.Builder, offsets: Sequence[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return b.EndVector()


def _key_table(b: flatbuffers.Builder, module, key: Bytes) -> int:
    """A table whose one field is ``key`` (``Get``, ``Delete``, ``Key``)."""
    key = b.CreateByteVector(_b(key))
    module.Start(b)
    module.AddKey(b, key)
    return module.End(b)


def _write_ops(b: flatbuffers.Builder, ops: Sequence[WriteOp]) -> int:
    built = []
    for op in ops:
        key = b.CreateByteVector(_b(op.key))
        value = b.CreateByteVector(_b(op.value)) if isinstance(op, PutOp) else None
        _batch_op.Start(b)
        if isinstance(op, PutOp):
            _batch_op.AddKind(b, _batch_op_kind.BatchOpKind.Put)
            _batch_op.AddValue(b, value)
            _batch_op.AddTtlMs(b, op.ttl_ms)
        elif isinstance(op, DeleteOp):
            _batch_op.AddKind(b, _batch_op_kind.BatchOpKind.Delete)
        else:
            raise TypeError(f"expected PutOp or DeleteOp, got {type(op).__name__}")
        _batch_op.AddKey(b, key)
        built.append(_batch_op.End(b))
    return _vector(b, built)


@dataclass(frozen=True)
class Hello:
    """``token``: the server's shared secret, when it requires one (its
    ``--auth-token-file``); until a connection says it, every other request
    is refused with ``ErrorCode.Unauthenticated``."""

    protocol_version: int = PROTOCOL_VERSION
    client_name: str = "tessera-python"
    token: str | None = field(default=None, repr=False)

    def _build(self, b: flatbuffers.Builder) -> tuple[int, int]:
        name = b.CreateString(self.client_name)
        token = None if self.token is None else b.CreateString(self.token)
        _hello.Start(b)
        _hello.AddProtocolVersion(b, self.protocol_version)
        _hello.AddClientName(b, name)
        if token is not None:
            _hello.AddToken(b, token)
        return _op.Op.Hello, _hello.End(b)


@dataclass(frozen=True)
class Ping:
    def _build(self, b: flatbuffers.Builder) -> tuple[int, int]:
        _ping.Start(b)
        return _op.Op.Ping, _ping.End(b)


@dataclass(frozen=True)
class Get:
    key: Bytes

    def _build(self, b: flatbuffers.Builder) -> tuple[int, int]:
        return _op.Op.Get, _key_table(b, _get, self.key)


@dataclass(frozen=True)
class Put:
    """``ttl_ms``: the key expires this many milliseconds after the write's
    timestamp (0: never)."""

    key: Bytes
    value: Bytes
    ttl_ms: int = 0

    def _build(self, b: flatbuffers.Builder) -> tuple[int, int]:
        key = b.CreateByteVector(_b(self.key))
        value = b.CreateByteVector(_b(self.value))
        _put.Start(b)
        _put.AddKey(b, key)
        _put.AddValue(b, value)
        _put.AddTtlMs(b, self.ttl_ms)
        return _op.Op.Put, _put.End(b)


@dataclass(frozen=True)
class Delete:
    key: Bytes

    def _build(self, b: flatbuffers.Builder) -> tuple[int, int]:
        return _op.Op.Delete, _key_table(b, _delete, self.key)


@dataclass(frozen=True)
class Scan:
    """Keys in ``[start, end)`` (``end`` None: to the last key), at most
    ``limit`` rows, as of timestamp ``ts`` (0: the newest state)."""

    start: Bytes
    end: Bytes | None = None
    limit: int = 1000
    ts: int = 0

    def _build(self, b: flatbuffers.Builder) -> tuple[int, int]:
        start = b.CreateByteVector(_b(self.start))
        end = None if self.end is None else b.CreateByteVector(_b(self.end))
        _scan.Start(b)
        _scan.AddStart(b, start)
        if end is not None:
            _scan.AddEnd(b, end)
        _scan.AddLimit(b, self.limit)
        _scan.AddTs(b, self.ts)
        return _op.Op.Scan, _scan.End(b)


@dataclass(frozen=True)
class ReadAt:
    key: Bytes
    ts: int

    def _build(self, b: flatbuffers.Builder) -> tuple[int, int]:
        key = b.CreateByteVector(_b(self.key))
        _read_at.Start(b)
        _read_at.AddKey(b, key)
        _read_at.AddTs(b, self.ts)
        return _op.Op.ReadAt, _read_at.End(b)


@dataclass(frozen=True)
class Batch:
    """Puts and deletes applied atomically at one timestamp."""

    ops: Sequence[WriteOp]

    def _build(self, b: flatbuffers.Builder) -> tuple[int, int]:
        ops = _write_ops(b, self.ops)
        _batch.Start(b)
        _batch.AddOps(b, ops)
        return _op.Op.Batch, _batch.End(b)


@dataclass(frozen=True)
class Stats:
    def _build(self, b: flatbuffers.Builder) -> tuple[int, int]:
        _stats.Start(b)
        return _op.Op.Stats, _stats.End(b)


@dataclass(frozen=True)
class Topology:
    def _build(self, b: flatbuffers.Builder) -> tuple[int, int]:
        _topology.Start(b)
        return _op.Op.Topology, _topology.End(b)


@dataclass(frozen=True)
class _Check:
    kind: int
    key: bytes
    value: bytes | None = None
    version: int = 0


@dataclass
class Txn:
    """A one-shot transaction: conditions, reads and writes on any keys of
    any shards, executed atomically at one timestamp with serializable
    isolation. Build it by chaining::

        Txn().equals("a", "100").put("a", "90").put("b", "10").read("b")
    """

    conditions: list[_Check] = field(default_factory=list)
    reads: list[bytes] = field(default_factory=list)
    writes: list[WriteOp] = field(default_factory=list)

    def exists(self, key: Bytes) -> Txn:
        """Requires ``key`` to have a live value."""
        self.conditions.append(_Check(_condition_kind.ConditionKind.Exists, _b(key)))
        return self

    def missing(self, key: Bytes) -> Txn:
        """Requires ``key`` to have no live value."""
        self.conditions.append(_Check(_condition_kind.ConditionKind.Missing, _b(key)))
        return self

    def equals(self, key: Bytes, value: Bytes) -> Txn:
        """Requires ``key``'s value to equal ``value``."""
        self.conditions.append(
            _Check(_condition_kind.ConditionKind.Equals, _b(key), value=_b(value))
        )
        return self

    def version_is(self, key: Bytes, version: int) -> Txn:
        """Requires ``key``'s newest version to have timestamp ``version``
        (as a read returned it; 0: never written)."""
        self.conditions.append(
            _Check(_condition_kind.ConditionKind.VersionIs, _b(key), version=version)
        )
        return self

    def read(self, key: Bytes) -> Txn:
        self.reads.append(_b(key))
        return self

    def put(self, key: Bytes, value: Bytes, ttl: float | None = None) -> Txn:
        """``ttl``: seconds after the transaction's timestamp the key
        expires (None: never)."""
        self.writes.append(PutOp(_b(key), _b(value), ttl_ms(ttl)))
        return self

    def delete(self, key: Bytes) -> Txn:
        self.writes.append(DeleteOp(_b(key)))
        return self

    def home_key(self) -> bytes | None:
        """The key whose shard should coordinate: the first written, else
        the first read or checked."""
        if self.writes:
            return _b(self.writes[0].key)
        if self.reads:
            return self.reads[0]
        if self.conditions:
            return self.conditions[0].key
        return None

    def _build(self, b: flatbuffers.Builder) -> tuple[int, int]:
        conditions = []
        for c in self.conditions:
            key = b.CreateByteVector(c.key)
            value = None if c.value is None else b.CreateByteVector(c.value)
            _condition.Start(b)
            _condition.AddKind(b, c.kind)
            _condition.AddKey(b, key)
            if value is not None:
                _condition.AddValue(b, value)
            _condition.AddVersion(b, c.version)
            conditions.append(_condition.End(b))
        reads = [_key_table(b, _key, k) for k in self.reads]
        writes = _write_ops(b, self.writes)
        conditions_vector = _vector(b, conditions)
        reads_vector = _vector(b, reads)
        _txn.Start(b)
        _txn.AddConditions(b, conditions_vector)
        _txn.AddReads(b, reads_vector)
        _txn.AddWrites(b, writes)
        return _op.Op.Txn, _txn.End(b)


Request = Union[Hello, Ping, Get, Put, Delete, Scan, ReadAt, Batch, Stats, Topology, Txn]


def encode_requests(requests: Sequence[Request], ids: Sequence[int], limit: int) -> list[bytes]:
    """The frames of ``requests`` under ``ids``; raises ``RequestTooLarge``,
    before anything is sent, if one exceeds the server's ``limit``."""
    frames = [encode_request(r, i) for r, i in zip(requests, ids)]
    for frame in frames:
        if len(frame) - _LENGTH.size > limit:
            raise RequestTooLarge(len(frame) - _LENGTH.size, limit)
    return frames


def frame_limit_after(value, limit: int) -> int:
    """A connection's request frame limit once ``value`` arrived: what a
    hello's answer says, else unchanged."""
    if isinstance(value, HelloInfo) and value.frame_bytes_max:
        return value.frame_bytes_max
    return limit


def encode_request(request: Request, request_id: int) -> bytes:
    """One frame (length prefix included) holding ``request``."""
    b = flatbuffers.Builder(64)
    op_type, op = request._build(b)
    _request.Start(b)
    _request.AddId(b, request_id)
    _request.AddOpType(b, op_type)
    _request.AddOp(b, op)
    b.Finish(_request.End(b))
    payload = b.Output()
    return _LENGTH.pack(len(payload)) + payload


# --- responses --------------------------------------------------------------


@dataclass(frozen=True)
class HelloInfo:
    protocol_version: int
    server_version: str
    shards: int
    #: How far back ``read_at`` and scans at a timestamp can go.
    retention_ms: int
    #: The largest request frame the server reads (0: not said).
    frame_bytes_max: int = 0
    #: The most operations a batch or a transaction may carry (0: not said).
    batch_ops_max: int = 0


class Expiring(bytes):
    """A value whose key was written with a TTL: ``bytes``, and
    ``expires_at_ms``, when the key expires (Unix milliseconds). Reads of
    keys without a TTL give plain ``bytes``."""

    expires_at_ms: int


def _value(data: bytes, expires_at_ms: int) -> bytes:
    if not expires_at_ms:
        return data
    value = Expiring(data)
    value.expires_at_ms = expires_at_ms
    return value


@dataclass(frozen=True)
class ScanPage:
    """One page of a scan; send ``next_start`` as the next start to go on
    (None: the range is exhausted). ``expires_at_ms[i]``: when row ``i``'s
    key expires, in Unix milliseconds (0: never); empty when no row of the
    page was written with a TTL."""

    rows: list[tuple[bytes, bytes]]
    next_start: bytes | None
    expires_at_ms: list[int] = field(default_factory=list)

    def expires_at(self, i: int) -> int | None:
        """When row ``i``'s key expires (Unix ms), or None if it does not."""
        at = self.expires_at_ms[i] if i < len(self.expires_at_ms) else 0
        return at or None


@dataclass(frozen=True)
class Metric:
    name: str
    shard: int
    value: float


@dataclass(frozen=True)
class TopologyInfo:
    slots: int
    slot_owner: list[int]
    #: Each shard's own address, by shard number.
    addresses: list[str]


@dataclass(frozen=True)
class ReadValue:
    key: bytes
    #: None if the key had no live value at the transaction's timestamp.
    value: bytes | None
    #: Timestamp of the key's newest put or delete at or below the
    #: transaction's timestamp (0 if never written).
    version: int


@dataclass(frozen=True)
class TxnOutcome:
    committed: bool
    ts: int
    #: Index of the condition that did not hold (nothing was written).
    failed_condition: int | None
    reads: list[ReadValue]


class _Table(flatbuffers.table.Table):
    """A table whose byte vectors come back as ``bytes``, one slice each.

    flatc's Python code reads a ``[ubyte]`` one element per call, or as a
    numpy array; its ``...AsNumpy`` accessors call ``GetVectorAsNumpy``,
    which this table answers with a slice instead, so values need neither
    a loop nor numpy.
    """

    __slots__ = ()

    def GetVectorAsNumpy(self, flags, off):  # noqa: N802 (flatbuffers' name)
        start = self.Vector(off)
        return bytes(self.Bytes[start : start + self.VectorLen(off)])


def _init(self, buf, pos):
    self._tab = _Table(buf, pos)


# Only this package's generated classes: other flatbuffers users in the
# process keep the library's behaviour.
for _cls in (
    _get_result.GetResult,
    _key_value.KeyValue,
    _scan_result.ScanResult,
    _read_value.ReadValue,
):
    _cls.Init = _init


def _vec(value) -> bytes | None:
    """A ``...AsNumpy()`` result: bytes, or the int 0 when absent."""
    return value if isinstance(value, bytes) else None


def _as(cls, table: flatbuffers.table.Table):
    obj = cls()
    obj.Init(table.Bytes, table.Pos)
    return obj


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def decode_response(payload: bytes):
    """``(id, value)`` from one response frame's payload; an error response
    gives a ``ServerError`` as the value (not raised)."""
    try:
        r = _response.Response.GetRootAs(payload, 0)
        request_id = r.Id()
        kind = r.OutcomeType()
        table = r.Outcome()
        if table is None:
            raise ProtocolError(f"response {request_id} has no outcome")
        return request_id, _outcome_value(kind, table)
    # What flatbuffers' unverified reads raise on a damaged buffer.
    except (IndexError, TypeError, ValueError, OverflowError, struct.error) as e:
        raise ProtocolError(f"malformed response: {e}") from e


def _outcome_value(kind: int, table: flatbuffers.table.Table):
    o = _outcome.Outcome
    if kind == o.Error:
        e = _as(_error.Error, table)
        code = e.Code()
        try:
            code = ErrorCode(code)
        except ValueError:
            pass
        return ServerError(code, _text(e.Message()))
    if kind == o.GetResult:
        g = _as(_get_result.GetResult, table)
        if not g.Found():
            return None
        return _value(_vec(g.ValueAsNumpy()) or b"", g.ExpiresAtMs())
    if kind == o.WriteResult:
        return _as(_write_result.WriteResult, table).Ts()
    if kind == o.PingResult:
        return None
    if kind == o.ScanResult:
        s = _as(_scan_result.ScanResult, table)
        rows, expires = [], []
        for i in range(s.RowsLength()):
            row = s.Rows(i)
            rows.append((_vec(row.KeyAsNumpy()) or b"", _vec(row.ValueAsNumpy()) or b""))
            expires.append(row.ExpiresAtMs())
        return ScanPage(rows, _vec(s.NextStartAsNumpy()), expires if any(expires) else [])
    if kind == o.TxnResult:
        t = _as(_txn_result.TxnResult, table)
        reads = []
        for i in range(t.ReadsLength()):
            rv = t.Reads(i)
            value = (_vec(rv.ValueAsNumpy()) or b"") if rv.Found() else None
            reads.append(ReadValue(_vec(rv.KeyAsNumpy()) or b"", value, rv.Version()))
        failed = t.FailedCondition()
        return TxnOutcome(t.Committed(), t.Ts(), None if failed < 0 else failed, reads)
    if kind == o.HelloResult:
        h = _as(_hello_result.HelloResult, table)
        return HelloInfo(
            h.ProtocolVersion(),
            _text(h.ServerVersion()),
            h.Shards(),
            h.RetentionMs(),
            h.FrameBytesMax(),
            h.BatchOpsMax(),
        )
    if kind == o.StatsResult:
        s = _as(_stats_result.StatsResult, table)
        out = []
        for i in range(s.MetricsLength()):
            m = s.Metrics(i)
            out.append(Metric(_text(m.Name()), m.Shard(), m.Value()))
        return out
    if kind == o.TopologyResult:
        t = _as(_topology_result.TopologyResult, table)
        owners = [t.SlotOwner(i) for i in range(t.SlotOwnerLength())]
        listed = sorted(
            (t.Shards(i).Shard(), _text(t.Shards(i).Address())) for i in range(t.ShardsLength())
        )
        if [shard for shard, _ in listed] != list(range(len(listed))):
            raise ProtocolError(f"topology lists shards {[s for s, _ in listed]}")
        return TopologyInfo(t.Slots(), owners, [address for _, address in listed])
    raise ProtocolError(f"unknown outcome type {kind}")


# --- connections ------------------------------------------------------------


class Frames:
    """Response frames out of the bytes a connection reads: each a
    little-endian u32 length, then that many bytes."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk

    def next(self) -> bytes | None:
        """The next whole frame's payload, if it is all here."""
        if len(self._buf) < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack_from(self._buf)
        if length > RESPONSE_BYTES_MAX:
            raise ProtocolError(f"response frame of {length} bytes exceeds {RESPONSE_BYTES_MAX}")
        end = _LENGTH.size + length
        if len(self._buf) < end:
            return None
        payload = bytes(self._buf[_LENGTH.size : end])
        del self._buf[:end]
        return payload

    def buffered(self) -> int:
        """Bytes read but not yet returned as frames."""
        return len(self._buf)

    def wanted(self) -> int:
        """How much to read next: the rest of a large frame in one go."""
        if len(self._buf) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buf)
            return max(1 << 16, _LENGTH.size + length - len(self._buf))
        return 1 << 16


def host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


class Connection:
    """One TCP connection. Requests may be pipelined: ``send`` many, then
    ``wait`` for each id; responses arriving out of order are kept until
    asked for. Not safe to share between threads."""

    def __init__(
        self,
        address: str,
        timeout: float = 10.0,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ):
        """``tls``: speak TLS (a server started with ``--tls-cert``),
        checking the server's certificate for ``server_hostname`` (default:
        the host of ``address``)."""
        self.address = address
        #: The largest request frame the server reads: what its hello says,
        #: until then the protocol's default.
        self.frame_bytes_max = FRAME_BYTES_MAX_DEFAULT
        host, port = host_port(address)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=server_hostname or host)
        except socket.timeout as e:
            raise Timeout(f"connecting to {address}") from e
        self._sock = sock
        self._next_id = 1
        self._frames = Frames()
        self._arrived: dict[int, object] = {}
        # Requests sent whose responses have not been read, and when the
        # connection last sent or received (see ``closed_while_idle``).
        self._outstanding = 0
        self._last_used = time.monotonic()

    def closed_while_idle(self) -> bool:
        """Whether the server closed this connection (or sent it what no
        request asked for) while it sat unused: checked without waiting,
        and only after a second with nothing in flight."""
        if (
            self._outstanding
            or self._arrived
            or self._frames.buffered()
            or time.monotonic() - self._last_used < IDLE_CHECK_AFTER
        ):
            return False
        pending = isinstance(self._sock, ssl.SSLSocket) and self._sock.pending()
        try:
            readable = select.select([self._sock], [], [], 0)[0]
        except (OSError, ValueError):
            return True
        return bool(pending or readable)

    def send(self, request: Request) -> int:
        """Sends a request; returns its id."""
        return self.send_many([request])[0]

    def send_many(self, requests: Sequence[Request]) -> list[int]:
        """Sends requests in one write; returns their ids."""
        ids = list(range(self._next_id, self._next_id + len(requests)))
        encoded = encode_requests(requests, ids, self.frame_bytes_max)
        self._next_id += len(requests)
        frames = b"".join(encoded)
        try:
            self._sock.sendall(frames)
        except socket.timeout as e:
            raise Timeout(f"sending to {self.address}") from e
        self._outstanding += len(ids)
        self._last_used = time.monotonic()
        return ids

    def recv(self):
        """The next response off the wire: ``(id, value)``, where an error
        response's value is a ``ServerError`` (not raised)."""
        while True:
            payload = self._frames.next()
            if payload is not None:
                self._outstanding = max(0, self._outstanding - 1)
                self._last_used = time.monotonic()
                return decode_response(payload)
            try:
                chunk = self._sock.recv(self._frames.wanted())
            except socket.timeout as e:
                raise Timeout(f"waiting for {self.address}") from e
            if not chunk:
                raise ConnectionClosed(f"{self.address} closed the connection")
            self._frames.feed(chunk)

    def wait(self, request_id: int):
        """The result of request ``request_id``; raises ``ServerError`` if
        the server answered with an error."""
        while True:
            if request_id in self._arrived:
                value = self._arrived.pop(request_id)
            else:
                got, value = self.recv()
                # Id 0: the server could not read a request's id, so the
                # error belongs to whichever request is waited for.
                if got not in (request_id, 0):
                    self._arrived[got] = value
                    continue
            if isinstance(value, ServerError):
                raise value
            self.frame_bytes_max = frame_limit_after(value, self.frame_bytes_max)
            return value

    def call(self, request: Request):
        """Sends one request and waits for its result."""
        return self.wait(self.send(request))

    def pipeline(self, requests: Sequence[Request]) -> list:
        """Sends all ``requests`` at once and returns their results in
        order; a request the server refused has its ``ServerError`` in its
        place (not raised), so one failure does not hide the others."""
        results = []
        for request_id in self.send_many(requests):
            try:
                results.append(self.wait(request_id))
            except ServerError as e:
                results.append(e)
        return results

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def expect(value, kind, what: str):
    if not isinstance(value, kind):
        raise ProtocolError(f"expected {what}, got {value!r}")
    return value


class Routing:
    """What the sync and asyncio clients share: the slot map the server
    sent, and which shard each request goes to."""

    def _route(self, hello: HelloInfo, topology: TopologyInfo) -> None:
        hello = expect(hello, HelloInfo, "a hello")
        topology = expect(topology, TopologyInfo, "a topology")
        if not topology.addresses or topology.slots != len(topology.slot_owner):
            raise ProtocolError(f"topology without shards or slots: {topology}")
        if any(owner >= len(topology.addresses) for owner in topology.slot_owner):
            raise ProtocolError("topology names a shard it does not list")
        self.server_version = hello.server_version
        #: How far back ``read_at`` and scans at a timestamp can go.
        self.retention_ms = hello.retention_ms
        #: Each shard's own address, by shard number.
        self.addresses = topology.addresses
        self._slot_owner = topology.slot_owner

    def shard_of(self, key: Bytes) -> int:
        """The shard that owns ``key``: ``slot_owner[xxh3_64(key) % slots]``."""
        owners = self._slot_owner
        return owners[xxhash.xxh3_64_intdigest(_b(key)) % len(owners)]

    @property
    def shard_count(self) -> int:
        return len(self.addresses)

    def _snapshot_txns(self) -> list[tuple[int, Txn]]:
        """One read-only transaction per shard, coordinated by that shard
        (the shard of its first key), for ``snapshot_ts``."""
        txns = []
        # A shard that owns no slot holds no key to be after.
        for shard in sorted(set(self._slot_owner)):
            key = next(
                k
                for k in (f"\0tessera-snapshot-{i}".encode() for i in range(1 << 20))
                if self.shard_of(k) == shard
            )
            txns.append((shard, Txn().read(key)))
        return txns

    def _batch_shard(self, ops: Sequence[WriteOp]) -> int:
        if not ops:
            raise ValueError("empty batch")
        return self.shard_of(ops[0].key)

    def _txn_shard(self, txn: Txn) -> int:
        home = txn.home_key()
        if home is None:
            raise ValueError("empty transaction")
        return self.shard_of(home)


def retry_delays(attempts: int, backoff: float, backoff_max: float) -> Iterator[float | None]:
    """Before each attempt after the first, how long to sleep: a random time
    up to ``backoff``, doubling up to ``backoff_max``; None for the last
    attempt (whose conflict is raised)."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(1, attempts + 1):
        yield None if attempt == attempts else random.uniform(0, backoff)
        backoff = min(backoff * 2, backoff_max)


def is_conflict(e: ServerError) -> bool:
    return e.code == ErrorCode.Conflict


class Client(Routing):
    """A shard-aware client: it asks the server for its slot map and sends
    each key's request straight to the shard that owns it.

    ::

        with tessera.Client("127.0.0.1:7878") as db:
            db.put("user:1", "ada")
            assert db.get("user:1") == b"ada"
    """

    def __init__(
        self,
        address: str = "127.0.0.1:7878",
        timeout: float = 10.0,
        client_name: str = "tessera-python",
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ):
        """``token``: the server's token, if it requires one; every
        connection, the entry's and each shard's, says hello with it.
        ``tls``: speak TLS, e.g. ``ssl.create_default_context(cafile="ca.pem")``
        for the ``ca.pem`` of ``tessera cert``; every connection checks the
        server's certificate for ``server_hostname`` (default: the host of
        ``address``)."""
        name = server_hostname or host_port(address)[0]
        self._open_args = (timeout, tls, name)
        self._hello = Hello(PROTOCOL_VERSION, client_name, token)
        self.entry = Connection(address, timeout, tls, name)
        self.shards: list[Connection] = []
        try:
            try:
                hello = self.entry.call(self._hello)
            except ConnectionClosed as e:
                raise closed_before_hello(e, tls) from e
            self._route(hello, self.entry.call(Topology()))
            for address in self.addresses:
                self.shards.append(self._open(address))
        except BaseException:
            self.close()
            raise

    def _open(self, address: str) -> Connection:
        connection = Connection(address, *self._open_args)
        try:
            connection.call(self._hello)
        except BaseException:
            connection.close()
            raise
        return connection

    def _reopen(self, shard: int | None) -> Connection:
        old = self.entry if shard is None else self.shards[shard]
        old.close()
        fresh = self._open(old.address)
        if shard is None:
            self.entry = fresh
        else:
            self.shards[shard] = fresh
        return fresh

    def _call(self, shard: int | None, request: Request, repeatable: bool):
        """Sends ``request`` on the entry connection (``shard`` None) or a
        shard's. A connection the server closed while it sat unused is
        opened again, with its hello, before the request goes out; a
        request that is safe to repeat and meets a closed connection is
        sent once more on a fresh one. A write that meets one raises, since
        the server may have applied it; the next request gets a fresh
        connection."""
        connection = self.entry if shard is None else self.shards[shard]
        if connection.closed_while_idle():
            connection = self._reopen(shard)
        try:
            return connection.call(request)
        except (Timeout, ServerError, ProtocolError):
            raise
        except (ConnectionClosed, OSError):
            fresh = self._reopen(shard)
            if not repeatable:
                raise
            return fresh.call(request)

    def connection_for(self, key: Bytes) -> Connection:
        """The connection to the shard owning ``key`` (for pipelining)."""
        return self.shards[self.shard_of(key)]

    def get(self, key: Bytes) -> bytes | None:
        """The newest value of ``key``, or None."""
        return self._call(self.shard_of(key), Get(key), True)

    def put(self, key: Bytes, value: Bytes, ttl: float | None = None) -> int:
        """Writes ``key``; returns the commit timestamp. With ``ttl``, the
        key expires that many seconds after it (rounded up to whole
        milliseconds): reads then find nothing, and reads at a timestamp
        see the state of theirs."""
        return self._call(self.shard_of(key), Put(key, value, ttl_ms(ttl)), False)

    def delete(self, key: Bytes) -> int:
        """Deletes ``key`` (a missing key too); returns the timestamp."""
        return self._call(self.shard_of(key), Delete(key), False)

    def batch(self, ops: Sequence[WriteOp]) -> int:
        """Applies puts and deletes atomically at one timestamp, returned.
        Keys on several shards commit through a transaction."""
        return self._call(self._batch_shard(ops), Batch(ops), False)

    def scan(
        self, start: Bytes, end: Bytes | None = None, limit: int = 1000, ts: int = 0
    ) -> ScanPage:
        """One page of keys in ``[start, end)`` in key order across all
        shards, as of ``ts`` (0: the newest state)."""
        return self._call(None, Scan(start, end, limit, ts), True)

    def scan_all(
        self, start: Bytes, end: Bytes | None = None, page: int = 1000, ts: int = 0
    ) -> Iterator[tuple[bytes, bytes]]:
        """Every row in ``[start, end)``, fetched a page at a time. With a
        ``ts`` every page is of one snapshot; with 0 each page is of the
        newest state when it is fetched."""
        while True:
            result = self.scan(start, end, page, ts)
            yield from result.rows
            if result.next_start is None:
                return
            start = result.next_start

    def read_at(self, key: Bytes, ts: int) -> bytes | None:
        """The value of ``key`` as of timestamp ``ts`` (inside the retention
        window, ``retention_ms``)."""
        return self._call(self.shard_of(key), ReadAt(key, ts), True)

    def txn(self, txn: Txn) -> TxnOutcome:
        """Runs a transaction once. A conflict raises ``ServerError`` with
        code ``ErrorCode.Conflict``; a condition that does not hold gives an
        outcome with ``committed`` False."""
        # A transaction that writes nothing may be sent again.
        return self._call(self._txn_shard(txn), txn, not txn.writes)

    def txn_with_retry(
        self,
        txn: Txn,
        attempts: int = 20,
        backoff: float = 0.0002,
        backoff_max: float = 0.05,
    ) -> TxnOutcome:
        """Runs a transaction, retrying conflicts up to ``attempts`` tries,
        sleeping a random time up to ``backoff`` seconds, doubling each time
        up to ``backoff_max``."""
        for delay in retry_delays(attempts, backoff, backoff_max):
            try:
                return self.txn(txn)
            except ServerError as e:
                if not is_conflict(e) or delay is None:
                    raise
            time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def snapshot_ts(self) -> int:
        """A timestamp after every write any shard acknowledged before this
        call. Scanning every page at it (``scan_all(..., ts=...)``) reads
        one moment across shards, however long the pages take: each read at
        it holds it for at least half the retention window more."""
        return max(self._call(shard, txn, True).ts for shard, txn in self._snapshot_txns())

    def stats(self) -> list[Metric]:
        """The server's metrics (the figures of its ``/metrics``)."""
        return self._call(None, Stats(), True)

    def ping(self) -> None:
        self._call(None, Ping(), True)

    def close(self) -> None:
        for c in [self.entry, *self.shards]:
            c.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
