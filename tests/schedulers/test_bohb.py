"""BOHB: configs from TPE on the largest budget with enough observations."""

from __future__ import annotations

import json

import pytest

from tuning._trial import Status, Trial
from tuning.schedulers import BOHB, StartNew
from tuning.schedulers import _bohb as bohb_module
from tuning.schedulers._bohb import model_budget, n_good, tpe_propose
from tuning.space import Space, choice, randint, uniform

SPACE = Space({"x": uniform(0, 1), "n": randint(1, 5), "act": choice(["a", "b"]), "c": 7})


def test_model_budget() -> None:
    obs = [(1, {}, 0.0)] * 4 + [(3, {}, 0.0)] * 2
    assert model_budget(obs, 4) == 1 and model_budget(obs, 2) == 3 and model_budget(obs, 5) is None


def test_n_good_follows_the_paper() -> None:
    # N_l = max(N_min, q * N_b), q = 0.15, at most half of the points (the bad set keeps as many)
    assert [n_good(n, 3) for n in (1, 2, 4, 6, 7, 20, 21, 27, 81)] == [1, 1, 2, 3, 3, 3, 4, 5, 13]
    assert n_good(100, 3, fraction=0.25) == 25


def test_tpe_propose_is_seeded() -> None:
    dists = SPACE.to_optuna()
    obs = [({"x": i / 10, "n": 1 + i % 4, "act": "ab"[i % 2]}, float(i)) for i in range(8)]
    a, b = tpe_propose(obs, dists, seed=3), tpe_propose(obs, dists, seed=3)
    assert a == b and SPACE.contains(a)


def test_without_space_asks_the_searcher() -> None:
    bohb = BOHB(max_t=9)
    sug = bohb.choose_trial_to_run({}, True)
    assert sug == StartNew(config=None, info={"bracket": 2})


def _fill_rung(bohb: BOHB, n: int) -> dict[str, Trial]:
    trials: dict[str, Trial] = {}
    for i in range(n):
        sug = bohb.choose_trial_to_run(trials, True)
        assert isinstance(sug, StartNew) and SPACE.contains(sug.config)
        t = Trial(f"t{i}", sug.config, info=sug.info, status=Status.RUNNING)
        trials[t.trial_id] = t
        bohb.on_trial_add(t)
        result = {"training_iteration": 1, "loss": sug.config["x"]}
        t.observe(result)
        bohb.on_result(t, result)
    return trials


def test_model_used_once_a_budget_has_enough_points(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []

    def spy(obs, dists, seed, gamma):  # type: ignore[no-untyped-def]
        calls.append((len(obs), gamma(len(obs))))
        return tpe_propose(obs, dists, seed, gamma)

    monkeypatch.setattr(bohb_module, "tpe_propose", spy)
    bohb = BOHB(max_t=9, reduction_factor=3, random_fraction=0.0, metric="loss", mode="min",
                seed=0)
    bohb.set_search_space(SPACE)
    _fill_rung(bohb, 9)  # 9 observations at budget 1; d = 3 sampled, N_min = d + 1 = 4
    # default min points = 2 * N_min = 8: the first 8 configs are random, then TPE on budget 1
    # with the best 4 (N_min) as the good set and the other 4 as the bad one
    assert calls == [(8, 4)]
    sug = bohb.choose_trial_to_run({}, True)
    assert sug.info == {"bracket": 1} and SPACE.contains(sug.config) and sug.config["c"] == 7
    assert calls[-1] == (9, 4)


def test_min_points_in_model_overrides_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def spy(obs, dists, seed, gamma):  # type: ignore[no-untyped-def]
        calls.append(len(obs))
        return tpe_propose(obs, dists, seed, gamma)

    monkeypatch.setattr(bohb_module, "tpe_propose", spy)
    bohb = BOHB(max_t=9, min_points_in_model=5, random_fraction=0.0, metric="loss", mode="min",
                seed=0)
    bohb.set_search_space(SPACE)
    _fill_rung(bohb, 7)
    assert calls == [5, 6]


def test_random_fraction_keeps_some_configs_random(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def spy(obs, dists, seed, gamma):  # type: ignore[no-untyped-def]
        calls.append(len(obs))
        return tpe_propose(obs, dists, seed, gamma)

    monkeypatch.setattr(bohb_module, "tpe_propose", spy)
    bohb = BOHB(max_t=27, min_points_in_model=4, random_fraction=0.5, metric="loss", mode="min",
                seed=1)
    bohb.set_search_space(SPACE)
    _fill_rung(bohb, 27)  # 23 proposals had enough points: about half of them random
    assert 5 <= len(calls) <= 18, calls


def test_state_round_trip_same_proposal() -> None:
    bohb = BOHB(max_t=9, reduction_factor=3, min_points_in_model=2, metric="loss", mode="min",
                seed=0)
    bohb.set_search_space(SPACE)
    trials = _fill_rung(bohb, 5)
    state = json.loads(json.dumps(bohb.state_dict(), allow_nan=False))
    fresh = BOHB(max_t=9, reduction_factor=3, min_points_in_model=2, metric="loss", mode="min")
    fresh.set_search_space(SPACE)
    fresh.load_state_dict(state)
    assert fresh.choose_trial_to_run(trials, True) == bohb.choose_trial_to_run(trials, True)


def test_validation() -> None:
    with pytest.raises(ValueError, match="min_points_in_model must be >= 1, got 0"):
        BOHB(min_points_in_model=0)
    with pytest.raises(ValueError, match="random_fraction must be <= 1, got 2"):
        BOHB(random_fraction=2)
    with pytest.raises(ValueError, match="good_fraction must be < 1, got 1"):
        BOHB(good_fraction=1)
    with pytest.raises(ValueError, match="good_fraction must be > 0, got 0"):
        BOHB(good_fraction=0)
    with pytest.raises(ValueError, match="max_rounds must be >= 1, got 0"):
        BOHB(max_rounds=0)
