"""Median stopping (Golovin et al., Vizier 2017; Ray Tune's ``MedianStoppingRule``).

A trial is stopped at time ``t`` when its best value so far is worse than the median of the
running averages (the mean of every result up to ``t``) of the other trials that reached ``t``.

Each trial keeps the running mean after each of its results (a prefix), so its mean at any ``t``
is one bisection away. When every trial reports at the same times (``training_iteration``),
the running means at each time are kept in a sorted list, and a decision reads the median from
it in O(log n). Otherwise (float times that trials step over, a trial whose times went back)
the median is taken over the other trials as before: O(n log h).
"""

from __future__ import annotations

import bisect
import math
import sys
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sortedcontainers import SortedList

from tuning._trial import ITERATION, Trial
from tuning.schedulers._base import Decision, DecisionPoints, Scheduler
from tuning.schedulers._common import check_int, check_number, decode_float, encode_float

__all__ = ["MedianStopping", "median_stops", "running_mean_at"]


def running_mean_at(times: list[float], values: list[float], t: float) -> float:
    """The mean of the non-NaN ``values`` reported at times ``<= t`` (NaN when none).

    Example:
        >>> running_mean_at([1, 2, 3], [0.0, 1.0, 5.0], 2)
        0.5
    """
    k = bisect.bisect_right(times, t)
    finite = [v for v in values[:k] if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def median_stops(best: float, others: Iterable[float], min_samples_required: int) -> bool:
    """Whether a trial whose best value (larger is better) is ``best`` is stopped.

    ``others`` are the other trials' running means at the same time; NaN ones are ignored.
    A trial with no finite value is stopped once enough others are there.

    Example:
        >>> median_stops(0.4, [0.3, 0.5, 0.6], 3)  # median 0.5
        True
        >>> median_stops(0.4, [0.3, 0.5], 3)  # too few others
        False
    """
    finite = [v for v in others if not math.isnan(v)]
    if len(finite) < min_samples_required:
        return False
    return math.isnan(best) or best < float(np.median(finite))


_NEUMAIER = sys.version_info >= (3, 12)  # builtin sum() of floats is compensated from 3.12


def _doubles() -> array[float]:
    return array("d")


@dataclass(slots=True)
class _History:
    """One trial's results, and the running mean after each (``running_mean_at``'s value,
    bit for bit: the builtin ``sum`` of the finite values divided by their count). Arrays of
    doubles, not lists of floats: a third of the memory, and nothing for the garbage collector
    to walk, at a hundred thousand trials."""

    times: array[float] = field(default_factory=_doubles)
    values: array[float] = field(default_factory=_doubles)
    best: float = float("nan")
    means: array[float] = field(default_factory=_doubles)
    _sum: float = 0.0
    _comp: float = 0.0
    _count: int = 0

    def add(self, t: float, v: float) -> None:
        self.times.append(t)
        self.values.append(v)
        if not math.isnan(v):
            self._accumulate(v)
            if math.isnan(self.best) or v > self.best:
                self.best = v
        self.means.append(self._mean())

    def _accumulate(self, v: float) -> None:
        if self._count == 0 or not _NEUMAIER:
            self._sum = self._sum + v  # sum() starts from the int 0: 0 + v, then adds in turn
        else:  # CPython's sum(): Neumaier's compensated addition
            total = self._sum + v
            if abs(self._sum) >= abs(v):
                self._comp += (self._sum - total) + v
            else:
                self._comp += (v - total) + self._sum
            self._sum = total
        self._count += 1

    def _mean(self) -> float:
        if self._count == 0:
            return float("nan")
        total = self._sum
        if _NEUMAIER and self._comp and math.isfinite(self._comp):
            total += self._comp
        return total / self._count

    def mean_at(self, t: float) -> float:
        """``running_mean_at(self.times, self.values, t)`` in O(log h)."""
        k = bisect.bisect_right(self.times, t)
        return self.means[k - 1] if k else float("nan")

    def to_dict(self) -> dict[str, Any]:
        values: list[Any] = self.values.tolist()
        if not all(map(math.isfinite, values)):  # NaN and infinities have no JSON number
            values = [encode_float(v) for v in values]
        return {"times": self.times.tolist(), "values": values}


class MedianStopping(Scheduler):
    """Stop a trial whose best value is below the median of the others' running averages.

    Asynchronous: decisions are only CONTINUE or STOP. Other trials count at time ``t`` when
    they reported a result at ``t`` or later (Ray Tune); trials that errored do not count.

    Args:
        grace_period: No trial is stopped before ``result[time_attr] >= grace_period``.
        min_samples_required: How many other trials must have reached ``t``.
        max_t: When given, a trial is stopped (finished) at ``max_t``.
        time_attr: The resource attribute of results.
        metric: The metric; the experiment's when None.
        mode: ``"min"`` or ``"max"``; the experiment's when None.
        seed: Seed of ``self.rng``.

    Example:
        >>> from tuning._trial import Trial
        >>> s = MedianStopping(grace_period=1, min_samples_required=1, metric="acc", mode="max")
        >>> a, b = Trial("a", {}), Trial("b", {})
        >>> s.on_result(a, {"training_iteration": 1, "acc": 0.9}).value
        'CONTINUE'
        >>> s.on_result(b, {"training_iteration": 1, "acc": 0.5}).value
        'STOP'
    """

    def __init__(self, grace_period: float = 1, min_samples_required: int = 3,
                 max_t: float | None = None, *, time_attr: str = ITERATION,
                 metric: str | None = None, mode: str | None = None,
                 seed: int | None = None) -> None:
        super().__init__(metric=metric, mode=mode, time_attr=time_attr, seed=seed)
        self.grace_period = check_number("grace_period", grace_period, low=0, strict=False)
        self.min_samples_required = check_int("min_samples_required", min_samples_required, low=1)
        self.max_t = None if max_t is None else check_number("max_t", max_t, low=0)
        self._reset()

    def _reset(self) -> None:
        self._histories: dict[str, _History] = {}
        self._errored: set[str] = set()
        # per time: the finite running means there of the counted trials that reported at it,
        # and how many counted trials reported at it (NaN means included)
        self._means_at: dict[float, SortedList] = {}
        self._count_at: dict[float, int] = {}
        self._lasts: SortedList = SortedList()  # the latest time of each counted trial
        self._irregular: set[str] = set()  # not errored, times went back: not in the lists

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "type": "median", "grace_period": self.grace_period,
                "min_samples_required": self.min_samples_required, "max_t": self.max_t}

    def on_result(self, trial: Trial, result: Mapping[str, Any]) -> Decision:
        t = self._time(result)
        history = self._add(trial.trial_id, t, self._value(result))
        if self.max_t is not None and t >= self.max_t:
            return Decision.STOP
        if t < self.grace_period:
            return Decision.CONTINUE
        stop = self._stops_fast(trial.trial_id, history, t)
        if stop is None:
            others = [h.mean_at(t) for tid, h in self._histories.items()
                      if tid != trial.trial_id and tid not in self._errored and h.times[-1] >= t]
            stop = median_stops(history.best, others, self.min_samples_required)
        return Decision.STOP if stop else Decision.CONTINUE

    def _counted(self, tid: str) -> bool:
        return tid not in self._errored and tid not in self._irregular

    def _add(self, tid: str, t: float, v: float) -> _History:
        """Record a result; keep the per-time lists of a counted trial up to date."""
        h = self._histories.get(tid)
        if h is None:
            h = self._histories[tid] = _History()
        last = h.times[-1] if h.times else None
        if self._counted(tid) and last is not None and t < last:
            self._uncount(tid)
            self._irregular.add(tid)
        if not self._counted(tid):
            h.add(t, v)
            return h
        if last == t:  # again at the same time: its mean there changes
            self._drop_mean(t, h.means[-1])
        else:
            self._count_at[t] = self._count_at.get(t, 0) + 1
            if last is not None:
                self._lasts.remove(last)
            self._lasts.add(t)
        h.add(t, v)
        if not math.isnan(h.means[-1]):
            self._means_at.setdefault(t, SortedList()).add(h.means[-1])
        return h

    def _drop_mean(self, t: float, mean: float) -> None:
        if not math.isnan(mean):
            self._means_at[t].remove(mean)

    def _uncount(self, tid: str) -> None:
        """Take a counted trial out of the per-time lists (it errored, or its times went back)."""
        h = self._histories.get(tid)
        if h is None or not h.times:
            return
        for t in set(h.times):
            self._drop_mean(t, h.mean_at(t))
            self._count_at[t] -= 1
        self._lasts.remove(h.times[-1])

    def _stops_fast(self, tid: str, history: _History, t: float) -> bool | None:
        """:func:`median_stops` from the sorted running means at ``t``; None when those do not
        hold every trial that reached ``t`` (one stepped over it, or times went back)."""
        if self._irregular or not self._counted(tid):
            return None
        reached = len(self._lasts) - self._lasts.bisect_left(t)
        if self._count_at.get(t, 0) != reached:
            return None
        means = self._means_at.get(t)
        own = history.means[-1]
        n = (len(means) if means is not None else 0) - (0 if math.isnan(own) else 1)
        if n < self.min_samples_required:
            return False
        if math.isnan(history.best):
            return True
        assert means is not None
        # the median of the others: the sorted means with this trial's own one left out,
        # read by index (any copy of an equal value leaves the same sequence)
        skip = len(means) if math.isnan(own) else means.bisect_left(own)

        def other(i: int) -> float:
            return float(means[i if i < skip else i + 1])

        median = other(n // 2) if n % 2 else (other(n // 2 - 1) + other(n // 2)) / 2
        return history.best < median

    def decision_points(self, trial: Trial) -> DecisionPoints:
        """Every result from the grace period on may stop the trial."""
        return DecisionPoints(every_from=float(self.grace_period))

    def on_trial_error(self, trial: Trial) -> None:
        self._error(trial.trial_id)

    def _error(self, tid: str) -> None:
        if self._counted(tid):
            self._uncount(tid)
        self._irregular.discard(tid)
        self._errored.add(tid)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "errored": sorted(self._errored),
                "histories": {tid: h.to_dict() for tid, h in self._histories.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._reset()
        for tid, d in state["histories"].items():
            for t, v in zip(d["times"], d["values"]):
                self._add(tid, float(t), decode_float(v))
        for tid in state["errored"]:
            self._error(tid)
