"""The tuning flow: a tuning run *is* this Prefect flow.

    tune(spec):
      experiment = open_experiment(spec)          # new, or replayed from the journal
      with provision(spec.backend) as cluster:    # torn down when the flow ends
        loop until the budget is spent:
          wave    = plan_wave(experiment)
          results = dispatch(wave, cluster)
          events  = evaluate_rungs(experiment, results)
          record(events)                          # MLflow
      summarize(experiment)                       # leaderboard artifact

Deployable as it is (``deployments/prefect.yaml``, entrypoint ``flows/tune.py:tune``): its
parameters are the ExperimentSpec's fields, validated before anything starts.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks import (
    dispatch,
    evaluate_rungs,
    open_experiment_task,
    open_tracking,
    plan_wave,
    provision_cluster,
    record,
    summarize,
    teardown_cluster,
)
from tuning.runner import Components
from tuning.spec import ExperimentSpec, validate_spec


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    spec = flow_run.parameters.get("spec") or {}
    name = spec.get("name") if isinstance(spec, dict) else getattr(spec, "name", None)
    return str(name or "tune")


@flow(name="tune", flow_run_name=_flow_run_name, validate_parameters=False, log_prints=True)
def tune(spec: dict[str, Any], resume: bool | None = None, components: Any = None,
         parent_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) one tuning experiment described by ``spec`` (an ExperimentSpec dict).

    ``resume=None`` resumes when this run's journal exists: a retried flow run (same flow run
    id, hence the same default run name) continues where the crashed one stopped.
    """
    s = spec if isinstance(spec, ExperimentSpec) else validate_spec(spec)
    if not s.run_name:
        s = s.model_copy(update={"run_name": f"{s.name}-{_flow_run_id()[:8]}"})
    comp = components if isinstance(components, Components) else None
    ctl = open_experiment_task(s, comp, resume)
    tracker = None
    try:
        provision_cluster(ctl)
        tracker = open_tracking(ctl, s.effective_tracking_uri(), s.run_name or s.name,
                                parent_params or _parent_params(s), s.tags)
        record(tracker, ctl, ctl.commit())
        while not ctl.done:
            wave = plan_wave(ctl)
            messages = dispatch(ctl, wave) if not ctl.done else []
            record(tracker, ctl, evaluate_rungs(ctl, messages))
    finally:
        teardown_cluster(ctl)
    summary = summarize(ctl, tracker, s.tensorboard)
    ctl.raise_if_aborted()
    return {**summary, "run_name": s.run_name, "experiment_dir": s.experiment_dir(), "tracking_uri":
            s.effective_tracking_uri(), "parent_run_id": tracker.parent_run_id if tracker else None}


def _flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.get_id() or "local")


def _parent_params(s: ExperimentSpec) -> dict[str, Any]:
    d = s.to_json_dict()
    out: dict[str, Any] = {"metric": s.metric, "mode": s.mode, "num_samples": s.num_samples,
                           "trainable": s.trainable, "seed": s.seed}
    out.update({f"space.{k}": v for k, v in d["space"].items()})
    out.update({f"scheduler.{k}": v for k, v in d["scheduler"].items()})
    out.update({f"searcher.{k}": v for k, v in d["searcher"].items()})
    out.update({f"backend.{k}": v for k, v in d["backend"].items()})
    return out
