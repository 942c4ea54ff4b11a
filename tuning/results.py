"""What a finished (or running) experiment looks like: the best trial and a DataFrame."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tuning._checkpoint import load_checkpoint
from tuning._trial import Status, Trial
from tuning.experiment import ExperimentState, Journal, find_experiment_dirs, replay

__all__ = ["NoResultError", "TrialsFailedWarning", "TuneResult", "failure_summary", "last_value", "leaderboard_rows",
           "load_result"]

#: trials that ran to their end: the only ones ``rungflow best`` names
FINISHED = frozenset({Status.TERMINATED, Status.STOPPED})


class NoResultError(RuntimeError):
    """A run in which no trial produced the metric (every trial failed, say).

    ``result`` is the run's :class:`TuneResult`, to look at the failed trials.
    """

    def __init__(self, message: str, result: TuneResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class TrialsFailedWarning(RuntimeWarning):
    """Some trials of a run failed (an exception, a NaN or non-numeric metric, an unsafe
    checkpoint): their count and the first error."""


def last_value(trial: Trial, metric: str) -> float | None:
    for r in reversed(trial.results):
        v = r.get(metric)
        if isinstance(v, (int, float)) and not math.isnan(v):
            return float(v)
    return None


def leaderboard_rows(trials: Iterable[Trial], metric: str, mode: str) -> list[dict[str, Any]]:
    """One row per trial, best first: id, status, last and best metric, iterations, config."""
    rows = []
    for t in trials:
        rows.append({"trial_id": t.trial_id, "status": str(t.status),
                     metric: last_value(t, metric), f"best_{metric}": t.best_value(metric, mode),
                     "iterations": t.iteration, "rung": t.rung,
                     **{f"config/{k}": v for k, v in t.config.items()}})
    sign = -1.0 if mode == "max" else 1.0
    rows.sort(key=lambda r: (r[metric] is None, sign * (r[metric] or 0.0)))
    return rows


@dataclass
class TuneResult:
    """The outcome of a tuning run, read from its journal."""

    name: str
    path: str
    metric: str
    mode: str
    state: ExperimentState
    tracking_uri: str | None = None

    @property
    def trials(self) -> list[Trial]:
        return list(self.state.trials.values())

    @property
    def best_trial(self) -> Trial | None:
        scored = [(v, t) for t in self.trials if (v := last_value(t, self.metric)) is not None]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda vt: vt[0])[1]

    @property
    def best_finished_trial(self) -> Trial | None:
        """The best trial among those that finished (TERMINATED or STOPPED): never one still
        running, paused or failed."""
        scored = [(v, t) for t in self.trials
                  if t.status in FINISHED and (v := last_value(t, self.metric)) is not None]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda vt: vt[0])[1]

    @property
    def best_config(self) -> dict[str, Any] | None:
        t = self.best_trial
        return dict(t.config) if t else None

    @property
    def best_metric(self) -> float | None:
        t = self.best_trial
        return last_value(t, self.metric) if t else None

    @property
    def best_checkpoint(self) -> str | None:
        """The URL of the best trial's last checkpoint (load it with :meth:`load_checkpoint`)."""
        t = self.best_trial
        return t.checkpoint if t else None

    def load_checkpoint(self, url: str | None = None) -> dict[str, Any] | None:
        url = url or self.best_checkpoint
        return load_checkpoint(url) if url else None

    @property
    def finished(self) -> bool:
        return self.state.finished

    def dataframe(self) -> Any:
        """A pandas DataFrame: one row per trial (config, last and best metric, status, rung,
        iterations, wall time, error)."""
        import pandas as pd

        rows = []
        for t in self.trials:
            first = t.results[0].get("timestamp") if t.results else None
            last = t.results[-1].get("timestamp") if t.results else None
            rows.append({"trial_id": t.trial_id, "status": str(t.status),
                         self.metric: last_value(t, self.metric),
                         f"best_{self.metric}": t.best_value(self.metric, self.mode),
                         "iterations": t.iteration, "rung": t.rung, "stopped_at": t.stopped_at,
                         "num_failures": t.num_failures,
                         "wall_time_s": (last - first) if first and last else 0.0,
                         "time_total_s": (t.last_result or {}).get("time_total_s"),
                         "checkpoint": t.checkpoint, "error": (t.error or "").strip()
                         .splitlines()[-1] if t.error else None,
                         **{f"config/{k}": v for k, v in t.config.items()}})
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        return (f"TuneResult({self.name!r}, trials={len(self.trials)}, best_metric="
                f"{self.best_metric!r}, best_config={self.best_config!r})")


def failure_summary(res: TuneResult) -> tuple[int, tuple[str, str] | None]:
    """How many trials failed, and the first failure (trial id, last line of its error)."""
    failed = sorted((t for t in res.trials if t.status == Status.ERROR),
                    key=lambda t: t.trial_id)
    if not failed:
        return 0, None
    t = failed[0]
    err = (t.error or "").strip()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return len(failed), (t.trial_id, lines[-1].strip() if lines else "failed (no message)")


def load_result(path: str) -> TuneResult:
    """Read an experiment directory (or a storage path holding exactly one experiment)."""
    dirs = find_experiment_dirs(path)
    if not dirs:
        raise FileNotFoundError(f"no experiment journal at {path!r}")
    if len(dirs) > 1:
        raise ValueError(f"{path!r} holds {len(dirs)} experiments; name one: "
                         + ", ".join(d.rsplit('/', 1)[-1] for d in dirs))
    st = replay(Journal(dirs[0]).read())
    spec = st.spec or {}
    return TuneResult(name=spec.get("name", dirs[0].rsplit("/", 1)[-1]), path=dirs[0],
                      metric=spec.get("metric", ""), mode=spec.get("mode", "max"), state=st,
                      tracking_uri=spec.get("tracking_uri"))
