"""What a finished (or running) experiment looks like: the best trial (or, with several
metrics, the Pareto front) and a DataFrame."""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tuning._checkpoint import load_checkpoint
from tuning._objective import MultiObjectiveError, Objective, Selection
from tuning._trial import Status, Trial, best_trial
from tuning.experiment import (
    ExperimentState,
    Journal,
    find_experiment_dirs,
    read_histories,
    replay,
)

__all__ = ["MultiObjectiveError", "NoResultError", "TrialsFailedWarning", "TuneResult",
           "failure_summary", "front_markdown", "result_of", "front_rows", "last_value", "leaderboard_rows", "load_result"]

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
            **{k: v for k, v in (t.last_result or {}).items()  # the other metrics, last values
               if k not in _ROW_SKIP and k != metric and isinstance(v, (int, float))
               and not isinstance(v, bool)},
            **{f"config/{k}": v for k, v in t.config.items()}}


#: what a trial row leaves out of a last result (bookkeeping, or a column of its own)
_ROW_SKIP = frozenset({"training_iteration", "timestamp", "time_this_iter_s", "time_total_s",
                       "checkpoint"})


def leaderboard_rows(trials: Iterable[Trial], metric: str, mode: str,
                     limit: int | None = None) -> list[dict[str, Any]]:
    """One row per trial (:func:`trial_row`), best first; trials without a value last (ties
    in trial order). With ``limit``, the best ``limit`` only, picked with a bounded heap
    before any row is built: the rows of ten thousand trials are never all in memory.

    Example:
        >>> ts = [Trial.with_results(f"t{i}", {}, [{"training_iteration": 1, "acc": a}])
        ...       for i, a in enumerate([0.2, 0.9, 0.5])]
        >>> [r["trial_id"] for r in leaderboard_rows(ts, "acc", "max", limit=2)]
        ['t1', 't2']
    """
    sign = -1.0 if mode == "max" else 1.0

    def key(t: Trial) -> tuple[bool, float]:
        v = t.last_value(metric)
        return v is None, sign * (v or 0.0)

    chosen = sorted(trials, key=key) if limit is None else heapq.nsmallest(limit, trials, key)
    return [trial_row(t, metric, mode) for t in chosen]


def front_rows(trials: Iterable[Trial], objective: Objective) -> list[dict[str, Any]]:
    """The Pareto front as rows (trial id, status, each metric's last value, iterations,
    config), best first by the first metric. Each trial's last result is what counts."""
    front = objective.front(trials)
    sign = -1.0 if objective.primary_mode == "max" else 1.0
    front.sort(key=lambda t: (sign * objective.values(t.last_result)[0], t.trial_id))
    names = objective.reported
    return [{"trial_id": t.trial_id, "status": str(t.status),
             **{m: (t.last_result or {}).get(m) for m in names},
             "iterations": t.iteration, **{f"config/{k}": v for k, v in t.config.items()}}
            for t in front]


def front_markdown(trials: Iterable[Trial], objective: Objective,
                   runs: dict[str, str] | None = None, limit: int = 50) -> str:
    """The Pareto front as a markdown table (at most ``limit`` rows; MLflow run ids when
    given): what the Prefect summary artifact shows.

    Example:
        >>> t = Trial.with_results("trial-000", {"lr": 0.1},
        ...                        [{"training_iteration": 3, "acc": 0.9, "ms": 12.5}],
        ...                        status=Status.TERMINATED)
        >>> print(front_markdown([t], Objective.build(["acc", "ms"], ["max", "min"])))
        | trial | acc | ms | iterations | config |
        |---|---|---|---|---|
        | trial-000 | 0.9 | 12.5 | 3 | lr=0.1 |
    """
    rows = front_rows(trials, objective)
    if not rows:
        return "_no feasible trial: the front is empty_"
    names = list(objective.reported)
    head = ["trial", *names, "iterations", "config"] + (["MLflow run"] if runs else [])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows[:limit]:
        config = ", ".join(f"{k.removeprefix('config/')}={_cell(v)}" for k, v in r.items()
                           if k.startswith("config/"))
        cells = [r["trial_id"], *(_cell(r[m]) for m in names), str(r["iterations"]), config]
        if runs:
            cells.append(f"`{runs.get(r['trial_id'], '')}`")
        out.append("| " + " | ".join(cells) + " |")
    if len(rows) > limit:
        out.append(f"\n_{len(rows) - limit} more front trials not shown_")
    return "\n".join(out)


