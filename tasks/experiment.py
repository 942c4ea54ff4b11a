"""Open an experiment: new, or replayed from its journal; start its MLflow writer."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from tuning.assemble import Components, open_experiment
from tuning.controller import Controller
from tuning.spec import ExperimentSpec
from tuning.tracking.mlflow import MlflowTracker, check_tracking_uri


@task(name="open-experiment", cache_policy=NONE, persist_result=False)
def open_experiment_task(spec: ExperimentSpec, components: Components | None,
                         resume: bool | None, params: dict[str, Any]
                         ) -> tuple[Controller, MlflowTracker]:
    """Validate, replay the journal when resuming, build searcher, scheduler and backend, and
    check the tracking store answers, all before any cluster starts; then start the MLflow
    writer (it opens the store while the cluster starts, and streams a resumed run's previous
    attempts from the journal itself) and let it see every journal event as it is written."""
    uri = spec.effective_tracking_uri()
    check_tracking_uri(uri)
    ctl = open_experiment(spec, components, resume=resume)
    ctl.backend.expect(ctl.trainable)
    ctl.backend.begin_start()  # everything is checked: the cluster comes up meanwhile
    try:
        tracker = MlflowTracker(uri, ctl.name, spec.run_name or spec.name, ctl.metric,
                                ctl.mode, params, spec.tags,
                                None if ctl.objective.plain else ctl.objective.to_dict())
        tracker.open_async(catch_up_from=ctl.journal if ctl.replayed is not None else None)
    except BaseException:
        ctl.backend.shutdown()
        raise
    tracker.follow(ctl.journal)
    ctl.journal.append("tracking", tracking_uri=uri, run_name=spec.run_name or spec.name)
    return ctl, tracker
