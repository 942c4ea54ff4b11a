"""Flat at scale (fast, simulated): the journal grows linearly with the trials, a 100,000-event
journal replays in memory bounded by its trials (not its events), and the driver keeps O(1)
per trial."""

from __future__ import annotations

import json
import tracemalloc

from tuning._trial import _CLOCKS as CLOCKS
from tuning._trial import Trial
from tuning.backends.simulated import CrossingCurves, SimulatedBackend
from tuning.controller import Budget, Controller
from tuning.experiment import Journal, replay
from tuning.schedulers import ASHA
from tuning.searchers import RandomSearch
from tuning.space import Space, loguniform, uniform


def _run(tmp_path, n: int) -> Controller:
    d = str(tmp_path / f"exp-{n}")
    return Controller(name="scale", trainable=CrossingCurves(max_t=9),
                      space=Space({"lr": loguniform(1e-4, 1.0), "momentum": uniform(0, 1)}),
                      metric="accuracy", mode="max",
                      scheduler=ASHA(max_t=9, grace_period=1, reduction_factor=3),
                      searcher=RandomSearch(), backend=SimulatedBackend(n_workers=16),
                      journal=Journal(d), storage=d, budget=Budget(num_samples=n), seed=0).run()


def test_the_journal_grows_linearly_with_the_trials(tmp_path):
    small, large = _run(tmp_path, 150), _run(tmp_path, 1500)
    per = [c.journal.bytes_written / len(c.trials) for c in (small, large)]
    assert per[1] <= 1.15 * per[0], per
    snapshots = [sum(1 for e in c.journal.iter_events() if e["event"] == "state")
                 for c in (small, large)]
    assert snapshots[1] < 10 * snapshots[0] + 5, snapshots  # not one per wave x trials


def _journal(path, trials: int, results: int) -> int:
    """A committed journal of ``trials`` x (``results`` + 1) events, a snapshot every 5,000."""
    seq = 0
    lines = []

    def add(event: str, **data) -> None:
        nonlocal seq
        seq += 1
        lines.append(json.dumps({"seq": seq, "t": 1.0 + seq, "event": event, **data}))
        if seq % 5000 == 0:
            seq += 1
            lines.append(json.dumps({"seq": seq, "t": 1.0, "event": "state", "scheduler": {},
                                     "searcher": {}, "controller": {}, "backend": {}}))

    add("experiment_created", spec={"name": "x", "metric": "acc", "mode": "max"})
    for i in range(trials):
        tid = f"trial-{i:05d}"
        add("trial_created", trial_id=tid, config={"lr": i / trials, "n": i})
        for k in range(1, results + 1):
            add("result", trial_id=tid, result={"training_iteration": k, "acc": k / results,
                                                "time_total_s": 0.1 * k, "timestamp": 1e9 + k})
    add("finished", reason="completed")
    path.mkdir(parents=True)
    (path / "journal.jsonl").write_text("\n".join(lines) + "\n")
    return seq


def _peak_replay(path) -> tuple[int, int]:
    tracemalloc.start()
    try:
        st = replay(Journal(str(path)).iter_events())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, st.events


def test_a_100k_event_journal_replays_in_memory_bounded_by_its_trials(tmp_path):
    trials = 5000
    _journal(tmp_path / "half", trials, 9)
    events = _journal(tmp_path / "full", trials, 19)
    assert events >= 100_000
    half, n_half = _peak_replay(tmp_path / "half")
    full, n_full = _peak_replay(tmp_path / "full")
    assert n_full >= 100_000 and n_full > 1.9 * n_half
    # twice the events for the same trials: about the same memory (the trial table)
    assert full <= 1.25 * half, (half, full)
    tracemalloc.start()  # what holding the events would take, as a replay that read it all
    try:
        held = Journal(str(tmp_path / "full")).read()
        everything = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(held) == n_full and full < 0.5 * everything, (full, everything)


def test_a_trial_keeps_constant_memory_whatever_its_results():
    import sys

    def size(t: Trial) -> int:
        return sum(sys.getsizeof(v) for v in (t.last_result, t.values, t.checkpoints))

    few = Trial.with_results("a", {}, [{"training_iteration": k, "acc": 0.1} for k in range(3)])
    many = Trial.with_results("b", {}, [{"training_iteration": k, "acc": 0.1}
                                        for k in range(3000)])
    assert size(many) == size(few) and many.num_results == 3000


def test_a_trial_keeps_no_extremes_for_the_clocks_but_reads_them_back():
    """Every report carries the clocks: no (last, lowest, highest) is kept for them (200 B a
    trial at ten thousand trials), their last value comes from the last result, and the last
    result's keys are one shared copy across trials."""
    rs = [{"training_iteration": k, "acc": 0.1 * k, "time_this_iter_s": 0.5,
           "time_total_s": 0.5 * k, "timestamp": 1e9 + k} for k in range(1, 4)]
    a = Trial.with_results("a", {}, rs)
    b = Trial.with_results("b", {}, [{"".join(k): v for k, v in r.items()} for r in rs])
    assert set(a.metric_names()) == {"acc", *CLOCKS} and a.checkpoints is None
    assert len(a.values) == 3  # acc's last, lowest and highest: nothing for the clocks
    assert a.last_value("time_total_s") == 1.5 and a.best_value("time_total_s", "min") == 1.5
    assert a.best_value("acc", "min") == 0.1 and a.last_value("nope") is None
    ka = next(k for k in a.last_result if k == "time_total_s")
    kb = next(k for k in b.last_result if k == "time_total_s")
    assert ka is kb  # interned
    assert next(k for k in a.values if k == "acc") is next(k for k in b.values if k == "acc")
    a.observe({"training_iteration": 4, "acc": 0.5, "checkpoint": "file:///c/4"})
    assert a.checkpoint_at(9) == ("file:///c/4", 4) and a.checkpoint_at(3) == (None, 0)


