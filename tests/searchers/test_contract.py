"""One contract suite run against every searcher: bounds, determinism, restore, quota.

Each searcher is driven by the real :class:`tuning.controller.Controller` on the simulated
backend (two virtual workers, so two trials are unfinished at a time), with FIFO: the calls it
gets are the ones production makes (``setup``, ``suggest`` per new trial, ``on_trial_complete``
per ended trial, ``error=True`` for failed ones, ``state_dict``/``load_state_dict`` through the
journal on resume).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tuning._trial import Status
from tuning.backends.simulated import SimulatedBackend, SimulatedTrainable
from tuning.controller import Budget, Controller
from tuning.experiment import Journal, replay
from tuning.schedulers import FIFO
from tuning.searchers import (
    FINISHED,
    ConcurrencyLimiter,
    GridSearch,
    OptunaSearch,
    RandomSearch,
    Searcher,
)
from tuning.space import Space, choice, grid, loguniform, quniform, randint, sample_from, uniform


def mixed_space() -> dict[str, Any]:
    return {"x": uniform(-1.0, 1.0), "lr": loguniform(1e-4, 1e-1), "n": randint(1, 8),
            "q": quniform(0.0, 1.0, 0.25), "act": choice(["relu", "tanh"]), "const": 3,
            "twice": sample_from(lambda c: 2 * c["n"])}


def grid_space() -> dict[str, Any]:
    return {"a": grid([1, 2, 3]), "b": choice(["x", "y"]), "const": 3,
            "twice": sample_from(lambda c: 2 * c["a"])}


def cost(config: dict[str, Any]) -> float:
    """A second metric that conflicts with the loss (multi-objective cases)."""
    if "x" in config:
        return abs(config["x"] + 0.5) + 0.1 * config["n"]
    return 4.0 - float(config["a"])


def loss(config: dict[str, Any]) -> float:
    if "x" in config:
        if config["n"] == 7:
            return float("nan")  # diverges: the controller ends the trial as an error
        return ((config["x"] - 0.3) ** 2 + 0.01 * (config["n"] - 4) ** 2
                + (config["act"] == "tanh") * 0.1)
    return float(config["a"]) + (config["b"] == "y")


class Curve(SimulatedTrainable):
    """Three iterations per trial; the loss falls towards ``loss(config)``."""

    max_t = 3

    def step(self, state: dict[str, Any], config: dict[str, Any],
             t: int) -> tuple[dict[str, Any], dict[str, float], float]:
        return state, {"loss": loss(config) + 1.0 / t, "cost": cost(config) + 1.0 / t}, 1.0


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], Searcher]
    space: Callable[[], dict[str, Any]]
    random: bool = True  # different seeds give different configs
    per_sample: int = 1  # configs per sample: the grid points the searcher crosses
    metric: Any = "loss"
    mode: Any = "min"
    constraints: dict[str, Any] | None = None


CASES = [
    Case("random", RandomSearch, mixed_space),
    Case("random-grid", RandomSearch, grid_space, random=False, per_sample=3),
    Case("grid", GridSearch, grid_space, random=False, per_sample=6),
    Case("optuna-tpe", lambda: OptunaSearch("tpe", n_startup_trials=3), mixed_space),
    Case("optuna-cmaes", lambda: OptunaSearch("cmaes", sampler_kwargs={"popsize": 4}), mixed_space),
    Case("optuna-gp", lambda: OptunaSearch("gp", n_startup_trials=3), mixed_space),
    Case("optuna-random", lambda: OptunaSearch("random"), mixed_space),
    Case("optuna-qmc", lambda: OptunaSearch("qmc"), mixed_space, random=False),
    Case("limiter-random", lambda: ConcurrencyLimiter(RandomSearch(), 2), mixed_space),
    Case("limiter-tpe", lambda: ConcurrencyLimiter(OptunaSearch("tpe", n_startup_trials=3), 2), mixed_space),
]
_MO = {"metric": ["loss", "cost"], "mode": ["min", "min"]}
_MOC = {**_MO, "constraints": {"cost": {"max": 0.9}}}
CASES += [
    Case("mo-random", RandomSearch, mixed_space, **_MOC),
    Case("mo-grid", GridSearch, grid_space, random=False, per_sample=6, **_MO),
    Case("mo-nsga2", lambda: OptunaSearch("nsga2", sampler_kwargs={"population_size": 4}),
         mixed_space, **_MO),
    Case("mo-nsga2-constrained",
         lambda: OptunaSearch("nsga2", sampler_kwargs={"population_size": 4}), mixed_space,
         **_MOC),
    Case("mo-nsga3", lambda: OptunaSearch("nsga3", sampler_kwargs={"population_size": 4}),
         mixed_space, **_MOC),
    Case("mo-tpe", lambda: OptunaSearch("tpe", n_startup_trials=3), mixed_space, **_MOC),
    Case("constrained-tpe", lambda: OptunaSearch("tpe", n_startup_trials=3), mixed_space,
         constraints={"cost": {"max": 0.9}}),
    Case("mo-limiter-tpe",
         lambda: ConcurrencyLimiter(OptunaSearch("tpe", n_startup_trials=3), 2), mixed_space,
         **_MOC),
]
ids = [c.name for c in CASES]


def controller(tmp_path, case: Case, seed: int, num_samples: int = 6, run: str = "run",
               replayed: Any = None) -> Controller:
    d = str(tmp_path / run)
    return Controller(name=run, trainable=Curve(), space=Space(case.space()), metric=case.metric,
                      mode=case.mode, constraints=case.constraints, scheduler=FIFO(),
                      searcher=case.make(), backend=SimulatedBackend(2), journal=Journal(d),
                      storage=d, budget=Budget(num_samples=num_samples), seed=seed,
                      replayed=replayed)


def configs(ctl: Controller) -> list[dict[str, Any]]:
    return [t.config for t in ctl.trials.values()]


def dump(cfgs: list[dict[str, Any]]) -> str:
    return json.dumps(cfgs, sort_keys=True)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_configs_lie_in_space_with_constants_and_sample_from(tmp_path, case: Case) -> None:
    space = Space(case.space())
    ctl = controller(tmp_path, case, 0).run()
    assert len(ctl.trials) >= 6
    for config in configs(ctl):
        assert space.contains(config), config
        assert config["const"] == 3
        assert config["twice"] == 2 * config.get("n", config.get("a"))
    assert all(t.status in (Status.TERMINATED, Status.ERROR) for t in ctl.trials.values())


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_same_seed_same_configs(tmp_path, case: Case) -> None:
    a = controller(tmp_path, case, 5, run="a").run()
    b = controller(tmp_path, case, 5, run="b").run()
    assert dump(configs(a)) == dump(configs(b))


@pytest.mark.parametrize("case", [c for c in CASES if c.random], ids=[c.name for c in CASES if c.random])
def test_different_seed_different_configs(tmp_path, case: Case) -> None:
    a = controller(tmp_path, case, 5, run="a").run()
    b = controller(tmp_path, case, 6, run="b").run()
    assert dump(configs(a)) != dump(configs(b))


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_resumed_searcher_continues_identically(tmp_path, case: Case) -> None:
    """The searcher's state goes through the journal: a run resumed after a crash (by a
    controller with another seed: the loaded state must win) suggests what the uninterrupted
    run suggested, having been told the same completions."""
    whole = controller(tmp_path, case, 3, num_samples=9, run="whole").run()
    crashed = controller(tmp_path, case, 3, num_samples=9, run="crash")
    crashed.open()
    while sum(t.is_terminal for t in crashed.trials.values()) < 3:
        crashed.step()
    crashed.end_wave()
    crashed.commit()  # the state snapshot resume replays up to
    before = len(crashed.trials)
    for _ in range(6):  # lost with the crash: never committed
        crashed.step()
    crashed.journal.flush()
    resumed = controller(tmp_path, case, 999, num_samples=9, run="crash",
                         replayed=replay(crashed.journal.read())).run()
    assert len(resumed.trials) - before >= 3
    assert dump(configs(resumed)) == dump(configs(whole))


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_finished_after_quota(tmp_path, case: Case) -> None:
    ctl = controller(tmp_path, case, 1, num_samples=3).run()
    assert len(ctl.trials) == 3 * case.per_sample
    assert ctl.searcher.suggest("trial-extra") == FINISHED


def test_failed_trials_reach_the_searcher_as_errors(tmp_path) -> None:
    """A trial that diverges is completed with ``error=True``: TPE does not learn from it."""
    case = CASES[ids.index("optuna-tpe")]
    ctl = controller(tmp_path, case, 0, num_samples=20).run()
    failed = [t for t in ctl.trials.values() if t.status == Status.ERROR]
    assert failed
    states = [t.state.name for t in ctl.searcher.study.trials]  # one per trial, all told
    assert len(states) == len(ctl.trials)
    assert states.count("FAIL") == len(failed)
    assert states.count("COMPLETE") == len(ctl.trials) - len(failed)


def test_every_point_to_evaluate_runs_first_even_beyond_num_samples(tmp_path) -> None:
    points = [{"x": v, "n": 2} for v in (-0.5, 0.0, 0.25, 0.5, 0.75)]
    case = Case("points", lambda: RandomSearch(points_to_evaluate=points), mixed_space)
    ctl = controller(tmp_path, case, 0, num_samples=3).run()
    assert [(c["x"], c["n"]) for c in configs(ctl)] == [(p["x"], p["n"]) for p in points]
