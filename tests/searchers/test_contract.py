"""One contract suite run against every searcher: bounds, determinism, restore, quota."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from tuning.searchers import (
    FINISHED,
    ConcurrencyLimiter,
    GridSearch,
    OptunaSearch,
    RandomSearch,
    Searcher,
)
from tuning.space import Space, choice, grid, loguniform, quniform, randint, sample_from, uniform


def mixed_space() -> Space:
    return Space({
        "x": uniform(-1.0, 1.0), "lr": loguniform(1e-4, 1e-1), "n": randint(1, 8),
        "q": quniform(0.0, 1.0, 0.25), "act": choice(["relu", "tanh"]), "const": 3,
        "twice": sample_from(lambda c: 2 * c["n"]),
    })


def grid_space() -> Space:
    return Space({"a": grid([1, 2, 3]), "b": choice(["x", "y"]), "const": 3,
                  "twice": sample_from(lambda c: 2 * c["a"])})


def cost(config: dict[str, Any]) -> float:
    """A second metric that conflicts with the loss (multi-objective cases)."""
    if "x" in config:
        return abs(config["x"] + 0.5) + 0.1 * config["n"]
    return 4.0 - float(config["a"])


def loss(config: dict[str, Any]) -> float:
    if "x" in config:
        return (config["x"] - 0.3) ** 2 + 0.01 * (config["n"] - 4) ** 2 + (config["act"] == "tanh") * 0.1
    return float(config["a"]) + (config["b"] == "y")


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], Searcher]
    space: Callable[[], Space]
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


@dataclass
class Driver:
    """Feeds a searcher: each step suggests one trial and completes the oldest when two run."""

    searcher: Searcher
    steps: int = 0
    pending: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    configs: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False

    def step(self) -> None:
        trial_id = f"trial-{self.steps:03d}"
        self.steps += 1
        out = self.searcher.suggest(trial_id)
        if out == FINISHED:
            self.finished = True
        elif isinstance(out, dict):
            self.configs.append(out)
            self.pending.append((trial_id, out))
            self.searcher.on_trial_result(trial_id, {"loss": loss(out) + 1.0,
                                                     "cost": cost(out) + 1.0})
        if len(self.pending) >= 2 or out is None or out == FINISHED:
            self._complete_oldest()

    def _complete_oldest(self) -> None:
        if self.pending:
            trial_id, config = self.pending.pop(0)
            self.searcher.on_trial_complete(trial_id, {"loss": loss(config),
                                                       "cost": cost(config)})

    def run(self, n: int) -> list[dict[str, Any]]:
        for _ in range(n):
            self.step()
        return self.configs


def start(case: Case, seed: int, num_samples: int = 8) -> Driver:
    searcher = case.make()
    searcher.setup(case.space(), case.metric, case.mode, np.random.default_rng(seed), num_samples)
    if case.constraints:
        searcher.set_constraints(case.constraints)
    return Driver(searcher)


def dump(configs: list[dict[str, Any]]) -> str:
    return json.dumps(configs, sort_keys=True)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_configs_lie_in_space_with_constants_and_sample_from(case: Case) -> None:
    space = case.space()
    configs = start(case, 0).run(12)
    assert len(configs) >= 6
    for config in configs:
        assert space.contains(config), config
        assert config["const"] == 3
        assert config["twice"] == 2 * config.get("n", config.get("a"))


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_same_seed_same_configs(case: Case) -> None:
    assert dump(start(case, 5).run(10)) == dump(start(case, 5).run(10))


@pytest.mark.parametrize("case", [c for c in CASES if c.random], ids=[c.name for c in CASES if c.random])
def test_different_seed_different_configs(case: Case) -> None:
    assert dump(start(case, 5).run(10)) != dump(start(case, 6).run(10))


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_restored_searcher_continues_identically(case: Case) -> None:
    original = start(case, 3, num_samples=20)
    original.run(7)
    done = len(original.configs)
    state = json.loads(json.dumps(original.searcher.state_dict()))
    restored = start(case, 999, num_samples=20)  # another generator: the loaded state must win
    restored.searcher.load_state_dict(state)
    assert json.loads(json.dumps(restored.searcher.state_dict())) == state
    restored.pending, restored.steps = list(original.pending), original.steps
    original.run(8)
    restored.run(8)
    assert len(restored.configs) >= 4
    assert dump(restored.configs) == dump(original.configs[done:])


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_finished_after_quota(case: Case) -> None:
    driver = start(case, 1, num_samples=3)
    while not driver.finished and driver.steps < 200:
        driver.step()
    assert driver.finished
    assert len(driver.configs) == 3 * case.per_sample
    assert driver.searcher.suggest("trial-extra") == FINISHED
