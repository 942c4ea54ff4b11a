"""The engine's control loop on the simulated backend: fast, deterministic, no Prefect."""

from __future__ import annotations

import json

import pytest

from tuning._trial import Status
from tuning.backends.simulated import CrossingCurves, SimulatedBackend, TabulatedCurves
from tuning.controller import Budget, Controller
from tuning.experiment import Journal, replay
from tuning.schedulers import ASHA, FIFO
from tuning.searchers import RandomSearch
from tuning.space import Space, choice, loguniform, uniform


def make(tmp_path, scheduler, n=20, trainable=None, space=None, workers=4, name="sim", **kw):
    d = str(tmp_path / name)
    return Controller(
        name=name, trainable=trainable or CrossingCurves(max_t=27),
        space=Space(space or {"lr": loguniform(1e-4, 1e-1), "momentum": uniform(0, 1)}),
        metric=kw.pop("metric", "accuracy"), mode=kw.pop("mode", "max"), scheduler=scheduler,
        searcher=RandomSearch(), backend=SimulatedBackend(workers), journal=Journal(d),
        storage=d, budget=kw.pop("budget", Budget(num_samples=n)), seed=kw.pop("seed", 0), **kw)


def decisions(ctl):
    """Committed decisions: a crashed run's uncommitted tail (re-done after resume) is left
    out, as replay leaves it out."""
    out, pending = [], []
    for e in ctl.journal.read():
        if e["event"] == "run_started":
            pending.clear()
        elif e["event"] in ("state", "finished"):
            out += pending
            pending.clear()
        elif e["event"] == "decision":
            pending.append((e["trial_id"], e["decision"], e["iteration"]))
    return out


def test_fifo_runs_every_trial_to_the_end(tmp_path):
    ctl = make(tmp_path, FIFO(), n=8).run()
    assert len(ctl.trials) == 8
    assert all(t.status == Status.TERMINATED and t.iteration == 27 for t in ctl.trials.values())
    assert ctl.iterations_total == 8 * 27


def test_asha_stop_ends_trials_at_milestones(tmp_path):
    ctl = make(tmp_path, ASHA(max_t=27, grace_period=1, reduction_factor=3), n=30).run()
    stopped = [t for t in ctl.trials.values() if t.status == Status.STOPPED]
    finished = [t for t in ctl.trials.values() if t.status == Status.TERMINATED]
    assert stopped and finished
    for t in stopped:
        assert t.stopped_at in (1, 3, 9)
        # the milestone is a decision point: the STOP lands before the next iteration
        assert t.iteration == t.stopped_at
    assert all(t.iteration == 27 for t in finished)
    assert ctl.iterations_total < 30 * 27 / 3


def test_asha_promote_pauses_and_resumes_from_checkpoints(tmp_path):
    ctl = make(tmp_path, ASHA(max_t=27, grace_period=1, reduction_factor=3, variant="promote"),
               n=27).run()
    events = ctl.journal.read()
    resumed = [e for e in events if e["event"] == "segment_started" and e["checkpoint"]]
    assert resumed, "no trial was promoted"
    for e in resumed:  # a promoted trial continues from the checkpoint of its milestone
        assert e["start_iteration"] in (1, 3, 9)
    top = [t for t in ctl.trials.values() if t.iteration == 27]
    assert top and all(t.status == Status.TERMINATED for t in top)
    assert all(t.iteration in (1, 3, 9, 27) for t in ctl.trials.values())


def test_same_seed_same_run_and_different_seed_differs(tmp_path):
    a = make(tmp_path, ASHA(max_t=27), n=15, name="a").run()
    b = make(tmp_path, ASHA(max_t=27), n=15, name="b").run()
    c = make(tmp_path, ASHA(max_t=27), n=15, name="c", seed=1).run()
    assert decisions(a) == decisions(b)
    assert [t.config for t in a.trials.values()] == [t.config for t in b.trials.values()]
    assert [t.config for t in a.trials.values()] != [t.config for t in c.trials.values()]


def test_best_trial_is_the_one_with_the_best_last_value(tmp_path):
    table = TabulatedCurves({"a": [0.1, 0.2, 0.3], "b": [0.5, 0.6, 0.4], "c": [0.2, 0.3, 0.35]},
                            metric="score")
    ctl = make(tmp_path, FIFO(), n=1, trainable=table, space={"curve": choice(["a", "b", "c"])},
               metric="score").run()
    best = ctl.best_trial()
    assert best is not None
    lasts = {t.config["curve"]: t.last_result["score"] for t in ctl.trials.values()}
    assert best.last_result["score"] == max(lasts.values())


def test_grid_points_times_num_samples(tmp_path):
    from tuning.space import grid

    table = TabulatedCurves({"a": [0.1, 0.2], "b": [0.5, 0.6]}, metric="score")
    ctl = make(tmp_path, FIFO(), n=3, trainable=table, space={"curve": grid(["a", "b"])},
               metric="score").run()
    assert sorted(t.config["curve"] for t in ctl.trials.values()) == ["a"] * 3 + ["b"] * 3


@pytest.mark.parametrize("variant", ["stop", "promote"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, variant):
    sched = lambda: ASHA(max_t=27, grace_period=1, reduction_factor=3, variant=variant)
    whole = make(tmp_path, sched(), n=24, name="whole").run()
    crashed = make(tmp_path, sched(), n=24, name="crash")
    crashed.open()
    for i in range(45):  # then the process "dies": nothing after the last commit survives
        crashed.step()
        if i % 10 == 9:
            crashed.end_wave()  # a wave's end: the state snapshot resume replays up to
    assert not crashed.done
    crashed.journal.append("result", trial_id="trial-000", result={"torn": True})  # uncommitted
    crashed.journal.flush()
    st = replay(crashed.journal.read())
    resumed = make(tmp_path, sched(), n=24, name="crash", replayed=st)
    resumed.run()
    assert decisions(resumed) == decisions(whole)
    got = {t.trial_id: (t.config, str(t.status), t.iteration) for t in resumed.trials.values()}
    want = {t.trial_id: (t.config, str(t.status), t.iteration) for t in whole.trials.values()}
    assert got == want
    assert resumed.best_trial().trial_id == whole.best_trial().trial_id


def test_time_and_iteration_budgets_stop_the_experiment(tmp_path):
    ctl = make(tmp_path, FIFO(), n=50, budget=Budget(num_samples=50, total_iterations=100)).run()
    assert 100 <= ctl.iterations_total <= 100 + 4  # running trials stop at their next report
    assert "iteration budget" in ctl.stopping
    ctl = make(tmp_path, FIFO(), n=50, name="t", budget=Budget(num_samples=50, time_budget_s=30))
    ctl.run()
    assert ctl.backend.now <= 31 + 1
    assert all(t.is_terminal for t in ctl.trials.values())


def test_metric_threshold_stops_early(tmp_path):
    ctl = make(tmp_path, FIFO(), n=40, budget=Budget(num_samples=40, metric_threshold=0.7)).run()
    assert "threshold" in ctl.stopping
    assert len(ctl.trials) < 40


def test_missing_metric_aborts_with_a_clear_error(tmp_path):
    from tuning.controller import MetricMissingError

    ctl = make(tmp_path, FIFO(), n=4, metric="nope").run()
    with pytest.raises(MetricMissingError, match="metric 'nope' was never reported.*accuracy"):
        ctl.raise_if_aborted()


def test_journal_state_is_json(tmp_path):
    ctl = make(tmp_path, ASHA(max_t=9), n=5).run()
    for e in ctl.journal.read():
        json.dumps(e)
