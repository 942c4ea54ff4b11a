"""Ports for the servers tests start on 127.0.0.1: a free one, and waiting for one to open."""

from __future__ import annotations

import socket
import subprocess
import time


def port_opens(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    """True once 127.0.0.1:``port`` accepts a connection; False when ``proc`` exits first or
    ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def free_port() -> int:
    """A port nothing listens on at 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
