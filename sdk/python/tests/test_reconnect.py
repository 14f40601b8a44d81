"""The blocking client across a server restart (kill -9, then the same
ports and data): reads go out again on fresh connections, and connections
idle through the restart are reopened, with their hello and token, before
the next request."""

import os
import tempfile
import time
import unittest

from support import Server, free_ports

import asyncio

import tessera
import tessera.aio

TOKEN = "python-reconnect-token-0123"


class ReconnectTest(unittest.TestCase):
    def test_the_client_carries_on_across_restarts(self):
        with tempfile.TemporaryDirectory() as tmp:
            token = os.path.join(tmp, "token")
            with open(token, "w") as f:
                f.write(TOKEN)
            port, base = free_ports(2)
            data = os.path.join(tmp, "data")

            servers = []
            # A failing check must not leave a server running.
            self.addCleanup(lambda: [s.kill() for s in servers if s.process.poll() is None])

            def start():
                servers.append(
                    Server(
                        2,
                        "--auth-token-file",
                        token,
                        data=data,
                        listen=f"127.0.0.1:{port}",
                        shard_base_port=base,
                    )
                )
                return servers[-1]

            server = start()
            db = tessera.Client(server.address, token=TOKEN)
            keys = [f"re:{i}" for i in range(20)]
            for k in keys:
                db.put(k, "before")

            server.kill()
            server = start()
            self.assertEqual([db.get(k) for k in keys], [b"before"] * len(keys))
            db.ping()

            server.kill()
            server = start()
            time.sleep(1.1)
            for k in keys:
                db.put(k, "after")
            self.assertEqual([db.get(k) for k in keys], [b"after"] * len(keys))
            db.close()
            server.stop()


class AsyncReconnectTest(unittest.IsolatedAsyncioTestCase):
    async def test_the_asyncio_client_carries_on_across_a_restart(self):
        with tempfile.TemporaryDirectory() as tmp:
            port, base = free_ports(2)
            data = os.path.join(tmp, "data")
            servers = []
            self.addCleanup(lambda: [s.kill() for s in servers if s.process.poll() is None])

            def start():
                listen = f"127.0.0.1:{port}"
                servers.append(Server(2, data=data, listen=listen, shard_base_port=base))
                return servers[-1]

            server = start()
            db = await tessera.aio.Client.connect(server.address)
            keys = [f"are:{i}" for i in range(20)]
            await asyncio.gather(*(db.put(k, "before") for k in keys))
            server.kill()
            server = start()
            # The read tasks saw the close: every connection is reopened
            # before its next request, reads and writes alike, even when
            # many coroutines find it closed at once.
            values = await asyncio.gather(*(db.get(k) for k in keys))
            self.assertEqual(values, [b"before"] * len(keys))
            server.kill()
            server = start()
            await asyncio.sleep(0.2)
            await asyncio.gather(*(db.put(k, "after") for k in keys))
            values = await asyncio.gather(*(db.get(k) for k in keys))
            self.assertEqual(values, [b"after"] * len(keys))
            await db.close()
            server.stop()


if __name__ == "__main__":
    unittest.main()
