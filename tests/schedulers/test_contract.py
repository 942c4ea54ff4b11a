"""The contract every scheduler keeps, checked while the real controller drives it.

Each scheduler runs inside :class:`tuning.controller.Controller` on the simulated backend
(virtual clock: a whole run takes milliseconds). Trials follow learning curves that cross
(large ``x`` learns fast but plateaus high), and configs with ``layers == 2`` and ``act ==
"tanh"`` diverge (NaN from iteration 1 or 2: the controller ends them as errors). The scheduler is
wrapped in :class:`Checked`, which hands every call through unchanged and raises
:class:`ProtocolError` when an answer breaks the contract of :class:`tuning.schedulers.Scheduler`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from tuning._trial import TERMINAL, Status, Trial
from tuning.backends.simulated import SimulatedBackend, SimulatedTrainable
from tuning.controller import Budget, Controller
from tuning.experiment import Journal, replay
from tuning.schedulers import Decision, Resume, Scheduler, StartNew, make_scheduler
from tuning.searchers import RandomSearch
from tuning.space import Space, choice, loguniform, randint, uniform

FACTORIES: dict[str, Callable[[], Scheduler]] = {
    "fifo": lambda: make_scheduler("fifo", max_t=9),
    "asha-stop": lambda: make_scheduler("asha", max_t=9, reduction_factor=3),
    "asha-promote": lambda: make_scheduler("asha", max_t=9, reduction_factor=3, variant="promote"),
    "asha-brackets": lambda: make_scheduler("asha", max_t=9, reduction_factor=3, brackets=2),
    "hyperband": lambda: make_scheduler("hyperband", max_t=9, reduction_factor=3),
    "median": lambda: make_scheduler("median", grace_period=2, min_samples_required=2),
    "pbt": lambda: make_scheduler("pbt", perturbation_interval=2, max_t=9,
                                  hyperparam_mutations={"x": [0.1, 0.3, 0.5, 0.7, 0.9],
                                                        "lr": {"type": "loguniform", "low": 1e-3,
                                                               "high": 1.0}}),
    "bohb": lambda: make_scheduler("bohb", max_t=9, reduction_factor=3, min_points_in_model=3),
    "moasha-stop": lambda: make_scheduler("moasha", max_t=9, reduction_factor=3),
    "moasha-promote": lambda: make_scheduler("moasha", max_t=9, reduction_factor=3,
                                             variant="promote"),
    "moasha-brackets": lambda: make_scheduler("moasha", max_t=9, reduction_factor=3, brackets=2),
    "moasha-constrained-stop": lambda: make_scheduler("moasha", max_t=9, reduction_factor=3),
    "moasha-constrained-promote": lambda: make_scheduler("moasha", max_t=9, reduction_factor=3,
                                                         variant="promote"),
    "fifo-multi": lambda: make_scheduler("fifo", max_t=9),
}
NAMES = sorted(FACTORIES)
_TWO = {"metric": ["loss", "cost"], "mode": ["min", "min"]}
#: the objective each multi-objective configuration is driven with (the others: loss, min)
OBJECTIVES: dict[str, dict] = {
    "moasha-stop": _TWO, "moasha-promote": _TWO, "moasha-brackets": _TWO, "fifo-multi": _TWO,
    "moasha-constrained-stop": {**_TWO, "constraints": {"cost": {"max": 7.0}}},
    "moasha-constrained-promote": {**_TWO, "constraints": {"cost": {"max": 7.0}}},
}
SPACE = {"x": uniform(0.0, 1.0), "lr": loguniform(1e-3, 1.0), "layers": randint(1, 4),
         "act": choice(["relu", "tanh"]), "epochs": 9}
NUM_SAMPLES = 20


class ProtocolError(AssertionError):
    """The scheduler broke the controller protocol."""


def cost_of(config: dict[str, Any]) -> float:
    """A second metric, fixed per config, that conflicts with the loss (multi-objective
    configurations: ``metric=["loss", "cost"]``): small ``x`` ends lower but costs more."""
    return 10.0 * (1.0 - float(config["x"])) + float(config["layers"])


class Crossing(SimulatedTrainable):
    """Crossing loss curves over ``progress`` (the checkpointed state: PBT's exploit carries
    it over); diverging configs report NaN from iteration 2."""

    max_t = 9

    def init(self, config: dict[str, Any]) -> dict[str, Any]:
        return {"progress": 0}

    def step(self, state: dict[str, Any], config: dict[str, Any],
             t: int) -> tuple[dict[str, Any], dict[str, float], float]:
        progress = state["progress"] + 1
        x = float(config["x"])
        plateau, speed = 0.1 + 0.5 * x, 0.2 + 1.5 * x
        penalty = 0.05 * abs(math.log10(float(config["lr"])) + 1.5) + 0.01 * int(config["layers"])
        loss = plateau + (1 - plateau) * math.exp(-progress * speed) + penalty
        if config["layers"] == 2 and config["act"] == "tanh" and t >= 1 + int(x > 0.5):
            loss = float("nan")
        metrics = {"loss": loss, "cost": cost_of(config)}
        return {"progress": progress}, metrics, 1.0 + x  # fast learners cost more


class Checked:
    """The scheduler as the controller sees it, every answer checked against the contract."""

    def __init__(self, inner: Scheduler) -> None:
        self.inner = inner
        self.space = Space(SPACE)
        self.flights: Mapping[str, Any] = {}  # the controller's running segments

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def choose_trial_to_run(self, trials: Mapping[str, Trial],
                            can_start_new: bool) -> StartNew | Resume | None:
        sugg = self.inner.choose_trial_to_run(trials, can_start_new)
        if isinstance(sugg, StartNew):
            if not can_start_new:
                raise ProtocolError(f"StartNew while can_start_new is False: {sugg}")
            if sugg.config is not None and not self.space.contains(sugg.config):
                raise ProtocolError(f"StartNew config outside the space: {sugg.config}")
        elif isinstance(sugg, Resume):
            trial = trials.get(sugg.trial_id)
            if trial is None or trial.status != Status.PAUSED:
                raise ProtocolError(f"Resume of {sugg.trial_id} in state "
                                    f"{trial and trial.status}")
            donor = trials.get(sugg.checkpoint_from) if sugg.checkpoint_from else trial
            if donor is None or donor.checkpoint is None:
                raise ProtocolError(f"Resume of {sugg.trial_id} from {sugg.checkpoint_from}, "
                                    "which has no checkpoint")
            if sugg.config is not None and not self.space.contains(sugg.config):
                raise ProtocolError(f"Resume config outside the space: {sugg.config}")
        elif sugg is not None:
            raise ProtocolError(f"not a suggestion: {sugg!r}")
        return sugg

    def on_result(self, trial: Trial, result: Mapping[str, Any]) -> Decision:
        if trial.status != Status.RUNNING:
            raise ProtocolError(f"on_result for {trial.trial_id} in state {trial.status}")
        decision = self.inner.on_result(trial, result)
        if not isinstance(decision, Decision):
            raise ProtocolError(f"on_result returned {decision!r}")
        point = self.flights[trial.trial_id].segment.pause_at  # what the segment was given
        t = float(result.get(self.inner.time_attr, result["training_iteration"]))
        if decision == Decision.PAUSE and (point is None or t < point):
            raise ProtocolError(f"PAUSE of {trial.trial_id} at t={t}, pause_at={point}")
        return decision

    def trials_to_stop(self, trials: Mapping[str, Trial]) -> list[str]:
        ids = self.inner.trials_to_stop(trials)
        for tid in ids:
            if tid not in trials or trials[tid].status != Status.PAUSED:
                raise ProtocolError(f"trials_to_stop named {tid} in state "
                                    f"{tid in trials and trials[tid].status}")
        return ids


def controller(tmp_path, name: str, *, run: str = "run", seed: int = 0, workers: int = 3,
               restore_running: bool = True, replayed: Any = None) -> Controller:
    d = str(tmp_path / run)
    checked = Checked(FACTORIES[name]())
    objective = {"metric": "loss", "mode": "min", **OBJECTIVES.get(name, {})}
    ctl = Controller(name=run, trainable=Crossing(), space=Space(SPACE),
                     scheduler=checked,  # type: ignore[arg-type]
                     **objective,
                     searcher=RandomSearch(),
                     backend=SimulatedBackend(workers, restore_running=restore_running),
                     journal=Journal(d), storage=d, budget=Budget(num_samples=NUM_SAMPLES),
                     seed=seed, replayed=replayed)
    checked.flights = ctl.flights
    return ctl


TRACED = ("trial_created", "segment_started", "decision", "exploit", "trial_status")


def trace(ctl: Controller, kinds: tuple[str, ...] = TRACED) -> list[tuple[Any, ...]]:
    """What the scheduler decided and the controller did, from the committed journal events
    (a crashed run's uncommitted tail, re-done after resume, is left out as replay leaves it)."""
    out: list[tuple[Any, ...]] = []
    pending: list[tuple[Any, ...]] = []
    for e in ctl.journal.read():
        kind = e["event"]
        if kind == "run_started":
            pending.clear()
        elif kind in ("state", "finished"):
            out += pending
            pending.clear()
        elif kind in kinds:
            data = {k: v for k, v in e.items() if k not in ("seq", "t")}
            pending.append((kind, json.dumps(data, sort_keys=True)))
    return out


def steps_to_finish(tmp_path, name: str, **kw: Any) -> int:
    """How many messages (controller steps) a whole run takes."""
    ctl = controller(tmp_path, name, run="count", **kw)
    ctl.open()
    n = 0
    while not ctl.done:
        ctl.step()
        n += 1
    return n


def crash_and_resume(tmp_path, name: str, fraction: float,
                     **kw: Any) -> tuple[Controller, dict[str, int]]:
    """Run ``fraction`` of the run's messages, committing every 5, and "die" a little later,
    once a commit has caught a trial mid-way (the tail after the last commit is lost), then resume from the journal with a fresh scheduler and controller,
    to the end. Returns the resumed controller and the trials the crash interrupted (running,
    their ending not yet decided), with the iteration of their last committed checkpoint."""
    steps = int(fraction * steps_to_finish(tmp_path, name, **kw))
    crashed = controller(tmp_path, name, run="crash", **kw)
    crashed.open()
    i, crash_at = 0, None
    while crash_at is None or i < crash_at:  # past ``steps``, 3 steps after a commit that
        crashed.step()                       # caught a trial mid-way
        i += 1
        if i % 5 == 0:
            crashed.end_wave()
            crashed.commit()  # a state snapshot: what resume replays up to
            if crash_at is None and i >= steps and any(
                    crashed.trials[tid].iteration and fl.ending is None
                    for tid, fl in crashed.flights.items()):
                crash_at = i + 3
    assert not crashed.done, f"{name}: the run ended before the crash at {steps} steps"
    crashed.journal.flush()
    st = replay(crashed.journal.read())
    decided = {tid for tid, fl in st.state["controller"]["flights"].items() if fl.get("end_as")}
    interrupted = {tid: t.checkpoint_iteration for tid, t in st.trials.items()
                   if t.status == Status.RUNNING and tid not in decided}
    resumed = controller(tmp_path, name, run="crash", replayed=st,
                         seed=99, **kw)  # another seed: the restored state must win
    return resumed.run(), interrupted


@pytest.mark.parametrize("name", NAMES)
def test_run_follows_protocol_and_terminates(tmp_path, name: str) -> None:
    ctl = controller(tmp_path, name).run()  # Checked raises on a protocol violation
    assert ctl.trials, "no trial was started"
    assert all(t.status in TERMINAL for t in ctl.trials.values())
    assert len(ctl.trials) <= NUM_SAMPLES
    errors = [t for t in ctl.trials.values() if t.status == Status.ERROR]
    assert errors and all(math.isnan(t.last_result["loss"]) for t in errors)
    assert any(t.status != Status.ERROR and t.iteration == 9 for t in ctl.trials.values())
    json.dumps(ctl.scheduler.state_dict(), allow_nan=False)
    for t in ctl.trials.values():  # resumed from checkpoints: no iteration lost or repeated
        its = [r["training_iteration"]
               for r in (e["result"] for e in ctl.journal.read()
                         if e["event"] == "result" and e["trial_id"] == t.trial_id)]
        assert its == list(range(1, t.iteration + 1)), (t.trial_id, its)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_decisions(tmp_path, name: str) -> None:
    a = controller(tmp_path, name, run="a", seed=3).run()
    b = controller(tmp_path, name, run="b", seed=3).run()
    assert trace(a) == trace(b)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_resume_from_the_journal_gives_the_same_decisions(tmp_path, name: str,
                                                          fraction: float) -> None:
    """State round trip: the scheduler's state, written to the journal and read back by a new
    controller, decides exactly as the uninterrupted run's scheduler did."""
    whole = controller(tmp_path, name, run="whole").run()
    assert trace(crash_and_resume(tmp_path, name, fraction)[0]) == trace(whole)


def outcome(ctl: Controller) -> dict[str, tuple[Any, ...]]:
    return {t.trial_id: (t.config, str(t.status), t.stopped_at, t.rung, t.iteration)
            for t in ctl.trials.values()}


@pytest.mark.parametrize("name", NAMES)
def test_resubmitting_resume_on_one_worker_gives_the_same_decisions(tmp_path,
                                                                     name: str) -> None:
    """As real backends resume: the running segment is lost and its trial restarts from its
    last checkpoint. On one worker the order of results does not depend on timing, so every
    decision, config and outcome is the same as without the crash (only the segments differ:
    the interrupted trial's is started again)."""
    whole = controller(tmp_path, name, run="whole", workers=1).run()
    resumed, interrupted = crash_and_resume(tmp_path, name, 0.5, workers=1,
                                            restore_running=False)
    assert any(interrupted.values()), "the crash caught no trial mid-way"
    events = resumed.journal.read()
    last_run = max(i for i, e in enumerate(events) if e["event"] == "run_started")
    again = next(e for e in events[last_run:] if e["event"] == "segment_started")
    assert again["trial_id"] in interrupted  # restarted first, from its checkpoint
    assert again["start_iteration"] == interrupted[again["trial_id"]]
    kinds = ("trial_created", "decision", "exploit")
    assert trace(resumed, kinds) == trace(whole, kinds)
    assert outcome(resumed) == outcome(whole)


@pytest.mark.parametrize("name", NAMES)
def test_settings_are_json(name: str) -> None:
    settings = FACTORIES[name]().settings()
    assert isinstance(settings["type"], str)
    json.dumps(settings, allow_nan=False)


CONSTRAINED = [n for n in NAMES if "constraints" in OBJECTIVES.get(n, {})]


@pytest.mark.parametrize("name", CONSTRAINED)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_infeasible_trials_never_go_past_a_milestone(tmp_path, name: str, seed: int) -> None:
    ctl = controller(tmp_path, name, seed=seed).run()
    limit = OBJECTIVES[name]["constraints"]["cost"]["max"]
    infeasible = {tid for tid, t in ctl.trials.items() if cost_of(t.config) > limit}
    assert infeasible and len(infeasible) < len(ctl.trials), "the seed tests nothing"
    resumed = {e["trial_id"] for e in ctl.journal.read()
               if e["event"] == "segment_started" and e.get("start_iteration")}
    assert not resumed & infeasible
    first = ctl.scheduler.milestones()[0]
    assert all(ctl.trials[t].iteration <= first for t in infeasible)
    assert any(ctl.trials[t].iteration > first for t in set(ctl.trials) - infeasible)
