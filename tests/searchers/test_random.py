"""Random/grid search, the concurrency limiter and the make_searcher factory."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np
import pytest

from tuning.searchers import (
    FINISHED,
    SEARCHER_TYPES,
    ConcurrencyLimiter,
    GridSearch,
    OptunaSearch,
    RandomSearch,
    Searcher,
    make_searcher,
)
from tuning.space import Space, choice, grid, randint, uniform


def setup(searcher: Searcher, space: dict[str, Any], num_samples: int, seed: int = 0) -> Searcher:
    searcher.setup(Space(space), "loss", "min", np.random.default_rng(seed), num_samples)
    return searcher


def drain(searcher: Searcher, limit: int = 500) -> list[dict[str, Any]]:
    configs = []
    for i in range(limit):
        out = searcher.suggest(f"t{i}")
        if out == FINISHED:
            return configs
        assert isinstance(out, dict)
        configs.append(out)
        searcher.on_trial_complete(f"t{i}", {"loss": 0.0})
    raise AssertionError("searcher never returned FINISHED")


def test_every_grid_point_repeated_num_samples_times() -> None:
    space = {"a": grid([1, 2, 3]), "b": grid(["x", "y"]), "x": uniform(0, 1)}
    configs = drain(setup(RandomSearch(), space, num_samples=4))
    assert len(configs) == 24
    assert Counter((c["a"], c["b"]) for c in configs) == {(a, b): 4 for a in (1, 2, 3) for b in "xy"}
    assert len({c["x"] for c in configs}) == 24  # the non-grid domain is sampled each time


def test_grid_order_cycles_through_points_per_sample() -> None:
    configs = drain(setup(RandomSearch(), {"a": grid([1, 2]), "x": uniform(0, 1)}, num_samples=2))
    assert [c["a"] for c in configs] == [1, 2, 1, 2]


def test_points_to_evaluate_first_and_counted_in_total() -> None:
    points = [{"x": 0.5}, {"x": 0.25, "n": 7}]
    configs = drain(setup(RandomSearch(points_to_evaluate=points),
                          {"x": uniform(0, 1), "n": randint(0, 10)}, num_samples=5))
    assert len(configs) == 5
    assert configs[0]["x"] == 0.5 and 0 <= configs[0]["n"] < 10
    assert configs[1] == {"x": 0.25, "n": 7}


def test_more_points_than_quota_all_run() -> None:
    points = [{"x": v} for v in (0.1, 0.2, 0.3)]
    configs = drain(setup(RandomSearch(points_to_evaluate=points), {"x": uniform(0, 1)}, 1))
    assert [c["x"] for c in configs] == [0.1, 0.2, 0.3]


def test_points_to_evaluate_unknown_parameter_rejected() -> None:
    with pytest.raises(ValueError, match=r"points_to_evaluate\[0\].*'y'"):
        setup(RandomSearch(points_to_evaluate=[{"y": 1}]), {"x": uniform(0, 1)}, 1)


@pytest.mark.parametrize("bad", [{"x": 1}, "x", [1, 2]])
def test_points_to_evaluate_must_be_list_of_dicts(bad: Any) -> None:
    with pytest.raises(ValueError, match="searcher.points_to_evaluate"):
        RandomSearch(points_to_evaluate=bad)


def test_num_samples_validated() -> None:
    with pytest.raises(ValueError, match="num_samples"):
        setup(RandomSearch(), {"x": uniform(0, 1)}, num_samples=0)


def test_grid_search_crosses_choice_as_grid() -> None:
    configs = drain(setup(GridSearch(), {"a": grid([1, 2]), "b": choice("xyz"), "c": 5}, 2))
    assert len(configs) == 12
    assert Counter((c["a"], c["b"]) for c in configs) == {(a, b): 2 for a in (1, 2) for b in "xyz"}
    assert all(c["c"] == 5 for c in configs)


def test_grid_search_rejects_continuous_domains() -> None:
    with pytest.raises(ValueError, match=r"space\.lr: grid search needs grid or choice"):
        setup(GridSearch(), {"a": grid([1]), "lr": uniform(0, 1)}, 1)


def test_limiter_blocks_then_releases() -> None:
    limiter = setup(ConcurrencyLimiter(RandomSearch(), max_concurrent=2), {"x": uniform(0, 1)}, 5)
    assert isinstance(limiter.suggest("a"), dict)
    assert isinstance(limiter.suggest("b"), dict)
    assert limiter.suggest("c") is None
    limiter.on_trial_complete("a", None, error=True)  # a failed trial frees its slot too
    assert isinstance(limiter.suggest("c"), dict)
    assert limiter.suggest("d") is None


def test_limiter_passes_finished_through_and_saves_inner_state() -> None:
    limiter = setup(ConcurrencyLimiter(RandomSearch(), max_concurrent=3), {"x": uniform(0, 1)}, 2)
    limiter.suggest("a")
    state = json.loads(json.dumps(limiter.state_dict()))
    assert state["live"] == ["a"] and state["searcher"]["count"] == 1
    limiter.suggest("b")
    assert limiter.suggest("c") == FINISHED


def test_limiter_passes_results_to_the_wrapped_searcher() -> None:
    inner = OptunaSearch("random")
    limiter = setup(ConcurrencyLimiter(inner, max_concurrent=1), {"x": uniform(0, 1)}, 3)
    limiter.suggest("a")
    limiter.on_trial_complete("a", {"loss": 0.5})
    assert [t.value for t in inner.study.trials] == [0.5]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_limiter_max_concurrent_validated(bad: Any) -> None:
    with pytest.raises(ValueError, match="searcher.max_concurrent"):
        ConcurrencyLimiter(RandomSearch(), bad)


def test_make_searcher_builds_each_type() -> None:
    assert SEARCHER_TYPES == ("grid", "optuna", "random")
    assert type(make_searcher("random", points_to_evaluate=[{"x": 1}])) is RandomSearch
    assert type(make_searcher("grid")) is GridSearch
    optuna = make_searcher("optuna", sampler="cmaes", seed=3, n_startup_trials=2,
                           sampler_kwargs={"popsize": 4})
    assert isinstance(optuna, OptunaSearch) and optuna.sampler_name == "cmaes" and optuna.seed == 3
    limited = make_searcher("grid", max_concurrent=2)
    assert isinstance(limited, ConcurrencyLimiter) and isinstance(limited.searcher, GridSearch)


def test_make_searcher_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"^searcher.type: unknown 'foo'; allowed: grid, optuna, random$"):
        make_searcher("foo")
    with pytest.raises(ValueError, match=r"^searcher.sampler: unknown 'xyz'; allowed: cmaes, gp, nsga2, nsga3, qmc, random, tpe$"):
        make_searcher("optuna", sampler="xyz")
    with pytest.raises(ValueError, match=r"searcher.sampler: unknown field for type 'random'"):
        make_searcher("random", sampler="tpe")
    with pytest.raises(ValueError, match="searcher.max_concurrent"):
        make_searcher("random", max_concurrent=0)
