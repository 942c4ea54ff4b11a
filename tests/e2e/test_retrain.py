"""The retrain flow in process: after a tuning run of the digits ConvNet, retrain warm-starts
from that run's best configs, refits the best on the whole training split, scores it on the
held-out split, registers it and gives it the ``champion`` alias, recording why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.slow, pytest.mark.e2e]



def _spec(d: Path, **kw: Any) -> dict[str, Any]:
    return {"name": "digits-retrain", "trainable": "tuning.examples.digits:train_digits",
            "metric": "mean_accuracy", "mode": "max", "num_samples": 3,
            "space": {"lr": {"type": "loguniform", "low": 0.02, "high": 0.1},
                      "momentum": {"type": "uniform", "low": 0.5, "high": 0.9}, "epochs": 2},
            "scheduler": {"type": "fifo"}, "backend": {"type": "dask", "n_workers": 2},
            "storage_path": str(d / "runs"), "tracking_uri": f"sqlite:///{d}/mlflow.db",
            "seed": 1, **kw}


def test_retrain_after_a_tuning_run(tmp_path: Path, prefect_server: None) -> None:
    import mlflow
    import mlflow.pytorch
    from prefect.client.orchestration import get_client

    from tuning import Tuner
    from tuning.examples.digits import evaluate_holdout
    from tuning.flows.retrain import retrain

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = MlflowClient(uri)
    c.create_experiment("digits-retrain", artifact_location=str(tmp_path / "artifacts"))
    tuned = Tuner.from_spec(_spec(tmp_path)).run()
    ranked = sorted(tuned.trials, key=lambda t: -t.last_result["mean_accuracy"])
    parent = c.search_runs([c.get_experiment_by_name("digits-retrain").experiment_id],
                           "tags.`rungflow.role` = 'parent'")[0]

    out = retrain(spec=_spec(tmp_path, num_samples=2), model_name="digits-retrain-model",
                  warm_start_top_k=2)

    # warm start: the tuning run's two best configs are the new run's first two trials
    assert out["warm_start_from"] == parent.data.tags["rungflow.run_name"]
    best2 = [{k: t.config[k] for k in ("lr", "momentum")} for t in ranked[:2]]
    assert out["warm_start_points"] == best2  # JSON params: floats round-trip exactly
    new_run = Tuner.from_spec({**_spec(tmp_path), "run_name": out["tuning_run"]}).result()
    firsts = sorted(new_run.trials, key=lambda t: t.trial_id)[:2]
    assert [{k: t.config[k] for k in ("lr", "momentum")} for t in firsts] == best2

    # registered, champion (there was none), the reason recorded on version, run and artifact
    assert out["version"] == "1" and out["champion_version"] == "1" and out["promoted"]
    assert "no champion yet" in out["reason"]
    mv = c.get_model_version_by_alias("digits-retrain-model", "champion")
    assert mv.tags["rungflow.champion.reason"] == out["reason"]
    run = c.get_run(out["retrain_run_id"])
    assert run.data.tags["rungflow.champion.decision"] == "promoted"
    assert run.data.metrics["holdout_score"] == pytest.approx(out["holdout_score"])
    assert out["config"] == {**new_run.best_config}
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pytorch.load_model("models:/digits-retrain-model@champion")
    finally:
        mlflow.set_tracking_uri(None)
    assert evaluate_holdout(model) == pytest.approx(out["holdout_score"])

    with get_client(sync_client=True) as client:
        art = client.read_latest_artifacts()
    md = [a for a in art if a.key == "digits-retrain-model-retrain"]
    assert md and out["reason"] in md[0].data
