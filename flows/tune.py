"""The tuning flow: a tuning run *is* this Prefect flow.

    tune(spec):
      experiment, tracker = open_experiment(spec)  # new, or replayed; MLflow writer started
      with provision(spec.backend) as cluster:     # closed when the flow ends (ExitStack)
        loop until the budget is spent:
          dispatch(experiment)         # a wave: seconds of work, each result decided at once
          end_wave(experiment)         # between waves: rungs, budgets, a snapshot when due
                                       # (not after the last wave: the summary follows)
      summarize(experiment)            # leaderboard and summary artifacts; plots by the writer

Task runs grow with wall time (waves double from 8 s to 30 s), not with trials or results;
MLflow sees every journal event as soon as it is written, from its own process.

Deployable as it is (``deployments/prefect.yaml``, entrypoint ``tuning.flows.tune:tune``): its
parameters are the ExperimentSpec's fields, validated before anything starts.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from prefect import flow

from tuning import live
from tuning.assemble import Components
from tuning.spec import ExperimentSpec, validate_spec
from tuning.tasks import (
    Progress,
    dispatch,
    end_wave,
    open_experiment_task,
    provision_cluster,
    summarize,
)


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
    with ExitStack() as stack:  # one owner for every lifetime: journal, writer, cluster
        ctl, tracker = open_experiment_task(s, comp, resume, parent_params or _parent_params(s))
        stack.callback(tracker.close, wait=False)  # last: after the journal's final events
        stack.callback(ctl.journal.close)
        stack.callback(ctl.backend.release)  # a local cluster ends closing after return
        provision_cluster(ctl)
        ctl.on_tick = lambda: live.notify(ctl)
        progress = Progress()
        while not ctl.done:
            dispatch(ctl)
            if not ctl.done:  # between waves; the last wave's end is the summary
                end_wave(ctl)
            progress.update(ctl)
        live.notify(ctl, force=True)
        ctl.backend.begin_close()  # nothing runs on the cluster now: it goes meanwhile
        summary = summarize(ctl, tracker, s.tensorboard)
    if comp is not None:  # in-process (Tuner.run): the result from memory, no journal re-read
        comp.extra["final_state"] = ctl.final_state()
    ctl.raise_if_aborted()
    out = {**summary, "run_name": s.run_name, "experiment_dir": s.experiment_dir(),
           "tracking_uri": s.effective_tracking_uri(), "parent_run_id": tracker.parent_run_id}
    if comp is not None:  # Tuner.run takes it as soon as Prefect has the run Completed
        comp.extra["flow_return"] = out
    return out


def _flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.get_id() or "local")


def _parent_params(s: ExperimentSpec) -> dict[str, Any]:
    d = s.to_json_dict()
    out: dict[str, Any] = {"metric": s.metric, "mode": s.mode, "num_samples": s.num_samples,
                           "trainable": s.trainable, "seed": s.seed}
    if s.constraints:
        out["constraints"] = d["constraints"]
    out.update({f"space.{k}": v for k, v in d["space"].items()})
    out.update({f"scheduler.{k}": v for k, v in d["scheduler"].items()})
    out.update({f"searcher.{k}": v for k, v in d["searcher"].items()})
    out.update({f"backend.{k}": v for k, v in d["backend"].items()})
    return out
