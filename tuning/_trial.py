"""The core model: trial states and the trial record the engine keeps."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from sys import intern
from typing import Any

__all__ = ["ITERATION", "TERMINAL", "Status", "Trial", "best_trial", "format_trial_id"]

ITERATION = "training_iteration"


class Status(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    TERMINATED = "TERMINATED"  # ran to the end (max_t or the trainable returned)
    STOPPED = "STOPPED"  # stopped early by the scheduler or a stopper
    ERROR = "ERROR"

    def __str__(self) -> str:
        return self.value


TERMINAL = frozenset({Status.TERMINATED, Status.STOPPED, Status.ERROR})


def format_trial_id(index: int) -> str:
    """``trial-007`` style ids: sortable, readable in the MLflow UI."""
    return f"trial-{index:03d}"


#: the clocks every report carries: no last/lowest/highest kept for them (~200 B a trial at
#: ten thousand trials); their last value is read from the last result
_CLOCKS = ("time_this_iter_s", "time_total_s")
#: result keys that are no metric: nothing kept for them (the iteration, a wall-clock stamp)
_NOT_VALUES = frozenset({ITERATION, "timestamp", *_CLOCKS})
#: metric -> the keys its lowest and highest value have in ``Trial.values``
_BOUND_KEYS: dict[str, tuple[str, str]] = {}
_BOUND_MARK = "\x00"  # starts the bound keys; no metric name does


def _bound_keys(metric: str) -> tuple[str, str]:
    got = _BOUND_KEYS.get(metric)
    if got is None:
        got = _BOUND_KEYS[metric] = (intern(f"{_BOUND_MARK}min:{metric}"),
                                     intern(f"{_BOUND_MARK}max:{metric}"))
    return got


@dataclass(slots=True)  # no __dict__: ten thousand trials in the driver, each O(1) and small
class Trial:
    """One configuration being trained, in O(1) memory whatever its number of results.

    The driver keeps the last result, per metric the last, lowest and highest finite value,
    the checkpoint index and the status; the whole history lives in the journal (and in
    MLflow): :meth:`tuning.results.TuneResult.history` reads it back.

    Example:
        >>> t = Trial("trial-000", {"lr": 0.1})
        >>> for i, acc in enumerate([0.5, 0.7, 0.6], 1):
        ...     t.observe({"training_iteration": i, "acc": acc})
        >>> t.iteration, t.last_value("acc"), t.best_value("acc", "max")
        (3, 0.6, 0.7)
    """

    trial_id: str
    config: dict[str, Any]
    status: Status = Status.PENDING
    last_result: dict[str, Any] | None = None
    num_results: int = 0
    checkpoint: str | None = None
    checkpoint_iteration: int = 0
    #: iteration -> checkpoint URL of every checkpoint, the latest taken last: where PBT finds
    #: a donor's state at a given iteration (None until the first one)
    checkpoints: dict[int, str] | None = None
    rung: int | None = None  # the highest milestone (resource) at which a decision was taken
    num_failures: int = 0
    error: str | None = None
    bracket: int | None = None
    stopped_at: int | None = None  # the milestone at which the scheduler stopped it
    info: dict[str, Any] = field(default_factory=dict)
    first_timestamp: float | None = None
    #: per metric its last finite value under its name, and its lowest and highest under
    #: two derived keys (:meth:`metric_names` lists the names). Only floats and strings:
    #: Python's garbage collector never scans the dict, so a hundred thousand trials add
    #: one scanned object each (the trial), not three
    values: dict[str, float] = field(default_factory=dict)

    def observe(self, result: Mapping[str, Any]) -> None:
        """Take one reported result (in iteration order)."""
        # keys interned: ten thousand trials share one copy of each metric's name
        last = self.last_result = {intern(k) if type(k) is str else k: v
                                   for k, v in result.items()}
        self.num_results += 1
        ts = last.get("timestamp")
        if self.first_timestamp is None and isinstance(ts, (int, float)):
            self.first_timestamp = float(ts)
        for key, v in last.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or key in _NOT_VALUES:
                continue
            v = float(v)
            if not math.isfinite(v):
                continue
            lo, hi = _bound_keys(key)
            vals = self.values
            if key in vals:
                if v < vals[lo]:
                    vals[lo] = v
                if v > vals[hi]:
                    vals[hi] = v
            else:
                vals[lo] = vals[hi] = v
            vals[key] = v
        url = last.get("checkpoint")
        if url:
            it = int(last[ITERATION])
            self.checkpoint, self.checkpoint_iteration = url, it
            if self.checkpoints is None:
                self.checkpoints = {}
            self.checkpoints.pop(it, None)  # a re-taken one moves to the end: the latest
            self.checkpoints[it] = url

    @classmethod
    def with_results(cls, trial_id: str, config: dict[str, Any],
                     results: Iterable[Mapping[str, Any]], **fields: Any) -> Trial:
        """A trial that has reported ``results`` (tests, tools)."""
        t = cls(trial_id, config, **fields)
        for r in results:
            t.observe(r)
        return t

    @property
    def iteration(self) -> int:
        return int(self.last_result[ITERATION]) if self.last_result else 0

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def wall_time_s(self) -> float:
        """From its first result to its last."""
        last = self.last_result.get("timestamp") if self.last_result else None
        if self.first_timestamp is None or not isinstance(last, (int, float)):
            return 0.0
        return float(last) - self.first_timestamp

    def checkpoint_at(self, iteration: int) -> tuple[str | None, int]:
        """The latest checkpoint taken at or before ``iteration``, and its iteration."""
        for it, url in reversed((self.checkpoints or {}).items()):
            if it <= iteration:
                return url, it
        return None, 0

    def last_value(self, metric: str) -> float | None:
        """The last finite value reported for ``metric`` (Ray Tune's default scope)."""
        got = self.values.get(metric)
        return got if got is not None else self._unkept(metric)

    def best_value(self, metric: str, mode: str) -> float | None:
        if metric not in self.values:
            return self._unkept(metric)  # a clock: its last value
        return self.values[_bound_keys(metric)[1 if mode == "max" else 0]]

    def metric_names(self) -> list[str]:
        """Every metric with a last value: those reported as numbers, and the clocks."""
        last = self.last_result or {}
        return [*(k for k in self.values if not k.startswith(_BOUND_MARK)),
                *(k for k in _CLOCKS if k in last)]

    def _unkept(self, metric: str) -> float | None:
        v = self.last_result.get(metric) if metric in _CLOCKS and self.last_result else None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
        return float(v)


def best_trial(trials: Iterable[Trial], metric: str, mode: str,
               statuses: frozenset[Status] | None = None) -> Trial | None:
    """The trial whose last value of ``metric`` is best (``mode`` ``"max"`` or ``"min"``),
    among those in ``statuses`` when given; ties go to the earlier trial. The one place this
    is decided: the controller, the results, the live view and the MLflow projection use it.

    Example:
        >>> a = Trial.with_results("a", {}, [{"training_iteration": 1, "acc": 0.9}])
        >>> b = Trial.with_results("b", {}, [{"training_iteration": 1, "acc": 0.8}])
        >>> best_trial([a, b], "acc", "max").trial_id, best_trial([a, b], "acc", "min").trial_id
        ('a', 'b')
    """
    sign = 1.0 if mode == "max" else -1.0
    best: Trial | None = None
    best_v = -math.inf
    for t in trials:
        if statuses is not None and t.status not in statuses:
            continue
        v = t.last_value(metric)
        if v is not None and sign * v > best_v:
            best, best_v = t, sign * v
    return best
