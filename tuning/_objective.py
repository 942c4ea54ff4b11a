"""What an experiment optimises: one metric or several, their modes, and optional constraints.

:class:`Objective` is the one place that reads an experiment's metrics out of a result: the
controller asks it which metrics are missing or not finite, schedulers and searchers ask it for
the values (sign-flipped so that larger is better) and whether a result is feasible, results and
MLflow ask it for the Pareto front. :class:`Selection` picks one trial of a multi-objective run:
``select="max accuracy s.t. latency_ms <= 20"`` or ``weights={"accuracy": 1, "latency_ms":
-0.01}``. Engine layer: plain Python, no Prefect, no MLflow.

Example:
    >>> obj = Objective.build(["accuracy", "latency_ms"], ["max", "min"],
    ...                       {"latency_ms": {"max": 20}})
    >>> obj.signed({"accuracy": 0.9, "latency_ms": 12.0})
    (0.9, -12.0)
    >>> obj.is_feasible({"accuracy": 0.9, "latency_ms": 25.0})
    False
    >>> Selection.parse("max accuracy s.t. latency_ms <= 20", obj).describe()
    'max accuracy s.t. latency_ms <= 20'
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuning._pareto import front_indices

__all__ = [
    "MODES",
    "MultiObjectiveError",
    "Objective",
    "Selection",
    "bind_objective",
    "number_or_nan",
]

MODES = ("min", "max")


class MultiObjectiveError(ValueError):
    """A single best trial asked of a multi-objective run that has no rule to pick one."""


def number_or_nan(v: Any) -> float:
    """``v`` as a float; NaN when it is not a number (missing, a bool, a string).

    Example:
        >>> number_or_nan(3), number_or_nan(None), number_or_nan(True)
        (3.0, nan, nan)
    """
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return math.nan
    return float(v)


def _names(value: Any, field_name: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(f"{field_name}: must be a metric name or a non-empty list of names, "
                         f"got {value!r}")
    for v in items:
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"{field_name}: metric names must be non-empty strings, got {v!r}")
    dup = sorted({v for v in items if list(items).count(v) > 1})
    if dup:
        raise ValueError(f"{field_name}: {dup[0]!r} is listed twice; each metric once")
    return tuple(items)


def _modes(value: Any, metrics: tuple[str, ...]) -> tuple[str, ...]:
    n = len(metrics)
    if n > 1 and isinstance(value, str):
        raise ValueError(f"mode: metric lists {n} metrics {list(metrics)}, so mode must be a "
                         f"list of {n} values, each 'min' or 'max', got {value!r}")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"mode: must be 'min' or 'max' (a list of them for several "  # noqa: TRY004
                         f"metrics), got {value!r}")
    if len(items) != n:
        raise ValueError(f"mode: {len(items)} value(s) {list(items)} for {n} metric(s) "
                         f"{list(metrics)}; give one mode per metric, each 'min' or 'max'")
    for m, v in zip(metrics, items):
        if v not in MODES:
            raise ValueError(f"mode: {v!r} for metric {m!r}; must be 'min' or 'max'")
    return tuple(items)


def _bound(name: str, spec: Any) -> tuple[float | None, float | None]:
    where = f"constraints.{name}"
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(f"{where}: must be a mapping with 'min' and/or 'max', e.g. "
                         f"{{max: 20}}, got {spec!r}")
    unknown = sorted(set(spec) - {"min", "max"})
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key; allowed: max, min")
    out: list[float | None] = []
    for key in ("min", "max"):
        v = spec.get(key)
        if v is None:
            out.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{where}.{key}: must be a finite number, got {v!r}")
        out.append(float(v))
    lo, hi = out
    if lo is None and hi is None:
        raise ValueError(f"{where}: give 'min' and/or 'max', got {spec!r}")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"{where}: min {lo:g} is above max {hi:g}")
    return lo, hi


@dataclass(frozen=True)
class Objective:
    """The experiment's metrics (``metrics[i]`` optimised in ``modes[i]``) and constraints
    (``metric -> (min, max)``, either end ``None``). A result is *feasible* when every
    constrained metric lies within its bounds."""

    metrics: tuple[str, ...]
    modes: tuple[str, ...]
    constraints: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)

    @classmethod
    def build(cls, metric: str | Sequence[str], mode: str | Sequence[str],
              constraints: Mapping[str, Any] | None = None) -> Objective:
        """Validate and build; ``ValueError`` naming the field (``metric``, ``mode``,
        ``constraints.<name>.<key>``).

        Example:
            >>> Objective.build("loss", "min").multi
            False
            >>> Objective.build(["a", "b"], "max")
            Traceback (most recent call last):
            ...
            ValueError: mode: metric lists 2 metrics ['a', 'b'], so mode must be a list of 2 \
