"""BOHB (Falkner et al. 2018): HyperBand brackets with configs from a TPE model.

New trials get a config from Optuna's TPE sampler fit on the observations (config, value) of
the largest budget (milestone) that has at least ``min_points_in_model`` of them, or a random
config from the search space (with probability ``random_fraction``, or when no budget has
enough observations). As in the paper (Falkner et al. 2018, section 4.1), with ``d`` sampled
parameters and ``N_min = d + 1``, the good density is fit on the best
``max(N_min, good_fraction * N_b)`` of a budget's ``N_b`` observations and the bad density on
the rest, and a budget is used only once both can have ``N_min`` points: the default
``min_points_in_model`` is ``2 * (d + 1)`` (see :func:`n_good`). The Optuna study is in memory
and rebuilt from the observations for each proposal, its sampler seeded from ``self.rng``:
proposals depend only on the observations and ``self.rng``, so a restored state proposes
exactly the same configs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from tuning._trial import ITERATION, Trial
from tuning.schedulers._base import StartNew
from tuning.schedulers._common import check_int, check_number, to_plain
from tuning.schedulers._hyperband import HyperBand
from tuning.space import Space

__all__ = ["BOHB", "model_budget", "n_good", "tpe_propose"]

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


def n_good(n: int, n_min: int, fraction: float = 0.15) -> int:
    """How many of ``n`` observations the good density gets: ``max(n_min, ceil(fraction * n))``,
    but never more than half of them (at least 1), so the bad density keeps as many.

    Example:
        >>> [n_good(n, 3) for n in (1, 4, 6, 20, 40, 81)]
        [1, 2, 3, 3, 6, 13]
    """
    return min(max(n_min, math.ceil(fraction * n - 1e-9)), max(1, n // 2))


def tpe_propose(observations: list[tuple[dict[str, Any], float]], distributions: dict[str, Any],
                seed: int, gamma: Callable[[int], int] | None = None) -> dict[str, Any]:
    """Parameters from Optuna's multivariate TPE fit on ``(params, value)`` (larger is better).

    ``gamma(n)`` is the size of the good set for ``n`` observations (Optuna's default when None).
    """
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)  # ``gamma`` is deprecated in 4.9+
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=0, multivariate=True,
                                                 gamma=gamma)
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
        min_points_in_model: Observations a budget needs to fit the model; when None,
            ``2 * (d + 1)`` for ``d`` sampled parameters (``d + 1`` good and ``d + 1`` bad).
        random_fraction: The chance a new config is sampled at random anyway.
        good_fraction: The paper's ``q``: the share of a budget's observations in the good
            density (at least ``d + 1`` of them, at most half).
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
                 min_points_in_model: int | None = None, random_fraction: float = 1 / 3,
                 good_fraction: float = 0.15, *, max_rounds: int | None = None,
                 time_attr: str = ITERATION, metric: str | None = None, mode: str | None = None,
                 seed: int | None = None) -> None:
        super().__init__(max_t, grace_period, reduction_factor, max_rounds=max_rounds,
                         time_attr=time_attr, metric=metric, mode=mode, seed=seed)
        self.min_points_in_model = None if min_points_in_model is None else check_int(
            "min_points_in_model", min_points_in_model, low=1)
        self.random_fraction = float(check_number("random_fraction", random_fraction, low=0,
                                                  strict=False))
        if self.random_fraction > 1:
            raise ValueError(f"random_fraction must be <= 1, got {random_fraction!r}")
        self.good_fraction = float(check_number("good_fraction", good_fraction, low=0))
        if self.good_fraction >= 1:
            raise ValueError(f"good_fraction must be < 1, got {good_fraction!r}")
        self._space: Space | None = None
        self._observations: list[Observation] = []

    def set_search_space(self, space: Space) -> None:
        self._space = Space(space)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "min_points_in_model": self.min_points_in_model,
                "random_fraction": self.random_fraction, "good_fraction": self.good_fraction}

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
        n_min = len(dists) + 1
        budget = model_budget(self._observations, self.min_points_in_model or 2 * n_min)
        if explore or budget is None or not dists:
            return self._space.sample(self.rng)
        obs = [(p, v) for b, p, v in self._observations if b == budget]
        gamma = partial(n_good, n_min=n_min, fraction=self.good_fraction)
        params = tpe_propose(obs, dists, seed=int(self.rng.integers(2**31 - 1)), gamma=gamma)
        return self._space.sample(self.rng, fixed=params)

    def state_dict(self) -> dict[str, Any]:
        obs = [[b, p, v] for b, p, v in self._observations]
        return {**super().state_dict(), "observations": obs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._observations = [(b, dict(p), float(v)) for b, p, v in state["observations"]]
