"""BOHB (Falkner et al. 2018): HyperBand brackets with configs from a TPE model.

New trials get a config from Optuna's TPE sampler fit on the observations (config, value) of
the largest budget (milestone) that has at least ``min_points_in_model`` of them, or a random
config from the search space (with probability ``random_fraction``, or when no budget has
enough observations). The Optuna study is in memory and rebuilt from the observations for each
proposal, its sampler seeded from ``self.rng``: proposals depend only on the observations and
``self.rng``, so a restored state proposes exactly the same configs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

from tuning._trial import ITERATION, Trial
from tuning.schedulers._base import StartNew
from tuning.schedulers._common import check_int, check_number, to_plain
from tuning.schedulers._hyperband import HyperBand
from tuning.space import Space

__all__ = ["BOHB", "model_budget"]

Observation = tuple[float, dict[str, Any], float]


def model_budget(observations: list[Observation], min_points: int) -> float | None:
    """The largest budget with at least ``min_points`` observations, or None.

    Example:
        >>> obs = [(1, {}, 0.1), (1, {}, 0.2), (3, {}, 0.3)]
        >>> model_budget(obs, 2), model_budget(obs, 1), model_budget(obs, 3)
        (1, 3, None)
    """
    counts: dict[float, int] = {}
    for budget, _, _ in observations:
        counts[budget] = counts.get(budget, 0) + 1
    ok = [b for b, n in counts.items() if n >= min_points]
    return max(ok) if ok else None


def tpe_propose(observations: list[tuple[dict[str, Any], float]], distributions: dict[str, Any],
                seed: int) -> dict[str, Any]:
    """Parameters from Optuna's multivariate TPE fit on ``(params, value)`` (larger is better)."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=0, multivariate=True)
            study = optuna.create_study(direction="maximize", sampler=sampler)
            for params, value in observations:
                try:
                    study.add_trial(optuna.trial.create_trial(
                        params=params, distributions=distributions, value=value))
                except ValueError:  # a value outside its distribution (e.g. off a q-grid)
                    continue
            return dict(study.ask(distributions).params)
    finally:
        optuna.logging.set_verbosity(verbosity)


class BOHB(HyperBand):
    """HyperBand whose new trials' configs come from a TPE model (BOHB).

    Needs the search space (:meth:`set_search_space`); without it, new trials ask the searcher
    (``StartNew(config=None)``), i.e. plain HyperBand.

    Args:
        max_t: The resource of the last rung of every bracket.
        grace_period: The smallest resource.
        reduction_factor: ``eta``.
        min_points_in_model: Observations a budget needs to fit the model; the number of
            sampled parameters + 1 when None.
        random_fraction: The chance a new config is sampled at random anyway.
        time_attr: The resource attribute of results.
        metric: The metric; the experiment's when None.
        mode: ``"min"`` or ``"max"``; the experiment's when None.
        seed: Seed of ``self.rng``.

    Example:
        >>> from tuning.space import Space, uniform
        >>> bohb = BOHB(max_t=9, reduction_factor=3, seed=0)
        >>> bohb.set_search_space(Space({"x": uniform(0, 1)}))
        >>> sorted(bohb.choose_trial_to_run({}, True).config)
        ['x']
    """

    def __init__(self, max_t: float = 81, grace_period: float = 1, reduction_factor: int = 3,
                 min_points_in_model: int | None = None, random_fraction: float = 1 / 3, *,
                 time_attr: str = ITERATION, metric: str | None = None, mode: str | None = None,
                 seed: int | None = None) -> None:
        super().__init__(max_t, grace_period, reduction_factor, time_attr=time_attr,
                         metric=metric, mode=mode, seed=seed)
        self.min_points_in_model = None if min_points_in_model is None else check_int(
            "min_points_in_model", min_points_in_model, low=1)
        self.random_fraction = float(check_number("random_fraction", random_fraction, low=0,
                                                  strict=False))
        if self.random_fraction > 1:
            raise ValueError(f"random_fraction must be <= 1, got {random_fraction!r}")
        self._space: Space | None = None
        self._observations: list[Observation] = []

    def set_search_space(self, space: Space) -> None:
        self._space = Space(space)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "min_points_in_model": self.min_points_in_model,
                "random_fraction": self.random_fraction}

    def _record(self, trial: Trial, j: int, i: int, value: float) -> None:
        super()._record(trial, j, i, value)
        if self._space is None or not math.isfinite(value):
            return
        params = {k: to_plain(trial.config[k]) for k in self._space.domains if k in trial.config}
        self._observations.append((self._brackets[j].plan.milestones[i], params, value))

    def _start_new(self, s: int) -> StartNew:
        return StartNew(config=self._propose(), info={"bracket": s})

    def _propose(self) -> dict[str, Any] | None:
        """A config from the model, or at random; None (ask the searcher) without a space."""
        if self._space is None:
            return None
        dists = self._space.to_optuna()
        explore = bool(self.rng.random() < self.random_fraction)
        min_points = self.min_points_in_model or len(dists) + 1
        budget = model_budget(self._observations, min_points)
        if explore or budget is None or not dists:
            return self._space.sample(self.rng)
        obs = [(p, v) for b, p, v in self._observations if b == budget]
        params = tpe_propose(obs, dists, seed=int(self.rng.integers(2**31 - 1)))
        return self._space.sample(self.rng, fixed=params)

    def state_dict(self) -> dict[str, Any]:
        obs = [[b, p, v] for b, p, v in self._observations]
        return {**super().state_dict(), "observations": obs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._observations = [(b, dict(p), float(v)) for b, p, v in state["observations"]]
