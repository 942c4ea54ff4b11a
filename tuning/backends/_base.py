"""The backend interface: where segments run.

A backend takes segments (:class:`tuning.trainable.Segment`) and hands back messages, as plain
dicts, in the order they happened:

* ``{"type": "started", "trial_id", "segment_id"}`` — a segment (re)started on a worker; a
  second ``started`` for the same segment means it was restarted after a worker loss;
* ``{"type": "result", "trial_id", "segment_id", "result"}`` — one ``report()``;
* ``{"type": "done", "trial_id", "segment_id", "summary"}`` — the segment ended; ``summary`` is
  what :func:`tuning.trainable.run_segment` returned (status returned, paused, stopped, error);
* ``{"type": "lost", "trial_id", "segment_id", "error"}`` — the segment failed outside the
  trainable (its worker died for good, the cluster refused it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tuning.trainable import Segment

__all__ = ["Backend", "BackendError"]


class BackendError(RuntimeError):
    """A cluster that cannot be started or reached."""


class Backend:
    """Base class; see the module docstring for the message protocol."""

    name = "base"

    def start(self) -> None:
        """Provision or connect; raise :class:`BackendError` with a clear message on failure."""

    def prepare(self, trainable: Callable[..., Any]) -> None:
        """Called once before the first submit (and after a restore) with the trainable."""

    @property
    def slots(self) -> int:
        """How many segments may run at once."""
        raise NotImplementedError

    def submit(self, trainable: Callable[..., Any], segment: Segment) -> None:
        raise NotImplementedError

    def poll(self, timeout: float) -> list[dict[str, Any]]:
        """Messages that arrived, waiting up to ``timeout`` seconds for the first one."""
        raise NotImplementedError

    def stop(self, trial_id: str) -> None:
        """Ask a running trial to stop at its next ``report()``."""

    def checkpoint_saved(self, trial_id: str, url: str, iteration: int) -> None:
        """The driver saw a new checkpoint: a segment restarted after a worker loss uses it."""

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
