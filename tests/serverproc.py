"""``bunet-server`` in its own process on a free loopback port, for tests and benchmarks that
need to signal, kill or measure the server (``from serverproc import ...`` in tests,
``from tests.serverproc import ...`` in bench/)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm(pid: int, key: str) -> int:
    """A process's VmRSS / VmHWM (bytes) from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


class ServerProcess:
    """Starts ``bunet-server --listen <free port> *args`` and waits until it serves."""

    def __init__(self, *args: str) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        code = "import sys; from bunet.cli import server_main; sys.exit(server_main())"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "--listen", self.address, *args],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        line = self.proc.stderr.readline()  # "serving ..." once it listens
        if "serving" not in line:
            raise RuntimeError(f"server did not start: {line}{self.proc.stderr.read()}")

    def stop(self) -> str:
        """Ends the server (also a stopped one); its stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
        try:
            return self.proc.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.communicate()[1]
