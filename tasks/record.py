"""What a run leaves for review: Prefect artifacts, and the end of its MLflow projection."""

from __future__ import annotations

import time
from typing import Any

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NONE

from tuning.controller import Controller
from tuning.results import front_markdown, leaderboard_rows
from tuning.tracking.mlflow import MlflowTracker


class Progress:
    """A Prefect progress artifact, updated between waves when the progress moved."""

    def __init__(self) -> None:
        self.artifact_id: Any = None
        self.pct: float | None = None

    def update(self, ctl: Controller) -> None:
        pct = round(100.0 * ctl.progress(), 1)
        if pct == self.pct:
            return
        text = f"{ctl.name}: " + _counts(ctl)
        if self.artifact_id is None:
            self.artifact_id = create_progress_artifact(progress=pct, description=text)
        else:
            update_progress_artifact(artifact_id=self.artifact_id, progress=pct, description=text)
        self.pct = pct


@task(name="summarize", cache_policy=NONE, persist_result=False)
def summarize(ctl: Controller, tracker: MlflowTracker | None,
              tensorboard: bool = False) -> dict[str, Any]:
    """Wait for the MLflow writer to have written every trial and closed the parent run; the
    final leaderboard as a Prefect table artifact and a markdown summary. The plots are drawn
    by the writer afterwards (files, and artifacts of the parent run), off the critical path."""
    t0 = time.monotonic()
    plots_dir = f"{ctl.storage}/plots"
    if tracker is not None:
        tracker.flush()
        tracker.plots_async(ctl.storage, plots_dir)
    if tensorboard:
        from tuning.experiment import read_histories
        from tuning.tensorboard import write_tensorboard

        write_tensorboard(ctl.trials, f"{ctl.storage}/tensorboard", metric=ctl.metric,
                          histories=read_histories(ctl.journal))
    rows = leaderboard_rows(ctl.trials.values(), ctl.metric, ctl.mode, limit=200)
    key = "".join(c if c.isalnum() else "-" for c in ctl.name.lower())[:100]
    create_table_artifact(key=f"{key}-leaderboard", table=rows,
                          description=f"Leaderboard of {ctl.name} ({ctl.metric}, {ctl.mode})")
    best = ctl.best_trial()
    lines = [f"# {ctl.name}", "", f"- trials: {len(ctl.trials)} ({_counts(ctl)})",
             f"- waves: {ctl.waves}"]
    if not ctl.objective.plain:
        lines.append(f"- objective: {ctl.objective.describe()}")
    if best is not None and ctl.objective.plain:
        lines.append(f"- best: {best.trial_id} {ctl.metric}={ctl.trial_score(best):.6g} "
                     f"config={best.config}")
    elif best is not None:
        values = ", ".join(f"{m}={v:.6g}" for m, v in
                           zip(ctl.objective.metrics, ctl.objective.values(best.last_result)))
        chosen = f" by {ctl.selection.describe()}" if ctl.selection is not None else ""
        lines.append(f"- chosen{chosen}: {best.trial_id} {values} config={best.config}")
    if tracker is not None:
        lines.append(f"- MLflow: tracking URI `{tracker.uri}`, experiment `{ctl.name}`, parent "
                     f"run `{tracker.parent_run_id}`")
        if best is not None and best.trial_id in tracker.runs:
            lines.append(f"- best run: `{tracker.runs[best.trial_id]}`")
    lines.append(f"- plots: {plots_dir} (drawn after the run, also on the parent run)")
    if ctl.objective.multi:
        lines += ["", "## Pareto front", "", front_markdown(ctl.trials.values(), ctl.objective,
                                                             tracker.runs if tracker else None)]
    create_markdown_artifact(key=f"{key}-summary", markdown="\n".join(lines))
    return {"best_trial": best.trial_id if best else None, "trials": len(ctl.trials),
            "summarize_s": round(time.monotonic() - t0, 3)}


def _counts(ctl: Controller) -> str:
    return ", ".join(f"{v} {k.lower()}" for k, v in ctl.counts().items() if v)
