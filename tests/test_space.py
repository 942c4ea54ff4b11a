"""Search-space primitives: validation messages, sampling bounds, grids, dict form, Optuna."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna.distributions as od
import pytest

from tuning.space import (
    Choice,
    Grid,
    LogUniform,
    QUniform,
    RandInt,
    Space,
    Uniform,
    choice,
    domain_from_dict,
    grid,
    loguniform,
    quniform,
    randint,
    sample_from,
    uniform,
)


@pytest.mark.parametrize(("domain", "needle"), [
    (loguniform(0, 1), "low > 0"),
    (loguniform(-1, 1), "low > 0"),
    (uniform(1.0, 1.0), "low < high"),
    (uniform(2.0, 1.0), "low < high"),
    (uniform(0, float("inf")), "high must be a finite number"),
    (uniform("a", 1), "low must be a finite number"),  # type: ignore[arg-type]
    (quniform(0, 1, 0), "q > 0"),
    (randint(0, 0), "low < high"),
    (randint(0, 2.5), "high must be an integer"),  # type: ignore[arg-type]
    (randint(True, 3), "low must be an integer"),
    (choice([]), "non-empty"),
    (grid([]), "non-empty"),
    (sample_from(42), "callable"),  # type: ignore[arg-type]
])
def test_invalid_domain_error_names_parameter(domain: Any, needle: str) -> None:
    with pytest.raises(ValueError, match=r"space\.lr: ") as err:
        Space({"ok": uniform(0, 1), "lr": domain})
    assert needle in str(err.value)


@pytest.mark.parametrize("bad", [{}, [("a", 1)], None])
def test_space_itself_validated(bad: Any) -> None:
    with pytest.raises(ValueError, match="space"):
        Space(bad)


@pytest.mark.parametrize(("domain", "check"), [
    (uniform(-2, 3), lambda v: isinstance(v, float) and -2 <= v <= 3),
    (loguniform(1e-5, 1e-1), lambda v: 1e-5 <= v <= 1e-1),
    (randint(3, 7), lambda v: type(v) is int and 3 <= v < 7),
    (quniform(0.05, 1.0, 0.1), lambda v: 0.05 <= v <= 1.0),
    (choice(["a", "b", 3]), lambda v: v in ("a", "b", 3)),
])
def test_sampling_stays_in_bounds(domain: Any, check: Any) -> None:
    rng = np.random.default_rng(0)
    values = [domain.sample(rng) for _ in range(2000)]
    assert all(check(v) for v in values)
    assert all(domain.contains(v) for v in values)


def test_randint_reaches_both_ends_but_not_high() -> None:
    rng = np.random.default_rng(1)
    assert {randint(3, 7).sample(rng) for _ in range(500)} == {3, 4, 5, 6}


def test_loguniform_is_spread_over_decades() -> None:
    rng = np.random.default_rng(2)
    values = np.array([loguniform(1e-4, 1.0).sample(rng) for _ in range(4000)])
    share_below = (values < 1e-2).mean()  # half of the log range
    assert 0.45 < share_below < 0.55


@pytest.mark.parametrize(("low", "high", "q"), [(0.0, 1.0, 0.25), (0.04, 0.97, 0.1), (1, 10, 3)])
def test_quniform_values_are_multiples_of_q(low: float, high: float, q: float) -> None:
    rng = np.random.default_rng(3)
    values = [quniform(low, high, q).sample(rng) for _ in range(2000)]
    assert all(low <= v <= high for v in values)
    assert all(abs(v / q - round(v / q)) < 1e-9 for v in values)


def test_grid_points_cross_every_grid_in_order() -> None:
    space = Space({"a": grid([1, 2]), "x": uniform(0, 1), "b": grid(["u", "v", "w"]), "c": 9})
    points = space.grid_points()
    assert points[:2] == [{"a": 1, "b": "u"}, {"a": 1, "b": "v"}]
    assert len(points) == 6 and len({tuple(p.items()) for p in points}) == 6
    assert Space({"x": uniform(0, 1)}).grid_points() == [{}]


def test_sample_fills_constants_and_sample_from_sees_other_params() -> None:
    space = Space({"n": randint(1, 100), "double": sample_from(lambda c: 2 * c["n"] + c["k"]), "k": 1})
    config = space.sample(np.random.default_rng(0))
    assert list(config) == ["n", "double", "k"]
    assert config["double"] == 2 * config["n"] + 1


def test_sample_keeps_fixed_values() -> None:
    space = Space({"a": uniform(0, 1), "b": sample_from(lambda c: c["a"] + 1)})
    assert space.sample(np.random.default_rng(0), fixed={"a": 0.5}) == {"a": 0.5, "b": 1.5}


def test_contains_checks_every_sampled_parameter() -> None:
    space = Space({"x": uniform(0, 1), "n": randint(0, 3), "c": choice(["p"]), "k": 1})
    assert space.contains({"x": 0.5, "n": 2, "c": "p"})
    assert not space.contains({"x": 1.5, "n": 2, "c": "p"})
    assert not space.contains({"x": 0.5, "n": 3, "c": "p"})
    assert not space.contains({"x": 0.5, "n": 2})
    assert not space.contains({"x": True, "n": 2, "c": "p"})


@pytest.mark.parametrize(("d", "expected"), [
    ({"type": "uniform", "low": 0, "high": 2}, Uniform(0, 2)),
    ({"type": "loguniform", "low": "1e-4", "high": "0.1"}, LogUniform(1e-4, 0.1)),
    ({"type": "quniform", "low": 0, "high": 1, "q": "0.25"}, QUniform(0, 1, 0.25)),
    ({"type": "randint", "low": "2", "high": 8}, RandInt(2, 8)),
    ({"type": "choice", "values": ["a", "b"]}, Choice(("a", "b"))),
    ({"type": "grid", "values": [1, 2]}, Grid((1, 2))),
])
def test_domain_from_dict(d: dict[str, Any], expected: Any) -> None:
    domain = domain_from_dict("p", d)
    assert domain == expected and type(domain) is type(expected)
    assert domain_from_dict("p", domain.to_dict()) == domain  # round trip


@pytest.mark.parametrize(("d", "needle"), [
    ({"type": "normal", "low": 0}, "space.p.type: unknown 'normal'"),
    ({"type": "uniform", "low": 0, "high": 1, "step": 2}, "space.p: unknown field(s) ['step']"),
    ({"type": "uniform", "low": 0}, "space.p: uniform needs ['high']"),
    ({"type": "loguniform", "low": "tiny", "high": 1}, "space.p: low must be a number, got 'tiny'"),
    ({"type": "choice", "values": "abc"}, "space.p.values must be a list"),
])
def test_domain_from_dict_errors(d: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError) as err:
        domain_from_dict("p", d)
    assert needle in str(err.value)


def test_space_parses_dict_form_and_validates_it() -> None:
    space = Space({"lr": {"type": "loguniform", "low": "1e-4", "high": 0.1}, "epochs": 5})
    assert space["lr"] == LogUniform(1e-4, 0.1) and space["epochs"] == 5
    assert set(space.domains) == {"lr"}
    with pytest.raises(ValueError, match=r"space\.lr: .*low > 0"):
        Space({"lr": {"type": "loguniform", "low": 0, "high": 0.1}})


def test_to_optuna_distributions() -> None:
    space = Space({
        "u": uniform(0, 2), "l": loguniform(1e-3, 1), "q": quniform(0, 1, 0.25),
        "q_off": quniform(0.05, 1.05, 0.1), "n": randint(1, 5), "c": choice(["a", "b"]),
        "g": grid([1, 2]), "s": sample_from(lambda c: 0), "k": 3,
    })
    dists = space.to_optuna()
    assert dists == {
        "u": od.FloatDistribution(0, 2), "l": od.FloatDistribution(1e-3, 1, log=True),
        "q": od.FloatDistribution(0, 1, step=0.25), "q_off": od.FloatDistribution(0.05, 1.05),
        "n": od.IntDistribution(1, 4), "c": od.CategoricalDistribution(["a", "b"]),
        "g": od.CategoricalDistribution([1, 2]),
    }


def test_grid_points_are_built_once(monkeypatch) -> None:
    space = Space({"a": grid([1, 2]), "b": grid(["u", "v"]), "x": uniform(0, 1)})
    builds: list[int] = []
    original = Space.grid_params

    def counting(self: Space) -> dict:
        builds.append(1)
        return original.fget(self)  # type: ignore[attr-defined]

    monkeypatch.setattr(Space, "grid_params", property(counting))
    first = space.grid_points()
    assert space.grid_points() is first and len(first) == 4
    assert builds == [1]
    assert Space(space).grid_points() == first  # a copy builds its own, equal