values, each 'min' or 'max', got 'max'
        """
        metrics = _names(metric, "metric")
        modes = _modes(mode, metrics)
        if constraints is not None and not isinstance(constraints, Mapping):
            raise ValueError(f"constraints: must be a mapping metric -> {{min, max}}, got "
                             f"{constraints!r}")
        bounds = {}
        for name, spec in (constraints or {}).items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"constraints: keys must be metric names, got {name!r}")
            bounds[name] = _bound(name, spec)
        return cls(metrics, modes, bounds)

    # -- shape -----------------------------------------------------------------------------
    @property
    def multi(self) -> bool:
        """More than one metric to optimise."""
        return len(self.metrics) > 1

    @property
    def constrained(self) -> bool:
        return bool(self.constraints)

    @property
    def plain(self) -> bool:
        """One metric and no constraint: today's single-objective experiment."""
        return not self.multi and not self.constrained

    @property
    def primary(self) -> str:
        return self.metrics[0]

    @property
    def primary_mode(self) -> str:
        return self.modes[0]

    @property
    def reported(self) -> tuple[str, ...]:
        """Every metric a result must carry: the objectives, then constrained-only metrics."""
        return self.metrics + tuple(m for m in self.constraints if m not in self.metrics)

    def mode_of(self, metric: str) -> str | None:
        return dict(zip(self.metrics, self.modes)).get(metric)

    def describe(self) -> str:
        """``accuracy (max), latency_ms (min); latency_ms <= 20``."""
        text = ", ".join(f"{m} ({d})" for m, d in zip(self.metrics, self.modes))
        if self.constraints:
            text += "; " + ", ".join(_describe_bound(m, b) for m, b in self.constraints.items())
        return text

    # -- reading results -------------------------------------------------------------------
    def values(self, result: Mapping[str, Any] | None) -> tuple[float, ...]:
        """The objectives' raw values (NaN when missing or not a number)."""
        r = result or {}
        return tuple(number_or_nan(r.get(m)) for m in self.metrics)

    def signed(self, result: Mapping[str, Any] | None) -> tuple[float, ...]:
        """The objectives' values with minimised ones negated: larger is better in each."""
        return tuple(v if d == "max" else -v for v, d in zip(self.values(result), self.modes))

    def missing(self, result: Mapping[str, Any]) -> list[str]:
        """The metrics (objectives and constrained ones) that ``result`` does not carry."""
        return [m for m in self.reported if m not in result]

    def non_finite(self, result: Mapping[str, Any]) -> tuple[str, Any] | None:
        """The first objective whose value is NaN or infinite (or not a number), and it."""
        for m in self.metrics:
            v = result.get(m)
            if not math.isfinite(float(v) if isinstance(v, bool) else number_or_nan(v)):
                return m, v
        return None

    def field_of(self, metric: str) -> str:
        """The spec field that names ``metric``: ``metric`` or ``constraints.<metric>``."""
        return "metric" if metric in self.metrics else f"constraints.{metric}"

    def best(self, trials: Iterable[Any], selection: Selection | None = None) -> Any | None:
        """The one best trial, when there is one: by ``selection`` when given; else, with one
        metric, the best feasible trial; with several metrics and no selection, None (see
        :meth:`front`)."""
        if selection is not None:
            return selection.pick(trials, self)
        if self.multi:
            return None
        return Selection(metric=self.primary, mode=self.primary_mode).pick(trials, self)

    def violations(self, result: Mapping[str, Any] | None) -> list[float]:
        """Optuna's constraint form: one value per bound, ``<= 0`` when satisfied (``v - max``,
        ``min - v``); ``inf`` when the metric is missing or not finite."""
        r = result or {}
        out: list[float] = []
        for m, (lo, hi) in self.constraints.items():
            v = number_or_nan(r.get(m))
            for bound, sign in ((lo, -1.0), (hi, 1.0)):
                if bound is None:
                    continue
                out.append(math.inf if not math.isfinite(v) else sign * (v - bound))
        return out

    def violation_names(self) -> list[str]:
        """A name per value of :meth:`violations`: ``<metric>.min`` / ``<metric>.max``."""
        return [f"{m}.{key}" for m, bound in self.constraints.items()
                for key, b in zip(("min", "max"), bound) if b is not None]

    def violation(self, result: Mapping[str, Any] | None) -> float:
        """The total amount by which ``result`` breaks the constraints; 0 when feasible."""
        return float(sum(max(0.0, c) for c in self.violations(result)))

    def is_feasible(self, result: Mapping[str, Any] | None) -> bool:
        return self.violation(result) == 0.0

    # -- trials ------------------------------------------------------------------------------
    def front(self, trials: Iterable[Any]) -> list[Any]:
        """The non-dominated feasible trials (by each one's last result), in input order.
        Trials without every objective (finite) in their last result are left out."""
        ts = [t for t in trials if t.last_result is not None]
        points = [self.signed(t.last_result) for t in ts]
        feasible = [self.is_feasible(t.last_result) for t in ts]
        return [ts[i] for i in front_indices(points, feasible)]

    # -- records ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"metric": list(self.metrics), "mode": list(self.modes),
                "constraints": {m: {k: v for k, v in (("min", b[0]), ("max", b[1]))
                                    if v is not None}
                                for m, b in self.constraints.items()}}


