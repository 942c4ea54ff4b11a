"""The core model: trial states and the trial record the engine keeps."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = ["ITERATION", "TERMINAL", "Status", "Trial", "format_trial_id"]

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


@dataclass
class Trial:
    """One configuration being trained.

    ``results`` holds every reported result in order; each has at least ``training_iteration``
    (the number of ``report()`` calls so far, 1-based) and the user's metrics.
    """

    trial_id: str
    config: dict[str, Any]
    status: Status = Status.PENDING
    results: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: str | None = None
    checkpoint_iteration: int = 0
    rung: int | None = None  # the highest milestone (resource) at which a decision was taken
    num_failures: int = 0
    error: str | None = None
    bracket: int | None = None
    stopped_at: int | None = None  # the milestone at which the scheduler stopped it
    wall_time_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def iteration(self) -> int:
        return int(self.results[-1][ITERATION]) if self.results else 0

    @property
    def last_result(self) -> dict[str, Any] | None:
        return self.results[-1] if self.results else None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    def checkpoint_at(self, iteration: int) -> tuple[str | None, int]:
        """The latest checkpoint taken at or before ``iteration``, and its iteration."""
        for r in reversed(self.results):
            if r.get("checkpoint") and int(r["training_iteration"]) <= iteration:
                return r["checkpoint"], int(r["training_iteration"])
        return None, 0

    def metric_values(self, metric: str) -> list[float]:
        return [r[metric] for r in self.results if metric in r]

    def best_value(self, metric: str, mode: str) -> float | None:
        vals = [v for v in self.metric_values(metric) if isinstance(v, (int, float)) and not math.isnan(v)]
        if not vals:
            return None
        return max(vals) if mode == "max" else min(vals)
