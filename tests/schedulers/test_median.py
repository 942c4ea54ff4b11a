"""Median stopping on plain data."""

from __future__ import annotations

import math

import pytest

from tuning._trial import Trial
from tuning.schedulers import Decision, MedianStopping
from tuning.schedulers._median import median_stops, running_mean_at

NAN = float("nan")


def test_running_mean_at() -> None:
    assert running_mean_at([1, 2, 3], [1.0, 3.0, 8.0], 2) == 2.0
    assert running_mean_at([1, 2, 3], [1.0, NAN, 8.0], 3) == 4.5  # NaN ignored
    assert math.isnan(running_mean_at([2, 3], [1.0, 2.0], 1))


def test_median_stops() -> None:
    assert median_stops(0.4, [0.3, 0.5, 0.6], 3)  # median 0.5 > 0.4
    assert not median_stops(0.5, [0.3, 0.5, 0.6], 3)  # equal to the median: goes on
    assert not median_stops(0.1, [0.3, NAN, 0.6], 3)  # 2 finite others < 3 required
    assert median_stops(NAN, [0.3], 1)


def _report(s: MedianStopping, t: Trial, it: int, loss: float) -> Decision:
    return s.on_result(t, {"training_iteration": it, "loss": loss})


def test_scenario_mode_min_grace_and_reached_time() -> None:
    s = MedianStopping(grace_period=2, min_samples_required=2, metric="loss", mode="min")
    a, b, c, d = (Trial(x, {}) for x in "abcd")
    # a: losses 1.0, 0.6, 0.2 ; b: 0.8, 0.8, 0.8 (running means: a 0.6 @3, b 0.8 @3)
    for it, (la, lb) in enumerate([(1.0, 0.8), (0.6, 0.8), (0.2, 0.8)], start=1):
        assert _report(s, a, it, la) == Decision.CONTINUE
        assert _report(s, b, it, lb) == Decision.CONTINUE  # only a reached it: 1 < 2 others
    # c at t=1: below the grace period -> no decision, even though it is bad
    assert _report(s, c, 1, 5.0) == Decision.CONTINUE
    # c at t=2: others a (mean of 1.0, 0.6 = 0.8 -> -0.8), b (-0.8); median -0.8;
    # c's best loss 0.9 (-0.9) < -0.8 -> STOP
    assert _report(s, c, 2, 0.9) == Decision.STOP
    # d at t=3: others reaching 3 are a (-0.6) and b (-0.8) (c stopped at 2); median -0.7;
    # d's best loss so far 0.65 -> -0.65 >= -0.7 -> goes on
    _report(s, d, 1, 0.65)
    _report(s, d, 2, 0.9)
    assert _report(s, d, 3, 0.9) == Decision.CONTINUE


def test_errored_trials_do_not_count_and_max_t() -> None:
    s = MedianStopping(grace_period=1, min_samples_required=1, max_t=3, metric="acc", mode="max")
    a, b = Trial("a", {}), Trial("b", {})
    s.on_result(a, {"training_iteration": 1, "acc": 0.9})
    s.on_trial_error(a)
    assert s.on_result(b, {"training_iteration": 1, "acc": 0.1}) == Decision.CONTINUE
    assert s.on_result(b, {"training_iteration": 3, "acc": 0.1}) == Decision.STOP


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"grace_period": -1}, "grace_period must be >= 0, got -1"),
    ({"min_samples_required": 0}, "min_samples_required must be >= 1, got 0"),
])
def test_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MedianStopping(**kwargs)


def test_a_history_is_one_object_and_copies_decide_alike() -> None:
    """A trial's history is one array of doubles (one object for the garbage collector to
    scan at a hundred thousand trials); pickling, copying and the snapshot give it back
    whole, and a copy of the scheduler decides what the original decides."""
    import copy
    import gc
    import pickle
    import random

    rng = random.Random(3)
    s = MedianStopping(grace_period=1, min_samples_required=2, metric="acc", mode="max")
    trials = [Trial(f"t{i}", {}) for i in range(8)]
    for it in (1, 2, 3):
        for t in trials:
            v = NAN if rng.random() < 0.1 else rng.random()
            s.on_result(t, {"training_iteration": it, "acc": v})
    h = s._histories["t0"]
    assert [o for o in gc.get_referents(h) if gc.is_tracked(o) and not isinstance(o, type)] == []
    assert h.times == [1.0, 2.0, 3.0] and len(h.values) == 3
    before = h.tolist()
    for c in (copy.deepcopy(s), pickle.loads(pickle.dumps(s))):
        assert type(c._histories["t0"]) is type(h)
        assert repr(c._histories["t0"].tolist()) == repr(before)  # NaN included
        ref = MedianStopping(grace_period=1, min_samples_required=2, metric="acc", mode="max")
        ref.load_state_dict(s.state_dict())  # from the snapshot: what resume rebuilds
        assert repr({k: v.tolist() for k, v in ref._histories.items()}) == \
            repr({k: v.tolist() for k, v in c._histories.items()})
        for it in (4, 5):
            for t in trials[:3]:
                r = {"training_iteration": it, "acc": 0.1 * it + rng.random() * 0.2}
                assert c.on_result(t, r) == ref.on_result(t, r)
