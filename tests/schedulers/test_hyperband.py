"""Synchronous HyperBand: the paper's bracket table and rung decisions on plain data."""

from __future__ import annotations

import pytest

from tuning._trial import Status, Trial
from tuning.schedulers import Decision, HyperBand, Resume, StartNew
from tuning.schedulers._hyperband import (
    hyperband_plan,
    hyperband_s_max,
    rung_sizes,
    successive_halving,
)

NAN = float("nan")


def test_paper_table_r81_eta3() -> None:
    plan = hyperband_plan(81, 1, 3)
    # Li et al. 2018, Table 1: s=4..0 start n = 81, 34, 15, 8, 5 at r = 1, 3, 9, 27, 81
    assert [(p.s, p.sizes[0], p.milestones[0]) for p in plan] == [
        (4, 81, 1), (3, 34, 3), (2, 15, 9), (1, 8, 27), (0, 5, 81)]
    # successive halving inside s=4: 81@1, 27@3, 9@9, 3@27, 1@81
    assert list(zip(plan[0].sizes, plan[0].milestones)) == [(81, 1), (27, 3), (9, 9), (3, 27),
                                                            (1, 81)]
    # s=3: 34@3, 11@9, 3@27, 1@81; s=2: 15@9, 5@27, 1@81; s=1: 8@27, 2@81; s=0: 5@81
    assert list(zip(plan[1].sizes, plan[1].milestones)) == [(34, 3), (11, 9), (3, 27), (1, 81)]
    assert list(zip(plan[2].sizes, plan[2].milestones)) == [(15, 9), (5, 27), (1, 81)]
    assert list(zip(plan[3].sizes, plan[3].milestones)) == [(8, 27), (2, 81)]
    assert list(zip(plan[4].sizes, plan[4].milestones)) == [(5, 81)]


def test_s_max_integer_loop_and_float_settings() -> None:
    assert hyperband_s_max(81, 1, 3) == 4
    assert hyperband_s_max(80, 1, 3) == 3
    assert hyperband_s_max(243, 3, 3) == 4
    assert hyperband_s_max(1.0, 1 / 9, 3) == 2  # 1/9 * 9 is not exactly 1.0 in floats
    plan = hyperband_plan(1.0, 1 / 9, 3)
    assert plan[0].milestones == pytest.approx((1 / 9, 1 / 3, 1.0))


def test_grace_period_scales_milestones() -> None:
    plan = hyperband_plan(90, 10, 3)  # R = 9
    assert [p.milestones for p in plan] == [(10, 30, 90), (30, 90), (90,)]
    assert [p.sizes for p in plan] == [(9, 3, 1), (5, 1), (3,)]


def test_rung_sizes_and_successive_halving() -> None:
    assert rung_sizes(4, 3, 2) == (4, 1, 1)  # at least one goes on
    top, rest = successive_halving({"a": 0.1, "b": NAN, "c": 0.5, "d": 0.9}, 2, {"d"})
    # d ended, b is NaN: top 2 of {a: 0.1, c: 0.5} -> c, a; the rest (b) stops
    assert top == ["c", "a"] and rest == ["b"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_t": 10, "grace_period": 20}, "grace_period must be <= max_t, got grace_period=20"),
    ({"reduction_factor": 1}, "reduction_factor must be >= 2, got 1"),
    ({"max_t": -1}, "max_t must be > 0, got -1"),
])
def test_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HyperBand(**kwargs)


def _start(hb: HyperBand, trials: dict[str, Trial], n: int) -> list[Trial]:
    out = []
    for _ in range(n):
        sug = hb.choose_trial_to_run(trials, True)
        assert isinstance(sug, StartNew) and sug.config is None
        t = Trial(f"t{len(trials)}", {}, info=dict(sug.info))
        trials[t.trial_id] = t
        hb.on_trial_add(t)
        t.status = Status.RUNNING
        out.append(t)
    return out


def _report(hb: HyperBand, t: Trial, it: int, acc: float) -> Decision:
    result = {"training_iteration": it, "acc": acc}
    t.observe(result)
    d = hb.on_result(t, result)
    if d == Decision.PAUSE:
        t.status = Status.PAUSED
    elif d == Decision.STOP:
        t.status = Status.TERMINATED
        hb.on_trial_complete(t, result)
    return d


def _stop(hb: HyperBand, trials: dict[str, Trial]) -> list[str]:
    ids = hb.trials_to_stop(trials)
    for tid in ids:
        trials[tid].status = Status.STOPPED
        hb.on_trial_complete(trials[tid], trials[tid].last_result)
    return ids


