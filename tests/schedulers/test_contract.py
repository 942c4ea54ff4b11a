"""The contract every scheduler keeps, checked by driving it like the controller does."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tuning._trial import TERMINAL
from tuning.schedulers import Scheduler, make_scheduler

from ._drive import Driver

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


def _run(name: str, *, seed: int = 0, swap_after: int | None = None) -> Driver:
    driver = Driver(FACTORIES[name](), seed=seed, **OBJECTIVES.get(name, {}))
    if swap_after is not None:
        for _ in range(swap_after):
            driver.step()
        driver.swap(FACTORIES[name])
    driver.run()
    return driver


@pytest.mark.parametrize("name", NAMES)
def test_run_follows_protocol_and_terminates(name: str) -> None:
    driver = _run(name)
    assert driver.trials, "no trial was started"
    assert all(t.status in TERMINAL for t in driver.trials.values())
    assert len(driver.trials) <= driver.num_samples
    json.dumps(driver.scheduler.state_dict(), allow_nan=False)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_decisions(name: str) -> None:
    assert _run(name, seed=3).log == _run(name, seed=3).log


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("swap_after", [2, 5, 9])
def test_state_round_trip_gives_same_decisions(name: str, swap_after: int) -> None:
    assert _run(name, swap_after=swap_after).log == _run(name).log


@pytest.mark.parametrize("name", NAMES)
def test_settings_are_json(name: str) -> None:
    settings = FACTORIES[name]().settings()
    assert isinstance(settings["type"], str)
    json.dumps(settings, allow_nan=False)


CONSTRAINED = [n for n in NAMES if "constraints" in OBJECTIVES.get(n, {})]


@pytest.mark.parametrize("name", CONSTRAINED)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_infeasible_trials_never_go_past_a_milestone(name: str, seed: int) -> None:
    from ._drive import cost_of

    driver = _run(name, seed=seed)
    limit = OBJECTIVES[name]["constraints"]["cost"]["max"]
    infeasible = {t.trial_id for t in driver.trials.values() if cost_of(t.config) > limit}
    assert infeasible and len(infeasible) < len(driver.trials), "the seed tests nothing"
    resumed = {e[1] for e in driver.log if e[0] == "resume"}
    assert not resumed & infeasible
    first = driver.scheduler.milestones()[0]
    assert all(driver.trials[t].iteration <= first for t in infeasible)
    assert any(driver.trials[t].iteration > first for t in set(driver.trials) - infeasible)