def _cell(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


@dataclass
class TuneResult:
    """The outcome of a tuning run, read from its journal.

    ``metric``/``mode``: the metric (the first one of several) and its mode; ``objective``
    has every metric and the constraints. With several metrics there is no single best trial:
    :meth:`pareto_front` lists the non-dominated feasible trials, and ``best_trial``,
    ``best_config`` and ``best_metric`` need a rule, ``selection`` (the spec's ``select`` or
    ``weights``), else they raise :class:`MultiObjectiveError`; :meth:`best_trial_by` applies
    a rule given here.
    """

    name: str
    path: str
    metric: str
    mode: str
    state: ExperimentState
    tracking_uri: str | None = None
    objective: Objective | None = None
    selection: Selection | None = field(default=None)

    def __post_init__(self) -> None:
        if self.objective is None:  # one metric, as given (not validated: an old journal)
            self.objective = Objective((self.metric,), (self.mode,))

    @property
    def trials(self) -> list[Trial]:
        return list(self.state.trials.values())

    @property
    def multi_objective(self) -> bool:
        assert self.objective is not None
        return self.objective.multi

    def _pick(self, trials: list[Trial], what: str) -> Trial | None:
        """The objective's one best trial of ``trials`` (several metrics or constraints)."""
        obj = self.objective
        assert obj is not None
        if obj.multi and self.selection is None:
            raise MultiObjectiveError(
                f"{what}: this run optimises {obj.describe()}, so no trial is best in every "
                f"metric; see result.pareto_front() (`rungflow best {self.path}` prints it), "
                f"or pick one: result.best_trial_by(select='{_select_example(obj)}') or "
                f"weights={{...}}, or give select=/weights= to the run")
        return obj.best(trials, self.selection)

    def best_trial_by(self, select: str | None = None,
                      weights: dict[str, float] | None = None) -> Trial | None:
        """The trial a rule picks: ``select="max accuracy s.t. latency_ms <= 20"`` or
        ``weights={"accuracy": 1.0, "latency_ms": -0.01}`` (validated; ValueError naming
        ``select``/``weights``). Only feasible trials are candidates."""
        assert self.objective is not None
        rule = Selection.build(self.objective, select, weights)
        if rule is None:
            raise ValueError("best_trial_by: give select= or weights=")
        return rule.pick(self.trials, self.objective)

    def pareto_front(self) -> Any:
        """A pandas DataFrame of the non-dominated feasible trials (each trial's last reported
        values): trial id, status, every metric, iterations, config; best first by the first
        metric."""
        import pandas as pd

        assert self.objective is not None
        rows = front_rows(self.trials, self.objective)
        cols = ["trial_id", "status", *self.objective.reported, "iterations"]
        return pd.DataFrame(rows, columns=cols + sorted({k for r in rows for k in r
                                                         if k.startswith("config/")}))

    @property
    def best_trial(self) -> Trial | None:
        assert self.objective is not None
        if not self.objective.plain:
            return self._pick(self.trials, "best_trial")
        return best_trial(self.state.trials.values(), self.metric, self.mode)

    @property
    def best_finished_trial(self) -> Trial | None:
        """The best trial among those that finished (TERMINATED or STOPPED): never one still
        running, paused or failed."""
        assert self.objective is not None
        if not self.objective.plain:
            return self._pick([t for t in self.trials if t.status in FINISHED],
                              "best_finished_trial")
        return best_trial(self.state.trials.values(), self.metric, self.mode, FINISHED)

    @property
    def best_config(self) -> dict[str, Any] | None:
        t = self.best_trial
        return dict(t.config) if t else None

    @property
    def best_metric(self) -> float | None:
        """The best trial's last value of the metric (of the selection's metric, when a
        ``select`` rule picks the trial)."""
        t = self.best_trial
        metric = self.selection.metric if self.selection is not None and \
            self.selection.metric else self.metric
        if t is not None and self.objective is not None and not self.objective.plain:
            return _finite((t.last_result or {}).get(metric))
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
        iterations, wall time, checkpoint, error), in trial order. With several metrics or
        constraints, also each other metric's last value, ``feasible`` and ``pareto`` (in the
        front)."""
        import pandas as pd

        df = pd.DataFrame([trial_row(t, self.metric, self.mode) for t in self.trials])
        obj = self.objective
        if obj is None or obj.plain or df.empty:
            return df
        front = {t.trial_id for t in obj.front(self.trials)}
        last = {t.trial_id: t.last_result or {} for t in self.trials}
        others = [m for m in obj.reported if m != self.metric]
        at = df.columns.get_loc(f"best_{self.metric}") + 1
        for i, m in enumerate(others):  # the objective's metrics next to the first one
            values = df.pop(m) if m in df.columns else [None] * len(df)
            df.insert(at + i, m, values)
        df.insert(at + len(others), "feasible",
                  [obj.is_feasible(last[tid]) for tid in df["trial_id"]])
        df.insert(at + len(others) + 1, "pareto", [tid in front for tid in df["trial_id"]])
        return df

    def history(self, trial_id: str) -> list[dict[str, Any]]:
        """Every result ``trial_id`` reported, in order, read from the journal (the driver
        keeps only the last one); results a crashed run never committed are not included."""
        return list(self.histories([trial_id]).get(trial_id, []))

    def histories(self, trial_ids: Iterable[str] | None = None) -> dict[str, list[dict[str, Any]]]:
        """The results of ``trial_ids`` (every trial when None), streamed from the journal:
        memory grows with what is asked for, not with the journal."""
        return read_histories(Journal(self.path), trial_ids)

    def __repr__(self) -> str:
        if self.objective is not None and self.objective.multi and self.selection is None:
            return (f"TuneResult({self.name!r}, trials={len(self.trials)}, "
                    f"pareto_front={len(self.objective.front(self.trials))} trials)")
        return (f"TuneResult({self.name!r}, trials={len(self.trials)}, best_metric="
                f"{self.best_metric!r}, best_config={self.best_config!r})")


def _finite(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def _select_example(obj: Objective) -> str:
    text = f"{obj.primary_mode} {obj.primary}"
    if len(obj.metrics) > 1:
        second, mode = obj.metrics[1], obj.modes[1]
        text += f" s.t. {second} {'<=' if mode == 'min' else '>='} ..."
    return text


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
    return result_of(dirs[0], replay(Journal(dirs[0]).iter_events()))


def result_of(path: str, st: ExperimentState) -> TuneResult:
    """The :class:`TuneResult` of an experiment at ``path`` whose state is ``st`` (replayed
    from its journal, or the final state a run kept in memory); its spec gives the metrics."""
    spec = st.spec or {}
    metric, mode = spec.get("metric", ""), spec.get("mode", "max")
    objective = Objective.build(metric, mode, spec.get("constraints")) if metric else None
    selection = Selection.build(objective, spec.get("select"), spec.get("weights")) \
        if objective is not None else None
    return TuneResult(name=spec.get("name", path.rsplit("/", 1)[-1]), path=path,
                      metric=objective.primary if objective else metric,
                      mode=objective.primary_mode if objective else mode, state=st,
                      tracking_uri=spec.get("tracking_uri"), objective=objective,
                      selection=selection)