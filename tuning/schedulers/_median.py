"""Median stopping (Golovin et al., Vizier 2017; Ray Tune's ``MedianStoppingRule``).

A trial is stopped at time ``t`` when its best value so far is worse than the median of the
running averages (the mean of every result up to ``t``) of the other trials that reached ``t``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


@dataclass
class _History:
    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    best: float = float("nan")

    def add(self, t: float, v: float) -> None:
        self.times.append(t)
        self.values.append(v)
        if not math.isnan(v) and (math.isnan(self.best) or v > self.best):
            self.best = v

    def to_dict(self) -> dict[str, Any]:
        return {"times": list(self.times), "values": [encode_float(v) for v in self.values]}


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
        self._histories: dict[str, _History] = {}
        self._errored: set[str] = set()

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "type": "median", "grace_period": self.grace_period,
                "min_samples_required": self.min_samples_required, "max_t": self.max_t}

    def on_result(self, trial: Trial, result: Mapping[str, Any]) -> Decision:
        t = self._time(result)
        history = self._histories.setdefault(trial.trial_id, _History())
        history.add(t, self._value(result))
        if self.max_t is not None and t >= self.max_t:
            return Decision.STOP
        if t < self.grace_period:
            return Decision.CONTINUE
        others = [running_mean_at(h.times, h.values, t) for tid, h in self._histories.items()
                  if tid != trial.trial_id and tid not in self._errored and h.times[-1] >= t]
        stop = median_stops(history.best, others, self.min_samples_required)
        return Decision.STOP if stop else Decision.CONTINUE

    def decision_points(self, trial: Trial) -> DecisionPoints:
        """Every result from the grace period on may stop the trial."""
        return DecisionPoints(every_from=float(self.grace_period))

    def on_trial_error(self, trial: Trial) -> None:
        self._errored.add(trial.trial_id)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "errored": sorted(self._errored),
                "histories": {tid: h.to_dict() for tid, h in self._histories.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._errored = set(state["errored"])
        self._histories = {}
        for tid, d in state["histories"].items():
            h = self._histories[tid] = _History()
            for t, v in zip(d["times"], d["values"]):
                h.add(float(t), decode_float(v))
