"""The Python SDK against the real ``tessera-server`` (two shards).

The server binary is ``$TESSERA_SERVER``, else the workspace's debug build
(``cargo test`` builds it; ``scripts/test.sh`` runs these after it).
"""

import collections
import os
import random
import time
import unittest
import unittest.mock

from support import Server, Silent

import tessera


def forwarded(db):
    """Requests the shards forwarded to another shard, all shards summed."""
    return sum(m.value for m in db.stats() if m.name == "forwarded_total")


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(2, "--value-bytes-max", "1048576")
        cls.db = tessera.Client(cls.server.address, timeout=30)

    @classmethod
    def tearDownClass(cls):
        cls.db.close()
        cls.server.stop()

    def test_hello_and_topology(self):
        self.assertEqual(self.db.shard_count, 2)
        self.assertTrue(self.db.server_version)
        self.assertEqual(self.db.retention_ms, 60_000)
        owners = {self.db.shard_of(f"key{i}") for i in range(100)}
        self.assertEqual(owners, {0, 1}, "keys spread over both shards")

    def test_put_get_delete(self):
        db = self.db
        self.assertIsNone(db.get("rt:missing"))
        t1 = db.put("rt:a", "one")
        t2 = db.put(b"rt:a", b"two")
        self.assertGreater(t2, t1)
        self.assertEqual(db.get("rt:a"), b"two")
        binary = bytes(range(256)) * 8
        db.put(b"rt:\x00\xff", binary)
        self.assertEqual(db.get(b"rt:\x00\xff"), binary)
        db.put("rt:empty", b"")
        self.assertEqual(db.get("rt:empty"), b"", "an empty value is not a missing one")
        t3 = db.delete("rt:a")
        self.assertGreater(t3, t2)
        self.assertIsNone(db.get("rt:a"))
        db.delete("rt:never-written")

    def test_a_value_of_the_largest_size_round_trips(self):
        big = os.urandom(1 << 20)
        self.db.put("big", big)
        self.assertEqual(self.db.get("big"), big)

    def test_requests_go_straight_to_the_owning_shard(self):
        db = self.db
        keys = [f"route:{i}" for i in range(200)]
        # A stats call is itself forwarded to every shard: measure its share.
        before = forwarded(db)
        baseline = forwarded(db) - before
        before = forwarded(db)
        for k in keys:
            db.put(k, k)
            self.assertEqual(db.get(k), k.encode())
        self.assertEqual(forwarded(db) - before, baseline, "routed requests were forwarded")
        # The same requests sent to the other shard are forwarded: the
        # metric sees a wrong route.
        before = forwarded(db)
        for k in keys:
            db.shards[1 - db.shard_of(k)].call(tessera.Get(k))
        self.assertEqual(forwarded(db) - before, baseline + len(keys))

    def test_pipelined_responses_match_their_requests(self):
        db = self.db
        conn = db.connection_for("pipe")
        ids = [conn.send(tessera.Put(f"pipe:{i}", f"v{i}")) for i in range(300)]
        for request_id in reversed(ids):
            self.assertIsInstance(conn.wait(request_id), int)
        results = conn.pipeline(
            [tessera.Get(f"pipe:{i}") for i in range(300)]
            + [tessera.Get(""), tessera.Get("pipe:299")]
        )
        self.assertEqual(results[:300], [f"v{i}".encode() for i in range(300)])
        self.assertIsInstance(results[300], tessera.ServerError)
        self.assertEqual(results[300].code, tessera.ErrorCode.InvalidArgument)
        self.assertEqual(results[301], b"v299", "the connection goes on after an error")

    def test_bad_requests_get_typed_errors_and_the_connection_goes_on(self):
        db = self.db
        with self.assertRaises(tessera.ServerError) as e:
            db.put("", "x")
        self.assertEqual(e.exception.code, tessera.ErrorCode.InvalidArgument)
        with self.assertRaises(tessera.ServerError) as e:
            db.put("k", b"x" * ((1 << 20) + 1))
        self.assertEqual(e.exception.code, tessera.ErrorCode.ValueTooLarge)
        with self.assertRaises(tessera.ServerError) as e:
            db.put(b"k" * 1025, "x")
        self.assertEqual(e.exception.code, tessera.ErrorCode.KeyTooLarge)
        with self.assertRaises(tessera.ServerError) as e:
            db.entry.call(tessera.Hello(protocol_version=99))
        self.assertEqual(e.exception.code, tessera.ErrorCode.UnsupportedVersion)
        with self.assertRaises(TypeError):
            db.put("k", 5)
        db.ping()
        self.assertIsNone(db.get("k"), "nothing was written")

    def test_a_request_over_the_frame_limit_is_refused_before_it_is_sent(self):
        # The server reads frames of at most 2 MiB (its default, said in
        # its hello): a larger request would end the connection.
        db = self.db
        self.assertEqual(db.entry.frame_bytes_max, 2 << 20)
        with self.assertRaises(tessera.RequestTooLarge) as e:
            db.put("big", b"x" * (3 << 20))
        self.assertEqual(e.exception.limit, 2 << 20)
        self.assertIn("frame limit of 2097152 bytes", str(e.exception))
        batch = tessera.Batch([tessera.PutOp(f"b{i}", b"x" * (200 << 10)) for i in range(12)])
        with self.assertRaises(tessera.RequestTooLarge):
            db.entry.call(batch)
        # Nothing went out, and the connections go on.
        self.assertEqual(db.entry.pipeline([tessera.Ping(), tessera.Get("big")]), [None, None])
        db.put("big", b"x" * 1000)
        self.assertEqual(db.get("big"), b"x" * 1000)

    def test_the_frame_limit_comes_from_the_servers_hello(self):
        server = Server(1, "--frame-bytes-max", str(4 << 20))
        try:
            with tessera.Client(server.address, timeout=30) as db:
                self.assertEqual(db.entry.frame_bytes_max, 4 << 20)
                # Sent: the server refuses the value, not the frame.
                with self.assertRaises(tessera.ServerError) as e:
                    db.put("big", b"x" * (3 << 20))
                self.assertEqual(e.exception.code, tessera.ErrorCode.ValueTooLarge)
                with self.assertRaises(tessera.RequestTooLarge):
                    db.put("big", b"x" * (5 << 20))
                db.ping()
        finally:
            server.stop()

    def test_scan_pages_in_key_order_across_shards(self):
        db = self.db
        keys = sorted(f"scan:{i:03}" for i in range(57))
        db.batch([tessera.PutOp(k, k.upper()) for k in keys[:30]])
        for k in keys[30:]:
            db.put(k, k.upper())
        page = db.scan("scan:", "scan;", limit=10)
        self.assertEqual([k for k, _ in page.rows], [k.encode() for k in keys[:10]])
        self.assertEqual(page.next_start is not None, True)
        rows = list(db.scan_all("scan:", "scan;", page=7))
        self.assertEqual(rows, [(k.encode(), k.upper().encode()) for k in keys])

    def test_time_travel_reads_the_state_of_a_moment(self):
        db = self.db
        # Two keys of one shard: its timestamps follow the order of its
        # writes (shards' clocks are not ordered against each other for
        # single-key writes).
        shard = db.shard_of("tt:k")
        other = next(f"tt:o{i}" for i in range(100) if db.shard_of(f"tt:o{i}") == shard)
        t1 = db.put("tt:k", "first")
        db.put(other, "x")
        t2 = db.put("tt:k", "second")
        t3 = db.delete(other)
        self.assertEqual(db.read_at("tt:k", t1), b"first")
        self.assertEqual(db.read_at("tt:k", t2), b"second")
        self.assertIsNone(db.read_at(other, t1))
        self.assertEqual(db.read_at(other, t2), b"x")
        self.assertIsNone(db.read_at(other, t3))
        at_t1 = list(db.scan_all("tt:", "tt;", ts=t1))
        at_t2 = list(db.scan_all("tt:", "tt;", ts=t2))
        self.assertEqual(at_t1, [(b"tt:k", b"first")])
        self.assertEqual(at_t2, [(b"tt:k", b"second"), (other.encode(), b"x")])
        # A snapshot after both writes: the newest state, fixed.
        snap = db.snapshot_ts()
        self.assertGreaterEqual(snap, t3)
        db.put("tt:k", "third")
        self.assertEqual(list(db.scan_all("tt:", "tt;", page=1, ts=snap)), [(b"tt:k", b"second")])
        with self.assertRaises(tessera.ServerError) as e:
            db.read_at("tt:k", 1)
        self.assertEqual(e.exception.code, tessera.ErrorCode.TimestampTooOld)

    def test_transactions_across_shards(self):
        db = self.db
        a, b = (
            "txn:a",
            next(
                f"txn:b{i}" for i in range(100) if db.shard_of(f"txn:b{i}") != db.shard_of("txn:a")
            ),
        )
        db.put(a, "100")
        db.delete(b)
        moved = db.txn(tessera.Txn().equals(a, "100").missing(b).put(a, "90").put(b, "10").read(b))
        self.assertTrue(moved.committed)
        self.assertIsNone(moved.failed_condition)
        self.assertEqual(moved.reads[0].value, None, "reads are as of the txn's timestamp")
        self.assertEqual((db.get(a), db.get(b)), (b"90", b"10"))
        self.assertEqual(db.read_at(b, moved.ts), b"10")
        # A condition that does not hold: its index, and nothing written.
        refused = db.txn(tessera.Txn().exists(a).equals(a, "100").put(b, "999"))
        self.assertFalse(refused.committed)
        self.assertEqual(refused.failed_condition, 1)
        self.assertEqual(db.get(b), b"10")
        # Read-modify-write with the version a read returned.
        read = db.txn(tessera.Txn().read(a))
        version = read.reads[0].version
        self.assertEqual(version, moved.ts)
        bumped = db.txn_with_retry(tessera.Txn().version_is(a, version).put(a, "91"))
        self.assertTrue(bumped.committed)
        stale = db.txn(tessera.Txn().version_is(a, version).put(a, "92"))
        self.assertEqual((stale.committed, stale.failed_condition), (False, 0))
        self.assertEqual(db.get(a), b"91")
        with self.assertRaises(ValueError):
            db.txn(tessera.Txn())

    def test_keys_with_a_ttl_expire(self):
        db = self.db
        ts = db.put("ttl:single", "1", ttl=1.5)
        db.batch([tessera.PutOp("ttl:batched", "2", ttl_ms=1500), tessera.PutOp("ttl:kept", "3")])
        db.txn(tessera.Txn().put("ttl:txn", "4", ttl=1.5))
        written = time.monotonic()
        keys = ["ttl:single", "ttl:batched", "ttl:txn"]
        self.assertEqual([db.get(k) for k in keys], [b"1", b"2", b"4"])
        single = db.get("ttl:single")
        self.assertIsInstance(single, tessera.Expiring)
        self.assertLess(abs(single.expires_at_ms - (time.time() * 1000 + 1500)), 1000)
        self.assertNotIsInstance(db.get("ttl:kept"), tessera.Expiring)
        page = db.scan("ttl:", "ttl;")
        self.assertEqual(
            [k for k, _ in page.rows], [b"ttl:batched", b"ttl:kept", b"ttl:single", b"ttl:txn"]
        )
        expiry = [page.expires_at(i) for i in range(4)]
        self.assertIsNone(expiry[1])
        for at in (expiry[0], expiry[2], expiry[3]):
            self.assertLess(abs(at - (time.time() * 1000 + 1500)), 1000)
        self.assertLess(time.monotonic() - written, 1.5, "checked before the TTL")
        time.sleep(1.6)
        self.assertEqual([db.get(k) for k in keys], [None, None, None])
        self.assertEqual([k for k, _ in db.scan_all("ttl:", "ttl;")], [b"ttl:kept"])
        self.assertEqual(db.read_at("ttl:single", ts), b"1", "time travel still sees it")
        with self.assertRaises(ValueError):
            db.put("ttl:bad", "x", ttl=0)

    def test_a_batch_across_shards_is_atomic(self):
        db = self.db
        keys = [f"batch:{i}" for i in range(20)]
        self.assertEqual({db.shard_of(k) for k in keys}, {0, 1})
        ts = db.batch([tessera.PutOp(k, "v") for k in keys] + [tessera.DeleteOp("batch:gone")])
        for k in keys:
            self.assertEqual(db.read_at(k, ts), b"v")
            self.assertIsNone(db.read_at(k, ts - 1))


