"""Prefect tasks: thin wrappers over the engine (``tuning``) and its MLflow projection."""

from tuning.tasks.cluster import provision_cluster
from tuning.tasks.experiment import open_experiment_task
from tuning.tasks.record import Progress, summarize
from tuning.tasks.waves import dispatch, end_wave

__all__ = [
    "Progress",
    "dispatch",
    "end_wave",
    "open_experiment_task",
    "provision_cluster",
    "summarize",
]
