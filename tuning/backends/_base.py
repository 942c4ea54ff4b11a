"""The backend interface: where segments run, and the messages they send back.

A backend takes segments (:class:`tuning.trainable.Segment`) and hands back messages, in the
order they happened:

* :class:`Started` — a segment (re)started on a worker; a second ``Started`` for the same
  segment means the cluster restarted it after a worker loss;
* :class:`Result` — one ``report()``; ``awaits`` when the trial waits for the decision on it
  (a decision point): the controller answers with :meth:`Backend.decide`;
* :class:`Done` — the segment ended; its :class:`~tuning.trainable.SegmentSummary` says how;
* :class:`Lost` — the segment failed outside the trainable (its worker died for good, the
  cluster refused or cancelled it, the controller killed it).
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuning.trainable import Segment, SegmentSummary

__all__ = ["Backend", "BackendError", "Done", "Lost", "Message", "Result", "Started"]


class BackendError(RuntimeError):
    """A cluster that cannot be started or reached."""


@dataclass(frozen=True)
class Started:
    trial_id: str
    segment_id: int
    worker: str | None = None


@dataclass(frozen=True)
class Result:
    trial_id: str
    segment_id: int
    result: dict[str, Any] = field(default_factory=dict)
    awaits: bool = False


@dataclass(frozen=True)
class Done:
    trial_id: str
    segment_id: int
    summary: SegmentSummary


@dataclass(frozen=True)
class Lost:
    trial_id: str
    segment_id: int
    error: str = "worker lost"


Message = Started | Result | Done | Lost


def message_from_dict(msg: dict[str, Any]) -> Message | None:
    """A worker's wire message (a plain dict: cheap to send) as a typed message."""
    kind = msg.get("type")
    if kind == "result":
        return Result(msg["trial_id"], msg["segment_id"], msg["result"], bool(msg.get("awaits")))
    if kind == "started":
        return Started(msg["trial_id"], msg["segment_id"], msg.get("worker"))
    return None


#: closes left to finish after their run returned (:meth:`Backend.release`)
_CLOSING: list[threading.Thread] = []


def join_closing(timeout_s: float = 60.0) -> bool:
    """Wait for the closes runs left behind; True when every one has ended. Registered with
    :mod:`atexit` by :meth:`Backend.release` (after the cluster library's own exit handlers,
    so it runs before them), so a process never exits with a local cluster half closed."""
    deadline = time.monotonic() + timeout_s
    while _CLOSING:
        thread = _CLOSING[0]
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            return False
        _CLOSING.pop(0)
    return True


class Backend:
    """Base class; see the module docstring for the messages.

    The controller uses exactly what is declared here, nothing else.
    """

    name = "base"
    #: a virtual clock (the simulated backend): time is the backend's, not the wall's
    virtual_clock: bool = False
    _starting: tuple[threading.Thread, dict[str, BaseException]] | None = None
    _closing: threading.Thread | None = None

    def preflight(self) -> None:
        """What can be checked before anything starts or is written (an existing cluster's
        address answers, say); raise :class:`BackendError` naming the field. Cheap."""

    def start(self) -> None:
        """Provision or connect; raise :class:`BackendError` with a clear message on failure."""

    def expect(self, trainable: Callable[..., Any]) -> None:
        """Called before :meth:`start` with the run's trainable: a backend that starts its own
        worker processes may have them import what the trainable imports before its first
        trial. Nothing by default."""

    def begin_start(self) -> None:
        """Start provisioning in the background (cluster processes spawn while the caller
        goes on with other set-up); :meth:`finish_start` waits for it."""
        if self._starting is not None:
            return
        box: dict[str, BaseException] = {}

        def run() -> None:
            try:
                self.start()
            except BaseException as exc:  # noqa: BLE001 - re-raised by finish_start
                box["error"] = exc

        thread = threading.Thread(target=run, name=f"rungflow-{self.name}-start", daemon=True)
        self._starting = (thread, box)
        thread.start()

    def finish_start(self) -> None:
        """Wait for :meth:`begin_start` (or start now when it was not called); re-raise its
        error."""
        if self._starting is None:
            self.start()
            return
        thread, box = self._starting
        thread.join()
        if "error" in box:
            raise box["error"]

    def shutdown(self) -> None:
        """:meth:`close`, once a background start has got as far as it will (and wait for a
        close begun by :meth:`begin_close`)."""
        if self._closing is not None:
            self._closing.join()
            return
        self._close_after_start()

    def _close_after_start(self) -> None:
        if self._starting is not None:
            self._starting[0].join()
        self.close()

    def begin_close(self) -> None:
        """Close in the background (workers take a second to go) while the caller finishes
        up; :meth:`shutdown` waits for it."""
        if self._closing is None:
            self._closing = threading.Thread(target=self._close_after_start, daemon=True,
                                             name=f"rungflow-{self.name}-close")
            self._closing.start()

    #: whether a close begun by :meth:`begin_close` may end after the run has returned (a
    #: local cluster this run started: nothing of the run is left on it, and its processes
    #: take seconds to go). The close is then finished at the latest when the interpreter
    #: exits (:func:`join_closing`); anything that costs money (a cloud cluster) is always
    #: waited for.
    close_after_return: bool = False

    def release(self) -> None:
        """The run is over: :meth:`shutdown`, or leave a begun close to finish on its own
        when :attr:`close_after_return` allows it."""
        if self._closing is not None and self.close_after_return:
            _CLOSING.append(self._closing)
            atexit.unregister(join_closing)
            atexit.register(join_closing)  # the last registered runs first
            return
        self.shutdown()

    def prepare(self, trainable: Callable[..., Any]) -> None:
        """Called once, before the first submit, with the trainable: ship it to the workers."""

    @property
    def slots(self) -> int:
        """How many segments may run at once (cheap: called for every planned segment)."""
        raise NotImplementedError

    def submit(self, segment: Segment) -> None:
        """Start ``segment`` of the prepared trainable."""
        raise NotImplementedError

    def poll(self, timeout: float) -> list[Message]:
        """Messages that arrived, waiting up to ``timeout`` seconds for the first one."""
        raise NotImplementedError

    def decide(self, trial_id: str, segment_id: int, iteration: int, stop: bool) -> None:
        """Answer a :class:`Result` with ``awaits``: the waiting ``report()`` goes on or ends.
        Must not block the caller (the decision core)."""

    def stop(self, trial_id: str) -> None:
        """Ask a running trial to stop at its next ``report()`` (must not block)."""

    def kill(self, trial_id: str) -> None:
        """End a trial that does not report (hung): the backend must deliver a :class:`Lost`
        for its segment. The default can only ask it to stop."""
        self.stop(trial_id)

    def checkpoint_saved(self, trial_id: str, url: str, iteration: int) -> None:
        """The driver saw a new checkpoint: a segment restarted after a worker loss uses it."""

    def segment_finished(self, trial_id: str) -> None:
        """The controller has handled the segment's end: forget it."""

    def running_trials(self) -> set[str]:
        """Trials whose segments survive a restart of the driver (restored by
        :meth:`load_state_dict`); real clusters have none: those trials are resubmitted."""
        return set()

    def clock(self) -> float:
        return time.time()

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"type": self.name}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __enter__(self) -> Backend:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
