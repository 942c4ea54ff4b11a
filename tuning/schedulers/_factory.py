"""``make_scheduler``: a scheduler from its YAML form (``type`` plus settings)."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from tuning.schedulers._base import Scheduler

__all__ = ["SCHEDULER_TYPES", "make_scheduler"]

_CLASSES: dict[str, tuple[str, str]] = {
    "asha": ("tuning.schedulers._asha", "ASHA"),
    "bohb": ("tuning.schedulers._bohb", "BOHB"),
    "fifo": ("tuning.schedulers._fifo", "FIFO"),
    "hyperband": ("tuning.schedulers._hyperband", "HyperBand"),
    "median": ("tuning.schedulers._median", "MedianStopping"),
    "moasha": ("tuning.schedulers._moasha", "MOASHA"),
    "pbt": ("tuning.schedulers._pbt", "PBT"),
}

#: The ``scheduler.type`` values of an experiment spec.
SCHEDULER_TYPES: tuple[str, ...] = tuple(sorted(_CLASSES))


def scheduler_class(kind: str) -> type[Scheduler]:
    """The class for ``kind`` (case-insensitive); ``ValueError`` naming the allowed types."""
    key = kind.strip().lower() if isinstance(kind, str) else kind
    if key not in _CLASSES:
        raise ValueError(f"scheduler.type: unknown {kind!r}; allowed: {', '.join(SCHEDULER_TYPES)}")
    module, name = _CLASSES[key]
    cls: type[Scheduler] = getattr(importlib.import_module(module), name)
    return cls


def scheduler_settings(type: str) -> list[str]:
    """The settings ``make_scheduler(type, ...)`` accepts."""
    params = inspect.signature(scheduler_class(type).__init__).parameters
    return [p for p in params if p != "self"]


def make_scheduler(type: str, **kwargs: Any) -> Scheduler:
    """Build a scheduler from its type name and settings (the YAML ``scheduler:`` block).

    Errors are ``ValueError`` naming the field: ``scheduler.type``, an unknown
    ``scheduler.<name>``, or the constructor's own message prefixed with ``scheduler.``.

    Example:
        >>> make_scheduler("asha", max_t=27).milestones()
        [1, 3, 9, 27]
        >>> make_scheduler("asha", foo=1)
        Traceback (most recent call last):
        ...
        ValueError: scheduler.foo: unknown setting for asha; allowed: max_t, grace_period, \
reduction_factor, brackets, variant, time_attr, metric, mode, seed
    """
    cls = scheduler_class(type)
    allowed = scheduler_settings(type)
    key = type.strip().lower()
    for name in kwargs:
        if name not in allowed:
            raise ValueError(f"scheduler.{name}: unknown setting for {key}; "
                             f"allowed: {', '.join(allowed)}")
    params = inspect.signature(cls.__init__).parameters
    for name in allowed:
        if params[name].default is inspect.Parameter.empty and name not in kwargs:
            raise ValueError(f"scheduler.{name}: required for {key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"scheduler.{exc}") from None
