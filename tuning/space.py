"""Search-space primitives, validation and sampling.

A search space is a mapping from parameter name to a :class:`Domain` (or a plain constant).
Domains are validated when a :class:`Space` is built, so every error names its parameter.

Example:
    >>> import numpy as np
    >>> from tuning.space import Space, loguniform, choice
    >>> space = Space({"lr": loguniform(1e-4, 1e-1), "act": choice(["relu", "tanh"]), "epochs": 5})
    >>> cfg = space.sample(np.random.default_rng(0))
    >>> sorted(cfg)
    ['act', 'epochs', 'lr']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Choice",
    "Domain",
    "Grid",
    "LogUniform",
    "QUniform",
    "RandInt",
    "SampleFrom",
    "Space",
    "Uniform",
    "choice",
    "domain_from_dict",
    "grid",
    "grid_search",
    "loguniform",
    "quniform",
    "randint",
    "sample_from",
    "uniform",
]


class Domain:
    """A distribution over one parameter's values."""

    kind: str = ""

    def validate(self) -> None:
        """Raise ``ValueError`` (without the parameter name) when the domain cannot be sampled."""

    def sample(self, rng: np.random.Generator) -> Any:
        raise NotImplementedError

    def contains(self, value: Any) -> bool:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Uniform(Domain):
    low: float
    high: float
    kind = "uniform"

    def validate(self) -> None:
        lo, hi = _finite("low", self.low), _finite("high", self.high)
        if not lo < hi:
            raise ValueError(f"{self.kind} needs low < high, got low={lo!r}, high={hi!r}")

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))

    def contains(self, value: Any) -> bool:
        return bool(isinstance(value, (int, float, np.integer, np.floating))
                    and not isinstance(value, bool) and self.low <= value <= self.high)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class LogUniform(Uniform):
    kind = "loguniform"

    def validate(self) -> None:
        super().validate()
        if self.low <= 0:
            raise ValueError(f"loguniform needs low > 0 (log scale), got low={self.low!r}")

    def sample(self, rng: np.random.Generator) -> float:
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))


@dataclass(frozen=True)
class QUniform(Uniform):
    q: float = 1.0
    kind = "quniform"

    def validate(self) -> None:
        super().validate()
        if _finite("q", self.q) <= 0:
            raise ValueError(f"quniform needs q > 0, got q={self.q!r}")

    def sample(self, rng: np.random.Generator) -> float:
        value = round(float(rng.uniform(self.low, self.high)) / self.q) * self.q
        lo = math.ceil(self.low / self.q - 1e-9) * self.q  # the multiples of q inside the bounds
        hi = math.floor(self.high / self.q + 1e-9) * self.q
        if lo <= hi:
            value = min(max(value, lo), hi)
        return float(min(max(value, self.low), self.high))

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "q": self.q}


@dataclass(frozen=True)
class RandInt(Domain):
    """Integers in ``[low, high)`` (upper bound excluded, as in numpy and Ray Tune)."""

    low: int
    high: int
    kind = "randint"

    def validate(self) -> None:
        for name in ("low", "high"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"randint {name} must be an integer, got {v!r}")  # noqa: TRY004
        if not self.low < self.high:
            raise ValueError(f"randint needs low < high (high excluded), got low={self.low}, high={self.high}")

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.low, self.high))

    def contains(self, value: Any) -> bool:
        return bool(isinstance(value, (int, np.integer)) and self.low <= value < self.high)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Choice(Domain):
    categories: tuple[Any, ...]
    kind = "choice"

    def validate(self) -> None:
        if len(self.categories) == 0:
            raise ValueError(f"{self.kind} needs a non-empty list of values")

    def sample(self, rng: np.random.Generator) -> Any:
        return self.categories[int(rng.integers(len(self.categories)))]

    def contains(self, value: Any) -> bool:
        return any(value == c for c in self.categories)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "values": list(self.categories)}


@dataclass(frozen=True)
class Grid(Choice):
    """Every value is tried (grid search); the searcher crosses all grids."""

    kind = "grid"


