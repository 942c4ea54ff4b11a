"""tuning.live: what the view shows, and the notify hook's cost and rate limit."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from rich.console import Console

from tuning import live
from tuning._trial import Status, Trial
from tuning.controller import Budget


@dataclass
class FakeController:
    """The attributes LiveView.render reads, as a real Controller has them."""

    trials: dict[str, Trial]
    name: str = "digits-asha"
    metric: str = "acc"
    mode: str = "max"
    budget: Budget = field(default_factory=lambda: Budget(num_samples=10))
    iterations_total: int = 0
    stopping: str | None = None
    done: bool = False
    elapsed_s: float = 0.0

    def elapsed(self) -> float:
        return self.elapsed_s

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in Status}
        for t in self.trials.values():
            out[t.status.value] += 1
        return out

    def trial_score(self, t: Trial) -> float | None:
        return t.last_value(self.metric)

    def best_trial(self) -> Trial | None:
        scored = [t for t in self.trials.values() if self.trial_score(t) is not None]
        return max(scored, key=self.trial_score, default=None)  # type: ignore[arg-type]


def _fake(**kw: Any) -> FakeController:
    statuses = [Status.RUNNING, Status.RUNNING, Status.PAUSED, Status.STOPPED, Status.STOPPED,
                Status.STOPPED, Status.TERMINATED, Status.ERROR]
    trials = {}
    for i, st in enumerate(statuses):
        res = [{"training_iteration": k, "acc": 0.5 + 0.01 * i + 0.001 * k} for k in (1, 2)]
        trials[f"trial-{i:03d}"] = Trial.with_results(
            f"trial-{i:03d}", {"lr": 10.0 ** -i, "opt": "adam"},
            res if st != Status.ERROR else [], status=st)
    return FakeController(trials=trials, **kw)


def _text(renderable: Any) -> str:
    c = Console(record=True, width=120, file=io.StringIO())
    c.print(renderable)
    return c.export_text()


@pytest.fixture(autouse=True)
def _no_observer():
    live.set_observer(None)
    yield
    live.set_observer(None)


def test_render_shows_counts_best_and_budget():
    ctl = _fake(budget=Budget(num_samples=12, time_budget_s=60, total_iterations=100),
                iterations_total=14, elapsed_s=15.0)
    text = _text(live.LiveView().render(ctl))
    assert "rungflow · digits-asha · max acc" in text
    for part in ("2 running", "1 paused", "0 pending", "3 stopped", "1 finished", "1 errored",
                 "(8 trials)"):
        assert part in text, part
    best_line = next(line for line in text.splitlines() if "best " in line)
    assert "trial-006" in best_line and "acc=0.562" in best_line and "lr=1e-06" in best_line
    assert "elapsed 15.0s" in text
    assert "samples left 4 of 12" in text
    assert "time left 45.0s of 1m00s" in text
    assert "iterations left 86 of 100" in text


def test_render_omits_budgets_not_set_and_handles_no_results():
    ctl = FakeController(trials={"trial-000": Trial("trial-000", {"lr": 0.1})},
                         budget=Budget(num_samples=3), stopping="time_budget_s=1 reached")
    text = _text(live.LiveView().render(ctl))
    assert "time left" not in text and "iterations left" not in text
    assert "samples left 2 of 3" in text
    assert "no trial has reported acc yet" in text
    assert "stopping" in text and "time_budget_s=1 reached" in text


def test_render_before_any_controller_and_names_from_the_controller():
    assert "starting" in _text(live.LiveView(name="x", metric="acc").render())
    view = live.LiveView()  # resume: no spec
    view.update(_fake(name="resumed-run"))
    assert "resumed-run" in _text(view.render())


def test_notify_without_observer_is_a_no_op():
    assert live.notify(object()) is False
    assert live.flush() is False


def test_notify_is_rate_limited_and_flush_delivers_the_latest():
    seen: list[Any] = []
    live.set_observer(seen.append, min_interval_s=60)
    assert live.notify("a") is True
    assert [live.notify(x) for x in "bcd"] == [False, False, False]
    assert seen == ["a"]
    assert live.notify("e", force=True) is True
    assert live.flush() is False  # nothing held back after a delivery
    live.notify("f")
    assert live.flush() is True
    assert seen == ["a", "e", "f"]
    assert live.set_observer(None) is not None


def test_notify_without_rate_limit_delivers_every_time():
    seen: list[Any] = []
    live.set_observer(seen.append, min_interval_s=0)
    for i in range(5):
        live.notify(i)
    assert seen == [0, 1, 2, 3, 4]


def test_a_failing_observer_never_breaks_the_run():
    def boom(_: Any) -> None:
        raise RuntimeError("display broke")

    live.set_observer(boom, min_interval_s=0)
    assert live.notify(_fake()) is True


def test_live_view_is_silent_when_not_a_terminal_or_quiet():
    buf = io.StringIO()
    with live.live_view(None, console=Console(file=buf)) as view:
        assert view is None
        assert live.notify(_fake()) is False  # no observer installed
    with live.live_view(None, console=Console(file=buf, force_terminal=True), quiet=True) as v:
        assert v is None
    assert buf.getvalue() == ""


def test_live_view_installs_and_removes_its_observer():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    previous: list[Any] = []
    live.set_observer(previous.append)
    with live.live_view(None, console=console) as view:
        assert view is not None
        live.notify(_fake(name="first"))
        live.notify(_fake(name="second", done=True))  # held back by the rate limit...
    assert view.controller.name == "second"  # ...and flushed on exit
    assert "second" in buf.getvalue() and "done" in buf.getvalue()
    live.notify("after")
    assert previous == ["after"]  # the previous observer is back


def test_log_handlers_are_redirected_and_restored():
    old, new = io.StringIO(), io.StringIO()
    logger = logging.getLogger("tuning.tests.live")
    handler = logging.StreamHandler(old)
    logger.addHandler(handler)
    try:
        undos = live._redirect_handlers(old, new)
        assert handler.stream is new
        for undo in undos:
            undo()
        assert handler.stream is old
    finally:
        logger.removeHandler(handler)


def test_a_real_controller_feeds_the_view(tmp_path):
    """The hook as the flow uses it: notify after each wave, on the simulated backend."""
    from tuning.backends.simulated import CrossingCurves, SimulatedBackend
    from tuning.controller import Controller
    from tuning.experiment import Journal
    from tuning.schedulers import ASHA
    from tuning.searchers import RandomSearch
    from tuning.space import Space, loguniform

    d = str(tmp_path / "sim")
    ctl = Controller(name="sim", trainable=CrossingCurves(max_t=9),
                     space=Space({"lr": loguniform(1e-4, 1e-1)}), metric="accuracy", mode="max",
                     scheduler=ASHA(max_t=9, grace_period=1, reduction_factor=3),
                     searcher=RandomSearch(), backend=SimulatedBackend(2), journal=Journal(d),
                     storage=d, budget=Budget(num_samples=6, total_iterations=1000), seed=0)
    views: list[str] = []
    live.set_observer(lambda c: views.append(_text(live.LiveView().render(c))), min_interval_s=0)
    ctl.run(on_events=lambda _events: live.notify(ctl))
    assert views  # how many: as many as the journal's group commits (timing)
    last = views[-1]
    counts = ctl.counts()
    assert f"{counts['STOPPED']} stopped · {counts['TERMINATED']} finished" in last
    assert ctl.best_trial().trial_id in last.split("best", 1)[1].splitlines()[0]
    assert "samples left 0 of 6" in last
    assert f"iterations left {1000 - ctl.iterations_total} of 1000" in last


# -- the incremental index: what a render reads at scale ---------------------------------------
def _brute(ctl: FakeController, k: int) -> tuple[list[tuple[float, str]], dict[str, int]]:
    """The top ``k`` and the counts the way the view computed them before: sort everything."""
    sign = -1.0 if ctl.mode == "max" else 1.0
    scored = [(s, t) for t in ctl.trials.values() if (s := ctl.trial_score(t)) is not None]
    scored.sort(key=lambda st: sign * st[0])
    return [(s, t.trial_id) for s, t in scored[:k]], ctl.counts()


def _seen(view: live.LiveView, k: int) -> tuple[list[tuple[float, str]], dict[str, int]]:
    assert view.index is not None
    return [(s, t.trial_id) for s, t in view.index.top(k)], dict(view.index.counts)


def _mutate(ctl: FakeController, rng: Any, n_new: int, n_changed: int) -> set[str]:
    """New trials, new results (scores tied on purpose: one decimal), status changes."""
    changed: set[str] = set()
    for _ in range(n_new):
        tid = f"trial-{len(ctl.trials):05d}"
        ctl.trials[tid] = Trial(tid, {"lr": rng.random()})
        changed.add(tid)
    ids = list(ctl.trials)
    for _ in range(n_changed):
        t = ctl.trials[ids[rng.randrange(len(ids))]]
        if rng.random() < 0.7:
            t.observe({"training_iteration": t.iteration + 1,
                       ctl.metric: round(rng.random(), 1)})
        else:
            t.status = rng.choice(list(Status))
        changed.add(t.trial_id)
    return changed


@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize("hinted", [True, False])
def test_index_top_k_and_counts_equal_a_full_sort(mode, hinted):
    import random

    rng = random.Random(7)
    ctl = FakeController(trials={}, mode=mode)
    view = live.LiveView(top_k=10)
    for step in range(60):
        changed = _mutate(ctl, rng, n_new=rng.randrange(0, 8), n_changed=rng.randrange(0, 12))
        view.update(ctl, changed=changed if hinted else None)
        for k in (1, 5, 10, 1000):
            assert _seen(view, k) == _brute(ctl, k), (step, k)
    assert len(ctl.trials) > 150 and len(view.index) == len(ctl.trials)


def test_index_notices_what_the_hints_left_out():
    import random

    rng = random.Random(3)
    ctl = FakeController(trials={})
    view = live.LiveView()
    _mutate(ctl, rng, n_new=30, n_changed=40)
    view.update(ctl, changed=[])  # a fresh index scans anyway
    assert _seen(view, 50) == _brute(ctl, 50)
    _mutate(ctl, rng, n_new=5, n_changed=0)
    view.update(ctl, changed=[])  # trials were created that nobody named: found by count
    assert _seen(view, 50) == _brute(ctl, 50)
    del ctl.trials[next(iter(ctl.trials))]
    view.update(ctl)  # and one removed
    assert _seen(view, 50) == _brute(ctl, 50)


def test_render_of_the_last_update_reads_no_trial_but_the_top():
    class Counting(dict):
        reads = 0

        def items(self):
            Counting.reads += 1
            return super().items()

        def values(self):
            Counting.reads += 1
            return super().values()

        def __iter__(self):
            Counting.reads += 1
            return super().__iter__()

    ctl = _fake()
    ctl.trials = Counting(ctl.trials)
    view = live.LiveView()
    view.update(ctl)
    Counting.reads = 0
    text = _text(view.render())
    assert Counting.reads == 0
    assert "(8 trials)" in text and "trial-006" in text.split("best", 1)[1].splitlines()[0]


def test_notify_hands_the_changed_trials_to_an_observer_that_takes_them():
    got: list[Any] = []

    def observer(ctl: Any, changed: Any = None) -> None:
        got.append((ctl, None if changed is None else sorted(changed)))

    live.set_observer(observer, min_interval_s=60)
    live.notify("a", changed=["t1"])
    live.notify("b", changed=["t2"])  # held back: the ids add up
    live.notify("c", changed={"t3", "t2"})
    assert live.flush() is True
    live.notify("d", force=True)  # no ids: unknown
    assert got == [("a", ["t1"]), ("c", ["t2", "t3"]), ("d", None)]


def test_changed_trials_names_the_trials_events_are_about():
    events = [{"event": "trial_created", "trial_id": "trial-001"}, {"event": "state"},
              {"event": "result", "trial_id": "trial-002", "result": {}},
              {"event": "decision", "trial_id": "trial-001", "decision": "STOP"}]
    assert live.changed_trials(events) == {"trial-001", "trial-002"}


def test_a_real_controller_feeds_the_view_with_changed_trials(tmp_path):
    from tuning.backends.simulated import CrossingCurves, SimulatedBackend
    from tuning.controller import Controller
    from tuning.experiment import Journal
    from tuning.schedulers import ASHA
    from tuning.searchers import RandomSearch
    from tuning.space import Space, loguniform

    d = str(tmp_path / "sim")
    ctl = Controller(name="sim", trainable=CrossingCurves(max_t=9),
                     space=Space({"lr": loguniform(1e-4, 1e-1)}), metric="accuracy", mode="max",
                     scheduler=ASHA(max_t=9, grace_period=1, reduction_factor=3),
                     searcher=RandomSearch(), backend=SimulatedBackend(2), journal=Journal(d),
                     storage=d, budget=Budget(num_samples=12, total_iterations=1000), seed=0)
    view = live.LiveView(top_k=12)
    live.set_observer(view.update, min_interval_s=0)
    ctl.run(on_events=lambda events: live.notify(ctl, changed=live.changed_trials(events)))
    live.notify(ctl, force=True, changed=[])
    assert view.index is not None and dict(view.index.counts) == ctl.counts()
    best = view.index.best()
    assert best is not None and best[1] is ctl.best_trial()
    ranked = sorted((t for t in ctl.trials.values() if ctl.trial_score(t) is not None),
                    key=lambda t: -ctl.trial_score(t))
    assert [t.trial_id for _, t in view.index.top(12)] == [t.trial_id for t in ranked[:12]]