def test_a_trial_adds_one_object_for_the_garbage_collector_to_scan():
    """At 100,000 trials every full collection scans every tracked object: a trial's
    values and checkpoint index hold only floats, ints and strings, so Python never tracks
    them, and the trial record is the one object a trial adds."""
    import gc

    t = Trial.with_results("a", {"lr": 0.1}, [
        {"training_iteration": k, "acc": 0.1 * k, "loss": 1.0 / k, "time_total_s": 1.0 * k,
         "checkpoint": f"file:///c/{k}"} for k in range(1, 6)])
    gc.collect()  # tuples and dicts of atoms are untracked by a collection, not on creation
    assert gc.is_tracked(t)
    assert not gc.is_tracked(t.values) and not gc.is_tracked(t.checkpoints)
    assert not gc.is_tracked(t.last_result) and not gc.is_tracked(t.config)
    assert (t.last_value("acc"), t.best_value("acc", "min"), t.best_value("acc", "max")) \
        == (0.5, 0.1, 0.5)
    assert (t.best_value("loss", "min"), t.best_value("loss", "max")) == (0.2, 1.0)
    # a trial restarted from its checkpoint at 2 re-takes 3: the re-taken one is the latest
    t.observe({"training_iteration": 3, "acc": 0.3, "checkpoint": "file:///c/3b"})
    assert t.checkpoint_at(9) == ("file:///c/3b", 3) and t.checkpoint_at(4) == ("file:///c/3b", 3)
    assert t.checkpoint_at(2) == ("file:///c/2", 2)


def test_the_engine_leaves_one_scanned_object_per_trial_and_per_finished_bracket(tmp_path):
    """What full garbage collections rescan at 100,000 trials: after a HyperBand run, every
    finished bracket keeps its members and recorded values in containers the collector has
    untracked (the bracket and the tuple of its rungs' dicts stay), and the objects it tracks
    grow by about one a trial (the trial record)."""
    import gc

    from tuning.schedulers import HyperBand

    def run(n: int) -> tuple[Controller, int]:
        d = str(tmp_path / f"hb-{n}")
        ctl = Controller(name="gc", trainable=CrossingCurves(max_t=9),
                         space=Space({"lr": loguniform(1e-4, 1.0), "momentum": uniform(0, 1)}),
                         metric="accuracy", mode="max",
                         scheduler=HyperBand(max_t=9, grace_period=1, reduction_factor=3),
                         searcher=RandomSearch(), backend=SimulatedBackend(n_workers=16),
                         journal=Journal(d), storage=d, budget=Budget(num_samples=n), seed=0)
        ctl.run()
        ctl.journal.close()
        gc.collect()
        gc.collect()
        return ctl, len(gc.get_objects())

    small, before = run(100)
    del small
    large, after = run(1100)
    brackets = large.scheduler._brackets
    done = [b for b in brackets if b.done]
    assert len(done) > 50 and len(done) >= len(brackets) - 3
    assert not any(gc.is_tracked(b.members) for b in done)
    assert not any(gc.is_tracked(r) for b in done for r in b.recorded)
    per_trial = (after - before) / 1000
    assert per_trial < 1.6, per_trial  # the Trial, and ~0.35 for the brackets


def test_a_snapshot_runs_no_garbage_collection_and_leaves_the_collector_as_it_was(tmp_path):
    import gc

    from tuning.schedulers import MedianStopping

    d = str(tmp_path / "median")
    ctl = Controller(name="gc", trainable=CrossingCurves(max_t=9),
                     space=Space({"lr": loguniform(1e-4, 1.0), "momentum": uniform(0, 1)}),
                     metric="accuracy", mode="max",
                     scheduler=MedianStopping(grace_period=1, min_samples_required=3, max_t=9),
                     searcher=RandomSearch(), backend=SimulatedBackend(n_workers=16),
                     journal=Journal(d), storage=d, budget=Budget(num_samples=3000), seed=0)
    ctl.run()
    runs: list[int] = []

    def seen(phase: str, info: dict) -> None:
        if phase == "start":
            runs.append(info["generation"])

    threshold = gc.get_threshold()
    marks: dict[str, int] = {}
    state_dict, append = ctl.scheduler.state_dict, ctl.journal.append

    def building():  # the snapshot starts with the scheduler's state
        marks["start"] = len(runs)
        return state_dict()

    def written(event, **data):
        out = append(event, **data)
        if event == "state":
            marks["end"] = len(runs)
        return out

    ctl.scheduler.state_dict, ctl.journal.append = building, written
    gc.callbacks.append(seen)
    try:
        gc.set_threshold(1)  # a collection at nearly every allocation, unless the collector is off
        before = ctl.journal.bytes_appended
        ctl.commit()  # 3,000 trials' histories: thousands of lists made and freed
        assert ctl.journal.bytes_appended - before > 3000 * 20
        assert marks["end"] == marks["start"], runs[marks["start"]:marks["end"]]
        assert gc.isenabled()
        gc.disable()  # a caller's choice stands
        ctl.commit()
        assert not gc.isenabled()
        gc.enable()
        n = len(runs)
        keep = [[] for _ in range(100)]
        assert keep and len(runs) > n, "the callback sees collections when the collector is on"
    finally:
        gc.callbacks.remove(seen)
        gc.set_threshold(*threshold)
        gc.enable()
