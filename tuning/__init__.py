"""rungflow's engine and entry points.

``import tuning`` stays light on workers: no Prefect, no MLflow. ``Tuner`` (which starts the
Prefect flow) is handed out lazily.
"""

from __future__ import annotations

from typing import Any

from tuning._trial import Status, Trial
from tuning.schedulers import ASHA, FIFO, Decision, Scheduler
from tuning.searchers import RandomSearch, Searcher
from tuning.space import (
    Space,
    choice,
    grid,
    grid_search,
    loguniform,
    quniform,
    randint,
    sample_from,
    uniform,
)
from tuning.trainable import get_checkpoint, get_trial_id, report

__all__ = [
    "ASHA",
    "BOHB",
    "FIFO",
    "MOASHA",
    "PBT",
    "ConcurrencyLimiter",
    "Decision",
    "ExperimentSpec",
    "GridSearch",
    "HyperBand",
    "MedianStopping",
    "MultiObjectiveError",
    "Objective",
    "OptunaSearch",
    "RandomSearch",
    "Scheduler",
    "Searcher",
    "Selection",
    "Space",
    "Status",
    "Trial",
    "TuneResult",
    "Tuner",
    "choice",
    "crowding_distance",
    "get_checkpoint",
    "get_trial_id",
    "grid",
    "grid_search",
    "hypervolume_2d",
    "loguniform",
    "non_dominated_sort",
    "quniform",
    "randint",
    "report",
    "sample_from",
    "uniform",
]

_LAZY = {
    "Tuner": ("tuning.tuner", "Tuner"),
    "TuneResult": ("tuning.results", "TuneResult"),
    "ExperimentSpec": ("tuning.spec", "ExperimentSpec"),
    "HyperBand": ("tuning.schedulers", "HyperBand"),
    "MedianStopping": ("tuning.schedulers", "MedianStopping"),
    "PBT": ("tuning.schedulers", "PBT"),
    "MOASHA": ("tuning.schedulers", "MOASHA"),
    "Objective": ("tuning._objective", "Objective"),
    "Selection": ("tuning._objective", "Selection"),
    "MultiObjectiveError": ("tuning._objective", "MultiObjectiveError"),
    "non_dominated_sort": ("tuning._pareto", "non_dominated_sort"),
    "crowding_distance": ("tuning._pareto", "crowding_distance"),
    "hypervolume_2d": ("tuning._pareto", "hypervolume_2d"),
    "BOHB": ("tuning.schedulers", "BOHB"),
    "GridSearch": ("tuning.searchers", "GridSearch"),
    "OptunaSearch": ("tuning.searchers", "OptunaSearch"),
    "ConcurrencyLimiter": ("tuning.searchers", "ConcurrencyLimiter"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'tuning' has no attribute {name!r}")
