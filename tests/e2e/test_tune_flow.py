"""A real tuning run through the Prefect flow on a 2-worker LocalCluster, read back from MLflow."""

from __future__ import annotations

import mlflow
import pytest

from tests.trainables import curve, flaky
from tuning import ASHA, Tuner, uniform
from tuning.experiment import Journal

pytestmark = pytest.mark.slow


def _runs(uri):
    c = mlflow.MlflowClient(tracking_uri=uri)
    runs = [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id],
                                                                      max_results=1000)]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    kids = {r.data.tags["rungflow.trial_id"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    return c, parents, kids


@pytest.fixture(scope="module")
def asha_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("flow")
    uri = f"sqlite:///{d}/mlflow.db"
    tuner = Tuner(curve, space={"x": uniform(0.0, 1.0), "iters": 9, "sleep": 0.1},
                  metric="score", mode="max", num_samples=14,
                  scheduler=ASHA(max_t=9, grace_period=1, reduction_factor=3),
                  backend={"type": "dask", "n_workers": 2}, storage_path=str(d),
                  tracking_uri=uri, seed=0, name="flow-test")
    return tuner, tuner.run(), uri


def test_mlflow_holds_one_parent_and_one_child_per_trial(asha_run):
    tuner, result, uri = asha_run
    c, parents, kids = _runs(uri)
    assert len(parents) == 1 and len(kids) == 14 == len(result.trials)
    parent = parents[0]
    assert parent.data.params["scheduler.type"] == "asha"
    assert parent.data.params["scheduler.reduction_factor"] == "3"
    assert "space.x" in parent.data.params
    assert all(k.data.tags["mlflow.parentRunId"] == parent.info.run_id for k in kids.values())
    exp = c.get_experiment(parent.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_metric_per_report_with_the_right_steps(asha_run):
    _, result, uri = asha_run
    c, _, kids = _runs(uri)
    for t in result.trials:
        hist = c.get_metric_history(kids[t.trial_id].info.run_id, "score")
        assert sorted(m.step for m in hist) == list(range(1, t.iteration + 1))
        recorded = {m.step: m.value for m in hist}
        assert all(abs(recorded[r["training_iteration"]] - r["score"]) < 1e-12 for r in result.history(t.trial_id))
        assert float(kids[t.trial_id].data.params["x"]) == pytest.approx(t.config["x"])


def test_statuses_match_the_scheduler_decisions(asha_run):
    tuner, result, uri = asha_run
    _, _, kids = _runs(uri)
    events = Journal(result.path).read()
    stops = {e["trial_id"]: e for e in events if e["event"] == "decision" and e["decision"] == "STOP"}
    statuses = {t.trial_id: str(t.status) for t in result.trials}
    assert "STOPPED" in statuses.values() and "TERMINATED" in statuses.values()
    for tid, status in statuses.items():
        tags = kids[tid].data.tags
        assert tags["rungflow.status"] == status
        assert kids[tid].info.status == "FINISHED"
        if status == "STOPPED":
            assert tid in stops and stops[tid]["iteration"] < 9
            assert tags["rungflow.stopped_at"] == str(stops[tid]["rung"])
        else:
            assert result.state.trials[tid].iteration == 9


def test_a_stop_reaches_the_running_trial(asha_run):
    _, result, _ = asha_run
    stopped = [t for t in result.trials if str(t.status) == "STOPPED"]
    # a trial stopped at a milestone ends at its next report(): well before max_t (9), unless
    # the machine is so loaded that the decision took most of a trial's life (0.9 s) to arrive
    early = [t for t in stopped if t.iteration <= t.stopped_at + 3]
    assert stopped and len(early) >= len(stopped) / 2, [(t.stopped_at, t.iteration)
                                                        for t in stopped]


def test_best_config_is_that_of_the_best_recorded_metric(asha_run):
    _, result, uri = asha_run
    c, _, kids = _runs(uri)
    last = {}
    for tid, run in kids.items():
        hist = c.get_metric_history(run.info.run_id, "score")
        last[tid] = max(hist, key=lambda m: m.step).value
    best_tid = max(last, key=last.get)
    assert result.best_config == result.state.trials[best_tid].config
    assert result.best_metric == pytest.approx(last[best_tid])
    assert kids[best_tid].data.tags.get("rungflow.best") == "true"
    ck = result.load_checkpoint()
    assert ck["it"] == result.best_trial.checkpoint_iteration
    df = result.dataframe()
    assert len(df) == 14 and set(df["status"]) <= {"TERMINATED", "STOPPED"}


def test_checkpoint_is_an_artifact_of_finished_trials(asha_run):
    _, result, uri = asha_run
    c, _, kids = _runs(uri)
    best = kids[result.best_trial.trial_id]
    arts = [a.path for a in c.list_artifacts(best.info.run_id, "checkpoint")]
    assert arts and arts[0].endswith(".json")


def test_a_raising_trainable_errors_only_its_own_trial(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = Tuner(flaky, space={"x": uniform(0.0, 1.0)}, metric="score", mode="max",
                   num_samples=8, backend={"type": "dask", "n_workers": 2},
                   storage_path=str(tmp_path), tracking_uri=uri, seed=3, name="flaky").run()
    bad = [t for t in result.trials if t.config["x"] < 0.5]
    good = [t for t in result.trials if t.config["x"] >= 0.5]
    assert bad and good
    assert all(str(t.status) == "ERROR" and "boom" in t.error for t in bad)
    assert all(str(t.status) == "TERMINATED" and t.iteration == 5 for t in good)
    c, _, kids = _runs(uri)
    for t in bad:
        run = kids[t.trial_id]
        assert run.info.status == "FAILED"
        text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/error.txt")
        assert "Traceback" in text and "RuntimeError: boom" in text
