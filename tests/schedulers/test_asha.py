"""ASHA decisions on plain data, each checked against a decision computed by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tuning._trial import Status, Trial
from tuning.schedulers import ASHA, Decision, Resume, StartNew
from tuning.schedulers._asha import asha_continues, asha_cutoff, promotable, rank_trials

NAN = float("nan")


def _add(s: ASHA, n: int, start: int = 0) -> list[Trial]:
    trials = [Trial(f"t{i}", {}) for i in range(start, start + n)]
    for t in trials:
        s.on_trial_add(t)
    return trials


def _report(s: ASHA, trial: Trial, it: int, value: float, key: str = "acc") -> Decision:
    result = {"training_iteration": it, key: value}
    trial.observe(result)
    return s.on_result(trial, result)


# -- pure helpers --------------------------------------------------------------------------
def test_cutoff_is_the_ray_percentile() -> None:
    # (1 - 1/3) * 100 = 66.67th percentile of [0.1, 0.5, 0.9]: rank 2/3 * 2 = 1.333 ->
    # 0.5 + 0.333 * (0.9 - 0.5) = 0.6333
    assert asha_cutoff([0.1, 0.5, 0.9], 3) == pytest.approx(0.63333333)
    # rf=2: the median of [1, 3] is 2
    assert asha_cutoff([1.0, 3.0], 2) == pytest.approx(2.0)
    assert asha_cutoff([NAN, 1.0], 2) == pytest.approx(1.0)  # NaN ignored
    assert asha_cutoff([NAN], 3) is None and asha_cutoff([], 3) is None


def test_continues_nan_never_goes_on() -> None:
    assert not asha_continues(NAN, [], 3)
    assert asha_continues(0.2, [], 3)  # the first at a milestone always goes on
    assert asha_continues(0.5, [0.5], 3)  # a tie with the cutoff goes on


def test_rank_and_promotable() -> None:
    rung = {"a": 0.5, "b": 0.9, "c": 0.1, "d": NAN, "e": 0.7, "f": 0.9}
    assert rank_trials(rung) == ["b", "f", "e", "a", "c"]  # tie b/f: recording order
    # n=6, rf=3 -> top 2: b, f
    assert promotable(rung, [], 3) == ["b", "f"]
    assert promotable(rung, ["b"], 3) == ["f"]
    # n=2, rf=3 -> floor(2/3) = 0: nobody
    assert promotable({"a": 1.0, "b": 2.0}, [], 3) == []


# -- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_t": 10, "grace_period": 20}, "grace_period must be <= max_t, got grace_period=20, max_t=10"),
    ({"reduction_factor": 1}, "reduction_factor must be >= 2, got 1"),
    ({"max_t": 0}, "max_t must be > 0, got 0"),
    ({"brackets": 0}, "brackets must be >= 1, got 0"),
    ({"max_t": 9, "brackets": 4}, "brackets must be <= 3"),
    ({"variant": "halve"}, "variant must be one of 'stop', 'promote', got 'halve'"),
    ({"mode": "best"}, "mode must be 'min' or 'max'"),
    ({"reduction_factor": 2.5}, "reduction_factor must be an integer >= 2, got 2.5"),
])
def test_validation_names_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ASHA(**kwargs)


def test_milestones() -> None:
    assert ASHA(max_t=9, grace_period=1, reduction_factor=3).milestones() == [1, 3, 9]
    assert ASHA(max_t=100, grace_period=1, reduction_factor=3).milestones() == [1, 3, 9, 27, 81]
    s = ASHA(max_t=27, grace_period=1, reduction_factor=3, brackets=2)
    assert s.milestones(0) == [1, 3, 9, 27] and s.milestones(1) == [3, 9, 27]


# -- stop variant ----------------------------------------------------------------------------
def test_stop_variant_hand_computed() -> None:
    s = ASHA(max_t=9, grace_period=1, reduction_factor=3, metric="acc", mode="max")
    a, b, c, d = _add(s, 4)
    # milestone 1: 0.5 first -> goes on; 0.9 vs cutoff pct([0.5])=0.5 -> goes on;
    # 0.1 vs pct([0.5, 0.9], 66.7) = 0.7667 -> stopped; 0.8 vs pct([0.5, 0.9, 0.1]) = 0.6333 -> on
    assert _report(s, a, 1, 0.5) == Decision.CONTINUE
    assert _report(s, b, 1, 0.9) == Decision.CONTINUE
    assert _report(s, c, 1, 0.1) == Decision.STOP
    assert _report(s, d, 1, 0.8) == Decision.CONTINUE
    assert a.rung == 1 and c.rung == 1
    # between milestones: no decision
    assert _report(s, a, 2, 0.0) == Decision.CONTINUE
    # milestone 3: a first (0.6) -> on; b 0.55 vs pct([0.6]) = 0.6 -> stopped
    assert _report(s, a, 3, 0.6) == Decision.CONTINUE
    assert _report(s, b, 3, 0.55) == Decision.STOP
    assert a.rung == 3
    # max_t: always STOP (finished)
    assert _report(s, a, 9, 0.99) == Decision.STOP and a.rung == 9


def test_stop_variant_nan_and_mode_min() -> None:
    s = ASHA(max_t=9, reduction_factor=3, metric="loss", mode="min")
    a, b, c = _add(s, 3)
    # NaN never goes on, even as the first value at the milestone
    assert _report(s, a, 1, NAN, "loss") == Decision.STOP
    # min: values are negated: -0.4 first -> on; loss 0.2 -> -0.2 vs pct([-0.4]) = -0.4 -> on
    assert _report(s, b, 1, 0.4, "loss") == Decision.CONTINUE
    assert _report(s, c, 1, 0.2, "loss") == Decision.CONTINUE
    d, e = _add(s, 2, start=3)
    # loss 0.9 -> -0.9 vs pct([-0.4, -0.2], 66.7) = -0.4 + 0.667*0.2 = -0.2667 -> stopped
    assert _report(s, d, 1, 0.9, "loss") == Decision.STOP
    # loss 0.1 -> -0.1 >= cutoff of [-0.4, -0.2, -0.9] (-0.2667) -> on
    assert _report(s, e, 1, 0.1, "loss") == Decision.CONTINUE


def test_stop_variant_other_time_attr_crossing_milestones() -> None:
    s = ASHA(max_t=90, grace_period=10, reduction_factor=3, time_attr="time_total_s",
             metric="acc", mode="max")
    a, b = _add(s, 2)
    seen = []
    for trial, t, v in [(a, 4.0, 0.9), (a, 12.5, 0.5), (b, 11.0, 0.4), (a, 35.0, 0.7)]:
        result = {"training_iteration": trial.num_results + 1, "time_total_s": t, "acc": v}
        trial.observe(result)
        seen.append(s.on_result(trial, result))
    # t=4 < 10: nothing; a at 12.5 first at milestone 10 -> on; b 0.4 < 0.5 -> stopped;
    # a at 35 passes milestone 30 first -> on
    assert seen == [Decision.CONTINUE, Decision.CONTINUE, Decision.STOP, Decision.CONTINUE]
    assert a.rung == 30


def test_stop_variant_skipped_milestone_uses_highest() -> None:
    # Ray: a result that jumps past several milestones is judged at the highest one only
    s = ASHA(max_t=27, reduction_factor=3, metric="acc", mode="max")
    a, = _add(s, 1)
    assert _report(s, a, 4, 0.5) == Decision.CONTINUE
    assert a.rung == 3


def test_brackets_round_robin() -> None:
    s = ASHA(max_t=27, reduction_factor=3, brackets=2, metric="acc", mode="max")
    trials = _add(s, 4)
    assert [t.bracket for t in trials] == [0, 1, 0, 1]
    # bracket 1 has no milestone at 1: no decision there
    assert _report(s, trials[1], 1, 0.0) == Decision.CONTINUE and trials[1].rung is None
    assert _report(s, trials[0], 1, 0.0) == Decision.CONTINUE and trials[0].rung == 1
    assert _report(s, trials[1], 3, 0.0) == Decision.CONTINUE and trials[1].rung == 3


# -- promote variant -------------------------------------------------------------------------
def _pause(trial: Trial) -> None:
    trial.status = Status.PAUSED


def test_promote_variant_hand_computed() -> None:
    s = ASHA(max_t=9, reduction_factor=3, variant="promote", metric="acc", mode="max")
    assert s.pauses_trials and s.needs_checkpoints
    trials = {}
    assert s.choose_trial_to_run(trials, True) == StartNew()
    a, b, c = _add(s, 3)
    trials.update({t.trial_id: t for t in (a, b, c)})
    assert s.pause_at(a) == 1
    for t, v in [(a, 0.5), (b, 0.9)]:
        assert _report(s, t, 1, v) == Decision.PAUSE
        _pause(t)
    # 2 recorded at rung 1: floor(2/3) = 0 promotable -> start new
    assert s.choose_trial_to_run(trials, True) == StartNew()
    assert _report(s, c, 1, 0.1) == Decision.PAUSE
    _pause(c)
    # 3 recorded: floor(3/3) = 1 -> the best, b (0.9), is promoted
    assert s.choose_trial_to_run(trials, True) == Resume("t1")
    b.status = Status.RUNNING
    assert s.pause_at(b) == 3
    # b promoted already; nothing else promotable -> start new or wait
    assert s.choose_trial_to_run(trials, True) == StartNew()
    assert s.choose_trial_to_run(trials, False) is None
    assert _report(s, b, 2, 0.1) == Decision.CONTINUE
    assert _report(s, b, 3, 0.95) == Decision.PAUSE and b.rung == 3
    _pause(b)
    # rung 3 has 1 value: floor(1/3) = 0 -> not promoted
    assert s.choose_trial_to_run(trials, False) is None


def test_promote_scans_top_rung_first_and_stops_at_max_t() -> None:
    s = ASHA(max_t=9, reduction_factor=3, variant="promote", metric="loss", mode="min")
    ts = _add(s, 9)
    trials = {t.trial_id: t for t in ts}
    # rung 1: losses 0.9..0.1 -> top floor(9/3) = 3 are t8 (0.1), t7 (0.2), t6 (0.3)
    for i, t in enumerate(ts):
        assert _report(s, t, 1, 0.9 - 0.1 * i, "loss") == Decision.PAUSE
        _pause(t)
    order = []
    for _ in range(3):
        sug = s.choose_trial_to_run(trials, False)
        assert isinstance(sug, Resume)
        order.append(sug.trial_id)
        trials[sug.trial_id].status = Status.RUNNING
    assert order == ["t8", "t7", "t6"]
    assert s.choose_trial_to_run(trials, False) is None
    for t, v in [(ts[8], 0.3), (ts[7], 0.05), (ts[6], 0.2)]:
        assert _report(s, t, 3, v, "loss") == Decision.PAUSE
        _pause(t)
    # rung 3 has 3: top 1 is t7 (0.05) -> promoted before anything at rung 1
    assert s.choose_trial_to_run(trials, True) == Resume("t7")
    assert s.pause_at(ts[7]) is None  # the next milestone is max_t: run to the end
    assert _report(s, ts[7], 9, 0.01, "loss") == Decision.STOP


def test_promote_nan_never_promoted() -> None:
    s = ASHA(max_t=9, reduction_factor=3, variant="promote", metric="acc", mode="max")
    ts = _add(s, 3)
    for t in ts:
        assert _report(s, t, 1, NAN) == Decision.PAUSE
        _pause(t)
    assert s.choose_trial_to_run({t.trial_id: t for t in ts}, False) is None


def test_promote_skips_trials_that_are_not_paused() -> None:
    s = ASHA(max_t=9, reduction_factor=3, variant="promote", metric="acc", mode="max")
    ts = _add(s, 3)
    for t, v in zip(ts, [0.1, 0.9, 0.5]):
        _report(s, t, 1, v)
        _pause(t)
    ts[1].status = Status.ERROR  # the best errored: not resumed, nobody takes its place
    assert s.choose_trial_to_run({t.trial_id: t for t in ts}, False) is None


def test_state_round_trip_keeps_nan_and_decisions() -> None:
    s = ASHA(max_t=9, reduction_factor=3, metric="acc", mode="max", seed=1)
    a, b = _add(s, 2)
    _report(s, a, 1, NAN)
    _report(s, b, 1, 0.5)
    state = json.loads(json.dumps(s.state_dict(), allow_nan=False))
    fresh = ASHA(max_t=9, reduction_factor=3, metric="acc", mode="max")
    fresh.load_state_dict(state)
    assert math.isnan(fresh._rungs[0][0]["t0"])
    assert fresh.state_dict() == s.state_dict()
    c, = [Trial("t2", {})]
    fresh.on_trial_add(c)
    assert _report(fresh, c, 1, 0.4) == Decision.STOP  # 0.4 < pct([0.5]) = 0.5


@pytest.mark.parametrize("seed", range(6))
def test_stop_variant_decides_as_ray_tunes_async_hyperband(seed):
    """Ray Tune's own bracket and rungflow's ASHA, shown the same results in the same order
    (several trials interleaved, ties and repeated values included), decide alike, result by
    result."""
    bracket_mod = pytest.importorskip("ray.tune.schedulers.async_hyperband")
    rng = np.random.default_rng(seed)
    max_t = 27
    ray = bracket_mod._Bracket(min_t=1, max_t=max_t, reduction_factor=3, s=0,
                               stop_last_trials=True)
    ours = ASHA(max_t=max_t, grace_period=1, reduction_factor=3, metric="acc", mode="max")

    class RayTrial:
        def __init__(self, tid):
            self.trial_id = tid

    running = {}  # trial id -> its next iteration
    started = decisions = stops = 0
    while started < 40 or running:
        while len(running) < 3 and started < 40:
            running[f"t{started}"] = 1
            started += 1
        tid = list(running)[int(rng.integers(len(running)))]
        it = running[tid]
        value = float(rng.choice([0.0, 0.5, round(float(rng.random()), 2)]))  # ties happen
        theirs = "STOP" if it >= max_t else ray.on_result(RayTrial(tid), it, value)
        mine = ours.on_result(Trial(tid, {}), {"training_iteration": it, "acc": value}).value
        assert mine == theirs.upper(), (tid, it, value)
        decisions += 1
        if mine == "STOP":
            stops += 1
            del running[tid]
        else:
            running[tid] = it + 1
    assert stops == 40 and decisions > 80  # every trial ended by a decision, most went on


def test_packed_rungs_round_trip_exactly_and_read_the_older_form():
    from tuning.schedulers._common import encode_values, pack_values, unpack_values

    values = {"trial-00001": 0.25, "trial-00010": NAN, "trial-00100": float("inf"),
              "trial-01000": -float("inf"), "trial-10000": 1 / 3}
    back = unpack_values(json.loads(json.dumps(pack_values(values))))
    assert list(back) == list(values)  # recording order kept
    assert all(back[k] == v or (math.isnan(v) and math.isnan(back[k])) for k, v in values.items())
    assert unpack_values(pack_values({})) == {}
    assert unpack_values(pack_values({"trial-7": 0.5})) == {"trial-7": 0.5}  # all prefix
    spaced = {"a b": 1.0, "c": 2.0}
    assert pack_values(spaced) == encode_values(spaced) and unpack_values(pack_values(spaced)) == spaced
    assert unpack_values(encode_values(values))["trial-00001"] == 0.25  # journals written before


def test_a_snapshot_of_many_rungs_is_compact_and_restores_the_same_decisions():
    from tuning.schedulers._common import encode_values

    rng = np.random.default_rng(0)
    s = ASHA(max_t=9, grace_period=1, reduction_factor=3, metric="acc", mode="max")
    trials = [Trial(f"trial-{i:05d}", {}) for i in range(3000)]  # the controller's ids
    for t in trials:
        s.on_trial_add(t)
    for t in trials:
        for it in (1, 3, 9):
            if _report(s, t, it, float(rng.random())) == Decision.STOP:
                break
    state = s.state_dict()
    assert "trial-" not in json.dumps(state["trial_bracket"])  # one bracket: no map
    packed = len(json.dumps(state["rungs"]))
    plain = len(json.dumps([[encode_values(r) for r in rungs] for rungs in s._rungs]))
    assert packed < 0.55 * plain
    restored = ASHA(max_t=9, grace_period=1, reduction_factor=3, metric="acc", mode="max")
    restored.load_state_dict(json.loads(json.dumps(state)))
    assert restored._rungs == s._rungs
    for i, v in enumerate(rng.random(200)):
        t = Trial(f"new-{i}", {})
        a = s.on_result(t, {"training_iteration": 1, "acc": float(v)})
        b = restored.on_result(Trial(f"new-{i}", {}), {"training_iteration": 1, "acc": float(v)})
        assert a == b
