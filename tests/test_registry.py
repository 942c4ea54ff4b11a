"""Retraining decisions on plain values, and the MLflow side on a real SQLite store."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from tuning.retrain import (
    check_retrain_options,
    decide_champion,
    final_config,
    resolve_callable,
    warm_start_spec,
)
from tuning.spec import SpecError, validate_spec
from tuning.tracking.registry import (
    load_champion,
    log_and_register,
    previous_best_configs,
    record_decision,
)

SPEC = {"name": "exp", "trainable": "tests.trainables:curve", "metric": "score", "mode": "max",
        "num_samples": 3, "space": {"x": {"type": "uniform", "low": 0.0, "high": 1.0},
                                    "act": {"type": "choice", "values": ["relu", "tanh"]},
                                    "iters": 5}}


# -- the champion rule -------------------------------------------------------------------------
def test_no_champion_promotes():
    d = decide_champion(0.8, None)
    assert d.promote and "no champion yet" in d.reason and d.champion_score is None


@pytest.mark.parametrize("new,old,mode,promote", [
    (0.96, 0.95, "max", True), (0.95, 0.95, "max", False), (0.90, 0.95, "max", False),
    (0.20, 0.30, "min", True), (0.30, 0.30, "min", False), (0.40, 0.30, "min", False)])
def test_strictly_better_on_the_same_data_promotes(new, old, mode, promote):
    d = decide_champion(new, old, mode, champion_version="4")
    assert d.promote is promote
    assert d.reason.startswith("promoted" if promote else "kept")
    assert "(version 4)" in d.reason and f"{new:.6g}" in d.reason and f"{old:.6g}" in d.reason
    assert "same held-out data" in d.reason


def test_min_improvement_is_a_margin():
    assert not decide_champion(0.955, 0.95, min_improvement=0.01).promote
    assert decide_champion(0.965, 0.95, min_improvement=0.01).promote


def test_non_finite_scores():
    assert not decide_champion(math.nan, 0.5).promote
    assert not decide_champion(math.nan, None).promote
    assert decide_champion(0.5, math.nan).promote


def test_decision_tags_record_both_scores():
    tags = decide_champion(0.9, 0.95, champion_version="1").tags()
    assert tags["rungflow.champion.decision"] == "kept"
    assert tags["rungflow.champion.new_score"] == "0.9"
    assert tags["rungflow.champion.previous_score"] == "0.95"
    assert tags["rungflow.champion.previous_version"] == "1"
    assert "does not beat" in tags["rungflow.champion.reason"]


def test_bad_mode_and_margin():
    with pytest.raises(ValueError, match="mode"):
        decide_champion(1.0, 0.5, mode="up")
    with pytest.raises(ValueError, match="min_improvement"):
        decide_champion(1.0, 0.5, min_improvement=-1)


# -- warm start, final config, options ---------------------------------------------------------
def test_warm_start_keeps_searched_params_dedupes_and_caps():
    spec = validate_spec(SPEC)
    new, pts = warm_start_spec(spec, [{"x": 0.9, "act": "relu", "iters": 99, "gone": 1},
                                      {"x": 0.9, "act": "relu"}, {"x": 0.1, "act": "tanh"},
                                      {"x": 0.2}, {"x": 0.3}])
    assert pts == [{"x": 0.9, "act": "relu"}, {"x": 0.1, "act": "tanh"}, {"x": 0.2}]
    assert new.searcher == {"type": "random", "points_to_evaluate": pts}
    assert spec.searcher == {"type": "random"}  # not mutated
    new.build_searcher()  # still a valid searcher


def test_warm_start_puts_given_points_after_the_previous_best():
    spec = validate_spec({**SPEC, "searcher": {"type": "random",
                                               "points_to_evaluate": [{"x": 0.5}]}})
    _, pts = warm_start_spec(spec, [{"x": 0.7}])
    assert pts == [{"x": 0.7}, {"x": 0.5}]


def test_no_warm_start_without_configs_or_with_grid():
    spec = validate_spec(SPEC)
    assert warm_start_spec(spec, []) == (spec, [])
    grid = validate_spec({**SPEC, "searcher": {"type": "grid"}}) if _has_grid() else None
    if grid is not None:
        assert warm_start_spec(grid, [{"x": 0.5}]) == (grid, [])


def _has_grid() -> bool:
    try:
        validate_spec({**SPEC, "searcher": {"type": "grid"}})
    except SpecError:
        return False
    return True


def test_final_config_overrides_and_no_best():
    assert final_config({"lr": 0.1, "epochs": 3}, {"final_epochs": 0}) == \
        {"lr": 0.1, "epochs": 3, "final_epochs": 0}
    with pytest.raises(ValueError, match="no best trial"):
        final_config(None, None)


def test_options_name_the_bad_parameter():
    ok = ("m", "tuning.examples.digits:fit_final", "tuning.examples.digits:evaluate_holdout", 3, None, 0.0)
    check_retrain_options(*ok)
    bad = [(0, "bad name", "model_name"), (1, "tuning.examples.digits", "fit"),
           (2, "tuning.examples.digits:nope", "evaluate"), (2, "no_such_module_x:f", "evaluate"),
           (3, -1, "warm_start_top_k"), (4, "up", "holdout_mode"), (5, -0.1, "min_improvement")]
    for i, value, field in bad:
        args = list(ok)
        args[i] = value
        with pytest.raises(SpecError, match=f"^{field}"):
            check_retrain_options(*args)
    assert resolve_callable("tuning.examples.digits:fit_final", "fit").__name__ == "fit_final"


def test_retrain_flow_fails_first_thing_on_a_bad_spec():
    from tuning.flows.retrain import retrain

    with pytest.raises(SpecError, match=r"scheduler\.type: unknown 'nope'"):
        retrain.fn(spec={**SPEC, "scheduler": {"type": "nope"}})
    with pytest.raises(SpecError, match="warm_start_top_k"):
        retrain.fn(spec=SPEC, warm_start_top_k=-2)


# -- MLflow: the previous run's best configs ---------------------------------------------------
def _tuning_run(c: MlflowClient, exp_id: str, run_name: str, trials: dict[str, tuple],
                finished: bool = True) -> str:
    """A parent and child runs shaped as tuning/tracking/mlflow.py writes them."""
    parent = c.create_run(exp_id, run_name=run_name, tags={
        "rungflow.role": "parent", "rungflow.run_name": run_name}).info.run_id
    for tid, (x, act, score) in trials.items():
        r = c.create_run(exp_id, run_name=f"{tid} x={x}", tags={
            "mlflow.parentRunId": parent, "rungflow.trial_id": tid}).info.run_id
        c.log_param(r, "x", str(x))  # floats are written as JSON
        c.log_param(r, "act", act)  # strings as themselves
        c.log_param(r, "iters", "5")
        if score is not None:
            for step, v in enumerate([score / 2, score], start=1):
                c.log_metric(r, "score", v, step=step)
        c.set_terminated(r, "FINISHED")
    if finished:
        c.set_terminated(parent, "FINISHED")
    return parent


def test_previous_best_configs_from_the_latest_finished_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert previous_best_configs(uri, "exp", "score", "max").run_id is None  # no experiment
    c = MlflowClient(uri)
    exp = c.create_experiment("exp", artifact_location=str(tmp_path / "art"))
    _tuning_run(c, exp, "old", {"trial-000": (0.99, "relu", 0.99)})
    latest = _tuning_run(c, exp, "latest", {
        "trial-000": (0.3, "relu", 0.3), "trial-001": (0.8, "tanh", 0.8),
        "trial-002": (0.6, "relu", 0.6), "trial-003": (0.7, "relu", None)})
    _tuning_run(c, exp, "running", {"trial-000": (0.1, "relu", 0.1)}, finished=False)

    prev = previous_best_configs(uri, "exp", "score", "max", top_k=2)
    assert (prev.run_id, prev.run_name) == (latest, "latest")
    assert prev.configs == [{"x": 0.8, "act": "tanh", "iters": 5},
                            {"x": 0.6, "act": "relu", "iters": 5}]
    assert prev.scores == [0.8, 0.6]
    low = previous_best_configs(uri, "exp", "score", "min", top_k=5)
    assert [cfg["x"] for cfg in low.configs] == [0.3, 0.6, 0.8]  # unscored trial left out
    assert previous_best_configs(uri, "exp", "score", "max", top_k=0).configs == []

    # and warm-starting the spec from them
    _, pts = warm_start_spec(validate_spec(SPEC), prev.configs)
    assert pts == [{"x": 0.8, "act": "tanh"}, {"x": 0.6, "act": "relu"}]


# -- MLflow: registry and alias ----------------------------------------------------------------
def test_register_champion_and_keep(tmp_path):
    from sklearn.dummy import DummyClassifier

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = MlflowClient(uri)
    c.create_experiment("exp", artifact_location=str(tmp_path / "art"))
    assert load_champion(uri, "m") is None  # no registered model yet
    model = DummyClassifier(strategy="constant", constant=1).fit([[0], [1]], [0, 1])

    v1 = log_and_register(uri, "exp", "retrain-1", model, "m", {"lr": 0.1}, 0.9)
    assert v1["version"] == "1"
    assert load_champion(uri, "m") is None  # registered, no alias yet
    d1 = decide_champion(0.9, None)
    assert record_decision(uri, "m", v1["version"], v1["run_id"], d1.promote, d1.tags()) == "1"

    champ = load_champion(uri, "m")
    assert champ is not None and champ.version == "1" and champ.run_id == v1["run_id"]
    assert champ.model.predict([[5]]).tolist() == [1]

    v2 = log_and_register(uri, "exp", "retrain-2", model, "m", {"lr": 0.2}, 0.5)
    d2 = decide_champion(0.5, 0.9, champion_version="1")
    assert record_decision(uri, "m", v2["version"], v2["run_id"], d2.promote, d2.tags()) == "1"
    mv2 = c.get_model_version("m", "2")
    assert mv2.tags["rungflow.champion.decision"] == "kept"
    assert "does not beat the champion (version 1)" in mv2.tags["rungflow.champion.reason"]
    run2 = c.get_run(v2["run_id"])
    assert run2.data.tags["rungflow.champion.decision"] == "kept"
    assert run2.data.tags["rungflow.role"] == "retrain"
    assert run2.data.metrics["holdout_score"] == 0.5 and run2.data.params["lr"] == "0.2"
    assert str(c.get_model_version_by_alias("m", "champion").version) == "1"
