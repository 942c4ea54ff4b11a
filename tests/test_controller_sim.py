"""The engine's control loop on the simulated backend: fast, deterministic, no Prefect."""

from __future__ import annotations

import json
import math

import pytest

from tuning._trial import Status
from tuning.backends.simulated import CrossingCurves, SimulatedBackend, TabulatedCurves
from tuning.controller import Budget, Controller
from tuning.experiment import Journal, replay
from tuning.schedulers import ASHA, BOHB, FIFO, PBT, HyperBand, MedianStopping
from tuning.searchers import OptunaSearch, RandomSearch
from tuning.space import Space, choice, loguniform, uniform


def make(tmp_path, scheduler, n=20, trainable=None, space=None, workers=4, name="sim",
         restore_running=True, **kw):
    d = str(tmp_path / name)
    return Controller(
        name=name, trainable=trainable or CrossingCurves(max_t=27),
        space=Space(space or {"lr": loguniform(1e-4, 1e-1), "momentum": uniform(0, 1)}),
        metric=kw.pop("metric", "accuracy"), mode=kw.pop("mode", "max"), scheduler=scheduler,
        searcher=kw.pop("searcher", None) or RandomSearch(),
        backend=SimulatedBackend(workers, restore_running=restore_running), journal=Journal(d),
        storage=d, budget=kw.pop("budget", Budget(num_samples=n)), seed=kw.pop("seed", 0), **kw)


def committed(ctl, kind):
    """The journal's committed events of one kind: a crashed run's uncommitted tail (re-done
    after resume) is left out, as replay leaves it out."""
    out, pending = [], []
    for e in ctl.journal.read():
        if e["event"] == "run_started":
            pending.clear()
        elif e["event"] in ("state", "finished"):
            out += pending
            pending.clear()
        elif e["event"] == kind:
            pending.append(e)
    return out


def decisions(ctl):
    return [(e["trial_id"], e["decision"], e["iteration"]) for e in committed(ctl, "decision")]


def histories(ctl):
    """Each trial's committed results as (iteration, accuracy), in the journal's order."""
    out = {}
    for e in committed(ctl, "result"):
        out.setdefault(e["trial_id"], []).append((e["result"]["training_iteration"],
                                                  e["result"]["accuracy"]))
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


def crash_mid_run(tmp_path, sched, steps=45, mid_trial=False, **kw):
    """A run whose process "dies" after ``steps`` messages (``mid_trial``: or later, 5 steps
    after the first commit past them that caught a trial mid-way): nothing after its last
    commit (a wave's end, every 10 steps) survives, and a torn uncommitted tail is left."""
    crashed = make(tmp_path, sched, name="crash", **kw)
    crashed.open()
    i, crash_at = 0, None if mid_trial else steps
    while crash_at is None or i < crash_at:
        crashed.step()
        i += 1
        if i % 10 == 0:
            crashed.end_wave()  # a wave's end, and a state snapshot (resume replays up to it)
            crashed.commit()
            if crash_at is None and i >= steps and \
                    any(crashed.trials[tid].iteration > 0 for tid in crashed.flights):
                crash_at = i + 5
    assert not crashed.done
    crashed.journal.append("result", trial_id="trial-000", result={"torn": True})  # uncommitted
    crashed.journal.flush()
    return replay(crashed.journal.read())


def outcome(ctl):
    return {t.trial_id: (t.config, str(t.status), t.iteration, t.last_result.get("accuracy"))
            for t in ctl.trials.values()}


