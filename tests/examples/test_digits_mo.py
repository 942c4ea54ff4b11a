"""The multi-objective digits example: it reports accuracy, measured latency and the parameter
count, resumes from its checkpoint, validates as YAML and runs tiny through the Tuner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.examples.conftest import ListChannel
from tuning.spec import load_spec, resolve_trainable
from tuning.trainable import Segment, run_segment

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _segment(config: dict[str, Any], storage: str, **kw: Any) -> tuple[Any, list[dict]]:
    channel = ListChannel()
    out = run_segment(resolve_trainable("tuning.examples.digits:train_digits_mo"),
                      Segment("trial-000", kw.pop("segment_id", 0), config, storage, **kw),
                      channel)
    assert out.status == "returned", out.error
    return out, [m["result"] for m in channel.messages if m.get("type") == "result"]


def test_reports_accuracy_latency_and_size_and_resumes(tmp_path: Path) -> None:
    from tuning.examples.digits import make_model

    cfg = {"lr": 0.05, "momentum": 0.9, "width": 4, "epochs": 2}
    first, results = _segment({**cfg, "epochs": 1}, str(tmp_path))
    (r1,) = results
    assert 0.0 <= r1["mean_accuracy"] <= 1.0 and r1["latency_ms"] > 0
    assert r1["params"] == sum(p.numel() for p in make_model(4).parameters())
    _, more = _segment(cfg, str(tmp_path), segment_id=1, start_iteration=1,
                       checkpoint=first.checkpoint)
    assert [r["training_iteration"] for r in more] == [2]
    assert more[0]["params"] == r1["params"]


def test_holdout_scoring_of_a_narrow_model(tmp_path: Path) -> None:
    from tuning.examples.digits import evaluate_holdout_mo, fit_final

    model = fit_final({"lr": 0.05, "momentum": 0.9, "width": 2, "final_epochs": 1})
    scores = evaluate_holdout_mo(model)
    assert set(scores) == {"mean_accuracy", "latency_ms"}
    assert 0.0 <= scores["mean_accuracy"] <= 1.0 and scores["latency_ms"] > 0


def test_yaml_validates() -> None:
    spec = load_spec(EXAMPLES / "digits_mo.yaml")
    assert spec.metric == ["mean_accuracy", "latency_ms"] and spec.mode == ["max", "min"]
    assert spec.constraints == {"latency_ms": {"max": 10.0}}
    assert callable(resolve_trainable(spec.trainable))
    assert spec.build_scheduler().multi_objective


@pytest.mark.slow
def test_runs_tiny_through_the_tuner(tmp_path: Path) -> None:
    from tuning import Tuner

    spec = load_spec(EXAMPLES / "digits_mo.yaml", {
        "num_samples": 4, "scheduler": {"type": "moasha", "max_t": 2, "reduction_factor": 2},
        "space": {"lr": {"type": "loguniform", "low": 0.01, "high": 0.1}, "momentum": 0.9,
                  "width": {"type": "randint", "low": 2, "high": 9}, "epochs": 2},
        "backend": {"type": "dask", "n_workers": 2}, "storage_path": str(tmp_path / "runs"),
        "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"})
    result = Tuner.from_spec(spec).run()
    assert len(result.trials) == 4
    front = result.pareto_front()
    assert len(front) >= 1 and (front["latency_ms"] <= 10.0).all()
    assert {"mean_accuracy", "latency_ms"} <= set(front.columns)
    assert (result.dataframe()["params"] > 0).all()
