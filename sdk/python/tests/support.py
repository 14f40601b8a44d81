"""What the SDK's tests share: the real server, and one that never answers."""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import socket
import threading

HERE = pathlib.Path(__file__).resolve().parent
# The SDK in this tree, not an installed copy.
sys.path.insert(0, str(HERE.parent))

ROOT = HERE.parents[2]
SERVER = pathlib.Path(os.environ.get("TESSERA_SERVER", ROOT / "target/debug/tessera-server"))
# The CLI beside the server (``tessera cert`` makes TLS certificates).
CLI = SERVER.with_name("tessera")


def make_certs(directory):
    """A CA and a server certificate for 127.0.0.1 in ``directory``; returns
    the paths of ca.pem, server.pem and server.key."""
    subprocess.run(
        [str(CLI), "cert", str(directory), "--host", "127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return tuple(os.path.join(directory, f) for f in ("ca.pem", "server.pem", "server.key"))


class Server:
    """The real server on free localhost ports, with its data in a temporary
    directory."""

    def __init__(self, shards, *extra, data=None, listen="127.0.0.1:0", shard_base_port=0):
        """``data``: a directory to start on (kept by ``kill``, removed by
        ``stop``); a new one if None."""
        if not SERVER.exists():
            raise RuntimeError(f"{SERVER} is missing: build it with `cargo build -p tessera-net`")
        self.data = data or tempfile.mkdtemp(prefix="tessera-py-")
        self.process = subprocess.Popen(
            [
                str(SERVER),
                *("--data", self.data, "--listen", listen, "--cpus", "any"),
                *("--shard-base-port", str(shard_base_port), "--shards", str(shards)),
                *("--metrics", "127.0.0.1:0", "--prefault-memory", "false"),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        # tessera-server ready: listen A shards N (S1 S2 ...) data D ...
        line = self.process.stdout.readline().decode()
        if not line.startswith("tessera-server ready: "):
            self.process.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.process.stderr.read()!r}")
        words = line.split()
        self.address = words[words.index("listen") + 1]
        # Keep draining its output so that it never blocks on a full pipe.
        self.drains = [
            threading.Thread(target=stream.read, daemon=True)
            for stream in (self.process.stdout, self.process.stderr)
        ]
        for drain in self.drains:
            drain.start()

    def kill(self):
        """kill -9; the data directory stays."""
        self.process.kill()
        self.process.wait()
        for drain in self.drains:
            drain.join()
        self.process.stdout.close()
        self.process.stderr.close()

    def stop(self):
        self.kill()
        shutil.rmtree(self.data, ignore_errors=True)


class Silent:
    """A listener that accepts connections and never answers: requests to it
    time out."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"

    def stop(self):
        self.listener.close()


def free_ports(n):
    """A free port, and the first of ``n`` free ports after it."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        held = []
        try:
            for p in range(port, port + n + 1):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", p))
            return port, port + 1
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no run of free ports")
