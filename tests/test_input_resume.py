"""Resume refuses what it cannot do faithfully, before anything starts or is written: a custom
scheduler/searcher or sample_from space not given again, a finished run, a missing journal."""

from __future__ import annotations

import os

import pytest

from tuning import FIFO, Tuner, sample_from, uniform
from tuning.assemble import open_experiment
from tuning.cli import main as cli
from tuning.experiment import Journal
from tuning.results import TuneResult
from tuning.searchers import RandomSearch
from tuning.spec import SpecError, validate_spec
from tuning.stoppers import stopper_from_dict


class MyScheduler(FIFO):
    """A user's own scheduler: not one of the named classes."""


class MySearcher(RandomSearch):
    """A user's own searcher."""


def _double(config):
    return 2 * config["x"]


def _tuner(storage, **kw):
    args = {"space": {"x": uniform(0, 1)}, "metric": "score", "backend": {"type": "simulated"},
            "name": "res", "run_name": "r1", **storage, **kw}
    return Tuner("tests.trainables:SIM", **args)


def _journal(tuner, *extra_events):
    """Write the journal a run of ``tuner`` would begin with (no flow, no cluster)."""
    j = Journal(tuner.spec.experiment_dir())
    j.append("experiment_created", spec=tuner.spec.to_json_dict(), pid=os.getpid())
    for ev in extra_events:
        j.append(ev)
    j.close()
    return tuner.spec.experiment_dir()


def _files(root):
    return {os.path.join(d, n): os.path.getsize(os.path.join(d, n))
            for d, _, names in os.walk(root) for n in names}


def test_custom_scheduler_and_searcher_are_recorded_as_such(storage):
    t = _tuner(storage, scheduler=MyScheduler(), searcher=MySearcher())
    assert t.spec.scheduler == {"type": f"custom:{__name__}.MyScheduler"}
    assert t.spec.searcher == {"type": f"custom:{__name__}.MySearcher"}
    with pytest.raises(SpecError, match=r"scheduler: the run used a custom scheduler instance"):
        t.spec.build_scheduler()  # never silently FIFO
    validate_spec(t.spec.to_json_dict())  # the record is a valid spec


def test_a_bad_custom_record_is_refused():
    with pytest.raises(SpecError, match=r"scheduler.type.*custom:module.Class"):
        validate_spec({"trainable": "m:f", "metric": "s", "space": {"x": 1},
                       "scheduler": {"type": "custom:not a class!"}})


@pytest.mark.parametrize("kind", ["scheduler", "searcher"])
def test_resume_refuses_a_custom_instance_not_given_again(storage, kind):
    given = {"scheduler": MyScheduler(), "searcher": MySearcher()}[kind]
    path = _journal(_tuner(storage, **{kind: given}))
    before = _files(storage["storage_path"])
    with pytest.raises(SpecError, match=rf"custom {kind} instance .*My.*pass it again.*"
                                        rf"Tuner.resume\(.*{kind}="):
        Tuner.resume(path)
    assert _files(storage["storage_path"]) == before


def test_resume_with_the_custom_instances_given_again_uses_them(storage, monkeypatch):
    sched, search = MyScheduler(), MySearcher()
    path = _journal(_tuner(storage, scheduler=sched, searcher=search))
    seen = {}

    def fake_run(self, resume=False):
        seen.update(tuner=self, resume=resume)

    monkeypatch.setattr(Tuner, "run", fake_run)
    Tuner.resume(path, scheduler=sched, searcher=search)
    t = seen["tuner"]
    assert seen["resume"] is True
    assert t.components.scheduler is sched and t.components.searcher is search
    assert t.spec.scheduler["type"].endswith("MyScheduler")


