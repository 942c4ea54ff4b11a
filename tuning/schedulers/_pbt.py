"""Population based training (Jaderberg et al. 2017; Ray Tune's ``PopulationBasedTraining``).

Every ``perturbation_interval`` a trial pauses. When it is resumed, a trial in the bottom
quantile of the population (scores at each trial's latest perturbation point) exploits a trial
of the top quantile (its checkpoint) and explores (a mutation of that trial's config).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sortedcontainers import SortedList

from tuning._trial import ITERATION, TERMINAL, Status, Trial
from tuning.schedulers._base import Decision, Resume, Scheduler, StartNew, Suggestion
from tuning.schedulers._common import (
    Number,
    as_rung,
    check_number,
    decode_values,
    encode_values,
    to_plain,
)
from tuning.space import Choice, Domain, QUniform, RandInt, Space, Uniform, domain_from_dict

__all__ = ["PBT", "explore", "mutate_value", "parse_mutations", "pbt_quantiles"]

Mutation = Domain | tuple[Any, ...]
NUMERIC = (Uniform, RandInt)  # LogUniform and QUniform are Uniform subclasses


def pbt_quantiles(scores: Mapping[str, float], fraction: float) -> tuple[list[str], list[str]]:
    """The bottom and top ``fraction`` of trials by score (larger is better; NaN worst).

    As Ray Tune: ``ceil(n * fraction)`` each, at most ``floor(n/2)``; nothing for ``n <= 1``.

    Example:
        >>> pbt_quantiles({"a": 0.1, "b": 0.9, "c": 0.5, "d": float("nan")}, 0.25)
        (['d'], ['b'])
    """
    if len(scores) <= 1:
        return [], []
    ranked = sorted(scores, key=lambda tid: (_sort_value(scores[tid]), tid))
    num = math.ceil(len(ranked) * fraction)
    num = min(num, len(ranked) // 2)
    return (ranked[:num], ranked[-num:]) if num else ([], [])


def _sort_value(v: float) -> float:
    return -math.inf if math.isnan(v) else v


def mutate_value(value: Any, spec: Mutation, rng: np.random.Generator,
                 resample_probability: float, factors: Sequence[float]) -> Any:
    """One parameter's new value.

    A list (or a ``choice`` domain) moves to a neighbouring index, or is resampled; a numeric
    domain is multiplied by one of ``factors`` and clipped to its bounds, or is resampled.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> mutate_value(2, (1, 2, 3), rng, 0.0, (0.8, 1.2)) in (1, 3)
        True
    """
    resample = bool(rng.random() < resample_probability)
    if isinstance(spec, (tuple, Choice)):
        values = tuple(spec.categories) if isinstance(spec, Choice) else spec
        if resample or value not in values:
            return values[int(rng.integers(len(values)))]
        i = values.index(value) + (1 if rng.random() < 0.5 else -1)
        return values[min(max(i, 0), len(values) - 1)]
    if isinstance(spec, NUMERIC):
        if resample or isinstance(value, bool) or not isinstance(value, (int, float)):
            return to_plain(spec.sample(rng))
        return _perturb(float(value) * factors[int(rng.integers(len(factors)))], spec)
    return value  # sample_from and unknown domains are left as they are


def _perturb(value: float, dom: Uniform | RandInt) -> Any:
    if isinstance(dom, RandInt):
        return int(min(max(round(value), dom.low), dom.high - 1))
    if isinstance(dom, QUniform):
        value = round(value / dom.q) * dom.q
    return float(min(max(value, dom.low), dom.high))



def explore(config: Mapping[str, Any], mutations: Mapping[str, Mutation], rng: np.random.Generator,
            resample_probability: float = 0.25,
            factors: Sequence[float] = (0.8, 1.2)) -> dict[str, Any]:
    """A copy of ``config`` with every parameter of ``mutations`` mutated (in their order).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> sorted(explore({"a": 1, "b": "x"}, {"a": (1, 2)}, rng))
        ['a', 'b']
    """
    new = dict(config)
    for name, spec in mutations.items():
        new[name] = mutate_value(config.get(name), spec, rng, resample_probability, factors)
    return new


def parse_mutations(mutations: Mapping[str, Any] | None) -> dict[str, Mutation]:
    """Validate ``hyperparam_mutations``: name -> list of values, Domain, or ``{type: ...}``."""
    if mutations is None:
        return {}
    if not isinstance(mutations, Mapping):
        raise ValueError(  # noqa: TRY004 - the spec reports every bad setting as ValueError
f"hyperparam_mutations must be a mapping of parameter name to values "
                         f"or domain, got {type(mutations).__name__}")
    return {str(name): _parse_mutation(str(name), spec) for name, spec in mutations.items()}


def _parse_mutation(name: str, spec: Any) -> Mutation:
    field = f"hyperparam_mutations.{name}"
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError(f"{field} must be a non-empty list of values, got []")
        return tuple(spec)
    if isinstance(spec, Mapping) and "type" in spec:
        try:
            spec = domain_from_dict(name, spec)
        except ValueError as exc:
            raise ValueError(f"{field}: {str(exc).split(': ', 1)[-1]}") from None
    if isinstance(spec, Domain):
        try:
            spec.validate()
        except ValueError as exc:
            raise ValueError(f"{field}: {exc}") from None
        return spec
    raise ValueError(f"{field} must be a list of values, a Domain or a {{type: ...}} mapping, "
                     f"got {spec!r}")


class PBT(Scheduler):
    """Population based training: pause every interval; exploit and explore on resume.

    Trials start while the controller allows (the population); then paused trials are resumed,
    the one furthest behind first. A trial in the bottom ``quantile_fraction`` is resumed from
    the checkpoint of a top-quantile trial (chosen with ``self.rng``; only trials that have a
    checkpoint) with :func:`explore`'s mutation of that trial's config.

    Without ``hyperparam_mutations``, every numeric domain (uniform, loguniform, quniform,
    randint) of the search space given by :meth:`set_search_space` is mutated; with neither,
    exploit copies the donor's config unchanged.

    Args:
        perturbation_interval: Pause every this much ``time_attr``.
        hyperparam_mutations: name -> list of values, a :class:`tuning.space.Domain`, or its
            YAML form (``{"type": "loguniform", "low": 1e-4, "high": 0.1}``).
        quantile_fraction: The bottom/top fraction, in ``(0, 0.5]``.
        resample_probability: Chance to resample a parameter instead of perturbing it.
        perturbation_factors: Factors a numeric parameter is multiplied by.
        max_t: When given, a trial is stopped (finished) at ``max_t``.
        time_attr: The resource attribute of results.
        metric: The metric; the experiment's when None.
        mode: ``"min"`` or ``"max"``; the experiment's when None.
        seed: Seed of ``self.rng``.

    Example:
        >>> pbt = PBT(perturbation_interval=2, hyperparam_mutations={"lr": [0.01, 0.1, 1.0]})
        >>> from tuning._trial import Trial
        >>> pbt.pause_at(Trial("t", {"lr": 0.1}))
        2
    """

    pauses_trials = True
    needs_checkpoints = True

    def __init__(self, perturbation_interval: float,
                 hyperparam_mutations: Mapping[str, Any] | None = None,
                 quantile_fraction: float = 0.25, resample_probability: float = 0.25,
                 perturbation_factors: Sequence[float] = (0.8, 1.2),
                 max_t: float | None = None, *, time_attr: str = ITERATION,
                 metric: str | None = None, mode: str | None = None,
                 seed: int | None = None) -> None:
        super().__init__(metric=metric, mode=mode, time_attr=time_attr, seed=seed)
        self.perturbation_interval = check_number("perturbation_interval", perturbation_interval,
                                                  low=0)
        self.mutations = parse_mutations(hyperparam_mutations)
        self.quantile_fraction = _check_fraction("quantile_fraction", quantile_fraction, 0.5)
        self.resample_probability = _check_fraction("resample_probability", resample_probability,
                                                    1.0, allow_zero=True)
        self.perturbation_factors = _check_factors(perturbation_factors)
        self.max_t = None if max_t is None else check_number("max_t", max_t, low=0)
        self._space_mutations: dict[str, Mutation] = {}
        self._scores: dict[str, float] = {}
        self._last_pause: dict[str, float] = {}
        self._errored: set[str] = set()
        # paused trials as (last pause, id), the next to resume first; None: rebuild from trials
        self._waiting: SortedList | None = SortedList()
        self._waiting_key: dict[str, tuple[float, str]] = {}

    def set_search_space(self, space: Space) -> None:
        """Mutate every numeric domain of ``space`` when no ``hyperparam_mutations`` are given."""
        self._space_mutations = {k: d for k, d in Space(space).domains.items()
                                 if isinstance(d, NUMERIC)}

    def settings(self) -> dict[str, Any]:
        muts = {k: (v.to_dict() if isinstance(v, Domain) else list(v))
                for k, v in self.mutations.items()}
        return {**super().settings(), "perturbation_interval": self.perturbation_interval,
                "hyperparam_mutations": muts, "quantile_fraction": self.quantile_fraction,
                "resample_probability": self.resample_probability,
                "perturbation_factors": list(self.perturbation_factors), "max_t": self.max_t}

    # -- pausing ---------------------------------------------------------------------------
    def _next_pause(self, trial_id: str) -> Number:
        last = self._last_pause.get(trial_id, 0.0)
        p = (math.floor(last / self.perturbation_interval) + 1) * self.perturbation_interval
        return int(p) if float(p).is_integer() else p

    def pause_at(self, trial: Trial) -> Number | None:
        p = self._next_pause(trial.trial_id)
        return None if self.max_t is not None and p >= self.max_t else p

    def on_result(self, trial: Trial, result: Mapping[str, Any]) -> Decision:
        t = self._time(result)
        if self.max_t is not None and t >= self.max_t:
            return Decision.STOP
        target = self.pause_at(trial)
        if target is None or t < target:
            return Decision.CONTINUE
        self._scores[trial.trial_id] = self._value(result)
        self._last_pause[trial.trial_id] = t
        trial.rung = as_rung(target)
        return Decision.PAUSE

    def on_trial_error(self, trial: Trial) -> None:
        self._errored.add(trial.trial_id)
        self._scores.pop(trial.trial_id, None)
        self._unwait(trial.trial_id)

    def on_trial_complete(self, trial: Trial, result: Mapping[str, Any] | None) -> None:
        self._unwait(trial.trial_id)

    def _note_pause(self, trial: Trial) -> None:
        self._wait(trial.trial_id)

    def _wait(self, tid: str) -> None:
        if self._waiting is None:
            return  # rebuilt from the trials at the next choice
        self._unwait(tid)
        key = self._waiting_key[tid] = (self._last_pause.get(tid, 0.0), tid)
        self._waiting.add(key)

    def _unwait(self, tid: str) -> None:
        key = self._waiting_key.pop(tid, None)
        if key is not None and self._waiting is not None:
            self._waiting.discard(key)

    def _next_paused(self, trials: Mapping[str, Trial]) -> Trial | None:
        """The paused trial with the smallest last pause (ties: id), O(log n) amortized.

        Checked against ``trials``: an ended or unknown entry is dropped, a RUNNING one (its
        PAUSE decided, its segment not over yet) is kept for later.
        """
        if self._waiting is None:
            self._waiting = SortedList()
            for tid, t in trials.items():
                if t.status == Status.PAUSED:
                    self._wait(tid)
        i = 0
        while i < len(self._waiting):
            key = self._waiting[i]
            trial = trials.get(key[1])
            if trial is not None and trial.status == Status.PAUSED:
                return trial
            if trial is None or trial.status in TERMINAL:
                self._unwait(key[1])
            else:
                i += 1
        return None

    # -- exploit / explore -----------------------------------------------------------------
    def choose_trial_to_run(self, trials: Mapping[str, Trial], can_start_new: bool) -> Suggestion | None:
        if can_start_new:
            return StartNew()
        trial = self._next_paused(trials)
        if trial is None:
            return None
        self._unwait(trial.trial_id)
        return self._exploit(trial, trials)

    def _exploit(self, trial: Trial, trials: Mapping[str, Trial]) -> Resume:
        bottom, top = pbt_quantiles(self._scores, self.quantile_fraction)
        donors = [d for d in top if d != trial.trial_id and d in trials
                  and trials[d].checkpoint is not None]
        if trial.trial_id not in bottom or not donors:
            return Resume(trial.trial_id)
        donor = donors[int(self.rng.integers(len(donors)))]
        config = explore(trials[donor].config, self.mutations or self._space_mutations, self.rng,
                         self.resample_probability, self.perturbation_factors)
        return Resume(trial.trial_id, config=config, checkpoint_from=donor)

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        waiting = None if self._waiting is None else [tid for _, tid in self._waiting]
        return {**super().state_dict(), "scores": encode_values(self._scores),
                "last_pause": dict(self._last_pause), "errored": sorted(self._errored),
                "waiting": waiting}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._scores = decode_values(state["scores"])
        self._last_pause = {k: float(v) for k, v in state["last_pause"].items()}
        self._errored = set(state["errored"])
        self._waiting, self._waiting_key = None, {}
        if state.get("waiting") is not None:
            self._waiting = SortedList()
            for tid in state["waiting"]:
                self._wait(str(tid))


def _check_fraction(name: str, value: Any, high: float, allow_zero: bool = False) -> float:
    v = check_number(name, value, low=0, strict=not allow_zero)
    if v > high:
        low = "0 <=" if allow_zero else "0 <"
        raise ValueError(f"{name} must be {low} {name} <= {high:g}, got {value!r}")
    return float(v)


def _check_factors(factors: Any) -> tuple[float, ...]:
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence) or not factors:
        raise ValueError(f"perturbation_factors must be a non-empty list of positive numbers, "
                         f"got {factors!r}")
    return tuple(float(check_number("perturbation_factors", f, low=0)) for f in factors)