def test_bracket_walk_through() -> None:
    hb = HyperBand(max_t=9, reduction_factor=3, metric="acc", mode="max")
    trials: dict[str, Trial] = {}
    first = _start(hb, trials, 9)
    assert {t.info["bracket"] for t in first} == {2} and first[0].bracket == 2
    assert hb.pause_at(first[0]) == 1
    # the next bracket starts while bracket 2 runs
    nxt = hb.choose_trial_to_run(trials, True)
    assert nxt == StartNew(info={"bracket": 1})
    for i, t in enumerate(first[:8]):
        assert _report(hb, t, 1, i / 10) == Decision.PAUSE
    assert _stop(hb, trials) == []  # the rung is not complete yet
    assert _report(hb, first[8], 1, 0.05) == Decision.PAUSE
    assert first[8].rung == 1
    # complete: values t0..t7 = 0.0..0.7, t8 = 0.05 -> keep floor(9/3) = 3: t7, t6, t5
    resumed = [hb.choose_trial_to_run(trials, False) for _ in range(3)]
    assert resumed == [Resume("t7"), Resume("t6"), Resume("t5")]
    assert sorted(_stop(hb, trials)) == ["t0", "t1", "t2", "t3", "t4", "t8"]
    for tid in ("t7", "t6", "t5"):
        trials[tid].status = Status.RUNNING
        assert hb.pause_at(trials[tid]) == 3
    assert _report(hb, trials["t7"], 3, 0.2) == Decision.PAUSE
    assert _report(hb, trials["t6"], 3, 0.9) == Decision.PAUSE
    assert _report(hb, trials["t5"], 3, 0.4) == Decision.PAUSE
    assert hb.choose_trial_to_run(trials, False) == Resume("t6")  # floor(3/3) = 1: the best
    trials["t6"].status = Status.RUNNING
    assert hb.pause_at(trials["t6"]) is None  # the last rung runs to max_t
    assert _report(hb, trials["t6"], 9, 0.95) == Decision.STOP and trials["t6"].rung == 9
    assert sorted(_stop(hb, trials)) == ["t5", "t7"]
    assert not hb.is_finished(trials)


def test_early_close_when_no_more_trials_can_start() -> None:
    hb = HyperBand(max_t=9, reduction_factor=3, metric="acc", mode="max")
    trials: dict[str, Trial] = {}
    ts = _start(hb, trials, 4)
    for t, v in zip(ts, [0.3, 0.1, NAN, 0.2]):
        _report(hb, t, 1, v)
    # nothing more can start: bracket 2 closes with 4 trials -> sizes (4, 1, 1): t0 goes on
    assert hb.choose_trial_to_run(trials, False) == Resume("t0")
    assert sorted(_stop(hb, trials)) == ["t1", "t2", "t3"]
    trials["t0"].status = Status.RUNNING
    _report(hb, trials["t0"], 3, 0.5)
    assert hb.choose_trial_to_run(trials, False) == Resume("t0")
    trials["t0"].status = Status.RUNNING
    assert _report(hb, trials["t0"], 9, 0.6) == Decision.STOP
    assert hb.is_finished(trials)  # later brackets were dropped
    assert hb.choose_trial_to_run(trials, True) is None


def test_errored_member_does_not_block_the_rung() -> None:
    hb = HyperBand(max_t=3, reduction_factor=3, metric="acc", mode="max")
    trials: dict[str, Trial] = {}
    ts = _start(hb, trials, 3)  # bracket s=1: 3@1, 1@3
    _report(hb, ts[0], 1, 0.1)
    _report(hb, ts[1], 1, 0.2)
    ts[2].status = Status.ERROR
    hb.on_trial_error(ts[2])
    assert hb.choose_trial_to_run(trials, False) == Resume("t1")
    assert _stop(hb, trials) == ["t0"]


def test_state_round_trip_mid_rung() -> None:
    import json

    hb = HyperBand(max_t=9, reduction_factor=3, metric="acc", mode="max", seed=0)
    trials: dict[str, Trial] = {}
    ts = _start(hb, trials, 9)
    for i, t in enumerate(ts[:8]):
        _report(hb, t, 1, i / 10)
    state = json.loads(json.dumps(hb.state_dict(), allow_nan=False))
    fresh = HyperBand(max_t=9, reduction_factor=3, metric="acc", mode="max")
    fresh.load_state_dict(state)
    assert fresh.state_dict() == hb.state_dict()
    _report(fresh, ts[8], 1, 0.9)
    assert fresh.choose_trial_to_run(trials, False) == Resume("t8")