@pytest.mark.parametrize("variant", ["stop", "promote"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, variant):
    """The simulated backend's exact restore: the segments that were running go on."""
    sched = lambda: ASHA(max_t=27, grace_period=1, reduction_factor=3, variant=variant)
    whole = make(tmp_path, sched(), n=24, name="whole").run()
    st = crash_mid_run(tmp_path, sched(), n=24)
    resumed = make(tmp_path, sched(), n=24, name="crash", replayed=st)
    resumed.run()
    assert decisions(resumed) == decisions(whole)
    assert outcome(resumed) == outcome(whole)
    assert resumed.best_trial().trial_id == whole.best_trial().trial_id


def resubmitted(ctl, interrupted):
    """(trial, checkpoint, start iteration) of the segments the resumed run started before any
    trial it started itself: the trials the crash interrupted."""
    events = ctl.journal.read()
    last_run = max(i for i, e in enumerate(events) if e["event"] == "run_started")
    out = {}
    for e in events[last_run:]:
        if e["event"] == "segment_started":
            if e["trial_id"] not in interrupted:
                break
            out.setdefault(e["trial_id"], (e["checkpoint"], e["start_iteration"]))
    return out


def check_resubmitted_run(resumed, interrupted, whole, n):
    """What a resume that resubmits interrupted trials from their checkpoints guarantees;
    ``interrupted``: trial -> (checkpoint, its iteration) of the trials running at the crash,
    as replay gave them."""
    # every interrupted trial was started again from its last committed checkpoint
    assert resubmitted(resumed, interrupted) == interrupted
    # every trial once, ended, its history from iteration 1 without a gap or a repeat
    assert sorted(resumed.trials) == [f"trial-{i:03d}" for i in range(n)]
    assert all(t.is_terminal for t in resumed.trials.values())
    got, want = histories(resumed), histories(whole)
    assert sorted(got) == sorted(resumed.trials)
    for tid, history in got.items():
        its = [it for it, _ in history]
        assert its == list(range(1, resumed.trials[tid].iteration + 1)), (tid, its)
        # the same config (the searcher's state was restored), and the same curve as in the
        # uninterrupted run wherever both reached an iteration
        assert resumed.trials[tid].config == whole.trials[tid].config
        common = min(len(history), len(want[tid]))
        assert history[:common] == want[tid][:common]


@pytest.mark.parametrize("sched", [
    lambda: ASHA(max_t=27, grace_period=1, reduction_factor=3, variant="stop"),
    lambda: ASHA(max_t=27, grace_period=1, reduction_factor=3, variant="promote"),
    lambda: FIFO(),
], ids=["asha-stop", "asha-promote", "fifo"])
@pytest.mark.parametrize("workers", [1, 4])
def test_resume_resubmitting_interrupted_trials_from_their_checkpoints(tmp_path, sched, workers):
    """The path real backends take: the segments running at the crash are gone
    (``running_trials()`` is empty) and their trials restart from their last checkpoints.

    With one worker the order of results does not depend on timing, so the run must equal the
    uninterrupted one decision for decision; with four, resubmitted segments finish later than
    the lost ones would have, decisions that compare trials may differ, and what is guaranteed
    is each trial once, gapless histories, identical curves and configs, and (FIFO, whose
    outcome does not depend on order) the same results and best trial.
    """
    n = 16
    whole = make(tmp_path, sched(), n=n, name="whole", workers=workers).run()
    st = crash_mid_run(tmp_path, sched(), steps=20, mid_trial=True, n=n, workers=workers)
    # running at the crash: those whose ending was already decided (a STOP at a milestone)
    # end as decided; the others start again from their checkpoints
    flights = st.state["controller"]["flights"]
    decided = {tid: fl["end_as"] for tid, fl in flights.items() if fl.get("end_as")}
    interrupted = {tid: (t.checkpoint, t.checkpoint_iteration) for tid, t in st.trials.items()
                   if t.status == Status.RUNNING and tid not in decided}
    assert any(it > 0 for _, it in interrupted.values()), "no trial was interrupted mid-way"
    resumed = make(tmp_path, sched(), n=n, name="crash", replayed=st, workers=workers,
                   restore_running=False)
    resumed.run()
    check_resubmitted_run(resumed, interrupted, whole, n)
    assert {tid: str(resumed.trials[tid].status) for tid in decided} == decided
    if workers == 1 or isinstance(resumed.scheduler, FIFO):
        assert outcome(resumed) == outcome(whole)
        assert resumed.best_trial().trial_id == whole.best_trial().trial_id
    if workers == 1:
        assert decisions(resumed) == decisions(whole)


def test_a_stop_decided_before_the_crash_holds_when_the_trial_is_resubmitted(tmp_path):
    """A STOP at a milestone, committed while its segment's end was still on the way: the
    resumed run (its segments lost, as on a real cluster) ends the trial there; it does not
    train it on from its checkpoint."""
    sched = lambda: ASHA(max_t=27, grace_period=1, reduction_factor=3)
    c = make(tmp_path, sched(), n=16, name="crash")
    c.open()
    while not c.done:
        c.step()
        decided = {tid: (fl.ending.status, c.trials[tid].iteration)
                   for tid, fl in c.flights.items() if fl.ending is not None}
        if decided and len(c.trials) > 5:
            break
    assert decided, "no STOP was caught in flight"
    c.end_wave()
    c.commit()  # committed with the STOP decided and the segment's end not yet handled
    resumed = make(tmp_path, sched(), n=16, name="crash", replayed=replay(c.journal.read()),
                   restore_running=False).run()
    for tid, (status, iteration) in decided.items():
        t = resumed.trials[tid]
        assert (t.status, t.iteration, t.stopped_at) == (status, iteration, iteration)
    assert not [e for e in resumed.journal.read()[1:] if e["event"] == "segment_started"
                and e["trial_id"] in decided and e["checkpoint"] is not None]


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


class Diverging(CrossingCurves):
    """CrossingCurves whose large learning rates diverge: NaN from iteration 3 on."""

    def step(self, state, config, t):
        state, metrics, cost = super().step(state, config, t)
        if config["lr"] > 0.03 and t >= 3:
            metrics = {k: float("nan") for k in metrics}
        return state, metrics, cost


STATEFUL = {
    "asha-promote": lambda: ASHA(max_t=27, grace_period=1, reduction_factor=3,
                                 variant="promote"),
    "hyperband": lambda: HyperBand(max_t=27, reduction_factor=3),
    "median": lambda: MedianStopping(grace_period=2, min_samples_required=2),
    "pbt": lambda: PBT(perturbation_interval=3, max_t=27,
                       hyperparam_mutations={"momentum": [0.1, 0.5, 0.9]}),
    "bohb": lambda: BOHB(max_t=27, reduction_factor=3, min_points_in_model=3),
}


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_state_read_back_from_disk_restores_every_part_exactly(tmp_path, name):
    """What resume reads is what the run had: the last state event, read from the file by a
    new Journal, loads into fresh scheduler and searcher objects whose state equals the live
    ones', and replay gives every trial's status, checkpoint and last result (NaN included)."""
    tpe = lambda: OptunaSearch("tpe", n_startup_trials=3)
    ctl = make(tmp_path, STATEFUL[name](), n=20, trainable=Diverging(max_t=27),
               searcher=tpe()).run()
    errored = [t for t in ctl.trials.values() if t.status == Status.ERROR]
    assert errored and all(math.isnan(t.last_result["accuracy"]) for t in errored)

    st = replay(Journal(ctl.storage).read())
    fresh = make(tmp_path, STATEFUL[name](), name="fresh", searcher=tpe(), seed=1)
    fresh.scheduler.load_state_dict(st.state["scheduler"])
    fresh.searcher.load_state_dict(st.state["searcher"])
    assert _canon(fresh.scheduler.state_dict()) == _canon(ctl.scheduler.state_dict())
    assert _canon(fresh.searcher.state_dict()) == _canon(ctl.searcher.state_dict())
    assert st.state["controller"] == ctl._controller_state()

    def view(trials):
        return {tid: (str(t.status), t.checkpoint, t.checkpoint_iteration, t.iteration,
                      json.dumps(t.last_result, sort_keys=True)) for tid, t in trials.items()}

    assert view(st.trials) == view(ctl.trials)


def _canon(state):
    """Tuples and lists are one thing in JSON; everything else must be equal as it is."""
    if isinstance(state, dict):
        return {k: _canon(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [_canon(v) for v in state]
    return state
