"""Both clients against a server that speaks only TLS (``--tls-cert``) and
requires a token, with the certificates ``tessera cert`` makes."""

import os
import ssl
import tempfile
import unittest

from support import Server, make_certs

import tessera
import tessera.aio

TOKEN = "python-tls-token-0123456789"


class TlsTest(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        cls.ca, cert, key = make_certs(os.path.join(cls.dir.name, "certs"))
        token = os.path.join(cls.dir.name, "token")
        with open(token, "w") as f:
            f.write(TOKEN)
        os.chmod(token, 0o600)
        cls.server = Server(2, "--tls-cert", cert, "--tls-key", key, "--auth-token-file", token)
        cls.tls = ssl.create_default_context(cafile=cls.ca)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.dir.cleanup()

    def test_the_blocking_client_speaks_tls_to_every_shard(self):
        with tessera.Client(self.server.address, token=TOKEN, tls=self.tls) as db:
            keys = [f"tls:{i}" for i in range(64)]
            self.assertEqual({db.shard_of(k) for k in keys}, {0, 1})
            for k in keys:
                db.put(k, k.upper())
            self.assertEqual([db.get(k) for k in keys], [k.upper().encode() for k in keys])
            big = bytes(range(256)) * 3000
            db.put("tls:big", big)
            results = db.connection_for("tls:big").pipeline([tessera.Get("tls:big")] * 20)
            self.assertEqual(results, [big] * 20)

    async def test_plain_clients_and_unknown_cas_are_refused(self):
        # A plain client is told TLS may be why.
        with self.assertRaisesRegex(tessera.ConnectionClosed, r"pass tls="):
            tessera.Client(self.server.address, token=TOKEN, timeout=5)
        with self.assertRaisesRegex(tessera.ConnectionClosed, r"pass tls="):
            await tessera.aio.Client.connect(self.server.address, token=TOKEN, timeout=5)
        with tempfile.TemporaryDirectory() as other:
            other_ca = make_certs(other)[0]
            with self.assertRaises(ssl.SSLCertVerificationError):
                tessera.Client(self.server.address, tls=ssl.create_default_context(cafile=other_ca))
        with self.assertRaises(ssl.SSLCertVerificationError):
            tessera.Client(self.server.address, tls=self.tls, server_hostname="db.example.com")

    async def test_the_asyncio_client_speaks_tls(self):
        db = await tessera.aio.Client.connect(self.server.address, token=TOKEN, tls=self.tls)
        try:
            await db.put("tls:aio", "yes")
            self.assertEqual(await db.get("tls:aio"), b"yes")
        finally:
            await db.close()


if __name__ == "__main__":
    unittest.main()