def test_a_new_round_starts_once_every_bracket_is_filled() -> None:
    hb = HyperBand(max_t=3, reduction_factor=3, metric="acc", mode="max")  # s=1: 3@1, 1@3; s=0: 2@3
    assert [(p.s, p.sizes) for p in hb.plan] == [(1, (3, 1)), (0, (2,))]
    trials: dict[str, Trial] = {}
    first = _start(hb, trials, 5)
    assert [t.info["bracket"] for t in first] == [1, 1, 1, 0, 0]
    # every bracket of round 1 has its trials, trials may still start: round 2 begins at s_max
    again = _start(hb, trials, 4)
    assert [t.info["bracket"] for t in again] == [1, 1, 1, 0]
    assert hb.state_dict()["rounds"] == 2
    assert not hb.is_finished(trials)
    # the controller can start no more: round 2's bracket s=0 closes with its 1 trial
    assert hb.choose_trial_to_run(trials, False) is None
    for t in first[:3] + again[:3]:
        assert _report(hb, t, 1, float(t.trial_id[1:])) == Decision.PAUSE
    for t in (first[3], first[4], again[3]):
        assert _report(hb, t, 3, 0.5) == Decision.STOP
    resumed = [hb.choose_trial_to_run(trials, False) for _ in range(3)]
    assert resumed == [Resume("t2"), Resume("t7"), None]  # the best of each s=1 bracket
    assert sorted(_stop(hb, trials)) == ["t0", "t1", "t5", "t6"]
    assert not hb.is_finished(trials)
    for tid in ("t2", "t7"):
        trials[tid].status = Status.RUNNING
        assert _report(hb, trials[tid], 3, 0.9) == Decision.STOP
    assert hb.is_finished(trials)
    assert hb.choose_trial_to_run(trials, True) is None  # ended for good: no third round


def test_all_brackets_done_is_not_finished_while_trials_can_start() -> None:
    hb = HyperBand(max_t=3, reduction_factor=3, metric="acc", mode="max")
    trials: dict[str, Trial] = {}
    ts = _start(hb, trials, 5)
    for t in ts[:3]:
        _report(hb, t, 1, float(t.trial_id[1:]))
    for t in ts[3:]:
        _report(hb, t, 3, 0.1)
    assert hb.choose_trial_to_run(trials, False) == Resume("t2")
    _stop(hb, trials)
    trials["t2"].status = Status.RUNNING
    _report(hb, trials["t2"], 3, 0.9)
    assert not hb.is_finished(trials)  # round 1 is done, but a new round may start
    assert hb.choose_trial_to_run(trials, True) == StartNew(info={"bracket": 1})
    hb2 = HyperBand(max_t=3, reduction_factor=3, metric="acc", mode="max")
    hb2.load_state_dict(hb.state_dict())
    assert hb2.state_dict() == hb.state_dict()


def test_max_rounds_caps_the_rounds() -> None:
    hb = HyperBand(max_t=3, reduction_factor=3, max_rounds=1, metric="acc", mode="max")
    trials: dict[str, Trial] = {}
    _start(hb, trials, 5)
    assert hb.choose_trial_to_run(trials, True) is None
    assert hb.settings()["max_rounds"] == 1
    with pytest.raises(ValueError, match="max_rounds must be >= 1, got 0"):
        HyperBand(max_rounds=0)


def test_state_round_trip_in_the_second_round() -> None:
    import json

    hb = HyperBand(max_t=9, reduction_factor=3, metric="acc", mode="max", seed=0)
    trials: dict[str, Trial] = {}
    ts = _start(hb, trials, 17 + 9)  # round 1 (9 + 5 + 3) and round 2's bracket s=2
    for i, t in enumerate(ts[17:25]):
        _report(hb, t, 1, i / 10)
    state = json.loads(json.dumps(hb.state_dict(), allow_nan=False))
    assert state["rounds"] == 2 and len(state["brackets"]) == 6
    fresh = HyperBand(max_t=9, reduction_factor=3, metric="acc", mode="max")
    fresh.load_state_dict(state)
    assert fresh.state_dict() == hb.state_dict()
    _report(fresh, ts[25], 1, 0.9)
    assert fresh.choose_trial_to_run(trials, False) == Resume("t25")
    assert fresh.choose_trial_to_run(trials, False) == Resume("t24")
    bad = dict(state, rounds=3)
    with pytest.raises(ValueError, match="6 brackets for 3 round"):
        HyperBand(max_t=9, reduction_factor=3).load_state_dict(bad)
