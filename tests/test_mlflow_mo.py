"""The MLflow projection of a multi-objective run, in a real SQLite store: the front's runs
tagged, the front as a table artifact, the Pareto plot on the parent run."""

from __future__ import annotations

import json

import mlflow
import pytest

from tuning.backends.simulated import SimulatedBackend
from tuning.backends.tradeoff import TradeoffCurves
from tuning.controller import Budget, Controller
from tuning.experiment import Journal
from tuning.schedulers import MOASHA
from tuning.searchers import RandomSearch
from tuning.space import Space, loguniform, uniform
from tuning.tracking.mlflow import MlflowTracker

pytestmark = pytest.mark.slow


def test_front_tags_table_and_plot(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RUNGFLOW_MLFLOW_WRITER", "thread")
    d = str(tmp_path / "run")
    ctl = Controller(
        name="mo-mlflow", trainable=TradeoffCurves(max_t=9),
        space=Space({"width": uniform(0, 1), "lr": loguniform(1e-4, 1e-1)}),
        metric=["accuracy", "latency_ms"], mode=["max", "min"],
        constraints={"latency_ms": {"max": 12}}, scheduler=MOASHA(max_t=9),
        searcher=RandomSearch(), backend=SimulatedBackend(2), journal=Journal(d), storage=d,
        budget=Budget(num_samples=12), seed=0)
    ctl.run()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = MlflowTracker(uri, "mo-mlflow", "r1", ctl.metric, ctl.mode,
                            objective=ctl.objective.to_dict())
    tracker.open_async()
    tracker.apply_async(ctl.journal.read())
    tracker.plots_async(d, f"{d}/plots")
    tracker.flush()
    tracker.close()

    c = mlflow.MlflowClient(uri)
    exp = c.get_experiment_by_name("mo-mlflow")
    runs = c.search_runs([exp.experiment_id], max_results=100)
    parent = next(r for r in runs if r.data.tags.get("rungflow.role") == "parent")
    front = {t.trial_id for t in ctl.objective.front(ctl.trials.values())}
    tagged = {r.data.tags["rungflow.trial_id"] for r in runs
              if r.data.tags.get("rungflow.pareto") == "true"}
    assert front and tagged == front
    assert parent.data.tags["rungflow.pareto_front_size"] == str(len(front))
    assert "rungflow.best_trial" not in parent.data.tags  # no single best without a rule
    artifacts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"pareto_front.json", "leaderboard.json", "plots"} <= artifacts
    plots = {a.path for a in c.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/pareto_front.png" in plots
    path = c.download_artifacts(parent.info.run_id, "pareto_front.json", str(tmp_path))
    with open(path) as f:
        table = json.load(f)
    assert table["columns"][:5] == ["trial_id", "run_id", "status", "accuracy", "latency_ms"]
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert {r["trial_id"] for r in rows} == front
    for r in rows:
        last = ctl.trials[r["trial_id"]].last_result
        assert r["accuracy"] == pytest.approx(last["accuracy"]) and r["latency_ms"] <= 12
        assert r["run_id"] == tracker.runs[r["trial_id"]]
