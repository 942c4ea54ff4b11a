"""MO-ASHA: rung decisions by constrained non-dominated sorting, checked by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tuning._trial import Status, Trial
from tuning.schedulers import (
    ASHA,
    FIFO,
    MOASHA,
    Decision,
    HyperBand,
    MedianStopping,
    Resume,
    StartNew,
    make_scheduler,
    moasha_continues,
    moasha_promotable,
)

TWO = (["acc", "ms"], ["max", "min"])


def scheduler(variant: str = "stop", constraints=None, **kw) -> MOASHA:
    s = MOASHA(max_t=9, grace_period=1, reduction_factor=3, variant=variant, **kw)
    s.set_objective(*TWO, np.random.default_rng(0), constraints=constraints)
    return s


def report(s: MOASHA, trial: Trial, it: int, acc: float, ms: float) -> Decision:
    result = {"training_iteration": it, "acc": acc, "ms": ms}
    trial.observe(result)
    return s.on_result(trial, result)


def add(s: MOASHA, n: int) -> list[Trial]:
    trials = [Trial(f"t{i}", {}, Status.RUNNING) for i in range(n)]
    for t in trials:
        s.on_trial_add(t)
    return trials


def test_continues_by_hand() -> None:
    # rung: a = (0.9, 30 ms), b = (0.5, 5 ms): both non-dominated, the ends of the front
    rung = [((0.9, -30.0), 0.0), ((0.5, -5.0), 0.0)]
    assert moasha_continues((0.95, -4.0), 0.0, rung, 3)  # dominates both: first of 3
    assert not moasha_continues((0.4, -40.0), 0.0, rung, 3)  # dominated: front 1
    assert not moasha_continues((0.95, -4.0), 0.5, rung, 3)  # infeasible
    assert not moasha_continues((float("nan"), -4.0), 0.0, rung, 3)
    assert moasha_continues((0.1, -50.0), 0.0, [], 3)  # the first at a rung goes on
    # 4 trials keep ceil(4/3) = 2: a new front end ranks among the ends by accuracy
    three = rung + [((0.6, -20.0), 0.0)]
    assert moasha_continues((0.99, -35.0), 0.0, three, 3)  # new accuracy end: first
    assert not moasha_continues((0.7, -10.0), 0.0, three, 3)  # interior of the front


def test_promotable_by_hand() -> None:
    rung = {"a": ((0.9, -30.0), 0.0), "b": ((0.5, -5.0), 0.0), "c": ((0.4, -50.0), 0.0),
            "d": ((0.99, -1.0), 3.0), "e": ((0.3, -60.0), 0.0), "f": ((0.2, -70.0), 0.0),
            "g": ((0.95, -0.5), 1.0)}
    # 7 trials: top floor(7/3) = 2 = the front {a, b}; d and g dominate it but are infeasible
    assert moasha_promotable(rung, [], 3) == ["a", "b"]
    assert moasha_promotable(rung, ["a", "b"], 3) == []


def test_stop_variant_decisions() -> None:
    s = scheduler()
    t = add(s, 6)
    assert report(s, t[0], 1, 0.50, 10.0) == Decision.CONTINUE  # first at the rung
    assert report(s, t[1], 1, 0.40, 12.0) == Decision.STOP  # dominated by t0
    assert report(s, t[2], 1, 0.60, 8.0) == Decision.CONTINUE  # dominates both
    assert report(s, t[3], 1, 0.30, 2.0) == Decision.CONTINUE  # a new end (fastest): 2 of 4
    assert t[0].rung == 1 and s.milestones() == [1, 3, 9]
    assert report(s, t[0], 2, 0.55, 10.0) == Decision.CONTINUE  # between milestones
    assert report(s, t[0], 3, 0.70, 10.0) == Decision.CONTINUE  # first at rung 3
    # non-dominated, but two front ends go by accuracy: t0 first, and 2 trials keep 1
    assert report(s, t[2], 3, 0.65, 8.0) == Decision.STOP
    assert report(s, t[0], 9, 0.80, 10.0) == Decision.STOP  # max_t: finished


def test_infeasible_trials_are_stopped_at_the_first_milestone() -> None:
    s = scheduler(constraints={"ms": {"max": 10}})
    t = add(s, 3)
    assert report(s, t[0], 1, 0.99, 25.0) == Decision.STOP  # the best accuracy, too slow
    assert report(s, t[1], 1, 0.20, 9.0) == Decision.CONTINUE
    assert report(s, t[2], 1, 0.30, 9.5) == Decision.CONTINUE  # ranks above t0, which is last


def test_promote_variant_promotes_the_best_feasible_paused_trial() -> None:
    s = scheduler("promote", constraints={"ms": {"max": 10}})
    values = [(0.9, 20.0), (0.5, 5.0), (0.4, 9.0), (0.3, 8.0), (0.2, 7.0), (0.1, 9.5)]
    trials = {t.trial_id: t for t in add(s, len(values))}
    for t, (acc, ms) in zip(trials.values(), values):
        assert s.pause_at(t) == 1
        assert report(s, t, 1, acc, ms) == Decision.PAUSE
        t.status = Status.PAUSED
    # t0 is infeasible (ranked last); t1 dominates every other: front 0; t2, t3, t4 are front
    # 1 (t2 and t4 its ends, t2 the more accurate); t5 is dominated by t4. Top 6 // 3 = 2.
    assert s.choose_trial_to_run(trials, True) == Resume("t1")
    trials["t1"].status = Status.RUNNING
    assert s.pause_at(trials["t1"]) == 3
    assert s.choose_trial_to_run(trials, True) == Resume("t2")
    trials["t2"].status = Status.RUNNING
    assert isinstance(s.choose_trial_to_run(trials, True), StartNew)  # top 2 used up
    assert s.choose_trial_to_run(trials, False) is None


def test_an_infeasible_paused_trial_is_never_resumed() -> None:
    s = scheduler("promote", constraints={"ms": {"max": 10}})
    trials = {}
    for i in range(9):  # every trial infeasible but t8, which is the worst in accuracy
        t = Trial(f"t{i}", {}, Status.RUNNING)
        trials[t.trial_id] = t
        s.on_trial_add(t)
        report(s, t, 1, 0.9 - 0.05 * i, 5.0 if i == 8 else 50.0)
        t.status = Status.PAUSED
    resumed = []
    while isinstance(sugg := s.choose_trial_to_run(trials, False), Resume):
        resumed.append(sugg.trial_id)
        trials[sugg.trial_id].status = Status.RUNNING
    assert resumed == ["t8"]


def test_one_metric_ranks_by_it() -> None:
    s = MOASHA(max_t=9, reduction_factor=3, metric="loss", mode="min")
    t = add(s, 5)
    decide = lambda tr, v: s.on_result(tr, {"training_iteration": 1, "loss": v})
    assert [decide(tr, v).value for tr, v in zip(t, [0.5, 0.6, 0.4, 0.45, 0.7])] == \
        ["CONTINUE", "STOP", "CONTINUE", "CONTINUE", "STOP"]  # kept: ceil(n/3) best


def test_state_round_trips_through_json() -> None:
    s = scheduler("promote", constraints={"ms": {"max": 10}})
    t = add(s, 4)
    for tr, (acc, ms) in zip(t, [(0.5, 5.0), (float("nan"), 6.0), (0.7, 20.0), (0.6, 4.0)]):
        report(s, tr, 1, acc, ms)
    state = json.loads(json.dumps(s.state_dict(), allow_nan=False))
    fresh = scheduler("promote", constraints={"ms": {"max": 10}})
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    assert fresh.settings()["type"] == "moasha"
    assert fresh.settings()["tie_break"] == "crowding_distance"


@pytest.mark.parametrize("make", [lambda: ASHA(max_t=9), lambda: HyperBand(max_t=9),
                                  lambda: MedianStopping()])
def test_single_metric_schedulers_refuse_several_metrics(make) -> None:
    with pytest.raises(ValueError, match=r"^scheduler.type: \w+ ranks trials by one metric and "
                                         r"knows no constraints; with acc \(max\), ms \(min\) "
                                         r"use MOASHA"):
        make().set_objective(*TWO)
    with pytest.raises(ValueError, match=r"ranks trials by one metric"):
        make().set_objective("acc", "max", constraints={"ms": {"max": 3}})


def test_fifo_and_moasha_accept_several_metrics() -> None:
    for s in (FIFO(), make_scheduler("moasha", max_t=9)):
        s.set_objective(*TWO, constraints={"ms": {"max": 3}})
        assert s.objective is not None and s.objective.multi
        assert (s.metric, s.mode) == ("acc", "max")
