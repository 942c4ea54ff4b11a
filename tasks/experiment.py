"""Open an experiment: new, or replayed from its journal."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from tuning.controller import Controller
from tuning.runner import Components, open_experiment
from tuning.spec import ExperimentSpec
from tuning.tracking.mlflow import check_tracking_uri


@task(name="open-experiment", cache_policy=NONE, persist_result=False)
def open_experiment_task(spec: ExperimentSpec, components: Components | None = None,
                         resume: bool = False) -> Controller:
    """Validate, replay the journal when resuming, build searcher, scheduler and backend;
    check the tracking store answers, all before any cluster starts."""
    check_tracking_uri(spec.effective_tracking_uri())
    return open_experiment(spec, components, resume=resume)
