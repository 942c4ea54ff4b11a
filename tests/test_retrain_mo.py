"""Retraining by a rule with constraints measured on the held-out data: the decisions on plain
values, and the retrain flow on a multi-objective run (simulated tuning, real Prefect and
MLflow, slow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tuning._objective import Objective, Selection
from tuning.retrain import check_holdout_scores, decide_champion_by, retrain_selection
from tuning.spec import SpecError, validate_spec

OBJ = Objective.build(["accuracy", "latency_ms"], ["max", "min"])
RULE = Selection.parse("max accuracy s.t. latency_ms <= 8", OBJ)


def test_a_new_model_breaking_the_limit_on_held_out_data_is_kept_out() -> None:
    d = decide_champion_by({"accuracy": 0.99, "latency_ms": 9.5}, None, RULE)
    assert not d.promote
    assert d.reason == ("kept: the new model breaks 'max accuracy s.t. latency_ms <= 8' on the "
                        "held-out data (latency_ms=9.5, not <= 8)")


def test_meeting_the_limit_beats_a_champion_that_breaks_it() -> None:
    d = decide_champion_by({"accuracy": 0.90, "latency_ms": 7.0},
                           {"accuracy": 0.97, "latency_ms": 8.5}, RULE, champion_version="3")
    assert d.promote and "the champion (version 3) breaks it (latency_ms=8.5, not <= 8)" in d.reason
    assert (d.new_score, d.champion_score) == (0.90, 0.97)


@pytest.mark.parametrize(("new", "promote"), [(0.95, True), (0.93, False), (0.9405, False)])
def test_both_within_the_limit_the_metric_decides(new: float, promote: bool) -> None:
    d = decide_champion_by({"accuracy": new, "latency_ms": 7.0},
                           {"accuracy": 0.94, "latency_ms": 6.0}, RULE, min_improvement=0.001)
    assert d.promote is promote and "both meet 'max accuracy s.t. latency_ms <= 8'" in d.reason


def test_weights_compare_the_weighted_sums() -> None:
    rule = Selection.from_weights({"accuracy": 1.0, "latency_ms": -0.01}, OBJ)
    d = decide_champion_by({"accuracy": 0.90, "latency_ms": 2.0},
                           {"accuracy": 0.92, "latency_ms": 6.0}, rule)
    assert d.promote and d.new_score == pytest.approx(0.88)


def test_held_out_scores_must_carry_what_the_rule_reads() -> None:
    assert check_holdout_scores({"accuracy": 1, "latency_ms": 2, "x": 3}, RULE)["x"] == 3.0
    with pytest.raises(SpecError, match=r"^evaluate: returned \['accuracy'\]; select='max "
                                        r"accuracy s.t. latency_ms <= 8' also needs latency_ms"):
        check_holdout_scores({"accuracy": 0.9}, RULE)
    with pytest.raises(SpecError, match=r"^evaluate: with select=.* it must return a dict"):
        check_holdout_scores(0.9, RULE)


def test_which_rule_a_retrain_uses() -> None:
    base = {"trainable": "m:f", "space": {"x": 1}}
    mo = validate_spec({**base, "metric": ["accuracy", "latency_ms"], "mode": ["max", "min"]})
    with pytest.raises(SpecError, match=r"^select: the spec optimises accuracy \(max\), "
                                        r"latency_ms \(min\), so the retrain needs a rule"):
        retrain_selection(mo, None)
    with pytest.raises(SpecError, match=r"^select: cannot read"):
        retrain_selection(mo, "best accuracy")
    assert retrain_selection(mo, "max accuracy s.t. latency_ms <= 3").conditions
    weighted = validate_spec({**mo.model_dump(), "weights": {"accuracy": 1}})
    assert retrain_selection(weighted, None).weights == {"accuracy": 1.0}
    single = validate_spec({**base, "metric": "accuracy"})
    assert retrain_selection(single, None) is None  # the single-objective path, unchanged
    limited = validate_spec({**base, "metric": "accuracy",
                             "constraints": {"latency_ms": {"max": 9}}})
    assert retrain_selection(limited, "max accuracy s.t. latency_ms <= 5").metric == "accuracy"


@pytest.mark.slow
def test_retrain_flow_takes_the_champion_by_a_held_out_latency_limit(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient
    from prefect.testing.utilities import prefect_test_harness

    from tuning.flows.retrain import retrain
    from tests.trainables import evaluate_mo

    spec: dict[str, Any] = {
        "name": "mo-retrain", "trainable": "tests.trainables:SIM_MO",
        "metric": ["accuracy", "latency_ms"], "mode": ["max", "min"], "num_samples": 12,
        "space": {"width": {"type": "uniform", "low": 0, "high": 1},
                  "lr": {"type": "loguniform", "low": 1e-3, "high": 0.1}},
        "scheduler": {"type": "moasha", "max_t": 9}, "backend": {"type": "simulated"},
        "storage_path": str(tmp_path / "runs"), "tracking_uri": f"sqlite:///{tmp_path}/m.db",
        "seed": 0}
    kw = {"model_name": "mo-model", "fit": "tests.trainables:fit_mo",
          "evaluate": "tests.trainables:evaluate_mo", "warm_start_top_k": 2}
    with prefect_test_harness(server_startup_timeout=60):
        first = retrain(spec=spec, select="max accuracy s.t. latency_ms <= 12", **kw)
        second = retrain(spec=spec, select="max accuracy s.t. latency_ms <= 6", **kw)
    assert first["promoted"] and "no champion yet" in first["reason"]
    assert first["holdout_metrics"]["latency_ms"] <= 12
    assert first["holdout_metrics"] == evaluate_mo(_model(first["config"]))
    # the stricter limit: the champion breaks it on the held-out data, the new model meets it
    assert second["holdout_metrics"]["latency_ms"] <= 6
    assert second["promoted"] and "the champion (version 1) breaks it" in second["reason"]
    assert second["warm_start_points"], "warm start from the previous run's Pareto front"
    c = MlflowClient(spec["tracking_uri"])
    run = c.get_run(second["retrain_run_id"])
    assert run.data.metrics["holdout_latency_ms"] == pytest.approx(
        second["holdout_metrics"]["latency_ms"])
    assert run.data.tags["rungflow.select"] == "max accuracy s.t. latency_ms <= 6"
    assert str(c.get_model_version_by_alias("mo-model", "champion").version) == "2"


def _model(config: dict[str, Any]) -> Any:
    from tests.trainables import fit_mo

    return fit_mo(config)
