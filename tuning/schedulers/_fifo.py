"""FIFO: no early stopping; every trial runs to its end (or to ``max_t`` when given)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuning._trial import ITERATION, Trial
from tuning.schedulers._base import Decision, Scheduler
from tuning.schedulers._common import check_number

__all__ = ["FIFO"]


class FIFO(Scheduler):
    """First in, first out: trials start while allowed and run to the end.

    Args:
        max_t: When given, a trial is stopped (finished) once ``result[time_attr] >= max_t``.
        time_attr: The resource attribute of results.
        metric: The metric (unused for decisions; kept for the experiment).
        mode: ``"min"`` or ``"max"``.
        seed: Seed of ``self.rng``.

    Example:
        >>> from tuning._trial import Trial
        >>> s = FIFO(max_t=2)
        >>> s.on_result(Trial("t", {}), {"training_iteration": 2})
        <Decision.STOP: 'STOP'>
    """

    multi_objective = True  # FIFO ranks nothing: any number of metrics, any constraints

    def __init__(self, max_t: float | None = None, *, time_attr: str = ITERATION,
                 metric: str | None = None, mode: str | None = None,
                 seed: int | None = None) -> None:
        super().__init__(metric=metric, mode=mode, time_attr=time_attr, seed=seed)
        self.max_t = None if max_t is None else check_number("max_t", max_t, low=0)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "max_t": self.max_t}

    def on_result(self, trial: Trial, result: Mapping[str, Any]) -> Decision:
        if self.max_t is not None and self._time(result) >= self.max_t:
            return Decision.STOP
        return Decision.CONTINUE
