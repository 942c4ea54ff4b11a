"""Open an experiment: new, or replayed from its journal; start its MLflow writer."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from tuning.controller import Controller
from tuning.runner import Components, open_experiment
from tuning.spec import ExperimentSpec
from tuning.tracking.mlflow import MlflowTracker, check_tracking_uri, replay_events


@task(name="open-experiment", cache_policy=NONE, persist_result=False)
def open_experiment_task(spec: ExperimentSpec, components: Components | None,
                         resume: bool | None, params: dict[str, Any]
                         ) -> tuple[Controller, MlflowTracker]:
    """Validate, replay the journal when resuming, build searcher, scheduler and backend, and
    check the tracking store answers, all before any cluster starts; then start the MLflow
    writer (it opens the store while the cluster starts) and let it see every journal event
    as it is written."""
    uri = spec.effective_tracking_uri()
    check_tracking_uri(uri)
    ctl = open_experiment(spec, components, resume=resume)
    tracker = MlflowTracker(uri, ctl.name, spec.run_name or spec.name, ctl.metric, ctl.mode,
                            params, spec.tags,
                            None if ctl.objective.plain else ctl.objective.to_dict())
    catch_up = replay_events(ctl.journal) if ctl.replayed is not None else []
    tracker.open_async(None, catch_up, {tid: dict(t.config) for tid, t in ctl.trials.items()})
    ctl.journal.on_durable = tracker.apply_async
    ctl.journal.append("tracking", tracking_uri=uri, run_name=spec.run_name or spec.name)
    return ctl, tracker
