"""Prefect tasks: thin wrappers over the engine (``tuning``) and its MLflow projection."""

from tasks.cluster import provision_cluster, teardown_cluster
from tasks.experiment import open_experiment_task
from tasks.record import open_tracking, record, summarize
from tasks.waves import dispatch, evaluate_rungs, plan_wave

__all__ = [
           "dispatch",
           "evaluate_rungs",
           "open_experiment_task",
           "open_tracking",
           "plan_wave",
           "provision_cluster",
           "record",
           "summarize",
           "teardown_cluster",
]
