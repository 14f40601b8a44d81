"""The asyncio client: any number of coroutines share one connection per
shard. Each request is written as it is made and its response is matched
to it by id, so concurrent requests are pipelined on the wire.

::

    import asyncio, tessera.aio

    async def main():
        async with await tessera.aio.Client.connect("127.0.0.1:7878") as db:
            await db.put("user:1", "ada")
            values = await asyncio.gather(*(db.get(f"user:{i}") for i in range(100)))

    asyncio.run(main())
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from collections.abc import AsyncIterator, Sequence

from .client import (
    PROTOCOL_VERSION,
    Batch,
    Bytes,
    ConnectionClosed,
    Delete,
    Frames,
    Get,
    Hello,
    Metric,
    Ping,
    ProtocolError,
    Put,
    ReadAt,
    Request,
    Routing,
    Scan,
    ScanPage,
    ServerError,
    Stats,
    Timeout,
    Topology,
    Txn,
    TxnOutcome,
    WriteOp,
    closed_before_hello,
    decode_response,
    FRAME_BYTES_MAX_DEFAULT,
    encode_requests,
    frame_limit_after,
    host_port,
    is_conflict,
    retry_delays,
    ttl_ms,
)

#: Bytes queued for the socket beyond which a request waits for the kernel
#: to take them (flow control for a burst of large requests).
WRITE_BUFFER_HIGH = 1 << 20


class Connection:
    """One TCP connection shared by any number of coroutines of one event
    loop. Open it with ``await Connection.open(address)``."""

    def __init__(self, address, reader, writer, timeout):
        self.address = address
        self.timeout = timeout
        self._reader = reader
        self._writer = writer
        self._next_id = 1
        #: As in ``tessera.Connection``.
        self.frame_bytes_max = FRAME_BYTES_MAX_DEFAULT
        self._pending: dict[int, asyncio.Future] = {}
        self._broken: Exception | None = None
        self._drain = asyncio.Lock()
        self._reading = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def open(
        cls,
        address: str,
        timeout: float = 10.0,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> Connection:
        """``tls`` and ``server_hostname`` as in ``tessera.Connection``."""
        host, port = host_port(address)
        name = (server_hostname or host) if tls is not None else None
        try:
            opening = asyncio.open_connection(host, port, ssl=tls, server_hostname=name)
            reader, writer = await asyncio.wait_for(opening, timeout)
        except asyncio.TimeoutError as e:
            raise Timeout(f"connecting to {address}") from e
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(address, reader, writer, timeout)

    async def _read_loop(self) -> None:
        frames = Frames()
        try:
            while True:
                chunk = await self._reader.read(frames.wanted())
                if not chunk:
                    raise ConnectionClosed(f"{self.address} closed the connection")
                frames.feed(chunk)
                while (payload := frames.next()) is not None:
                    request_id, value = decode_response(payload)
                    if request_id == 0:
                        # Never for this client's frames: the stream is
                        # out of step with the server.
                        raise ProtocolError(f"the server could not read a request: {value}")
                    waiter = self._pending.pop(request_id, None)
                    # None or done: its caller gave up (timeout, cancel).
                    if waiter is not None and not waiter.done():
                        waiter.set_result(value)
        except asyncio.CancelledError:
            self._fail(ConnectionClosed(f"connection to {self.address} closed"))
            raise
        except Exception as e:  # every waiter learns why the stream ended
            self._fail(e)

    def _fail(self, cause: Exception) -> None:
        self._broken = cause
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            if not waiter.done():
                error = ConnectionClosed(f"connection to {self.address} failed: {cause}")
                error.__cause__ = cause
                waiter.set_exception(error)

    @property
    def broken(self) -> bool:
        """Whether the stream has ended (the server closed it, or it failed)."""
        return self._broken is not None or self._writer.is_closing()

    async def _send(self, requests: Sequence[Request]) -> list[asyncio.Future]:
        if self._broken is not None:
            raise ConnectionClosed(f"connection to {self.address} failed") from self._broken
        if self._writer.is_closing():
            raise ConnectionClosed(f"connection to {self.address} is closed")
        loop = asyncio.get_running_loop()
        ids = range(self._next_id, self._next_id + len(requests))
        frames = encode_requests(requests, ids, self.frame_bytes_max)
        self._next_id += len(requests)
        waiters = []
        for request_id in ids:
            waiter = loop.create_future()
            self._pending[request_id] = waiter
            waiters.append(waiter)
        self._writer.write(b"".join(frames))
        if self._writer.transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
            async with self._drain:
                await self._writer.drain()
        return waiters

    async def _result(self, waiter: asyncio.Future):
        try:
            value = await asyncio.wait_for(waiter, self.timeout)
        except asyncio.TimeoutError as e:
            raise Timeout(f"waiting for {self.address}") from e
        if isinstance(value, ServerError):
            raise value
        self.frame_bytes_max = frame_limit_after(value, self.frame_bytes_max)
        return value

    async def call(self, request: Request):
        """Sends one request and waits for its result; raises
        ``ServerError`` if the server refused it."""
        (waiter,) = await self._send([request])
        return await self._result(waiter)

    async def pipeline(self, requests: Sequence[Request]) -> list:
        """Sends all ``requests`` in one write and returns their results in
        order, a refused request's ``ServerError`` in its place."""
        results = []
        for waiter in await self._send(requests):
            try:
                results.append(await self._result(waiter))
            except ServerError as e:
                results.append(e)
        return results

    async def close(self) -> None:
        self._reading.cancel()
        try:
            await self._reading
        except asyncio.CancelledError:
            pass
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass  # already reset by the server: closed either way

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class Client(Routing):
    """The shard-aware client of ``tessera.Client`` for asyncio: the same
    methods, as coroutines. Connect with ``await Client.connect(address)``.

    Like ``tessera.Client`` it outlives a server restart: a connection
    whose stream ended (its read task sees the close at once) is opened
    again, with its hello, before the next request on it, and a request
    that is safe to repeat and fails with the connection is sent once
    more on a fresh one; a write that fails with it raises."""

    def __init__(self, entry: Connection, shards: list[Connection], hello, topology):
        self.entry = entry
        self.shards = shards
        self._route(hello, topology)

    @classmethod
    async def connect(
        cls,
        address: str = "127.0.0.1:7878",
        timeout: float = 10.0,
        client_name: str = "tessera-python",
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> Client:
        """``token``, ``tls`` and ``server_hostname`` as in
        ``tessera.Client``."""
        name = server_hostname or host_port(address)[0]
        entry = await Connection.open(address, timeout, tls, name)
        shards: list[Connection] = []
        hello = Hello(PROTOCOL_VERSION, client_name, token)
        try:
            try:
                info = await entry.call(hello)
            except ConnectionClosed as e:
                raise closed_before_hello(e, tls) from e
            topology = await entry.call(Topology())
            client = cls(entry, shards, info, topology)
            client._open_args = (timeout, tls, name)
            client._hello = hello
            client._reopening = collections.defaultdict(asyncio.Lock)
            for shard_address in client.addresses:
                shard = await Connection.open(shard_address, timeout, tls, name)
                shards.append(shard)
                await shard.call(hello)
            return client
        except BaseException:
            for c in [entry, *shards]:
                await c.close()
            raise

    def connection_for(self, key: Bytes) -> Connection:
        """The connection to the shard owning ``key``."""
        return self.shards[self.shard_of(key)]

    async def _reopen(self, shard: int | None, old: Connection) -> Connection:
        """A fresh connection in place of ``old`` (entry if ``shard`` is
        None), opened once however many coroutines found ``old`` broken."""
        async with self._reopening[shard]:
            current = self.entry if shard is None else self.shards[shard]
            if current is not old and not current.broken:
                return current
            await old.close()
            fresh = await Connection.open(old.address, *self._open_args)
            try:
                await fresh.call(self._hello)
            except BaseException:
                await fresh.close()
                raise
            if shard is None:
                self.entry = fresh
            else:
                self.shards[shard] = fresh
            return fresh

    async def _call(self, shard: int | None, request: Request, repeatable: bool):
        connection = self.entry if shard is None else self.shards[shard]
        if connection.broken:
            connection = await self._reopen(shard, connection)
        try:
            return await connection.call(request)
        except (Timeout, ServerError, ProtocolError):
            raise
        except (ConnectionClosed, OSError):
            fresh = await self._reopen(shard, connection)
            if not repeatable:
                raise
            return await fresh.call(request)

    async def get(self, key: Bytes) -> bytes | None:
        return await self._call(self.shard_of(key), Get(key), True)

    async def put(self, key: Bytes, value: Bytes, ttl: float | None = None) -> int:
        """As ``tessera.Client.put``."""
        return await self._call(self.shard_of(key), Put(key, value, ttl_ms(ttl)), False)

    async def delete(self, key: Bytes) -> int:
        return await self._call(self.shard_of(key), Delete(key), False)

    async def batch(self, ops: Sequence[WriteOp]) -> int:
        return await self._call(self._batch_shard(ops), Batch(ops), False)

    async def scan(
        self, start: Bytes, end: Bytes | None = None, limit: int = 1000, ts: int = 0
    ) -> ScanPage:
        return await self._call(None, Scan(start, end, limit, ts), True)

    async def scan_all(
        self, start: Bytes, end: Bytes | None = None, page: int = 1000, ts: int = 0
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        while True:
            result = await self.scan(start, end, page, ts)
            for row in result.rows:
                yield row
            if result.next_start is None:
                return
            start = result.next_start

    async def read_at(self, key: Bytes, ts: int) -> bytes | None:
        return await self._call(self.shard_of(key), ReadAt(key, ts), True)

    async def txn(self, txn: Txn) -> TxnOutcome:
        return await self._call(self._txn_shard(txn), txn, not txn.writes)

    async def txn_with_retry(
        self,
        txn: Txn,
        attempts: int = 20,
        backoff: float = 0.0002,
        backoff_max: float = 0.05,
    ) -> TxnOutcome:
        for delay in retry_delays(attempts, backoff, backoff_max):
            try:
                return await self.txn(txn)
            except ServerError as e:
                if not is_conflict(e) or delay is None:
                    raise
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def snapshot_ts(self) -> int:
        outcomes = [await self._call(shard, txn, True) for shard, txn in self._snapshot_txns()]
        return max(o.ts for o in outcomes)

    async def stats(self) -> list[Metric]:
        return await self._call(None, Stats(), True)

    async def ping(self) -> None:
        await self._call(None, Ping(), True)

    async def close(self) -> None:
        for c in [self.entry, *self.shards]:
            await c.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
