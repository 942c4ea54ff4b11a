"""The example trainables: each learns, reports once per unit of resource, checkpoints and
resumes, through ``run_segment`` directly and through the Tuner on a 2-worker Dask cluster."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.examples.conftest import ListChannel
from tuning.spec import ExperimentSpec, load_spec, resolve_trainable
from tuning.trainable import Segment, run_segment

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(fn: Callable[..., Any], config: dict[str, Any], storage: str, *, segment_id: int = 0,
         start: int = 0, checkpoint: str | None = None, pause_at: float | None = None
         ) -> tuple[dict[str, Any], ListChannel]:
    channel = ListChannel()
    seg = Segment("trial-000", segment_id, config, storage, start_iteration=start,
                  checkpoint=checkpoint, pause_at=pause_at)
    summary = run_segment(fn, seg, channel)
    assert summary.status in ("returned", "paused"), summary.error
    # the summary, and the results as the channel streamed them to the driver
    out = {**asdict(summary), "results": [m["result"] for m in channel.messages]}
    return out, channel


def _tuner_kwargs(tmp_path: Path) -> dict[str, Any]:
    return {"backend": {"type": "dask", "n_workers": 2}, "storage_path": str(tmp_path / "runs"),
            "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "seed": 0}


# -- YAML ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["digits.yaml", "sklearn.yaml"])
def test_yaml_validates_and_names_an_importable_trainable(name: str) -> None:
    data = yaml.safe_load((EXAMPLES / name).read_text())
    spec = ExperimentSpec.model_validate(data)
    assert spec == load_spec(EXAMPLES / name)
    assert callable(resolve_trainable(spec.trainable))
    spec.build_scheduler(), spec.build_searcher(), spec.build_space()


def test_digits_yaml_is_the_demo_experiment() -> None:
    spec = load_spec(EXAMPLES / "digits.yaml")
    assert (spec.name, spec.trainable, spec.metric, spec.mode, spec.num_samples, spec.seed) == \
        ("digits-asha", "tuning.examples.digits:train_digits", "mean_accuracy", "max", 24, 0)
    assert spec.scheduler == {"type": "asha", "max_t": 10, "grace_period": 1,
                              "reduction_factor": 3}
    assert spec.space["lr"] == {"type": "loguniform", "low": 1.0e-4, "high": 0.1}


# -- resume through run_segment --------------------------------------------------------------
def test_digits_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    from tuning._checkpoint import load_checkpoint
    from tuning.examples.digits import train_digits

    cfg = {"lr": 0.05, "momentum": 0.9, "epochs": 4}
    first, ch1 = _run(train_digits, {**cfg, "epochs": 2}, str(tmp_path))
    assert [m["result"]["training_iteration"] for m in ch1.messages] == [1, 2]
    assert load_checkpoint(first["checkpoint"])["epoch"] == 1
    second, ch2 = _run(train_digits, cfg, str(tmp_path), segment_id=1,
                       start=first["checkpoint_iteration"], checkpoint=first["checkpoint"])
    results = second["results"]
    assert [r["training_iteration"] for r in results] == [3, 4]
    assert [load_checkpoint(r["checkpoint"])["epoch"] for r in results] == [2, 3]
    assert len(ch2.messages) == 2
    # deterministic: resuming gives the same curve as one uninterrupted run
    whole, _ = _run(train_digits, cfg, str(tmp_path / "whole"))
    accs = [r["mean_accuracy"] for r in first["results"] + results]
    assert accs == pytest.approx([r["mean_accuracy"] for r in whole["results"]], abs=1e-6)


@pytest.mark.parametrize("module, fn_name, config", [
    ("tuning.examples.sklearn_digits", "train_forest", {"steps": 4, "trees_per_step": 3}),
    ("tuning.examples.xgboost_digits", "train_xgboost", {"rounds": 4, "max_depth": 3}),
])
def test_sklearn_and_xgboost_resume_to_the_same_curve(tmp_path: Path, module: str,
                                                      fn_name: str, config: dict) -> None:
    import importlib

    fn = getattr(importlib.import_module(module), fn_name)
    whole, _ = _run(fn, config, str(tmp_path / "whole"))
    assert [r["training_iteration"] for r in whole["results"]] == [1, 2, 3, 4]
    first, _ = _run(fn, config, str(tmp_path), pause_at=2)
    assert first["status"] == "paused" and first["checkpoint_iteration"] == 2
    rest, _ = _run(fn, config, str(tmp_path), segment_id=1, start=2,
                   checkpoint=first["checkpoint"])
    assert [r["training_iteration"] for r in rest["results"]] == [3, 4]
    curve = [r["mean_accuracy"] for r in first["results"] + rest["results"]]
    assert curve == pytest.approx([r["mean_accuracy"] for r in whole["results"]])
    assert whole["results"][-1]["mean_accuracy"] > 0.7


def test_xgboost_checkpoint_is_a_json_booster(tmp_path: Path) -> None:
    import xgboost as xgb

    from tuning._checkpoint import load_checkpoint
    from tuning.examples.xgboost_digits import train_xgboost

    out, _ = _run(train_xgboost, {"rounds": 3, "max_depth": 2}, str(tmp_path))
    assert out["checkpoint"].endswith(".json")
    ckpt = load_checkpoint(out["checkpoint"])
    booster = xgb.Booster(model_file=bytearray(ckpt["booster"].encode()))
    assert booster.num_boosted_rounds() == ckpt["rounds"] == 3


# -- through the Tuner on Dask ------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_digits_convnet_learns_through_the_tuner(tmp_path: Path, prefect_server: None) -> None:
    import torch

    from tuning import Tuner
    from tuning.examples.digits import make_model, train_digits

    result = Tuner(train_digits, space={"lr": 0.05, "momentum": 0.9, "epochs": 3},
                   metric="mean_accuracy", mode="max", num_samples=2, name="digits-test",
                   **_tuner_kwargs(tmp_path)).run()
    df = result.dataframe()
    assert len(df) == 2 and list(df["iterations"]) == [3, 3]
    assert result.best_metric is not None and result.best_metric > 0.5
    url = result.best_checkpoint
    assert url is not None and url.endswith(".pt")
    ckpt = result.load_checkpoint()
    assert {"model", "optimizer", "epoch"} <= set(ckpt) and ckpt["epoch"] == 2
    with open(url, "rb") as f:
        raw = torch.load(io.BytesIO(f.read()), weights_only=True)
    model = make_model()
    model.load_state_dict(raw["model"])
    assert result.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert (tmp_path / "mlflow.db").is_file()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sklearn_forest_reports_each_increment(tmp_path: Path, prefect_server: None) -> None:
    from tuning import Tuner, randint
    from tuning.examples.sklearn_digits import train_forest

    result = Tuner(train_forest, space={"max_depth": randint(4, 12), "steps": 3,
                                        "trees_per_step": 4},
                   metric="mean_accuracy", num_samples=2, name="forest-test",
                   **_tuner_kwargs(tmp_path)).run()
    df = result.dataframe()
    assert list(df["iterations"]) == [3, 3]
    for t in result.trials:
        assert [r["n_estimators"] for r in result.history(t.trial_id)] == [4, 8, 12]
    assert result.best_metric > 0.7


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_xgboost_reports_each_round(tmp_path: Path, prefect_server: None) -> None:
    from tuning import Tuner, uniform
    from tuning.examples.xgboost_digits import train_xgboost

    result = Tuner(train_xgboost, space={"eta": uniform(0.2, 0.5), "max_depth": 3, "rounds": 5},
                   metric="mean_accuracy", num_samples=2, name="xgb-test",
                   **_tuner_kwargs(tmp_path)).run()
    df = result.dataframe()
    assert list(df["iterations"]) == [5, 5]
    for t in result.trials:
        assert [r["rounds"] for r in result.history(t.trial_id)] == [1, 2, 3, 4, 5]
    assert result.load_checkpoint()["rounds"] == 5


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_digits_demo_main_runs_small(tmp_path: Path, prefect_server: None,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from tuning.examples.digits import main

    result = main(["--num-samples", "3", "--max-t", "2", "--storage", str(tmp_path),
                   "--workers", "2"])
    out = capsys.readouterr().out
    assert len(result.trials) == 3 and result.best_metric is not None
    assert f"mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1 --port 5000" \
        in out
    assert result.tracking_uri.endswith(f"{tmp_path}/mlflow.db")
    assert "checkpoint:" in out and str(result.best_checkpoint) in out
