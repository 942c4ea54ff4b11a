"""MLflow and Prefect artifacts: projections of the journal."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NONE

from tuning import live
from tuning.controller import Controller
from tuning.results import leaderboard_rows
from tuning.tracking.mlflow import MlflowTracker


@task(name="open-tracking", cache_policy=NONE, persist_result=False)
def open_tracking(ctl: Controller, tracking_uri: str, run_name: str, params: dict[str, Any],
                  tags: dict[str, str]) -> MlflowTracker:
    """Find or create the MLflow experiment and the parent run, and catch up with the journal
    when resuming: in the MLflow writer, so the first trials start meanwhile."""
    tracker = MlflowTracker(tracking_uri, ctl.name, run_name, ctl.metric, ctl.mode, params, tags)
    replayed = getattr(ctl, "replayed", None)
    catch_up = _replay_events(ctl) if replayed is not None else []
    tracker.open_async(None, catch_up, {tid: dict(t.config) for tid, t in ctl.trials.items()})
    ctl.journal.append("tracking", tracking_uri=tracking_uri, run_name=run_name)
    return tracker


def _replay_events(ctl: Controller) -> list[dict[str, Any]]:
    from tuning.experiment import replay

    events = ctl.journal.read()
    last = max((i for i, e in enumerate(events) if e["event"] == "state"), default=-1)
    keep = {"trial_created", "result", "trial_status", "failure"}
    st = replay(events)
    out = [e for e in events[: last + 1] if e["event"] in keep]
    return [e for e in out if e.get("trial_id") in st.trials]


@task(name="record", cache_policy=NONE, persist_result=False)
def record(tracker: MlflowTracker, ctl: Controller, events: list[dict[str, Any]]) -> int:
    """Hand the wave's committed events to the MLflow writer (a background thread, so the
    loop never waits on the tracking store); at the experiment's end wait for all of it."""
    tracker.apply_async(events, ctl.trials)
    if ctl.done:
        tracker.flush()
        for ev in events:
            if ev["event"] == "finished":
                tracker.finish(ctl.trials, ev)
        tracker.close()
    live.notify(ctl, force=ctl.done)
    _progress(ctl)
    return len(events)


def _progress(ctl: Controller) -> None:
    """A Prefect progress artifact, updated at most every 2 s while the run goes."""
    import time

    pct = round(100.0 * ctl.progress(), 1)
    state = getattr(ctl, "_progress_artifact", None)
    now = time.monotonic()
    if state is not None and not ctl.done and (now - state[1] < 2.0 or pct == state[2]):
        return
    text = f"{ctl.name}: " + ", ".join(f"{v} {k.lower()}" for k, v in ctl.counts().items() if v)
    if state is None:
        art_id = create_progress_artifact(progress=pct, description=text)
    else:
        art_id = state[0]
        update_progress_artifact(artifact_id=art_id, progress=pct, description=text)
    ctl._progress_artifact = (art_id, now, pct)  # type: ignore[attr-defined]


@task(name="summarize", cache_policy=NONE, persist_result=False)
def summarize(ctl: Controller, tracker: MlflowTracker | None,
              tensorboard: bool = False) -> dict[str, Any]:
    """The final leaderboard as a Prefect table artifact, a markdown summary, the plots (files
    and artifacts of the MLflow parent run), optional TensorBoard event files."""
    from tuning.plots import all_plots

    plots = all_plots(ctl.trials, ctl.metric, ctl.mode, ctl.journal.read(), f"{ctl.storage}/plots")
    if tracker is not None:
        tracker.flush()
        tracker.log_files(plots, "plots")
    if tensorboard:
        from tuning.tensorboard import write_tensorboard

        write_tensorboard(ctl.trials, f"{ctl.storage}/tensorboard", metric=ctl.metric)
    rows = leaderboard_rows(ctl.trials.values(), ctl.metric, ctl.mode)
    key = "".join(c if c.isalnum() else "-" for c in ctl.name.lower())[:100]
    create_table_artifact(key=f"{key}-leaderboard", table=rows[:200],
                          description=f"Leaderboard of {ctl.name} ({ctl.metric}, {ctl.mode})")
    best = ctl.best_trial()
    lines = [f"# {ctl.name}", "", f"- trials: {len(ctl.trials)} ({_counts(ctl)})"]
    if best is not None:
        lines.append(f"- best: {best.trial_id} {ctl.metric}={ctl.trial_score(best):.6g} "
                     f"config={best.config}")
    if tracker is not None:
        lines.append(f"- MLflow: tracking URI `{tracker.uri}`, experiment `{ctl.name}`, parent "
                     f"run `{tracker.parent_run_id}`")
        if best is not None and best.trial_id in tracker.runs:
            lines.append(f"- best run: `{tracker.runs[best.trial_id]}`")
    lines.append(f"- plots: {', '.join(plots)}")
    create_markdown_artifact(key=f"{key}-summary", markdown="\n".join(lines))
    return {"best_trial": best.trial_id if best else None, "trials": len(ctl.trials)}


def _counts(ctl: Controller) -> str:
    return ", ".join(f"{v} {k.lower()}" for k, v in ctl.counts().items() if v)
