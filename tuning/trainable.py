"""The API a training function uses: :func:`report` and :func:`get_checkpoint`.

Example:
    >>> from tuning import report, get_checkpoint
    >>> def train(config):
    ...     start = (get_checkpoint() or {"epoch": 0})["epoch"]
    ...     for epoch in range(start, 10):
    ...         report(score=epoch * config["lr"], checkpoint={"epoch": epoch + 1})

Inside a trial, ``report`` sends the result to the driver (over the network on Dask and Ray),
saves the checkpoint under the experiment's storage path, and ends the trial when the driver
has decided to stop it or the segment has reached its pause point. At a decision point of the
scheduler (an ASHA milestone, a median-stopping step) ``report`` waits for the decision on the
result it just sent, a round trip of a few milliseconds, so a STOP lands before the next
iteration; between decision points results stream without waiting.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from tuning._checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tuning._trial import ITERATION

__all__ = [
    "DECISION_TIMEOUT_S",
    "Channel",
    "MetricError",
    "Segment",
    "SegmentSummary",
    "TrialTimeout",
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
    decide_at: list[float] = field(default_factory=list)  # report() waits for the decision here
    decide_from: float | None = None  # ... and at every result from here on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def is_decision_point(self, t: float) -> bool:
        return (self.decide_from is not None and t >= self.decide_from) or t in self.decide_at


@dataclass
class SegmentSummary:
    """How a segment ended. The results themselves reached the driver as they were reported.

    ``status``: ``returned`` (the trainable returned), ``finished`` (``max_t``), ``paused``,
    ``stopped`` (the driver's STOP) or ``error``; ``retryable`` is False for errors a retry
    cannot fix (a metric that is not a number, an unsafe checkpoint, a timeout).
    """

    status: str
    trial_id: str
    segment_id: int
    last_iteration: int
    checkpoint: str | None = None
    checkpoint_iteration: int = 0
    error: str | None = None
    retryable: bool = True
    start_iteration: int = 0

#: how long report() waits at a decision point before going on without an answer (a driver
#: that is gone or stalled must not hang the cluster; the next report() will see a STOP)
DECISION_TIMEOUT_S = 60.0


class Channel(Protocol):
    """How a running segment talks to the driver."""

    def started(self, segment: Segment) -> dict[str, Any] | None:
        """Announce the start; may return a newer checkpoint (after a worker loss)."""

    def send(self, message: dict[str, Any]) -> None:
        """Send one result to the driver (must not block for long)."""

    def should_stop(self) -> bool:
        """Whether the driver asked this trial to stop (must not block)."""

    def wait_decision(self, iteration: int, timeout: float) -> bool | None:
        """Wait for the driver's decision on the result of ``iteration`` (sent with
        ``"awaits": True``): True to stop, False to go on, None when none came in time."""


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
    seg = s.segment
    raw = result.get(seg.time_attr)
    t = float(raw) if isinstance(raw, (int, float)) else math.nan
    timed = not math.isnan(t)
    ends = timed and ((seg.max_t is not None and t >= seg.max_t)
                      or (seg.pause_at is not None and t >= seg.pause_at))
    awaits = timed and not ends and seg.is_decision_point(t)
    message = {"type": "result", "trial_id": seg.trial_id, "segment_id": seg.segment_id,
               "result": result}
    if awaits:
        message["awaits"] = True
    s.channel.send(message)
    if awaits and s.channel.wait_decision(s.iteration, DECISION_TIMEOUT_S):
        raise _EndSegment("stopped")
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
        raise TrialTimeout(f"trial {seg.trial_id} ran past timeout_s={seg.timeout_s}")
    if s.channel.should_stop():
        raise _EndSegment("stopped")


class TrialTimeout(TimeoutError):
    """A trial that ran past its ``timeout_s`` (not retried)."""


_NOT_RETRYABLE = (MetricError, CheckpointError, TrialTimeout)


def run_segment(trainable: Callable[[dict[str, Any]], Any], segment: Segment,
                channel: Channel) -> SegmentSummary:
    """Run one segment of a trial in this thread; return how it ended."""
    override = channel.started(segment)
    if override and override.get("checkpoint") and \
            int(override.get("iteration", 0)) > segment.start_iteration:
        segment.checkpoint = override["checkpoint"]
        segment.start_iteration = int(override["iteration"])
    s = _Session(segment, channel)
    _local.session = s
    status, error, retryable = "returned", None, True
    try:
        trainable(dict(segment.config))
    except _EndSegment as end:
        status = end.reason
    except Exception as exc:  # noqa: BLE001 - the trial's own failure, reported to the driver
        status, error = "error", traceback.format_exc()
        retryable = not isinstance(exc, _NOT_RETRYABLE)
    finally:
        _local.session = None
    return SegmentSummary(status=status, trial_id=segment.trial_id,
                          segment_id=segment.segment_id, last_iteration=s.iteration,
                          checkpoint=s.checkpoint_url, checkpoint_iteration=s.checkpoint_iteration,
                          error=error, retryable=retryable,
                          start_iteration=segment.start_iteration)