class DecodeTest(unittest.TestCase):
    def test_damaged_responses_are_protocol_errors(self):
        # Real responses from a server, as the client decodes them.
        frames = []
        decode = tessera.client.decode_response

        def keep(payload):
            frames.append(payload)
            return decode(payload)

        server = Server(1)
        try:
            with tessera.Connection(server.address, timeout=30) as conn:
                conn.call(tessera.Put("k", "v" * 40))
                frames.clear()
                with unittest.mock.patch.object(tessera.client, "decode_response", keep):
                    conn.call(tessera.Get("k"))
                    conn.pipeline([tessera.Get(""), tessera.Scan("", None, 10, 0)])
        finally:
            server.stop()
        self.assertEqual(tessera.client.decode_response(frames[0])[1], b"v" * 40)
        rng = random.Random(7)
        outcomes = collections.Counter()
        for _ in range(5000):
            frame = bytearray(rng.choice(frames))
            for _ in range(rng.randint(1, 4)):
                frame[rng.randrange(len(frame))] = rng.randrange(256)
            try:
                tessera.client.decode_response(bytes(frame))
                outcomes["decoded"] += 1
            except tessera.ProtocolError:
                outcomes["refused"] += 1
        self.assertGreater(outcomes["refused"], 100, outcomes)


class RetryTest(unittest.TestCase):
    """``txn_with_retry`` against a stand-in whose ``txn`` fails as told."""

    class Flaky:
        def __init__(self, errors):
            self.errors = list(errors)
            self.calls = 0

        def txn(self, txn):
            self.calls += 1
            if self.errors:
                raise self.errors.pop(0)
            return "committed"

    def conflict(self):
        return tessera.ServerError(tessera.ErrorCode.Conflict, "younger write")

    def test_conflicts_are_retried_until_one_commits(self):
        flaky = self.Flaky([self.conflict(), self.conflict()])
        outcome = tessera.Client.txn_with_retry(flaky, tessera.Txn().put("k", "v"))
        self.assertEqual((outcome, flaky.calls), ("committed", 3))

    def test_the_last_conflict_is_raised_after_the_attempts(self):
        flaky = self.Flaky([self.conflict()] * 5)
        with self.assertRaises(tessera.ServerError) as e:
            tessera.Client.txn_with_retry(flaky, tessera.Txn().put("k", "v"), attempts=3)
        self.assertEqual((e.exception.code, flaky.calls), (tessera.ErrorCode.Conflict, 3))

    def test_other_errors_are_not_retried(self):
        storage = tessera.ServerError(tessera.ErrorCode.Storage, "No space left on device")
        flaky = self.Flaky([storage])
        with self.assertRaises(tessera.ServerError) as e:
            tessera.Client.txn_with_retry(flaky, tessera.Txn().put("k", "v"))
        self.assertEqual((e.exception.code, flaky.calls), (tessera.ErrorCode.Storage, 1))


class ConnectionTest(unittest.TestCase):
    def test_a_closed_server_is_an_error_not_a_hang(self):
        server = Server(1)
        try:
            db = tessera.Client(server.address, timeout=30)
            db.put("k", "v")
        finally:
            server.stop()
        # A reset (the server died with the request unread) or a close.
        with self.assertRaises(ConnectionError):
            db.get("k")
        db.close()

    def test_a_server_that_never_answers_times_out(self):
        silent = Silent()
        try:
            conn = tessera.Connection(silent.address, timeout=0.2)
            with self.assertRaises(tessera.Timeout):
                conn.call(tessera.Ping())
            conn.close()
        finally:
            silent.stop()

    def test_an_address_nobody_listens_on_is_refused(self):
        server = Server(1)
        address = server.address
        server.stop()
        with self.assertRaises(ConnectionRefusedError):
            tessera.Client(address, timeout=5)


if __name__ == "__main__":
    unittest.main()