@dataclass(frozen=True)
class SampleFrom(Domain):
    """A conditional parameter: ``fn(config)`` sees the other parameters already sampled."""

    fn: Callable[[dict[str, Any]], Any] = field(compare=False)
    kind = "sample_from"

    def validate(self) -> None:
        if not callable(self.fn):
            raise ValueError(f"sample_from needs a callable, got {self.fn!r}")  # noqa: TRY004

    def sample(self, rng: np.random.Generator) -> Any:  # resolved by Space.resolve
        raise TypeError("sample_from is resolved by Space.resolve with the partial config")

    def contains(self, value: Any) -> bool:
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "fn": getattr(self.fn, "__qualname__", repr(self.fn))}


def uniform(low: float, high: float) -> Uniform:
    """Floats uniformly in ``[low, high]``."""
    return Uniform(low, high)


def loguniform(low: float, high: float) -> LogUniform:
    """Floats whose logarithm is uniform in ``[log low, log high]``; needs ``low > 0``."""
    return LogUniform(low, high)


def quniform(low: float, high: float, q: float) -> QUniform:
    """Uniform floats rounded to a multiple of ``q``."""
    return QUniform(low, high, q)


def randint(low: int, high: int) -> RandInt:
    """Integers in ``[low, high)``."""
    return RandInt(low, high)


def choice(values: Any) -> Choice:
    """One of ``values``, uniformly."""
    return Choice(tuple(values))


def grid(values: Any) -> Grid:
    """Every one of ``values`` (crossed with every other grid parameter)."""
    return Grid(tuple(values))


grid_search = grid


def sample_from(fn: Callable[[dict[str, Any]], Any]) -> SampleFrom:
    """A parameter computed from the rest of the config: ``sample_from(lambda c: 2 * c["a"])``."""
    return SampleFrom(fn)


_FROM_DICT: dict[str, Callable[[dict[str, Any]], Domain]] = {
    "uniform": lambda d: Uniform(d["low"], d["high"]),
    "loguniform": lambda d: LogUniform(d["low"], d["high"]),
    "quniform": lambda d: QUniform(d["low"], d["high"], d.get("q", 1.0)),
    "randint": lambda d: RandInt(d["low"], d["high"]),
    "choice": lambda d: Choice(tuple(d["values"])),
    "grid": lambda d: Grid(tuple(d["values"])),
}


