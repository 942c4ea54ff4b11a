"""A multi-objective run through the real tune flow (simulated backend, Prefect, MLflow
SQLite): the Prefect summary shows the Pareto front, MLflow tags it, the result has it."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]



def test_front_in_the_summary_artifact_mlflow_and_the_result(tmp_path: Path,
                                                             prefect_server: None) -> None:
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client

    from tuning import MOASHA, Tuner, loguniform, uniform

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = Tuner("tests.trainables:SIM_MO",
                   space={"width": uniform(0, 1), "lr": loguniform(1e-3, 0.1)},
                   metric=["accuracy", "latency_ms"], mode=["max", "min"],
                   constraints={"latency_ms": {"max": 12}}, num_samples=12,
                   scheduler=MOASHA(max_t=9), backend={"type": "simulated"},
                   storage_path=str(tmp_path / "runs"), tracking_uri=uri, seed=0,
                   name="mo-flow").run()
    front = result.pareto_front()
    assert len(front) >= 2 and (front["latency_ms"] <= 12).all()

    with get_client(sync_client=True) as client:
        arts = {a.key: a for a in client.read_latest_artifacts()}
    summary = arts["mo-flow-summary"].data
    assert "- objective: accuracy (max), latency_ms (min); latency_ms <= 12" in summary
    assert "## Pareto front" in summary and "| trial | accuracy | latency_ms |" in summary
    assert all(tid in summary for tid in front["trial_id"])

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("mo-flow")
    tagged = {r.data.tags["rungflow.trial_id"] for r in c.search_runs(
        [exp.experiment_id], "tags.`rungflow.pareto` = 'true'")}
    assert tagged == set(front["trial_id"])
