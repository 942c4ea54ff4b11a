"""Several metrics in the ExperimentSpec (API, YAML, CLI, deployments): validated up front with
the field named; a run opened from the spec (no Prefect) and `rungflow best` on its journal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tuning import Tuner, uniform
from tuning.cli import main as cli
from tuning.results import load_result
from tuning.assemble import open_experiment
from tuning.spec import SpecError, load_spec, spec_diff, validate_spec

BASE = {"name": "mo", "trainable": "tests.trainables:SIM_MO",
        "space": {"width": {"type": "uniform", "low": 0, "high": 1},
                  "lr": {"type": "loguniform", "low": 1e-4, "high": 0.1}},
        "backend": {"type": "simulated", "n_workers": 2}}
TWO = {"metric": ["accuracy", "latency_ms"], "mode": ["max", "min"]}


@pytest.mark.parametrize(("extra", "message"), [
    ({"metric": ["accuracy", "latency_ms"]}, (r"mode: metric lists 2 metrics \['accuracy', "
                                              r"'latency_ms'\], so mode must be a list of 2")),
    ({**TWO, "mode": ["max", "min", "max"]}, r"mode: 3 value\(s\) .* for 2 metric\(s\)"),
    ({**TWO, "mode": ["max", "fast"]}, r"mode: each value must be 'min' or 'max'"),
    ({"metric": ["accuracy", ""], "mode": ["max", "min"]},
     r"metric: metric names must be non-empty strings"),
    ({"metric": 3}, r"metric: must be a metric name or a non-empty list of names, got 3"),
    ({**TWO, "scheduler": {"type": "asha", "max_t": 9}},
     (r"scheduler.type: 'asha' ranks trials by one metric and knows no constraints; with metric "
      r"\['accuracy', 'latency_ms'\] use 'moasha' \(multi-objective ASHA\) or 'fifo'")),
    ({**TWO, "scheduler": {"type": "median"}}, r"scheduler.type: 'median' ranks trials by one"),
    ({**TWO, "scheduler": {"type": "hyperband", "max_t": 9}}, r"scheduler.type: 'hyperband'"),
    ({**TWO, "scheduler": {"type": "bohb", "max_t": 9}}, r"scheduler.type: 'bohb'"),
    ({"metric": "accuracy", "constraints": {"latency_ms": {"max": 5}},
      "scheduler": {"type": "pbt", "perturbation_interval": 2}},
     r"scheduler.type: 'pbt' ranks .* with constraints on latency_ms use 'moasha'"),
    ({**TWO, "searcher": {"type": "optuna", "sampler": "cmaes"}},
     r"searcher.sampler: 'cmaes' optimises one metric"),
    ({**TWO, "constraints": {"latency_ms": {"upto": 20}}},
     r"constraints.latency_ms.upto: unknown key; allowed: max, min"),
    ({**TWO, "constraints": {"latency_ms": {"max": "20ms"}}},
     r"constraints.latency_ms.max: must be a finite number, got '20ms'"),
    ({**TWO, "stop": {"metric_threshold": 0.9}}, r"stop.metric_threshold: one threshold"),
    ({**TWO, "select": "max accuracy where latency_ms < 3"}, r"select: cannot read"),
    ({**TWO, "select": "max acuracy"}, r"select: 'acuracy' is not a metric of this experiment"),
    ({**TWO, "weights": {"accuracy": 1, "latency_ms": 1}}, r"weights.latency_ms: 1 must be <= 0"),
    ({**TWO, "weights": {"accuracy": 1}, "select": "max accuracy"}, r"select/weights: give one"),
])
def test_bad_multi_objective_specs_name_the_field(extra, message) -> None:
    with pytest.raises(SpecError, match=message):
        validate_spec({**BASE, **extra})


def test_a_valid_multi_objective_spec_and_its_forms() -> None:
    spec = validate_spec({**BASE, **TWO, "constraints": {"latency_ms": {"max": 15}},
                          "scheduler": {"type": "moasha", "max_t": 9},
                          "searcher": {"type": "optuna", "sampler": "nsga2"},
                          "select": "max accuracy s.t. latency_ms <= 10"})
    assert spec.objective().describe() == "accuracy (max), latency_ms (min); latency_ms <= 15"
    assert spec.selection().describe() == "max accuracy s.t. latency_ms <= 10"
    assert (spec.primary_metric, spec.primary_mode) == ("accuracy", "max")
    again = validate_spec(json.loads(json.dumps(spec.to_json_dict())))
    assert again == spec
    one = validate_spec({**BASE, "metric": ["accuracy"], "mode": ["max"]})
    assert (one.metric, one.mode) == ("accuracy", "max")  # one metric: today's spec
    assert validate_spec({**BASE, "metric": "accuracy"}).constraints == {}


def test_the_python_api_builds_the_same_spec() -> None:
    t = Tuner("tests.trainables:SIM_MO", space={"width": uniform(0, 1)},
              metric=["accuracy", "latency_ms"], mode=["max", "min"],
              constraints={"latency_ms": {"max": 15}}, scheduler={"type": "moasha", "max_t": 9},
              weights={"accuracy": 1.0, "latency_ms": -0.01}, backend={"type": "simulated"})
    assert t.spec.metric == ["accuracy", "latency_ms"] and t.spec.weights is not None
    with pytest.raises(SpecError, match=r"mode: metric lists 2 metrics"):
        Tuner("tests.trainables:SIM_MO", space={"width": uniform(0, 1)},
              metric=["accuracy", "latency_ms"])


def test_resume_refuses_changed_constraints_and_accepts_an_old_spec_without_them() -> None:
    old = validate_spec({**BASE, **TWO}).to_json_dict()
    new = validate_spec({**BASE, **TWO, "constraints": {"latency_ms": {"max": 9}}})
    assert spec_diff(old, new.to_json_dict()) == [
        "constraints.latency_ms: None -> {'max': 9}"]
    legacy = {k: v for k, v in old.items() if k != "constraints"}
    assert spec_diff(legacy, old) == []


def _run(tmp_path: Path, **extra) -> str:
    spec = validate_spec({**BASE, **TWO, "num_samples": 16, "seed": 0,
                          "constraints": {"latency_ms": {"max": 12}},
                          "scheduler": {"type": "moasha", "max_t": 9},
                          "storage_path": str(tmp_path / "runs"), "run_name": "r", **extra})
    ctl = open_experiment(spec)
    ctl.backend.start()
    ctl.run()
    ctl.journal.close()
    return spec.experiment_dir()


def test_rungflow_best_prints_the_pareto_front(tmp_path, capsys) -> None:
    run_dir = _run(tmp_path)
    res = load_result(run_dir)
    expected = {t.trial_id for t in res.objective.front(
        [t for t in res.trials if str(t.status) in ("TERMINATED", "STOPPED")])}
    assert cli(["best", run_dir]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Pareto front of mo (accuracy (max), latency_ms (min); latency_ms "
                          f"<= 12): {len(expected)} trials")
    assert all(tid in out for tid in expected) and "--select" in out
    assert cli(["best", run_dir, "--json"]) == 0
    front = json.loads(capsys.readouterr().out)["pareto_front"]
    assert {r["trial_id"] for r in front} == expected
    assert all(r["latency_ms"] <= 12 for r in front)
    assert cli(["best", run_dir, "--select", "max accuracy s.t. latency_ms <= 6", "--json"]) == 0
    picked = json.loads(capsys.readouterr().out)
    assert picked["latency_ms"] <= 6 and picked["selected_by"].startswith("max accuracy")
    assert cli(["best", run_dir, "--weights", '{"accuracy": 1, "latency_ms": 2}']) == 2
    assert "weights.latency_ms: 2 must be <= 0" in capsys.readouterr().err
    assert cli(["status", run_dir, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pareto_front"] == len(
        res.objective.front(res.trials))


def test_a_select_in_the_spec_makes_best_config_work(tmp_path) -> None:
    run_dir = _run(tmp_path, select="max accuracy s.t. latency_ms <= 8")
    res = load_result(run_dir)
    best = res.best_trial
    assert best is not None and best.last_result["latency_ms"] <= 8
    assert res.best_config == best.config
    assert res.best_metric == best.last_result["accuracy"]


def test_the_multi_objective_example_yaml_validates() -> None:
    spec = load_spec(Path(__file__).resolve().parents[1] / "examples" / "digits_mo.yaml")
    assert spec.objective().multi and spec.scheduler["type"] == "moasha"
    spec.build_scheduler(), spec.build_searcher(), spec.build_space()
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" /
                           "digits_mo.yaml").read_text())
    assert data["metric"] == ["mean_accuracy", "latency_ms"]
