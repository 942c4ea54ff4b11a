"""Waiting for a server process started by a test to listen on 127.0.0.1."""

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