def _describe_bound(metric: str, bound: tuple[float | None, float | None]) -> str:
    lo, hi = bound
    if lo is not None and hi is not None:
        return f"{lo:g} <= {metric} <= {hi:g}"
    return f"{metric} >= {lo:g}" if lo is not None else f"{metric} <= {hi:g}"


# -- picking one trial -----------------------------------------------------------------------
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NAME = r"[A-Za-z_][\w./-]*"
_SELECT = re.compile(rf"^\s*(max|min)\s+({_NAME})\s*(?:\s(?:s\.t\.|subject to)\s+(.+?))?\s*$")
_COND = re.compile(rf"^\s*({_NAME})\s*(<=|>=|<|>)\s*({_NUMBER})\s*$")
_OPS = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b,
        ">": lambda a, b: a > b}


@dataclass(frozen=True)
class Selection:
    """A rule that picks one trial of a multi-objective run: the best ``metric`` in ``mode``
    among trials meeting ``conditions`` (``select``), or the largest weighted sum
    ``sum(weights[m] * value[m])`` (``weights``). Only feasible trials (the experiment's own
    constraints) are candidates; ties go to a trial no other tied one dominates, then to the
    first trial id."""

    metric: str | None = None
    mode: str = "max"
    conditions: tuple[tuple[str, str, float], ...] = ()
    weights: Mapping[str, float] | None = None

    @classmethod
    def parse(cls, select: str, objective: Objective) -> Selection:
        """``"max|min <metric> [s.t. <metric> <op> <number> [and ...]]"`` with ``op`` one of
        ``<= >= < >``; metrics must be the experiment's (objectives or constrained metrics).

        Example:
            >>> obj = Objective.build(["acc", "ms"], ["max", "min"])
            >>> Selection.parse("max acc s.t. ms <= 20 and ms > 1", obj).conditions
            (('ms', '<=', 20.0), ('ms', '>', 1.0))
            >>> Selection.parse("max acc where ms < 3", obj)
            Traceback (most recent call last):
            ...
            ValueError: select: cannot read 'max acc where ms < 3'; the form is 'max|min \
<metric> [s.t. <metric> <=|>=|<|> <number> [and ...]]', e.g. 'max acc s.t. ms <= 20'
        """
        if not isinstance(select, str):
            raise ValueError(f"select: must be a string such as 'max accuracy s.t. "  # noqa: TRY004
                             f"latency_ms <= 20', got {select!r}")
        example = f"{objective.primary_mode} {objective.primary}"
        if len(objective.metrics) > 1:
            op = "<=" if objective.modes[1] == "min" else ">="
            example += f" s.t. {objective.metrics[1]} {op} 20"
        m = _SELECT.match(select)
        if m is None:
            raise ValueError(f"select: cannot read {select!r}; the form is 'max|min <metric> "
                             f"[s.t. <metric> <=|>=|<|> <number> [and ...]]', e.g. '{example}'")
        mode, metric, rest = m.group(1), m.group(2), m.group(3)
        known = objective.reported
        _known_metric(metric, known, "select")
        want = objective.mode_of(metric)
        if want is not None and want != mode:
            raise ValueError(f"select: '{mode} {metric}' goes against the experiment's mode "
                             f"{want!r} for {metric}")
        conds = []
        for part in re.split(r"\s+and\s+", rest) if rest else []:
            c = _COND.match(part)
            if c is None:
                raise ValueError(f"select: cannot read the condition {part.strip()!r}; write "
                                 f"'<metric> <=|>=|<|> <number>', e.g. "
                                 f"'{objective.metrics[-1]} <= 20'")
            _known_metric(c.group(1), known, "select")
            conds.append((c.group(1), c.group(2), float(c.group(3))))
        return cls(metric=metric, mode=mode, conditions=tuple(conds))

    @classmethod
    def from_weights(cls, weights: Mapping[str, Any], objective: Objective) -> Selection:
        """Weights per objective (the weighted sum is maximised), signs matching the modes:
        positive for a maximised metric, negative for a minimised one (0 ignores a metric).

        Example:
            >>> obj = Objective.build(["acc", "ms"], ["max", "min"])
            >>> Selection.from_weights({"acc": 1.0, "ms": 0.01}, obj)
            Traceback (most recent call last):
            ...
            ValueError: weights.ms: 0.01 must be <= 0: ms is minimised (the weighted sum is \
maximised)
        """
        if not isinstance(weights, Mapping) or not weights:
            raise ValueError(f"weights: must be a non-empty mapping metric -> number, got "
                             f"{weights!r}")
        out = {}
        for name, w in weights.items():
            where = f"weights.{name}"
            if name not in objective.metrics:
                raise ValueError(f"{where}: not an objective of this experiment; allowed: "
                                 f"{', '.join(objective.metrics)}")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ValueError(f"{where}: must be a finite number, got {w!r}")
            mode = objective.mode_of(name)
            if (mode == "max" and w < 0) or (mode == "min" and w > 0):
                op = ">=" if mode == "max" else "<="
                word = "maximised" if mode == "max" else "minimised"
                raise ValueError(f"{where}: {w!r} must be {op} 0: {name} is {word} (the "
                                 "weighted sum is maximised)")
            out[name] = float(w)
        if all(w == 0 for w in out.values()):
            raise ValueError("weights: at least one weight must be non-zero")
        return cls(weights=out)

    @classmethod
    def build(cls, objective: Objective, select: str | None = None,
              weights: Mapping[str, Any] | None = None) -> Selection | None:
        """The rule from the ``select`` or ``weights`` field (at most one), or None."""
        if select is not None and weights is not None:
            raise ValueError("select/weights: give one of them, not both")
        if select is not None:
            return cls.parse(select, objective)
        if weights is not None:
            return cls.from_weights(weights, objective)
        return None

    def describe(self) -> str:
        if self.weights is not None:
            return "max " + " + ".join(f"{w:g}*{m}" for m, w in self.weights.items())
        text = f"{self.mode} {self.metric}"
        if self.conditions:
            text += " s.t. " + " and ".join(f"{m} {op} {v:g}" for m, op, v in self.conditions)
        return text

    def unmet(self, result: Mapping[str, Any] | None) -> list[str]:
        """The conditions ``result`` breaks, in words (``latency_ms=12.3, not <= 10``); a
        missing or non-finite value breaks its condition."""
        r = result or {}
        out = []
        for m, op, bound in self.conditions:
            v = number_or_nan(r.get(m))
            if not math.isfinite(v) or not _OPS[op](v, bound):
                out.append(f"{m}={v:.6g}, not {op} {bound:g}")
        return out

    def needs(self) -> list[str]:
        """The metrics a result must carry for :meth:`score`."""
        names = list(self.weights) if self.weights is not None else [self.metric or ""]
        return names + [m for m, _, _ in self.conditions if m not in names]

    def score(self, result: Mapping[str, Any] | None) -> float:
        """Larger is better; NaN when the trial does not qualify (a condition fails, a value
        is missing)."""
        r = result or {}
        for m, op, bound in self.conditions:
            v = number_or_nan(r.get(m))
            if not math.isfinite(v) or not _OPS[op](v, bound):
                return math.nan
        if self.weights is not None:
            total = 0.0
            for m, w in self.weights.items():
                total += w * number_or_nan(r.get(m)) if w else 0.0
            return total if math.isfinite(total) else math.nan
        v = number_or_nan(r.get(self.metric or ""))
        return v if self.mode == "max" else -v

    def pick(self, trials: Iterable[Any], objective: Objective) -> Any | None:
        """The chosen trial among ``trials`` (by each one's last result), or None."""
        scored = []
        for t in trials:
            r = t.last_result
            if r is None or not objective.is_feasible(r):
                continue
            s = self.score(r)
            if math.isfinite(s):
                scored.append((s, t))
        if not scored:
            return None
        best = max(s for s, _ in scored)
        tied = [t for s, t in scored if s == best]
        front = objective.front(tied) or tied
        return min(front, key=lambda t: t.trial_id)


