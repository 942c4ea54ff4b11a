"""Trial failures on a real Dask cluster: retries from the last checkpoint, fail_fast, timeout_s,
non-finite metrics and unsafe checkpoints."""

from __future__ import annotations

import mlflow
import pytest

from tuning import Tuner, choice, uniform
from tuning.controller import ExperimentAborted
from tuning.results import NoResultError

pytestmark = pytest.mark.slow
DASK = {"type": "dask", "n_workers": 2}


def tuner(tmp_path, trainable, **kw):
    space = kw.pop("space", {"x": uniform(0.1, 1.0)})
    return Tuner(trainable, space=space, metric="score", mode="max", backend=DASK,
                 storage_path=str(tmp_path), tracking_uri=f"sqlite:///{tmp_path}/m.db", seed=0,
                 **kw)


def test_max_failures_retries_from_the_last_checkpoint(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    res = tuner(tmp_path, "tests.trainables:fails_once", num_samples=3, max_failures=1,
                space={"x": uniform(0.1, 1.0), "marker_dir": str(marks)}).run()
    for t in res.trials:
        assert str(t.status) == "TERMINATED" and t.num_failures == 1
        assert [r["training_iteration"] for r in res.history(t.trial_id)] == [1, 2, 3, 4, 5, 6]
    c = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db")
    kids = [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])
            if "mlflow.parentRunId" in r.data.tags]
    for k in kids:  # the failure is recorded with its traceback, the history is whole
        assert "transient failure" in mlflow.artifacts.load_text(
            f"{k.info.artifact_uri}/failure-1.txt")
        steps = sorted(m.step for m in c.get_metric_history(k.info.run_id, "score"))
        assert steps == [1, 2, 3, 4, 5, 6]


def test_without_retries_the_failure_is_final(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    with pytest.raises(NoResultError, match="every trial failed .2 of 2.*transient") as err:
        tuner(tmp_path, "tests.trainables:fails_once", num_samples=2,
              space={"x": uniform(0.1, 1.0), "marker_dir": str(marks)}).run()
    res = err.value.result
    assert all(str(t.status) == "ERROR" and "transient failure" in t.error for t in res.trials)


def test_fail_fast_stops_the_experiment(tmp_path):
    with pytest.raises(ExperimentAborted, match="fail_fast: trial"):
        tuner(tmp_path, "tests.trainables:flaky", num_samples=12, fail_fast=True,
              space={"x": uniform(0.0, 0.4)}).run()


def test_a_hanging_trial_is_ended_after_timeout_s(tmp_path):
    with pytest.raises(NoResultError, match="every trial failed") as err:
        tuner(tmp_path, "tests.trainables:hangs", num_samples=2, timeout_s=3).run()
    res = err.value.result
    assert all(str(t.status) == "ERROR" and "timeout_s=3" in t.error for t in res.trials)


def _failed_run(tmp_path, trainable, name):
    with pytest.raises(NoResultError, match="(every trial failed|no trial produced).*1 of 1"
                       ) as err:
        tuner(tmp_path, trainable, num_samples=1, name=name).run()
    return err.value.result


def test_non_finite_or_non_numeric_metrics_and_unsafe_checkpoints(tmp_path):
    res = _failed_run(tmp_path, "tests.trainables:nan_metric", "nan")
    assert "was nan at iteration 2" in res.trials[0].error
    res = _failed_run(tmp_path, "tests.trainables:string_metric", "str")
    assert "metric 'score' must be a number, got 'high'" in res.trials[0].error
    res = _failed_run(tmp_path, "tests.trainables:bad_checkpoint", "ck")
    assert "cannot be serialized for safe loading" in res.trials[0].error
    assert all(t.num_failures == 0 for t in res.trials)  # not retried: a retry cannot fix it


def test_a_metric_never_reported_is_a_clear_error(tmp_path):
    from tuning.controller import MetricMissingError

    with pytest.raises(MetricMissingError, match="metric 'score' was never reported.*loss"):
        tuner(tmp_path, "tests.trainables:wrong_metric", num_samples=2,
              space={"x": choice([1, 2])}).run()
