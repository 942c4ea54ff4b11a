"""The O(log n) structures decide exactly as the former O(n) algorithms (kept here as references)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from sortedcontainers import SortedList

from tuning._trial import Status, Trial
from tuning.schedulers import ASHA, FIFO, PBT, Decision, MedianStopping, Resume, StartNew
from tuning.schedulers._asha import asha_cutoff, percentile_of_sorted, promotable

NAN = float("nan")


# -- the former algorithms -------------------------------------------------------------------
def old_asha_stop(rungs: dict[float, dict[str, float]], ms: list[float], max_t: float, rf: int,
                  tid: str, t: float, v: float) -> Decision:
    for m in reversed(ms):
        if t < m:
            continue
        if tid in rungs[m]:
            break
        cutoff = asha_cutoff(rungs[m].values(), rf)
        goes_on = not math.isnan(v) and (cutoff is None or v >= cutoff)
        rungs[m][tid] = v
        if not goes_on:
            return Decision.STOP
        break
    return Decision.STOP if t >= max_t else Decision.CONTINUE


def old_running_mean_at(times: list[float], values: list[float], t: float) -> float:
    k = bisect.bisect_right(times, t)
    finite = [v for v in values[:k] if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


class OldMedian:
    def __init__(self, grace: float, min_samples: int) -> None:
        self.grace, self.min_samples = grace, min_samples
        self.h: dict[str, tuple[list[float], list[float]]] = {}
        self.best: dict[str, float] = {}
        self.errored: set[str] = set()

    def on_result(self, tid: str, t: float, v: float) -> Decision:
        times, values = self.h.setdefault(tid, ([], []))
        times.append(t)
        values.append(v)
        b = self.best.get(tid, NAN)
        if not math.isnan(v) and (math.isnan(b) or v > b):
            self.best[tid] = b = v
        if t < self.grace:
            return Decision.CONTINUE
        others = [old_running_mean_at(ts, vs, t) for o, (ts, vs) in self.h.items()
                  if o != tid and o not in self.errored and ts[-1] >= t]
        finite = [x for x in others if not math.isnan(x)]
        if len(finite) < self.min_samples:
            return Decision.CONTINUE
        stop = math.isnan(b) or b < float(np.median(finite))
        return Decision.STOP if stop else Decision.CONTINUE


def old_base_choose(trials: Mapping[str, Trial], can_start_new: bool) -> Any:
    for trial in trials.values():
        if trial.status == Status.PAUSED:
            return Resume(trial.trial_id)
    return StartNew() if can_start_new else None


# -- percentile ----------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_sorted_percentile_equals_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(400):
        n = int(rng.integers(1, 60))
        a = rng.normal(size=n) * 10 ** rng.uniform(-3, 3)
        if rng.random() < 0.3:
            a = np.round(a, 1)  # ties
        if rng.random() < 0.05:
            a[int(rng.integers(n))] = rng.choice([np.inf, -np.inf])
        s = SortedList(a.tolist())
        for rf in (2, 3, 4, 5, 7):
            q = (1 - 1 / rf) * 100
            with np.errstate(invalid="ignore"):  # inf - inf
                want = float(np.percentile(a, q))
            got = percentile_of_sorted(s.__getitem__, n, q)
            assert got == want or (math.isnan(got) and math.isnan(want)), (a, rf)


# -- ASHA ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_asha_stop_decides_as_before(seed: int) -> None:
    rng = np.random.default_rng(seed)
    s = ASHA(max_t=27, reduction_factor=3, metric="acc", mode="max")
    ms = s.milestones()
    old: dict[float, dict[str, float]] = {m: {} for m in ms}
    trials = [Trial(f"t{i}", {}) for i in range(600)]
    its = dict.fromkeys(range(600), 0)
    for _ in range(4000):
        i = int(rng.integers(600))
        its[i] += int(rng.integers(1, 4))
        v = NAN if rng.random() < 0.02 else float(np.round(rng.normal(), 2))
        r = {"training_iteration": its[i], "acc": v}
        assert s.on_result(trials[i], r) == old_asha_stop(old, ms, 27, 3, f"t{i}", its[i], v)


@pytest.mark.parametrize("seed", range(3))
def test_asha_promote_chooses_as_before(seed: int) -> None:
    rng = np.random.default_rng(seed)
    s = ASHA(max_t=27, reduction_factor=3, variant="promote", metric="acc", mode="max")
    trials: dict[str, Trial] = {}
    old_rungs: dict[int, dict[str, float]] = {m: {} for m in s.milestones()}
    old_promoted: dict[int, list[str]] = {m: [] for m in s.milestones()}
    running: list[str] = []
    for step in range(3000):
        if running and rng.random() < 0.6:  # a running trial reaches its next milestone
            tid = running.pop(int(rng.integers(len(running))))
            trial = trials[tid]
            m = s.pause_at(trial) or 27
            v = NAN if rng.random() < 0.02 else float(np.round(rng.normal(), 1))
            if m < 27:
                old_rungs[m][tid] = v
            d = s.on_result(trial, {"training_iteration": m, "acc": v})
            trial.status = Status.TERMINATED if d == Decision.STOP else Status.PAUSED
            if rng.random() < 0.03:
                trial.status = Status.ERROR  # the controller ends it on its own
            continue
        want = None
        for m in sorted(old_rungs, reverse=True):
            if m >= 27:
                continue
            for tid in promotable(old_rungs[m], old_promoted[m], 3):
                if trials[tid].status == Status.PAUSED:
                    want = Resume(tid)
                    old_promoted[m].append(tid)
                    break
            if want is not None:
                break
        got = s.choose_trial_to_run(trials, True)
        assert got == (want or StartNew()), step
        if isinstance(got, Resume):
            trials[got.trial_id].status = Status.RUNNING
            running.append(got.trial_id)
        else:
            t = Trial(f"t{len(trials)}", {}, status=Status.RUNNING)
            trials[t.trial_id] = t
            s.on_trial_add(t)
            running.append(t.trial_id)


# -- median ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("seed", "float_times", "back"), [
    (0, False, 0.0),  # every trial reports at 1, 2, 3, ...: the per-time sorted lists decide
    (1, False, 0.01),  # and some go back to an earlier time: the exact fallback
    (2, True, 0.0),  # float times stepped over: the exact fallback
])
def test_median_decides_as_before(seed: int, float_times: bool, back: float) -> None:
    rng = np.random.default_rng(seed)
    s = MedianStopping(grace_period=2, min_samples_required=3, metric="acc", mode="max")
    old = OldMedian(2, 3)
    last: dict[int, float] = {}
    for step in range(4000):
        i = int(rng.integers(300))
        if f"t{i}" in old.errored:
            continue
        if float_times:
            t = last.get(i, 0.0) + float(np.round(rng.uniform(0.5, 2.0), 1))
        elif rng.random() < back and i in last:
            t = max(1.0, last[i] - 2)  # restarted from an earlier checkpoint: times go back
        else:
            t = last.get(i, 0.0) + (1 if rng.random() < 0.95 else 0)  # sometimes the same t
        last[i] = t
        v = NAN if rng.random() < 0.03 else float(np.round(rng.normal(), 2))
        trial = Trial(f"t{i}", {})
        got = s.on_result(trial, {"training_iteration": t, "acc": v})
        assert got == old.on_result(trial.trial_id, t, v), step
        if rng.random() < 0.002:
            s.on_trial_error(trial)
            old.errored.add(trial.trial_id)


def test_median_restored_state_decides_as_before() -> None:
    rng = np.random.default_rng(7)
    a = MedianStopping(grace_period=1, min_samples_required=2, metric="acc", mode="max")
    results = [(f"t{int(rng.integers(40))}", float(rng.normal())) for _ in range(600)]
    last: dict[str, int] = {}
    for tid, v in results[:300]:
        last[tid] = last.get(tid, 0) + 1
        a.on_result(Trial(tid, {}), {"training_iteration": last[tid], "acc": v})
    a.on_trial_error(Trial("t3", {}))
    b = MedianStopping(grace_period=1, min_samples_required=2, metric="acc", mode="max")
    b.load_state_dict(a.state_dict())
    for tid, v in results[300:]:
        last[tid] = last.get(tid, 0) + 1
        r = {"training_iteration": last[tid], "acc": v}
        assert a.on_result(Trial(tid, {}), r) == b.on_result(Trial(tid, {}), r)


# -- paused trials ---------------------------------------------------------------------------
class Pausing(FIFO):
    """A custom scheduler that pauses and relies on the base class to resume."""

    def on_result(self, trial: Trial, result: Mapping[str, Any]) -> Decision:
        return Decision.PAUSE if result["training_iteration"] % 2 == 0 else Decision.CONTINUE


def test_paused_set_follows_the_controller_and_the_old_order() -> None:
    rng = np.random.default_rng(0)
    s = Pausing()
    trials: dict[str, Trial] = {}
    for step in range(3000):
        r = rng.random()
        if r < 0.3 or not trials:
            t = Trial(f"t{len(trials)}", {}, status=Status.RUNNING)
            trials[t.trial_id] = t
            s.on_trial_add(t)
            continue
        trial = trials[f"t{int(rng.integers(len(trials)))}"]
        if trial.status == Status.RUNNING and r < 0.7:
            it = trial.iteration + 1
            trial.observe({"training_iteration": it})
            if s.on_result(trial, trial.last_result) == Decision.PAUSE:
                trial.status = Status.PAUSED
        elif r < 0.75:  # the controller changes a status on its own
            trial.status = Status(rng.choice([Status.ERROR, Status.STOPPED, Status.RUNNING]))
        else:
            want = old_base_choose(trials, False)
            got = s.choose_trial_to_run(trials, False)
            assert got == want, step
            if got is not None:
                trials[got.trial_id].status = Status.RUNNING


def test_paused_set_keeps_a_pause_whose_segment_is_not_over() -> None:
    s = Pausing()
    a = Trial("a", {}, status=Status.RUNNING)
    s.on_trial_add(a)
    assert s.on_result(a, {"training_iteration": 2}) == Decision.PAUSE
    assert s.choose_trial_to_run({"a": a}, False) is None  # still RUNNING: kept, not returned
    a.status = Status.PAUSED
    assert s.choose_trial_to_run({"a": a}, False) == Resume("a")
    assert s.choose_trial_to_run({"a": a}, False) is None  # resumed: it left the set


def test_pbt_resumes_the_smallest_last_pause_as_before() -> None:
    rng = np.random.default_rng(1)
    pbt = PBT(perturbation_interval=1, metric="acc", mode="max", seed=0)
    trials = {f"t{i}": Trial(f"t{i}", {}, status=Status.RUNNING) for i in range(200)}
    for t in trials.values():
        pbt.on_trial_add(t)
    for step in range(2000):
        trial = trials[f"t{int(rng.integers(200))}"]
        if trial.status == Status.RUNNING:
            it = trial.iteration + 1
            trial.observe({"training_iteration": it, "acc": float(rng.normal())})
            if pbt.on_result(trial, trial.last_result) == Decision.PAUSE:
                trial.status = Status.PAUSED
        elif rng.random() < 0.05:
            trial.status = Status.STOPPED
        if step % 3 == 0:
            paused = [t for t in trials.values() if t.status == Status.PAUSED]
            want = min(paused, key=lambda t: (pbt._last_pause.get(t.trial_id, 0.0), t.trial_id),
                       default=None)
            got = pbt._next_paused(trials)
            assert (got and got.trial_id) == (want and want.trial_id), step
            if got is not None:
                pbt._unwait(got.trial_id)
                got.status = Status.RUNNING


def test_median_regular_times_use_the_sorted_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    s = MedianStopping(grace_period=1, min_samples_required=2, metric="acc", mode="max")
    calls: list[bool | None] = []
    fast = s._stops_fast
    monkeypatch.setattr(s, "_stops_fast", lambda *a: calls.append(fast(*a)) or calls[-1])
    for it in range(1, 4):
        for i in range(5):
            s.on_result(Trial(f"t{i}", {}), {"training_iteration": it, "acc": float(i)})
    assert calls and None not in calls
