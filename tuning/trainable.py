"""The API a training function uses: :func:`report` and :func:`get_checkpoint`.

Example:
    >>> from tuning import report, get_checkpoint
    >>> def train(config):
    ...     start = (get_checkpoint() or {"epoch": 0})["epoch"]
    ...     for epoch in range(start, 10):
    ...         report(score=epoch * config["lr"], checkpoint={"epoch": epoch + 1})

Inside a trial, ``report`` sends the result to the driver (over the network on Dask and Ray),
saves the checkpoint under the experiment's storage path, and ends the trial when the driver
has decided to stop it or the segment has reached its pause point.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from tuning._checkpoint import load_checkpoint, save_checkpoint
from tuning._trial import ITERATION

__all__ = [
    "Channel",
    "MetricError",
    "Segment",
    "get_checkpoint",
    "get_trial_id",
    "outside_trial_warning",
    "report",
    "run_segment",
]


class MetricError(ValueError):
    """A reported metric that is not a number."""


@dataclass
class Segment:
    """One dispatch of a trial: from its checkpoint up to ``pause_at`` (or to the end)."""

    trial_id: str
    segment_id: int
    config: dict[str, Any]
    storage: str
    start_iteration: int = 0
    checkpoint: str | None = None
    pause_at: float | None = None
    max_t: float | None = None  # the scheduler's maximum resource: the trial ends there
    time_attr: str = ITERATION
    time_offset_s: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)
    timeout_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Channel(Protocol):
    """How a running segment talks to the driver."""

    def started(self, segment: Segment) -> dict[str, Any] | None:
        """Announce the start; may return a newer checkpoint (after a worker loss)."""

    def send(self, message: dict[str, Any]) -> None:
        """Send one result to the driver (must not block for long)."""

    def should_stop(self) -> bool:
        """Whether the driver asked this trial to stop."""


class _EndSegment(BaseException):
    """Raised inside report() to end the segment (BaseException: user code cannot swallow it)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Session:
    def __init__(self, segment: Segment, channel: Channel) -> None:
        self.segment = segment
        self.channel = channel
        self.iteration = segment.start_iteration
        self.checkpoint_url = segment.checkpoint
        self.checkpoint_iteration = segment.start_iteration if segment.checkpoint else 0
        self.results: list[dict[str, Any]] = []
        self.t0 = self.t_last = time.time()
        self.deadline = self.t0 + segment.timeout_s if segment.timeout_s else None


_local = threading.local()


def _session() -> _Session | None:
    return getattr(_local, "session", None)


def outside_trial_warning() -> str:
    return "report() called outside a trial: run the function through Tuner or `rungflow run`"


def get_trial_id() -> str | None:
    s = _session()
    return s.segment.trial_id if s else None


def get_checkpoint() -> dict[str, Any] | None:
    """The checkpoint this trial resumes from (its own or, after a PBT exploit, another's)."""
    s = _session()
    if s is None or s.checkpoint_url is None:
        return None
    return load_checkpoint(s.checkpoint_url)


def _clean_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if hasattr(value, "item") and callable(value.item):
            value = value.item()  # numpy scalar, 0-d tensor
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, (int, float)):
            raise MetricError(f"report(): metric {key!r} must be a number, got {value!r} "
                              f"({type(value).__name__})")
        out[key] = float(value) if isinstance(value, float) else value
    return out


def report(metrics: dict[str, Any] | None = None, *, checkpoint: dict[str, Any] | None = None,
           **kwargs: Any) -> None:
    """Report one training iteration's metrics, optionally with a checkpoint dict."""
    s = _session()
    if s is None:
        raise RuntimeError(outside_trial_warning())
    values = _clean_metrics({**(metrics or {}), **kwargs})
    now = time.time()
    s.iteration += 1
    result: dict[str, Any] = {**values, ITERATION: s.iteration,
                              "time_this_iter_s": now - s.t_last,
                              "time_total_s": s.segment.time_offset_s + now - s.t0,
                              "timestamp": now}
    s.t_last = now
    if checkpoint is not None:
        s.checkpoint_url = save_checkpoint(checkpoint, s.segment.storage, s.segment.trial_id,
                                           s.iteration)
        s.checkpoint_iteration = s.iteration
        result["checkpoint"] = s.checkpoint_url
    s.results.append(result)
    s.channel.send({"type": "result", "trial_id": s.segment.trial_id,
                    "segment_id": s.segment.segment_id, "result": result})
    _maybe_end(s, result)


def _maybe_end(s: _Session, result: dict[str, Any]) -> None:
    seg = s.segment
    t = result.get(seg.time_attr)
    if isinstance(t, (int, float)) and not math.isnan(t):
        if seg.max_t is not None and t >= seg.max_t:
            raise _EndSegment("finished")
        if seg.pause_at is not None and t >= seg.pause_at:
            raise _EndSegment("paused")
    if s.deadline is not None and time.time() > s.deadline:
        raise TimeoutError(f"trial {seg.trial_id} ran past timeout_s={seg.timeout_s}")
    if s.channel.should_stop():
        raise _EndSegment("stopped")


def run_segment(trainable: Callable[[dict[str, Any]], Any], segment: Segment,
                channel: Channel) -> dict[str, Any]:
    """Run one segment of a trial in this thread; return its summary.

    The summary holds every result of the segment, so the driver can fill in any streamed
    message it missed: ``{"status": "returned"|"finished"|"paused"|"stopped"|"error",
    "results": [...],
    "checkpoint": url, "checkpoint_iteration": n, "error": traceback}``.
    """
    override = channel.started(segment)
    if override and override.get("checkpoint") and \
            int(override.get("iteration", 0)) > segment.start_iteration:
        segment.checkpoint = override["checkpoint"]
        segment.start_iteration = int(override["iteration"])
    s = _Session(segment, channel)
    _local.session = s
    status, error = "returned", None
    try:
        trainable(dict(segment.config))
    except _EndSegment as end:
        status = end.reason
    except Exception:  # noqa: BLE001 - the trial's own failure, reported to the driver
        status, error = "error", traceback.format_exc()
    finally:
        _local.session = None
    return {"status": status, "trial_id": segment.trial_id, "segment_id": segment.segment_id,
            "results": s.results, "checkpoint": s.checkpoint_url,
            "checkpoint_iteration": s.checkpoint_iteration, "error": error,
            "start_iteration": segment.start_iteration}
