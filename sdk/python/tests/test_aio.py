"""The asyncio client against the real ``tessera-server`` (two shards)."""

import asyncio
import unittest

from support import Server, Silent

import tessera
import tessera.aio


class AsyncClientTest(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(2)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    async def asyncSetUp(self):
        self.db = await tessera.aio.Client.connect(self.server.address, timeout=30)

    async def asyncTearDown(self):
        await self.db.close()

    async def forwarded(self):
        return sum(m.value for m in await self.db.stats() if m.name == "forwarded_total")

    async def test_concurrent_requests_share_connections_and_match_their_responses(self):
        db = self.db
        self.assertEqual(db.shard_count, 2)
        keys = [f"aio:{i}" for i in range(500)]
        before = await self.forwarded()
        baseline = await self.forwarded() - before
        before = await self.forwarded()
        stamps = await asyncio.gather(*(db.put(k, k.upper()) for k in keys))
        self.assertEqual(len(set(stamps)), len(keys), "each write has its own timestamp")
        values = await asyncio.gather(*(db.get(k) for k in keys))
        self.assertEqual(values, [k.upper().encode() for k in keys])
        self.assertEqual(
            await self.forwarded() - before, baseline, "routed requests were forwarded"
        )

    async def test_responses_out_of_order_reach_their_requests(self):
        # Durable puts wait for their WAL group to sync; gets after them on
        # the same connection are answered first.
        db = self.db
        await asyncio.gather(*(db.put(f"ooo:old{i}", f"old{i}") for i in range(100)))
        calls = []
        for i in range(100):
            calls.append(db.entry.call(tessera.Put(f"ooo:new{i}", "new")))
            calls.append(db.entry.call(tessera.Get(f"ooo:old{i}")))
        results = await asyncio.gather(*calls)
        self.assertTrue(all(isinstance(ts, int) for ts in results[0::2]))
        self.assertEqual(results[1::2], [f"old{i}".encode() for i in range(100)])

    async def test_a_refused_request_fails_alone(self):
        db = self.db
        await db.put("aio:ok", "v")
        results = await asyncio.gather(
            db.get("aio:ok"), db.put("", "x"), db.get("aio:ok"), return_exceptions=True
        )
        self.assertEqual(results[0], b"v")
        self.assertIsInstance(results[1], tessera.ServerError)
        self.assertEqual(results[1].code, tessera.ErrorCode.InvalidArgument)
        self.assertEqual(results[2], b"v")
        piped = await db.connection_for("aio:ok").pipeline(
            [tessera.Get("aio:ok"), tessera.Get(""), tessera.Get("aio:ok")]
        )
        self.assertEqual((piped[0], piped[2]), (b"v", b"v"))
        self.assertEqual(piped[1].code, tessera.ErrorCode.InvalidArgument)

    async def test_a_request_over_the_frame_limit_is_refused_before_it_is_sent(self):
        db = self.db
        self.assertEqual(db.entry.frame_bytes_max, 2 << 20)
        with self.assertRaises(tessera.RequestTooLarge):
            await db.put("aio:big", b"x" * (3 << 20))
        # Nothing went out: the connection goes on.
        await db.put("aio:big", b"x" * 1000)
        self.assertEqual(await db.get("aio:big"), b"x" * 1000)

    async def test_a_key_with_a_ttl_expires(self):
        await self.db.put("aio-ttl", "x", ttl=1.5)
        self.assertEqual(await self.db.get("aio-ttl"), b"x")
        await asyncio.sleep(1.6)
        self.assertIsNone(await self.db.get("aio-ttl"))

    async def test_transactions_scans_and_time_travel(self):
        db = self.db
        t1 = await db.put("aio:t:a", "100")
        outcome = await db.txn_with_retry(
            tessera.Txn().equals("aio:t:a", "100").put("aio:t:a", "90").put("aio:t:b", "10")
        )
        self.assertTrue(outcome.committed)
        refused = await db.txn(tessera.Txn().equals("aio:t:a", "100").put("aio:t:b", "0"))
        self.assertEqual((refused.committed, refused.failed_condition), (False, 0))
        self.assertEqual(await db.read_at("aio:t:a", t1), b"100")
        rows = [row async for row in db.scan_all("aio:t:", "aio:t;", page=1)]
        self.assertEqual(rows, [(b"aio:t:a", b"90"), (b"aio:t:b", b"10")])
        self.assertEqual(await db.batch([tessera.DeleteOp("aio:t:b")]) > outcome.ts, True)
        self.assertIsNone(await db.get("aio:t:b"))
        snap = await db.snapshot_ts()
        await db.put("aio:t:a", "0")
        self.assertEqual(await db.read_at("aio:t:a", snap), b"90")
        await db.ping()


class AsyncConnectionTest(unittest.IsolatedAsyncioTestCase):
    async def test_requests_in_flight_when_the_server_dies_fail(self):
        server = Server(1)
        try:
            db = await tessera.aio.Client.connect(server.address, timeout=30)
            await db.put("k", "v")
        finally:
            server.stop()
        with self.assertRaises(ConnectionError):
            await asyncio.gather(*(db.get("k") for _ in range(10)))
        with self.assertRaises(ConnectionError):
            await db.get("k")
        await db.close()

    async def test_a_server_that_never_answers_times_out(self):
        silent = Silent()
        try:
            conn = await tessera.aio.Connection.open(silent.address, timeout=0.2)
            with self.assertRaises(tessera.Timeout):
                await conn.call(tessera.Ping())
            await conn.close()
        finally:
            silent.stop()


if __name__ == "__main__":
    unittest.main()
