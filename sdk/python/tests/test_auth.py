"""Both clients against a server that requires a token
(``--auth-token-file``): without it nothing is served, with it every shard
is."""

import os
import tempfile
import unittest

from support import Server

import tessera
import tessera.aio

TOKEN = "python-test-token-0123456789abcdef"


class AuthTest(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        path = os.path.join(cls.dir.name, "token")
        with open(path, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(path, 0o600)
        cls.server = Server(2, "--auth-token-file", path)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.dir.cleanup()

    def test_the_blocking_client_needs_the_token(self):
        for token in (None, TOKEN[:-1] + "X"):
            with self.assertRaises(tessera.ServerError) as caught:
                tessera.Client(self.server.address, token=token)
            self.assertEqual(caught.exception.code, tessera.ErrorCode.Unauthenticated)
        with tessera.Client(self.server.address, token=TOKEN) as db:
            keys = [f"auth:{i}" for i in range(64)]
            self.assertEqual({db.shard_of(k) for k in keys}, {0, 1})
            for k in keys:
                db.put(k, k.upper())
            self.assertEqual([db.get(k) for k in keys], [k.upper().encode() for k in keys])

    def test_a_raw_connection_is_refused_until_its_hello(self):
        conn = tessera.Connection(self.server.address, 10)
        try:
            with self.assertRaises(tessera.ServerError) as caught:
                conn.call(tessera.Get(b"k"))
            self.assertEqual(caught.exception.code, tessera.ErrorCode.Unauthenticated)
            info = conn.call(tessera.Hello(token=TOKEN))
            self.assertEqual(info.shards, 2)
            self.assertIsNone(conn.call(tessera.Get(b"never written")))
        finally:
            conn.close()
        self.assertNotIn(TOKEN, repr(tessera.Hello(token=TOKEN)))

    async def test_the_asyncio_client_needs_the_token(self):
        with self.assertRaises(tessera.ServerError) as caught:
            await tessera.aio.Client.connect(self.server.address)
        self.assertEqual(caught.exception.code, tessera.ErrorCode.Unauthenticated)
        db = await tessera.aio.Client.connect(self.server.address, token=TOKEN)
        try:
            await db.put("aio-auth", "yes")
            self.assertEqual(await db.get("aio-auth"), b"yes")
        finally:
            await db.close()


if __name__ == "__main__":
    unittest.main()
