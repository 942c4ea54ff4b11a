"""Prefect tasks: thin wrappers over the engine (``tuning``) and its MLflow projection."""

from tasks.cluster import provision_cluster
from tasks.experiment import open_experiment_task
from tasks.record import Progress, summarize
from tasks.waves import dispatch, evaluate_rungs

__all__ = [
    "Progress",
    "dispatch",
    "evaluate_rungs",
    "open_experiment_task",
    "provision_cluster",
    "summarize",
]