def _known_metric(name: str, known: Sequence[str], field_name: str) -> None:
    if name not in known:
        raise ValueError(f"{field_name}: {name!r} is not a metric of this experiment; allowed: "
                         f"{', '.join(known)}")


def bind_objective(objective: Objective, scheduler: Any, searcher: Any, space: Any,
                   scheduler_rng: Any, searcher_rng: Any, num_samples: int) -> None:
    """Give the scheduler and the searcher the experiment's objective, as the controller does
    before the first trial: ``set_objective``, ``set_search_space``, ``setup`` (metric and mode
    as strings for one metric, as lists for several), with constraints the scheduler's
    ``constraints=`` and the searcher's ``set_constraints``, and, with several metrics and a
    scheduler that has a ``max_t``, the searcher's ``set_fidelity`` (one metric: unchanged)."""
    metric: Any = objective.primary if not objective.multi else list(objective.metrics)
    mode: Any = objective.primary_mode if not objective.multi else list(objective.modes)
    bounds = objective.to_dict()["constraints"]
    if bounds:
        scheduler.set_objective(metric, mode, scheduler_rng, constraints=bounds)
    else:
        scheduler.set_objective(metric, mode, scheduler_rng)
    scheduler.set_search_space(space)
    searcher.setup(space, metric, mode, searcher_rng, num_samples)
    if bounds:
        searcher.set_constraints(bounds)
    max_t = getattr(scheduler, "max_t", None)
    if objective.multi and isinstance(max_t, (int, float)):
        searcher.set_fidelity(scheduler.time_attr, float(max_t))
