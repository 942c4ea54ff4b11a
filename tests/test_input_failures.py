"""Failure is never silent, and the CLI shows the answer, not Prefect's tracebacks.

The outcome rule on plain values (fast); then the real flow on simulated curves (slow: Prefect
starts), where NaN metrics make trials fail as an exception would.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuning import Tuner, choice
from tuning.backends.simulated import TabulatedCurves
from tuning.cli import main as cli
from tuning.results import NoResultError, TrialsFailedWarning

NAN = math.nan
#: curve "ok" learns; curves "bad*" diverge at their second iteration
CURVES = TabulatedCurves({"ok": [0.1, 0.2, 0.3], "bad1": [0.1, NAN, 0.3],
                          "nan0": [NAN, NAN]}, key="curve", metric="score")
#: reports "loss", never the metric
WRONG_METRIC = TabulatedCurves({"a": [1.0, 0.5]}, key="curve", metric="loss")
ROOT = Path(__file__).resolve().parents[1]


def _tuner(storage, values, name, trainable="tests.test_input_failures:CURVES"):
    return Tuner(trainable, space={"curve": choice(values)}, metric="score", mode="max",
                 num_samples=6 if len(values) > 1 else 2, backend={"type": "simulated"},
                 seed=1, name=name, **storage)


def _result(*trials):
    from tuning.experiment import ExperimentState
    from tuning.results import TuneResult

    st = ExperimentState(spec={"metric": "score"}, trials={t.trial_id: t for t in trials})
    return TuneResult("e", "/runs/e", "score", "max", st)


def _trial(i, status, *values, error=None):
    from tuning._trial import Status, Trial

    return Trial.with_results(f"trial-{i:03d}", {"i": i},
                              [{"training_iteration": k + 1, "score": v}
                               for k, v in enumerate(values)], status=Status(status), error=error)


TB = "Traceback (most recent call last):\n  File ...\nRuntimeError: boom at x=0.1\n"


def test_outcome_check_warns_raises_or_stays_quiet():
    import warnings

    from tuning.tuner import _check_outcome

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_outcome(_result(_trial(0, "TERMINATED", 0.5), _trial(1, "STOPPED", 0.1)))
    with pytest.warns(TrialsFailedWarning, match=r"^2 of 3 trials failed; first error "
                                                 r"\(trial-001\): RuntimeError: boom at x=0.1$"):
        _check_outcome(_result(_trial(2, "ERROR", error="second"), _trial(0, "TERMINATED", 1.0),
                               _trial(1, "ERROR", 0.3, error=TB)))
    with pytest.raises(NoResultError, match=r"no trial produced metric 'score' \(1 of 2 trials "
                                            r"failed\); first error \(trial-000\): RuntimeError"):
        _check_outcome(_result(_trial(0, "ERROR", error=TB), _trial(1, "TERMINATED")))
    with pytest.raises(NoResultError, match=r"every trial failed \(2 of 2\); first error "
                                            r"\(trial-000\): metric 'score' was 'high'"):
        _check_outcome(_result(_trial(0, "ERROR", 0.5, error="metric 'score' was 'high'"),
                               _trial(1, "ERROR", 0.7, error="x")))


@pytest.mark.slow
def test_some_trials_fail_warns_with_count_and_first_error(storage):
    with pytest.warns(TrialsFailedWarning, match=r"\d+ of 6 trials failed; first error "
                                                 r"\(trial-\d+\): metric 'score' was nan"):
        res = _tuner(storage, ["ok", "bad1"], "some").run()
    assert res.best_trial is not None and res.best_config == {"curve": "ok"}


@pytest.mark.slow
@pytest.mark.parametrize("curve,says", [
    ("nan0", r"no trial produced metric 'score' \(2 of 2 trials failed\)"),
    ("bad1", r"every trial failed \(2 of 2\)")])
def test_every_trial_fails_raises_with_the_first_error(storage, curve, says):
    with pytest.raises(NoResultError, match=says + r"; first error \(trial-000\): metric "
                                                   r"'score' was nan"):
        _tuner(storage, [curve], "all").run()


@pytest.mark.slow
def test_cli_every_trial_fails_exits_non_zero_with_the_error(tmp_path, storage, capsys):
    spec = {"name": "allfail", "trainable": "tests.test_input_failures:CURVES",
            "metric": "score", "num_samples": 2,
            "space": {"curve": {"type": "choice", "values": ["bad1"]}},
            "backend": {"type": "simulated"}, **storage}
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump(spec))
    rc = cli(["run", str(f), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "rungflow: error: every trial failed (2 of 2); first error" in err
    assert "was nan" in err and err.count("rungflow: error:") == 1
    assert "Traceback" not in err


@pytest.mark.slow
def test_cli_some_trials_fail_prints_one_warning(tmp_path, storage, capsys):
    spec = {"name": "somefail", "trainable": "tests.test_input_failures:CURVES",
            "metric": "score", "num_samples": 6, "seed": 1,
            "space": {"curve": {"type": "choice", "values": ["ok", "bad1"]}},
            "backend": {"type": "simulated"}, **storage}
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump(spec))
    assert cli(["run", str(f), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("rungflow: warning:") == 1
    assert "trials failed; first error" in captured.err
    assert "best trial" in captured.out


def _run_cli(tmp_path, spec, *extra):
    f = tmp_path / f"{spec['name']}.yaml"
    f.write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    env.update(DO_NOT_TRACK="1", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "tuning.cli", "run", str(f), "--quiet", *extra],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    return p.returncode, p.stderr


@pytest.mark.slow
def test_errors_inside_the_flow_show_no_traceback(tmp_path):
    storage = {"storage_path": str(tmp_path / "runs"),
               "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}
    base = {"metric": "score", "num_samples": 1, "backend": {"type": "simulated"},
            "space": {"curve": {"type": "choice", "values": ["a"]}}, **storage}
    # the metric is never reported (raised by the controller, inside the flow)
    rc, err = _run_cli(tmp_path, {**base, "name": "nometric",
                                  "trainable": "tests.test_input_failures:WRONG_METRIC"})
    assert rc == 2 and "metric 'score' was never reported" in err, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    # a run name that exists already (refused by open-experiment, a task of the flow)
    spec = {**base, "name": "clash", "trainable": "tests.test_input_failures:CURVES",
            "space": {"curve": {"type": "choice", "values": ["ok"]}}}
    rc, err = _run_cli(tmp_path, spec, "--run-name", "same")
    assert rc == 0, err
    rc, err = _run_cli(tmp_path, spec, "--run-name", "same")
    assert rc == 2 and "already exists" in err, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    # --verbose shows more
    rc, err = _run_cli(tmp_path, spec, "--run-name", "same", "--verbose")
    assert rc == 2 and "Traceback" in err and "rungflow: error:" in err