def domain_from_dict(name: str, d: Mapping[str, Any]) -> Domain:
    """Build a domain from its YAML/JSON form, e.g. ``{"type": "loguniform", "low": 1e-4, "high": 0.1}``."""
    kind = d.get("type")
    if kind not in _FROM_DICT:
        raise ValueError(f"space.{name}.type: unknown {kind!r}; allowed: {', '.join(sorted(_FROM_DICT))}")
    keys = {"uniform": {"low", "high"}, "loguniform": {"low", "high"}, "quniform": {"low", "high", "q"},
            "randint": {"low", "high"}, "choice": {"values"}, "grid": {"values"}}[kind]
    unknown = set(d) - keys - {"type"}
    if unknown:
        raise ValueError(f"space.{name}: unknown field(s) {sorted(unknown)} for {kind}; allowed: {sorted(keys)}")
    missing = {k for k in keys if k not in d and k != "q"}
    if missing:
        raise ValueError(f"space.{name}: {kind} needs {sorted(missing)}")
    if "values" in keys and not isinstance(d["values"], (list, tuple)):
        raise ValueError(f"space.{name}.values must be a list, got {d['values']!r}")
    try:
        return _FROM_DICT[kind](_coerce_numbers(dict(d)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"space.{name}: {exc}") from None


def _coerce_numbers(d: dict[str, Any]) -> dict[str, Any]:
    # YAML 1.1 reads "1e-4" as a string; accept it as a number.
    for key in ("low", "high", "q"):
        v = d.get(key)
        if isinstance(v, str):
            try:
                d[key] = int(v) if v.strip().lstrip("+-").isdigit() else float(v)
            except ValueError:
                raise ValueError(f"{key} must be a number, got {v!r}") from None
    return d


class Space(Mapping[str, Any]):
    """A validated search space: parameter name -> :class:`Domain` or constant."""

    def __init__(self, params: Mapping[str, Any]):
        if isinstance(params, Space):
            params = dict(params.items())
        if not isinstance(params, Mapping):
            raise ValueError(f"space must be a mapping of parameter name to domain, got {type(params).__name__}")  # noqa: TRY004
        if not params:
            raise ValueError("space must have at least one parameter")
        parsed: dict[str, Any] = {}
        for name, value in params.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"space: parameter names must be non-empty strings, got {name!r}")
            if isinstance(value, Mapping) and "type" in value:
                value = domain_from_dict(name, value)
            if isinstance(value, Domain):
                try:
                    value.validate()
                except ValueError as exc:
                    raise ValueError(f"space.{name}: {exc}") from None
            parsed[name] = value
        self._params: dict[str, Any] = parsed
        self._grid_points: list[dict[str, Any]] | None = None  # built on first use

    def __getitem__(self, key: str) -> Any:
        return self._params[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def __repr__(self) -> str:
        return f"Space({self._params!r})"

    @property
    def domains(self) -> dict[str, Domain]:
        """The sampled parameters (constants left out)."""
        return {k: v for k, v in self._params.items() if isinstance(v, Domain)}

    @property
    def grid_params(self) -> dict[str, Grid]:
        return {k: v for k, v in self._params.items() if isinstance(v, Grid)}

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the grid parameters, in a fixed order (one empty dict if none).

        Built once and cached: a space is immutable after construction (its parameters are
        private, its grids frozen dataclasses with tuple values). The same list is returned on
        every call, so callers copy a point before changing it."""
        cached = getattr(self, "_grid_points", None)  # None also for a space unpickled from before
        if cached is None:
            cached = [{}]
            for name, dom in self.grid_params.items():
                cached = [{**p, name: v} for p in cached for v in dom.categories]
            self._grid_points = cached
        return cached

    def sample(self, rng: np.random.Generator, fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A config: ``fixed`` values first, other domains sampled, then ``sample_from`` resolved."""
        fixed = dict(fixed or {})
        config: dict[str, Any] = {}
        for name, value in self._params.items():
            if name in fixed:
                config[name] = fixed[name]
            elif isinstance(value, SampleFrom):
                continue
            elif isinstance(value, Domain):
                config[name] = value.sample(rng)
            else:
                config[name] = value
        return self.resolve(config)

    def resolve(self, config: dict[str, Any]) -> dict[str, Any]:
        """Fill constants and ``sample_from`` parameters; keeps the space's key order."""
        config = dict(config)
        for name, value in self._params.items():
            if name not in config and not isinstance(value, Domain):
                config[name] = value
        for name, value in self._params.items():
            if isinstance(value, SampleFrom) and name not in config:
                config[name] = value.fn(config)
        return {k: config[k] for k in self._params if k in config} | {
            k: v for k, v in config.items() if k not in self._params}

    def contains(self, config: Mapping[str, Any]) -> bool:
        """Whether every sampled parameter of ``config`` lies in its domain."""
        return all(name in config and dom.contains(config[name]) for name, dom in self.domains.items())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (constants as they are)."""
        return {k: (v.to_dict() if isinstance(v, Domain) else v) for k, v in self._params.items()}

    def to_optuna(self) -> dict[str, Any]:
        """Optuna distributions for the sampled parameters (grid as categorical, sample_from left out)."""
        import optuna.distributions as od

        out: dict[str, Any] = {}
        for name, dom in self.domains.items():
            if isinstance(dom, QUniform):
                out[name] = od.FloatDistribution(dom.low, dom.high, step=dom.q) if _divides(dom) else \
                    od.FloatDistribution(dom.low, dom.high)
            elif isinstance(dom, LogUniform):
                out[name] = od.FloatDistribution(dom.low, dom.high, log=True)
            elif isinstance(dom, Uniform):
                out[name] = od.FloatDistribution(dom.low, dom.high)
            elif isinstance(dom, RandInt):
                out[name] = od.IntDistribution(dom.low, dom.high - 1)
            elif isinstance(dom, Choice):
                out[name] = od.CategoricalDistribution(list(dom.categories))
        return out


def _divides(dom: QUniform) -> bool:
    # Optuna's step counts from low; it matches multiples of q when low and the span are multiples.
    return all(abs(v / dom.q - round(v / dom.q)) < 1e-9 for v in (dom.low, dom.high - dom.low))
