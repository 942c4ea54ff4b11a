"""Model-based search through Optuna's samplers with ask/tell (TPE, CMA-ES, GP, random, QMC,
NSGA-II, NSGA-III), one metric or several (``directions=``), with constraints told to the
samplers that use them through ``constraints_func``.

Optuna is imported lazily, inside methods, so ``import tuning.searchers`` stays light.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from tuning._objective import Objective
from tuning.searchers._base import FINISHED, Searcher
from tuning.searchers._random import check_points, check_points_in_space
from tuning.space import Space

if TYPE_CHECKING:
    import optuna

__all__ = ["CONSTRAINT_SAMPLERS", "MULTI_OBJECTIVE_SAMPLERS", "SAMPLERS", "OptunaSearch",
           "check_sampler_objective"]

#: sampler names accepted by :class:`OptunaSearch`
SAMPLERS = ("cmaes", "gp", "nsga2", "nsga3", "qmc", "random", "tpe")
_WITH_STARTUP = ("cmaes", "gp", "tpe")
#: samplers that optimise several metrics at once (Optuna's ``directions=``)
MULTI_OBJECTIVE_SAMPLERS = ("gp", "nsga2", "nsga3", "qmc", "random", "tpe")
#: samplers told about constraints; the others ignore them
CONSTRAINT_SAMPLERS = ("gp", "nsga2", "nsga3", "tpe")
#: a constraint whose metric is missing or not finite (finite, so that states stay JSON)
_UNMET = 1e300
#: the trial user attribute holding a told trial's constraint values (``<= 0``: satisfied)
CONSTRAINTS_ATTR = "rungflow:constraints"


def _sampler_class(name: str) -> Any:
    import optuna.samplers as s

    return {"cmaes": s.CmaEsSampler, "gp": s.GPSampler, "qmc": s.QMCSampler,
            "random": s.RandomSampler, "tpe": s.TPESampler, "nsga2": s.NSGAIISampler,
            "nsga3": s.NSGAIIISampler}[name]


def _constraints_func(trial: optuna.trial.FrozenTrial) -> list[float]:
    """Optuna's ``constraints_func`` (before Optuna 5): the values told with the trial, read
    from its user attribute."""
    return list(trial.user_attrs[CONSTRAINTS_ATTR])


def _set_constraint_api() -> bool:
    """Whether this Optuna has ``Trial.set_constraint`` (5.0+, which deprecates
    ``constraints_func``): constraint values are then set on the trial before it is told."""
    import optuna

    return _USE_SET_CONSTRAINT and hasattr(optuna.trial.Trial, "set_constraint")


#: False forces the ``constraints_func`` path (a test covers it on Optuna 5)
_USE_SET_CONSTRAINT = True


def check_sampler_objective(sampler: str, objective: Objective) -> None:
    """Refuse a sampler that cannot optimise ``objective``'s several metrics (ValueError
    naming ``searcher.sampler``).

    Example:
        >>> check_sampler_objective("cmaes", Objective.build(["a", "b"], ["max", "min"]))
        Traceback (most recent call last):
        ...
        ValueError: searcher.sampler: 'cmaes' optimises one metric; with metric ['a', 'b'] use one of gp, nsga2, nsga3, qmc, random, tpe
    """
    if objective.multi and sampler in SAMPLERS and sampler not in MULTI_OBJECTIVE_SAMPLERS:
        raise ValueError(f"searcher.sampler: {sampler!r} optimises one metric; with metric "
                         f"{list(objective.metrics)} use one of "
                         f"{', '.join(MULTI_OBJECTIVE_SAMPLERS)}")


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence Optuna's INFO logging and its experimental/independent-sampling warnings."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _finite_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _check_int(field: str, value: Any, minimum: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ValueError(f"searcher.{field} must be an integer >= {minimum} or null, got {value!r}")


class OptunaSearch(Searcher):
    """Suggest configs with an Optuna sampler through ask/tell.

    Before every ask the study gets a freshly built sampler seeded from ``self.rng``, so each
    config is a deterministic function of the told trials and the generator's state, also
    after ``load_state_dict``. Grid parameters are treated as categorical; constants and
    ``sample_from`` parameters are filled in after asking. Returns :data:`FINISHED` after
    ``num_samples`` configs.

    Several metrics (``setup`` with lists of metrics and modes) make a multi-objective study
    (``directions=``): ``"tpe"`` (multi-objective TPE), ``"nsga2"``, ``"nsga3"``, ``"gp"``,
    ``"random"`` and ``"qmc"`` handle it. Constraints (:meth:`set_constraints`) are told with
    each completed trial (values ``<= 0`` are satisfied) to ``"tpe"``, ``"gp"``, ``"nsga2"``
    and ``"nsga3"``: through ``Trial.set_constraint`` on Optuna 5+, else as a user attribute
    that the sampler's ``constraints_func`` reads (Optuna's documented form before 5.0).

    Args:
        sampler: one of ``"tpe"``, ``"cmaes"``, ``"gp"``, ``"random"``, ``"qmc"``, ``"nsga2"``,
            ``"nsga3"``, or an ``optuna.samplers.BaseSampler`` instance (used as is: its own
            seeding, no exact restore, constraints only if it was built with them).
        seed: when given, the searcher uses ``numpy.random.default_rng(seed)`` instead of the
            controller's generator.
        points_to_evaluate: (partial) configs asked first, through ``Study.enqueue_trial``.
        n_startup_trials: random trials before the model kicks in (tpe, gp, cmaes only).
        sampler_kwargs: extra keyword arguments for the sampler class.

    Example:
        >>> import numpy as np
        >>> from tuning.space import Space, uniform
        >>> s = OptunaSearch("tpe", n_startup_trials=2)
        >>> s.setup(Space({"x": uniform(0, 1)}), "loss", "min", np.random.default_rng(0), 3)
        >>> for i in range(3):
        ...     cfg = s.suggest(str(i))
        ...     s.on_trial_complete(str(i), {"loss": (cfg["x"] - 0.3) ** 2})
        >>> s.suggest("3")
        'FINISHED'
    """

    def __init__(self, sampler: str | optuna.samplers.BaseSampler = "tpe", seed: int | None = None,
                 points_to_evaluate: Sequence[Mapping[str, Any]] | None = None,
                 n_startup_trials: int | None = None,
                 sampler_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.sampler_name, self._sampler_instance = self._check_sampler(sampler)
        _check_int("seed", seed, 0)
        _check_int("n_startup_trials", n_startup_trials, 0)
        self.seed, self.n_startup_trials = seed, n_startup_trials
        self.sampler_kwargs = self._check_sampler_kwargs(sampler_kwargs)
        self.points_to_evaluate = check_points(points_to_evaluate)
        self.objective: Objective | None = None
        self._fidelity: tuple[str, float] | None = None
        self._make_sampler(0)  # fail now on bad sampler_kwargs
        self.count = 0
        self._next_point = 0
        self._pending: dict[str, int] = {}
        self._dists: dict[str, Any] = {}
        self._study: optuna.Study | None = None

    # ---- validation -------------------------------------------------------------------------

    @staticmethod
    def _check_sampler(sampler: Any) -> tuple[str, Any]:
        if isinstance(sampler, str):
            if sampler not in SAMPLERS:
                raise ValueError(f"searcher.sampler: unknown {sampler!r}; allowed: {', '.join(SAMPLERS)}")
            return sampler, None
        import optuna

        if not isinstance(sampler, optuna.samplers.BaseSampler):
            raise ValueError(f"searcher.sampler must be one of {', '.join(SAMPLERS)} or an optuna "  # noqa: TRY004
                             f"BaseSampler, got {sampler!r}")
        return type(sampler).__name__, sampler

    def _check_sampler_kwargs(self, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
        if self._sampler_instance is not None and (kwargs or self.n_startup_trials is not None):
            raise ValueError("searcher.sampler_kwargs/n_startup_trials: not allowed with a sampler "
                             "instance; configure the instance instead")
        if self.n_startup_trials is not None and self.sampler_name not in _WITH_STARTUP:
            raise ValueError(f"searcher.n_startup_trials: not used by sampler {self.sampler_name!r}; "
                             f"only by {', '.join(_WITH_STARTUP)}")
        if kwargs is None:
            return {}
        if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
            raise ValueError(f"searcher.sampler_kwargs must be a mapping of argument names, got {kwargs!r}")
        for key in ("seed", "n_startup_trials"):
            if key in kwargs:
                raise ValueError(f"searcher.sampler_kwargs.{key}: set searcher.{key} instead")
        return dict(kwargs)

    def _make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        """A fresh sampler seeded with ``seed`` (or the user's instance)."""
        if self._sampler_instance is not None:
            return self._sampler_instance
        cls = _sampler_class(self.sampler_name)
        params = inspect.signature(cls).parameters
        kwargs = dict(self.sampler_kwargs)
        if self.n_startup_trials is not None:
            kwargs["n_startup_trials"] = self.n_startup_trials
        if self.objective is not None and self.objective.constrained and \
                self.sampler_name in CONSTRAINT_SAMPLERS and not _set_constraint_api():
            kwargs["constraints_func"] = _constraints_func
        for flag in ("warn_independent_sampling", "warn_asynchronous_seeding"):
            if flag in params and params[flag].default is True:  # not the deprecated ones
                kwargs.setdefault(flag, False)
        try:
            with _quiet():
                return cls(seed=seed, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"searcher.sampler_kwargs: invalid for {cls.__name__}: {exc}") from None

    # ---- lifecycle --------------------------------------------------------------------------

    def setup(self, space: Space, metric: str | Sequence[str], mode: str | Sequence[str],
              rng: np.random.Generator, num_samples: int = 1) -> None:
        """Bind the space and build the Optuna study (direction from ``mode``; directions
        from a list of modes, one per metric of a list)."""
        if isinstance(mode, str) and mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if isinstance(metric, str) and not metric:
            raise ValueError(f"metric must be a non-empty string, got {metric!r}")
        if not isinstance(metric, (str, list, tuple)):
            raise ValueError(f"metric must be a non-empty string, got {metric!r}")  # noqa: TRY004
        self.objective = Objective.build(metric, mode)
        if self._sampler_instance is None:
            check_sampler_objective(self.sampler_name, self.objective)
        _check_int("num_samples", num_samples, 1)
        space = Space(space)
        check_points_in_space(self.points_to_evaluate, space)
        if self.seed is not None:
            rng = np.random.default_rng(self.seed)
        super().setup(space, metric, mode, rng, num_samples)
        self._dists = space.to_optuna()
        self._study = self._new_study()

    def set_constraints(self, constraints: Mapping[str, Any]) -> None:
        """The experiment's constraints (``metric -> {min, max}``), after :meth:`setup`: each
        completed trial is told its constraint values, read by the sampler's
        ``constraints_func``."""
        if self.objective is None:
            raise RuntimeError("OptunaSearch.set_constraints before setup()")
        self.objective = Objective.build(list(self.objective.metrics),
                                         list(self.objective.modes), constraints)

    def settings(self) -> dict[str, Any]:
        return {"type": "optuna", "sampler": self.sampler_name, "seed": self.seed,
                "n_startup_trials": self.n_startup_trials, "sampler_kwargs": self.sampler_kwargs,
                "points_to_evaluate": self.points_to_evaluate}

    def _new_study(self) -> optuna.Study:
        import optuna

        obj = self.objective
        with _quiet():
            if obj is not None and obj.multi:
                return optuna.create_study(
                    storage=optuna.storages.InMemoryStorage(),
                    directions=["minimize" if m == "min" else "maximize" for m in obj.modes],
                    sampler=self._make_sampler(0))
            return optuna.create_study(
                storage=optuna.storages.InMemoryStorage(),
                direction="minimize" if self.mode == "min" else "maximize",
                sampler=self._make_sampler(0))

    def set_fidelity(self, time_attr: str, max_t: float) -> None:
        """With several metrics, a trial whose last result has ``time_attr < max_t`` (stopped
        early by the scheduler) is told PRUNED: its values, measured on a smaller budget, are
        not comparable with fully trained ones (TPE puts it in its "bad" group, NSGA-II leaves
        it out of its population), as Optuna's own pruning does. One metric: ignored (the last
        value is told, as before)."""
        if self._multi:
            self._fidelity = (time_attr, float(max_t))

    @property
    def _multi(self) -> bool:
        return self.objective is not None and self.objective.multi

    @property
    def _constrained(self) -> bool:
        return self.objective is not None and self.objective.constrained

    def _reports(self, result: Mapping[str, Any]) -> bool:
        return self.objective is not None and self.objective.primary in result

    def _told(self, result: Mapping[str, Any]) -> Any:
        """What is remembered of a result: the metric value (one metric, no constraints, as
        before), else ``{"values": [...], "constraints": [...]}`` (None for a missing or
        non-finite value)."""
        assert self.objective is not None
        if not self._multi and not self._constrained:
            return _finite_or_none(result[self.objective.primary])
        return {"values": [_finite_or_none(result.get(m)) for m in self.objective.metrics],
                "constraints": [c if math.isfinite(c) else _UNMET
                                for c in self.objective.violations(result)]}

    @property
    def study(self) -> optuna.Study:
        """The Optuna study (after ``setup``)."""
        if self._study is None or self.space is None:
            raise RuntimeError("OptunaSearch used before setup()")
        return self._study

    # ---- ask / tell -------------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict[str, Any] | None | str:
        """Ask the study for the next config, or :data:`FINISHED` after ``num_samples``."""
        study = self.study
        if self.count >= self.num_samples:
            return FINISHED
        extra = self._enqueue_next_point(study)
        with _quiet():
            if self._sampler_instance is None:
                study.sampler = self._make_sampler(int(self.rng.integers(2**31)))
            trial = study.ask(self._dists)
        self._pending[trial_id] = trial.number
        self.count += 1
        assert self.space is not None
        return self.space.resolve({**trial.params, **extra})

    def _enqueue_next_point(self, study: optuna.Study) -> dict[str, Any]:
        """Enqueue the next ``points_to_evaluate`` entry; return its non-Optuna values."""
        if self._next_point >= len(self.points_to_evaluate):
            return {}
        point = self.points_to_evaluate[self._next_point]
        self._next_point += 1
        study.enqueue_trial({k: v for k, v in point.items() if k in self._dists})
        return {k: v for k, v in point.items() if k not in self._dists}

    def on_trial_complete(self, trial_id: str, result: Mapping[str, Any] | None = None,
                          error: bool = False) -> None:
        """Tell the study the last metric value(s) (FAIL on error or a missing/NaN metric);
        with constraints, their values go with the trial as a user attribute first."""
        import optuna

        number = self._pending.pop(trial_id, None)
        if number is None:
            return
        told = self._told(result) if result is not None and self._reports(result) else None
        values: list[Any] = list(told["values"]) if isinstance(told, dict) else [told]
        with _quiet():
            if error or told is None or any(v is None for v in values):
                self.study.tell(number, state=optuna.trial.TrialState.FAIL)
                return
            if isinstance(told, dict) and self._constrained:  # also for a pruned trial
                self._tell_constraints(number, [float(c) for c in told["constraints"]])
            if self._stopped_early(result):
                self.study.tell(number, state=optuna.trial.TrialState.PRUNED)
                return
            finite = [float(v) for v in values if v is not None]
            self.study.tell(number, finite if self._multi else finite[0])

    def _stopped_early(self, result: Mapping[str, Any] | None) -> bool:
        if self._fidelity is None or result is None:
            return False
        t = result.get(self._fidelity[0])
        return isinstance(t, (int, float)) and float(t) < self._fidelity[1]

    def _tell_constraints(self, number: int, values: list[float]) -> None:
        """The trial's constraint values (``<= 0``: satisfied), before it is told: through
        ``Trial.set_constraint`` (Optuna 5+, one per bound, named ``<metric>.<min|max>``), else
        as the user attribute the samplers' ``constraints_func`` reads."""
        import optuna

        study = self.study
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id,
                                                                          number)
        if _set_constraint_api():
            trial = optuna.trial.Trial(study, trial_id)
            assert self.objective is not None
            for name, value in zip(self.objective.violation_names(), values):
                trial.set_constraint(name, value)
        else:
            study._storage.set_trial_user_attr(trial_id, CONSTRAINTS_ATTR, values)

    # ---- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: generator, counters, pending trials and every study trial."""
        study = self.study
        storage = study._storage
        study_id = storage.get_study_id_from_name(study.study_name)
        return {
            "rng": self.rng.bit_generator.state,
            "count": self.count,
            "next_point": self._next_point,
            "pending": dict(self._pending),
            "study_system_attrs": storage.get_study_system_attrs(study_id),
            "trials": [_trial_to_dict(t) for t in study.get_trials(deepcopy=False)],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Rebuild the study from ``state`` (call after ``setup``)."""
        self.study  # noqa: B018 - raises before setup
        study = self._new_study()
        storage = study._storage
        study_id = storage.get_study_id_from_name(study.study_name)
        for key, value in state["study_system_attrs"].items():
            storage.set_study_system_attr(study_id, key, value)
        with _quiet():
            for expected, record in enumerate(sorted(state["trials"], key=lambda t: t["number"])):
                if record["number"] != expected:
                    raise ValueError(f"searcher state: trial numbers must be 0..n-1, missing {expected}")
                study.add_trial(_trial_from_dict(record, self._dists))
        self._study = study
        self.rng.bit_generator.state = state["rng"]
        self.count = int(state["count"])
        self._next_point = int(state["next_point"])
        self._pending = {str(k): int(v) for k, v in state["pending"].items()}


def _trial_to_dict(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A told trial as JSON: ``value`` (one metric) or ``values`` (several), its system
    attributes (samplers' bookkeeping, e.g. NSGA-II's generation and the constraints) and,
    when it has any, its user attributes (the constraint values told)."""
    done = trial.state.name == "COMPLETE"
    out = {"number": trial.number, "state": trial.state.name, "params": dict(trial.params)}
    if done and trial.values is not None and len(trial.values) > 1:
        out["values"] = list(trial.values)
    else:
        out["value"] = trial.value if done else None
    out["system_attrs"] = _jsonable_attrs(trial.system_attrs)
    if trial.user_attrs:
        out["user_attrs"] = _jsonable_attrs(trial.user_attrs)
    return out


def _jsonable_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items()}


def _trial_from_dict(record: Mapping[str, Any], dists: Mapping[str, Any]) -> optuna.trial.FrozenTrial:
    import optuna

    state = optuna.trial.TrialState[record["state"]]
    params = dict(record["params"])
    done = state == optuna.trial.TrialState.COMPLETE
    values = {"values": record["values"]} if "values" in record else \
        {"value": record["value"] if done else None}
    system_attrs = dict(record["system_attrs"])
    if isinstance(system_attrs.get("constraints"), list):  # Optuna keeps them as a tuple
        system_attrs["constraints"] = tuple(system_attrs["constraints"])
    return optuna.trial.create_trial(
        state=state, params=params, distributions={k: dists[k] for k in params},
        user_attrs=dict(record.get("user_attrs") or {}), system_attrs=system_attrs,
        **(values if done else {"value": None}))