def test_sample_from_is_recorded_readably_and_resume_needs_the_space(storage, monkeypatch):
    space = {"x": uniform(0, 1), "y": sample_from(_double)}
    t = _tuner(storage, space=space)
    assert t.spec.to_json_dict()["space"]["y"] == {"type": "sample_from",
                                                  "fn": f"{__name__}:_double"}
    path = _journal(t)
    with pytest.raises(SpecError, match=rf"sample_from parameters \(y={__name__}:_double\).*"
                                        r"space="):
        Tuner.resume(path)
    seen = {}
    monkeypatch.setattr(Tuner, "run", lambda self, resume=False: seen.update(tuner=self))
    Tuner.resume(path, space=space)
    assert seen["tuner"].components.space["y"].fn is _double


def test_a_finished_run_is_not_resumed_and_nothing_is_written(storage, capsys):
    path = _journal(_tuner(storage), "finished")
    before = _files(storage["storage_path"])
    with pytest.raises(SpecError, match=r"is finished"):
        Tuner.resume(path)
    assert cli(["resume", path, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rungflow: error: resume: the run at") and "is finished" in err
    assert err.count("\n") == 1
    assert _files(storage["storage_path"]) == before
    assert not os.path.exists(os.path.join(os.path.dirname(storage["storage_path"]),
                                           "mlflow.db"))


def test_resume_without_a_journal_fails_naming_the_path(storage):
    spec = _tuner(storage).spec
    with pytest.raises(SpecError, match=r"resume: no journal at .*runs/r1/journal.jsonl"):
        open_experiment(spec, resume=True)
    assert not os.path.exists(storage["storage_path"])


BASE = {"trainable": "tests.trainables:curve", "metric": "score", "space": {"x": 1}}


@pytest.mark.parametrize("plateau,field", [
    ({"patience": 3}, "stop.plateau.patience: unknown field; allowed: metric, std"),
    ({"std": "small"}, "stop.plateau.std"),
    ({"num_results": 1}, "stop.plateau.num_results"),
    ({"grace_period": 1.5}, "stop.plateau.grace_period"),
    ([1, 2], "stop.plateau"),
])
def test_plateau_is_validated_naming_the_field(plateau, field):
    with pytest.raises(SpecError, match=field):
        validate_spec({**BASE, "stop": {"plateau": plateau}})
    if isinstance(plateau, dict):
        with pytest.raises(SpecError, match=field):
            stopper_from_dict({"plateau": plateau}, "score")


def test_plateau_defaults_and_flag():
    spec = validate_spec({**BASE, "stop": {"plateau": True}})
    (stopper,) = stopper_from_dict(spec.stop.model_dump(), spec.metric)
    assert stopper.metric == "score" and stopper.num_results == 4
    spec = validate_spec({**BASE, "stop": {"plateau": {"metric": "loss", "std": 0.1}}})
    (stopper,) = stopper_from_dict(spec.stop.model_dump(), spec.metric)
    assert stopper.metric == "loss" and stopper.std == 0.1


def test_best_names_only_a_finished_trial(monkeypatch, capsys, tmp_path):
    from tuning._trial import Status, Trial
    from tuning.experiment import ExperimentState

    running = Trial.with_results("trial-000", {"x": 0.9},
                                 [{"training_iteration": 1, "score": 0.99}], status=Status.RUNNING)
    failed = Trial("trial-001", {"x": 0.1}, Status.ERROR, error="boom")
    st = ExperimentState(spec={"name": "e", "metric": "score", "mode": "max"},
                         trials={t.trial_id: t for t in (running, failed)})
    res = TuneResult("e", str(tmp_path), "score", "max", st)
    monkeypatch.setattr("tuning.results.load_result", lambda path: res)
    assert cli(["best", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no finished trial" in err and "1 running" in err and "trial-000" not in err

    done = Trial.with_results("trial-002", {"x": 0.5}, [{"training_iteration": 9, "score": 0.5}],
                              status=Status.TERMINATED)
    st.trials[done.trial_id] = done
    assert cli(["best", str(tmp_path), "--json"]) == 0
    assert '"trial_id": "trial-002"' in capsys.readouterr().out
