"""Shared pure helpers for schedulers: validation, milestones, JSON-safe floats."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "check_choice",
    "check_int",
    "check_number",
    "decode_float",
    "decode_values",
    "encode_float",
    "encode_values",
    "geometric_milestones",
    
    "to_plain",
]

Number = int | float


def check_number(name: str, value: Any, *, low: float | None = None, strict: bool = True) -> Number:
    """``value`` as a finite number, above ``low`` (strictly unless ``strict=False``).

    Example:
        >>> check_number("max_t", 9, low=0)
        9
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if strict else value < low):
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be {op} {low:g}, got {value!r}")
    return value


def check_int(name: str, value: Any, *, low: int) -> int:
    """``value`` as an ``int`` that is ``>= low``.

    Example:
        >>> check_int("reduction_factor", 3, low=2)
        3
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")  # noqa: TRY004
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return value


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    """``value`` when it is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def geometric_milestones(grace_period: Number, reduction_factor: int, max_t: Number) -> list[Number]:
    """``grace_period * reduction_factor**k`` for every k with the value ``<= max_t``.

    Integer arithmetic (no float logarithms), so ``max_t=9, rf=3`` gives exactly 1, 3, 9.

    Example:
        >>> geometric_milestones(1, 3, 9)
        [1, 3, 9]
        >>> geometric_milestones(1, 3, 10)
        [1, 3, 9]
    """
    out: list[Number] = []
    m = grace_period
    while m <= max_t * (1 + 1e-12):
        out.append(m)
        m = m * reduction_factor
    return out


def encode_float(x: float) -> float | str | None:
    """A JSON-safe form of ``x``: NaN -> None, +-inf -> "inf"/"-inf", numpy -> float."""
    x = float(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def decode_float(x: float | str | None) -> float:
    """Inverse of :func:`encode_float`."""
    return float("nan") if x is None else float(x)


def encode_values(values: Mapping[str, float]) -> dict[str, float | str | None]:
    return {k: encode_float(v) for k, v in values.items()}


def decode_values(values: Mapping[str, Any]) -> dict[str, float]:
    return {k: decode_float(v) for k, v in values.items()}


def to_plain(v: Any) -> Any:
    """numpy scalars as Python ``int``/``float`` (JSON-able); other values unchanged."""
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def as_rung(milestone: float) -> Any:
    """A milestone as stored in ``trial.rung``: an ``int`` when integral."""
    if isinstance(milestone, float) and milestone.is_integer():
        return int(milestone)
    return milestone
