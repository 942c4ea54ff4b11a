"""Stop conditions: per trial (maximum iterations, plateau) and for the whole experiment
(time budget, total resource budget, metric threshold)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tuning._trial import ITERATION

__all__ = ["MaximumIterationStopper", "Stopper", "TrialPlateauStopper", "stopper_from_dict"]


class Stopper:
    """``__call__(trial_id, result) -> bool``: whether this trial should stop now."""

    def __call__(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


@dataclass
class MaximumIterationStopper(Stopper):
    max_iter: int

    def __post_init__(self) -> None:
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"stop.max_iter must be an integer >= 1, got {self.max_iter!r}")

    def __call__(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        return int(result.get(ITERATION, 0)) >= self.max_iter


@dataclass
class TrialPlateauStopper(Stopper):
    """Stop a trial whose metric's standard deviation over the last ``num_results`` results
    is below ``std`` (after ``grace_period`` results)."""

    metric: str
    std: float = 0.01
    num_results: int = 4
    grace_period: int = 4
    _window: dict[str, deque] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.num_results < 2:
            raise ValueError(f"stop.plateau.num_results must be >= 2, got {self.num_results}")
        if self.std < 0:
            raise ValueError(f"stop.plateau.std must be >= 0, got {self.std}")

    def __call__(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        v = result.get(self.metric)
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        w = self._window.setdefault(trial_id, deque(maxlen=self.num_results))
        w.append(float(v))
        if int(result.get(ITERATION, 0)) < self.grace_period or len(w) < self.num_results:
            return False
        mean = sum(w) / len(w)
        return math.sqrt(sum((x - mean) ** 2 for x in w) / len(w)) < self.std

    def state_dict(self) -> dict[str, Any]:
        return {k: list(v) for k, v in self._window.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._window = {k: deque(v, maxlen=self.num_results) for k, v in state.items()}


def stopper_from_dict(d: Mapping[str, Any], metric: str) -> list[Stopper]:
    """The per-trial stoppers of a spec's ``stop:`` section (validated by
    :class:`~tuning.spec.StopSpec`; a plain dict is validated here the same way)."""
    out: list[Stopper] = []
    if d.get("max_iter") is not None:
        out.append(MaximumIterationStopper(int(d["max_iter"])))
    plateau = d.get("plateau")
    if plateau is True:
        plateau = {}
    if plateau is not None and plateau is not False:
        if not isinstance(plateau, Mapping):
            raise ValueError(f"stop.plateau must be a mapping (metric, std, num_results, "
                             f"grace_period) or true, got {plateau!r}")
        p = _plateau_fields(plateau)
        out.append(TrialPlateauStopper(metric=p.pop("metric", None) or metric, **p))
    return out


def _plateau_fields(plateau: Mapping[str, Any]) -> dict[str, Any]:
    from pydantic import ValidationError

    from tuning.spec import PlateauSpec, SpecError, format_validation_error

    try:
        return PlateauSpec.model_validate(dict(plateau)).model_dump()
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, PlateauSpec, ("stop", "plateau"))) from None
