"""What a finished (or running) experiment looks like: the best trial and a DataFrame."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tuning._checkpoint import load_checkpoint
from tuning._trial import Status, Trial, best_trial
from tuning.experiment import (
    ExperimentState,
    Journal,
    find_experiment_dirs,
    read_histories,
    replay,
)

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
    return trial.last_value(metric)


def trial_row(t: Trial, metric: str, mode: str) -> dict[str, Any]:
    """One trial as a row: the leaderboard's and the DataFrame's (one definition of both)."""
    error = (t.error or "").strip().splitlines()
    return {"trial_id": t.trial_id, "status": str(t.status), metric: t.last_value(metric),
            f"best_{metric}": t.best_value(metric, mode), "iterations": t.iteration,
            "rung": t.rung, "stopped_at": t.stopped_at, "num_failures": t.num_failures,
            "wall_time_s": t.wall_time_s,
            "time_total_s": (t.last_result or {}).get("time_total_s"),
            "checkpoint": t.checkpoint, "error": error[-1] if error else None,
            **{f"config/{k}": v for k, v in t.config.items()}}


def leaderboard_rows(trials: Iterable[Trial], metric: str, mode: str) -> list[dict[str, Any]]:
    """One row per trial (:func:`trial_row`), best first; trials without a value last."""
    rows = [trial_row(t, metric, mode) for t in trials]
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
        return best_trial(self.state.trials.values(), self.metric, self.mode)

    @property
    def best_finished_trial(self) -> Trial | None:
        """The best trial among those that finished (TERMINATED or STOPPED): never one still
        running, paused or failed."""
        return best_trial(self.state.trials.values(), self.metric, self.mode, FINISHED)

    @property
    def best_config(self) -> dict[str, Any] | None:
        t = self.best_trial
        return dict(t.config) if t else None

    @property
    def best_metric(self) -> float | None:
        t = self.best_trial
        return t.last_value(self.metric) if t else None

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
        iterations, wall time, checkpoint, error), in trial order."""
        import pandas as pd

        return pd.DataFrame([trial_row(t, self.metric, self.mode) for t in self.trials])

    def history(self, trial_id: str) -> list[dict[str, Any]]:
        """Every result ``trial_id`` reported, in order, read from the journal (the driver
        keeps only the last one); results a crashed run never committed are not included."""
        return list(self.histories([trial_id]).get(trial_id, []))

    def histories(self, trial_ids: Iterable[str] | None = None) -> dict[str, list[dict[str, Any]]]:
        """The results of ``trial_ids`` (every trial when None), streamed from the journal:
        memory grows with what is asked for, not with the journal."""
        return read_histories(Journal(self.path), trial_ids)

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
    st = replay(Journal(dirs[0]).iter_events())
    spec = st.spec or {}
    return TuneResult(name=spec.get("name", dirs[0].rsplit("/", 1)[-1]), path=dirs[0],
                      metric=spec.get("metric", ""), mode=spec.get("mode", "max"), state=st,
                      tracking_uri=spec.get("tracking_uri"))
