"""Shared pure helpers for schedulers: validation, milestones, JSON-safe floats."""

from __future__ import annotations

import base64
import math
import os
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
    "pack_values",
    "to_plain",
    "unpack_values",
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


_PACKED = frozenset({"prefix", "ids", "f8"})


def pack_values(values: Mapping[str, float]) -> dict[str, Any]:
    """``{trial_id: value}`` in a compact JSON form for state snapshots: the ids' common
    prefix once and the rest space-joined, the values as base64 of little-endian float64
    (NaN and infinities exact). About a third of :func:`encode_values`' bytes for trial ids
    like ``trial-01234``; ids with a space keep that form.

    Example:
        >>> packed = pack_values({"trial-01": 0.5, "trial-02": float("nan")})
        >>> packed["prefix"], packed["ids"]
        ('trial-0', '1 2')
        >>> unpack_values(packed)
        {'trial-01': 0.5, 'trial-02': nan}
    """
    ids = list(values)
    if any(" " in k for k in ids):
        return encode_values(values)
    prefix = os.path.commonprefix(ids) if ids else ""
    data = np.asarray([float(values[k]) for k in ids], dtype="<f8").tobytes()
    return {"prefix": prefix, "ids": " ".join(k[len(prefix):] for k in ids),
            "f8": base64.b64encode(data).decode("ascii")}


def unpack_values(packed: Mapping[str, Any]) -> dict[str, float]:
    """Inverse of :func:`pack_values`; also reads :func:`encode_values`' form (snapshots
    written before)."""
    if set(packed) != _PACKED or not isinstance(packed.get("f8"), str):
        return decode_values(packed)
    vals = np.frombuffer(base64.b64decode(packed["f8"]), dtype="<f8")
    ids = packed["ids"].split(" ") if len(vals) else []  # one id may be all prefix: ""
    if len(vals) != len(ids):
        raise ValueError(f"a packed rung has {len(ids)} ids and {len(vals)} values")
    prefix = packed["prefix"]
    return {prefix + k: float(v) for k, v in zip(ids, vals)}


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
