"""What to try next: random and grid search, Optuna samplers (TPE, CMA-ES, GP), warm start.

Example:
    >>> s = make_searcher("optuna", sampler="tpe", max_concurrent=4)
    >>> type(s).__name__, type(s.searcher).__name__
    ('ConcurrencyLimiter', 'OptunaSearch')
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tuning.searchers._base import FINISHED, Searcher
from tuning.searchers._grid import GridSearch
from tuning.searchers._limiter import ConcurrencyLimiter
from tuning.searchers._optuna import SAMPLERS, OptunaSearch
from tuning.searchers._random import RandomSearch

__all__ = [
    "FINISHED",
    "SAMPLERS",
    "SEARCHER_TYPES",
    "ConcurrencyLimiter",
    "GridSearch",
    "OptunaSearch",
    "RandomSearch",
    "Searcher",
    "make_searcher",
]

_FACTORIES: dict[str, tuple[Callable[..., Searcher], frozenset[str]]] = {
    "grid": (GridSearch, frozenset()),
    "optuna": (OptunaSearch, frozenset(
        {"sampler", "seed", "points_to_evaluate", "n_startup_trials", "sampler_kwargs"})),
    "random": (RandomSearch, frozenset({"points_to_evaluate"})),
}

#: searcher types accepted by :func:`make_searcher` and the YAML spec's ``searcher.type``
SEARCHER_TYPES: tuple[str, ...] = tuple(sorted(_FACTORIES))


def make_searcher(type: str, **kwargs: Any) -> Searcher:
    """Build a searcher from its spec form, e.g. ``make_searcher("optuna", sampler="tpe")``.

    Every type accepts ``max_concurrent`` (wraps the searcher in :class:`ConcurrencyLimiter`).

    Raises:
        ValueError: naming the field on an unknown type, an unknown field or an invalid value.
    """
    if type not in _FACTORIES:
        raise ValueError(f"searcher.type: unknown {type!r}; allowed: {', '.join(SEARCHER_TYPES)}")
    factory, allowed = _FACTORIES[type]
    max_concurrent = kwargs.pop("max_concurrent", None)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        names = ", ".join(sorted(allowed | {"max_concurrent"}))
        raise ValueError(f"searcher.{unknown[0]}: unknown field for type {type!r}; allowed: {names}")
    searcher = factory(**kwargs)
    if max_concurrent is None:
        return searcher
    return ConcurrencyLimiter(searcher, max_concurrent)
