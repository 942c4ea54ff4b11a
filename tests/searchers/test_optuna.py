"""OptunaSearch: exploitation, warm start, failures, points_to_evaluate, validation."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
import pytest

from tuning.searchers import FINISHED, OptunaSearch
from tuning.space import Space, choice, grid, uniform

QUADRATIC = {"x": uniform(0, 1)}


def setup(searcher: OptunaSearch, space: dict[str, Any], num_samples: int, seed: int = 0,
          mode: str = "min") -> OptunaSearch:
    searcher.setup(Space(space), "loss", mode, np.random.default_rng(seed), num_samples)
    return searcher


def minimize_quadratic(searcher: OptunaSearch, n: int, seed: int = 0) -> np.ndarray:
    setup(searcher, QUADRATIC, n, seed)
    xs = []
    for i in range(n):
        config = searcher.suggest(str(i))
        assert isinstance(config, dict)
        xs.append(config["x"])
        searcher.on_trial_complete(str(i), {"loss": (config["x"] - 0.3) ** 2})
    assert searcher.suggest("done") == FINISHED
    return np.abs(np.array(xs) - 0.3)


def test_tpe_exploits() -> None:
    dist = minimize_quadratic(OptunaSearch("tpe", n_startup_trials=10), 60)
    assert dist[10:].min() < dist[:10].min()
    assert np.median(dist[-20:]) < 0.5 * np.median(dist[:10])  # it concentrates near the optimum


def test_gp_finds_quadratic_optimum_in_few_trials() -> None:
    dist = minimize_quadratic(OptunaSearch("gp", n_startup_trials=5), 12)
    assert dist[5:].min() < 0.01 < dist[:5].min()


def test_points_to_evaluate_asked_first() -> None:
    searcher = setup(OptunaSearch("tpe", points_to_evaluate=[{"x": 0.123}, {"x": 0.9, "a": "q"}]),
                     {"x": uniform(0, 1), "a": choice(["p", "q"])}, 4)
    first, second = searcher.suggest("0"), searcher.suggest("1")
    assert isinstance(first, dict) and isinstance(second, dict)
    assert first["x"] == 0.123 and first["a"] in ("p", "q")
    assert second == {"x": 0.9, "a": "q"}


def test_tells_last_reported_value_and_failures() -> None:
    searcher = setup(OptunaSearch("random"), QUADRATIC, 5)
    for i in range(5):
        searcher.suggest(str(i))
    searcher.on_trial_complete("0", {"loss": 2.0})
    searcher.on_trial_complete("1", {"loss": 0.5}, error=True)
    searcher.on_trial_complete("2", {"loss": math.nan})
    searcher.on_trial_complete("3", {"other": 1.0})
    searcher.on_trial_complete("unknown", {"loss": 1.0})  # not ours: ignored
    states = [(t.state, t.value) for t in searcher.study.trials]
    fail = optuna.trial.TrialState.FAIL
    assert states == [(optuna.trial.TrialState.COMPLETE, 2.0), (fail, None), (fail, None), (fail, None),
                      (optuna.trial.TrialState.RUNNING, None)]


def test_direction_follows_mode() -> None:
    study = setup(OptunaSearch(), QUADRATIC, 1, mode="max").study
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    with pytest.raises(ValueError, match="mode"):
        setup(OptunaSearch(), QUADRATIC, 1, mode="best")


def test_grid_treated_as_categorical_not_crossed() -> None:
    searcher = setup(OptunaSearch("random"), {"a": grid([1, 2, 3]), "x": uniform(0, 1)}, 4)
    configs = [searcher.suggest(str(i)) for i in range(5)]
    assert configs[-1] == FINISHED
    assert all(c["a"] in (1, 2, 3) for c in configs[:4])  # type: ignore[index]


def test_seed_overrides_controller_generator() -> None:
    a = setup(OptunaSearch("random", seed=7), QUADRATIC, 3, seed=1)
    b = setup(OptunaSearch("random", seed=7), QUADRATIC, 3, seed=2)
    assert [a.suggest(str(i)) for i in range(3)] == [b.suggest(str(i)) for i in range(3)]


def test_sampler_instance_is_used() -> None:
    sampler = optuna.samplers.RandomSampler(seed=0)
    searcher = setup(OptunaSearch(sampler), QUADRATIC, 1)
    searcher.suggest("0")
    assert searcher.study.sampler is sampler


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"sampler": "xyz"}, "searcher.sampler: unknown 'xyz'"),
    ({"sampler": 3}, "searcher.sampler must be"),
    ({"seed": -1}, "searcher.seed"),
    ({"seed": "1"}, "searcher.seed"),
    ({"n_startup_trials": -2}, "searcher.n_startup_trials"),
    ({"sampler": "random", "n_startup_trials": 5}, "searcher.n_startup_trials: not used"),
    ({"sampler_kwargs": {"bogus": 1}}, "searcher.sampler_kwargs: invalid for TPESampler"),
    ({"sampler_kwargs": {"seed": 1}}, "searcher.sampler_kwargs.seed"),
    ({"sampler_kwargs": [1]}, "searcher.sampler_kwargs must be a mapping"),
])
def test_constructor_validation(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        OptunaSearch(**kwargs)


def test_used_before_setup_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="before setup"):
        OptunaSearch().suggest("0")
