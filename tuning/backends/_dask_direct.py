"""A direct line between the driver and the Dask workers running its trials.

Through the scheduler, a result and its answer cross four batched streams (worker, scheduler,
client and back), some 10-30 ms on a loaded 2-core machine. Over a direct line a result goes
worker -> driver and the answer driver -> worker: one hop each way, well under a few ms, so a
``report()`` waiting at a decision point is answered before its trial would notice.

Built on Dask's own comm layer (``distributed.comm``: the same TCP/TLS transport, the same
``security`` as the cluster) and :class:`distributed.batched.BatchedSend` with no interval
(messages written as soon as the stream is free, in order). Messages are plain msgpack data
(``deserialize=False``: nothing arriving here is unpickled) and a worker must present the
run's random token first. A worker that cannot reach the driver (a laptop behind NAT driving
a cloud cluster, say) keeps using the scheduler path: nothing changes but the latency.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

from distributed.batched import BatchedSend
from distributed.comm import (
    CommClosedError,
    connect,
    get_local_address_for,
    listen,
    parse_address,
    parse_host_port,
    unparse_host_port,
)

__all__ = ["DirectLink", "DirectListener"]

log = logging.getLogger("tuning.backends.dask")

#: how long a worker tries to reach the driver before it keeps to the scheduler path
CONNECT_TIMEOUT_S = 3.0


class DirectListener:
    """Driver side: accepts the workers' lines, hands their messages to ``on_message(worker,
    message)`` and sends answers back on the line of the worker named.

    Everything runs on the client's event loop (``start`` and ``answer`` are called there or
    through ``loop.add_callback``), as do the client's own handlers, so messages from both
    paths are handled one at a time.
    """

    def __init__(self, on_message: Callable[[str, dict[str, Any]], None],
                 on_closed: Callable[[str], None]) -> None:
        self.on_message = on_message
        self.on_closed = on_closed
        self.token = secrets.token_hex(16)
        self.address: str | None = None
        self.lines: dict[str, BatchedSend] = {}  # worker address -> its line
        self._listener: Any = None

    async def start(self, scheduler_address: str, listen_args: dict[str, Any]) -> str | None:
        """Listen on the interface this machine reaches the scheduler by; the address workers
        are to connect to, or None where the scheduler's transport is not TCP/TLS."""
        scheme, _ = parse_address(scheduler_address)
        if scheme not in ("tcp", "tls"):
            return None
        _, local = parse_address(get_local_address_for(scheduler_address))  # host, no port
        host, _ = parse_host_port(local, default_port=0)
        self._listener = await listen(f"{scheme}://{unparse_host_port(host, 0)}", self._handle,
                                      deserialize=False, **listen_args)
        await self._listener.start()
        self.address = self._listener.contact_address
        return self.address

    async def _handle(self, comm: Any) -> None:
        try:
            hello = await comm.read()
        except (CommClosedError, OSError):
            return
        if not isinstance(hello, dict) or hello.get("token") != self.token or \
                not isinstance(hello.get("worker"), str):
            log.warning("refused a direct connection from %s: wrong token", comm.peer_address)
            await comm.close()
            return
        worker = hello["worker"]
        line = BatchedSend(interval=0)
        line.start(comm)
        self.lines[worker] = line
        try:
            while True:
                batch = await comm.read()
                for msg in batch if isinstance(batch, (list, tuple)) else [batch]:
                    if isinstance(msg, dict):
                        self.on_message(worker, msg)
        except (CommClosedError, OSError, asyncio.CancelledError):
            pass
        finally:
            if self.lines.get(worker) is line:
                del self.lines[worker]
                self.on_closed(worker)
            line.abort()

    def has_line(self, worker: str | None) -> bool:
        return worker is not None and worker in self.lines

    def answer(self, worker: str, message: dict[str, Any]) -> bool:
        """Queue ``message`` on ``worker``'s line (event loop only); False when it has none."""
        line = self.lines.get(worker)
        if line is None or line.closed():
            return False
        line.send(message)
        return True

    async def close(self) -> None:
        for line in list(self.lines.values()):
            line.abort()
        self.lines.clear()
        if self._listener is not None:
            self._listener.stop()
            self._listener = None


class DirectLink:
    """Worker side: one line per worker process and run, shared by the trials it runs.

    ``send`` may be called from any thread (the trial's): the message is written by the
    worker's event loop, in call order. Answers are handed to ``on_answer(message)``.
    """

    def __init__(self, worker: Any, address: str, token: str,
                 on_answer: Callable[[dict[str, Any]], None]) -> None:
        self.worker = worker
        self.address = address
        self.token = token
        self.on_answer = on_answer
        self.line: BatchedSend | None = None
        self.failed: str | None = None

    async def open(self) -> None:
        """Connect and introduce this worker; on failure ``failed`` says why."""
        try:
            args = self.worker.security.get_connection_args("worker")
            comm = await connect(self.address, timeout=CONNECT_TIMEOUT_S, deserialize=False,
                                 **args)
            await comm.write({"token": self.token, "worker": self.worker.address})
        except (OSError, CommClosedError, asyncio.TimeoutError) as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            return
        self.line = BatchedSend(interval=0)
        self.line.start(comm)
        self.worker.loop.add_callback(self._read, comm)

    async def _read(self, comm: Any) -> None:
        try:
            while True:
                batch = await comm.read()
                for msg in batch if isinstance(batch, (list, tuple)) else [batch]:
                    if isinstance(msg, dict):
                        self.on_answer(msg)
        except (CommClosedError, OSError, asyncio.CancelledError):
            self.failed = "the driver closed the line"

    @property
    def usable(self) -> bool:
        return self.line is not None and self.failed is None and not self.line.closed()

    def send(self, message: dict[str, Any]) -> bool:
        """Queue ``message`` for the driver (any thread); False when the line is down."""
        if not self.usable:
            return False
        line = self.line
        assert line is not None
        self.worker.loop.add_callback(line.send, message)
        return True
