"""Where segments run: Dask, Ray, or a simulated cluster with a virtual clock."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuning.backends._base import Backend, BackendError

__all__ = ["BACKEND_TYPES", "Backend", "BackendError", "make_backend"]

BACKEND_TYPES = ("dask", "ray", "simulated")


def make_backend(d: Mapping[str, Any] | None,
                 resources: Mapping[str, float] | None = None) -> Backend:
    """A backend from its spec dict, e.g. ``{"type": "dask", "address": "tcp://h:8786"}``;
    ``resources`` are what one trial needs, by the spec's names (``cpu``, ``gpu``,
    ``custom:<name>``), which each backend maps to its own once."""
    d = dict(d or {"type": "dask"})
    kind = d.pop("type", "dask")
    if kind == "dask":
        from tuning.backends.dask import DaskBackend

        return DaskBackend(**d, resources=dict(resources or {}))
    if kind == "ray":
        from tuning.backends.ray import RayBackend

        return RayBackend(**d, resources=dict(resources or {}))
    if kind == "simulated":
        from tuning.backends.simulated import SimulatedBackend

        return SimulatedBackend(**d)
    raise ValueError(f"backend.type: unknown {kind!r}; allowed: {', '.join(BACKEND_TYPES)}")
