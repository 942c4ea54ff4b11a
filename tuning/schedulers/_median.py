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
from typing import Any, cast

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


_HEAD = 4  # best, running sum, its compensation, finite count; then (time, value, mean) triples


class _History(array):  # type: ignore[type-arg]
    """One trial's results, and the running mean after each (``running_mean_at``'s value,
    bit for bit: the builtin ``sum`` of the finite values divided by their count).

    One array of doubles: ``[best, sum, compensation, count, t0, v0, mean0, t1, v1, mean1,
    ...]``. A third of the memory of lists of floats, and one object for Python's garbage
    collector to scan per trial (three arrays and a record were four), at a hundred thousand
    trials.
    """

    __slots__ = ()

    def __new__(cls) -> _History:
        return cast(_History, super().__new__(cls, "d", (math.nan, 0.0, 0.0, 0.0)))

    def __reduce__(self) -> tuple[Any, ...]:  # pickle and copy keep the class
        return _history_from, (self.tolist(),)

    def __copy__(self) -> _History:
        return _history_from(self.tolist())

    def __deepcopy__(self, memo: dict[int, Any]) -> _History:
        return _history_from(self.tolist())

    @property
    def best(self) -> float:
        return self[0]

    @property
    def last_time(self) -> float | None:
        return self[-3] if len(self) > _HEAD else None

    @property
    def last_mean(self) -> float:
        return self[-1]

    @property
    def times(self) -> list[float]:
        return self[_HEAD::3].tolist()

    @property
    def values(self) -> list[float]:
        return self[_HEAD + 1::3].tolist()

    def add(self, t: float, v: float) -> None:
        if not math.isnan(v):
            self._accumulate(v)
            if math.isnan(self[0]) or v > self[0]:
                self[0] = v
        self.extend((t, v, self._mean()))

    def _accumulate(self, v: float) -> None:
        total, comp, count = self[1], self[2], self[3]
        if count == 0 or not _NEUMAIER:
            total = total + v  # sum() starts from the int 0: 0 + v, then adds in turn
        else:  # CPython's sum(): Neumaier's compensated addition
            new = total + v
            if abs(total) >= abs(v):
                comp += (total - new) + v
            else:
                comp += (v - new) + total
            total = new
        self[1], self[2], self[3] = total, comp, count + 1

    def _mean(self) -> float:
        count = self[3]
        if count == 0:
            return float("nan")
        total, comp = self[1], self[2]
        if _NEUMAIER and comp and math.isfinite(comp):
            total += comp
        return total / count

    def mean_at(self, t: float) -> float:
        """``running_mean_at(times, values, t)`` in O(log h)."""
        k = bisect.bisect_right(range((len(self) - _HEAD) // 3), t,
                                key=lambda i: self[_HEAD + 3 * i])  # over the times
        return self[_HEAD + 3 * k - 1] if k else float("nan")

    def to_dict(self) -> dict[str, Any]:
        values: list[Any] = self.values
        if not all(map(math.isfinite, values)):  # NaN and infinities have no JSON number
            values = [encode_float(v) for v in values]
        return {"times": self.times, "values": values}


def _history_from(items: list[float]) -> _History:
    h = _History()
    h[:] = array("d", items)
    return h


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
                      if tid != trial.trial_id and tid not in self._errored
                      and h[-3] >= t]  # its last time (every history has a result)
            stop = median_stops(history.best, others, self.min_samples_required)
        return Decision.STOP if stop else Decision.CONTINUE

    def _counted(self, tid: str) -> bool:
        return tid not in self._errored and tid not in self._irregular

    def _add(self, tid: str, t: float, v: float) -> _History:
        """Record a result; keep the per-time lists of a counted trial up to date."""
        h = self._histories.get(tid)
        if h is None:
            h = self._histories[tid] = _History()
        last = h.last_time
        if self._counted(tid) and last is not None and t < last:
            self._uncount(tid)
            self._irregular.add(tid)
        if not self._counted(tid):
            h.add(t, v)
            return h
        if last == t:  # again at the same time: its mean there changes
            self._drop_mean(t, h.last_mean)
        else:
            self._count_at[t] = self._count_at.get(t, 0) + 1
            if last is not None:
                self._lasts.remove(last)
            self._lasts.add(t)
        h.add(t, v)
        if not math.isnan(h.last_mean):
            self._means_at.setdefault(t, SortedList()).add(h.last_mean)
        return h

    def _drop_mean(self, t: float, mean: float) -> None:
        if not math.isnan(mean):
            self._means_at[t].remove(mean)

    def _uncount(self, tid: str) -> None:
        """Take a counted trial out of the per-time lists (it errored, or its times went back)."""
        h = self._histories.get(tid)
        if h is None or h.last_time is None:
            return
        for t in set(h.times):
            self._drop_mean(t, h.mean_at(t))
            self._count_at[t] -= 1
        self._lasts.remove(h.last_time)

    def _stops_fast(self, tid: str, history: _History, t: float) -> bool | None:
        """:func:`median_stops` from the sorted running means at ``t``; None when those do not
        hold every trial that reached ``t`` (one stepped over it, or times went back)."""
        if self._irregular or not self._counted(tid):
            return None
        reached = len(self._lasts) - self._lasts.bisect_left(t)
        if self._count_at.get(t, 0) != reached:
            return None
        means = self._means_at.get(t)
        own = history.last_mean
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
