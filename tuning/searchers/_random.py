"""Random and grid-crossing search (Ray Tune's ``BasicVariantGenerator`` semantics)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tuning.searchers._base import FINISHED, Searcher
from tuning.space import Space

__all__ = ["RandomSearch", "check_points"]


def check_points(points: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Validate ``points_to_evaluate``: a list of (partial) config dicts.

    Args:
        points: ``None`` or a list of mappings from parameter name to value.

    Returns:
        A list of plain dict copies.

    Raises:
        ValueError: naming ``searcher.points_to_evaluate`` when the value is not a list of dicts.
    """
    if points is None:
        return []
    if isinstance(points, (str, bytes, Mapping)) or not isinstance(points, Sequence):
        raise ValueError(  # noqa: TRY004
            f"searcher.points_to_evaluate must be a list of config dicts, got {type(points).__name__}")
    for i, point in enumerate(points):
        if not isinstance(point, Mapping):
            raise ValueError(f"searcher.points_to_evaluate[{i}] must be a dict of parameter values, "  # noqa: TRY004
                             f"got {point!r}")
    return [dict(p) for p in points]


def check_points_in_space(points: list[dict[str, Any]], space: Space) -> None:
    """Raise ``ValueError`` when a point names a parameter that the space lacks."""
    for i, point in enumerate(points):
        unknown = sorted(set(point) - set(space))
        if unknown:
            raise ValueError(f"searcher.points_to_evaluate[{i}]: unknown parameter(s) {unknown}; "
                             f"the space has {sorted(space)}")


class RandomSearch(Searcher):
    """Every grid point of the space repeated ``num_samples`` times; other domains sampled.

    ``points_to_evaluate`` come first (missing parameters sampled) and count toward the total of
    ``len(space.grid_points()) * num_samples`` configs (all points run if there are more).

    Example:
        >>> import numpy as np
        >>> from tuning.space import Space, grid, uniform
        >>> s = RandomSearch()
        >>> s.setup(Space({"a": grid([1, 2]), "x": uniform(0, 1)}), "loss", "min",
        ...         np.random.default_rng(0), num_samples=2)
        >>> [s.suggest(f"t{i}")["a"] for i in range(4)]
        [1, 2, 1, 2]
        >>> s.suggest("t4")
        'FINISHED'
    """

    def __init__(self, points_to_evaluate: Sequence[Mapping[str, Any]] | None = None) -> None:
        super().__init__()
        self.points_to_evaluate = check_points(points_to_evaluate)
        self.count = 0
        self._grid: list[dict[str, Any]] = [{}]
        self.total = 0

    def setup(self, space: Space, metric: str, mode: str, rng: np.random.Generator,
              num_samples: int = 1) -> None:
        """Bind the space and the controller's generator; compute the total number of configs."""
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        space = Space(space)
        check_points_in_space(self.points_to_evaluate, space)
        super().setup(space, metric, mode, rng, num_samples)
        self._grid = space.grid_points()
        self.total = max(len(self._grid) * num_samples, len(self.points_to_evaluate))

    def settings(self) -> dict[str, Any]:
        return {"type": "random", "points_to_evaluate": self.points_to_evaluate}

    def max_configs(self) -> int | None:
        """Every grid point ``num_samples`` times, or every point to evaluate if more."""
        return self.total or None

    def suggest(self, trial_id: str) -> dict[str, Any] | None | str:
        """The next config, or :data:`FINISHED` after the total."""
        if self.space is None:
            raise RuntimeError("RandomSearch.suggest called before setup")
        if self.count >= self.total:
            return FINISHED
        fixed = dict(self._grid[self.count % len(self._grid)])
        if self.count < len(self.points_to_evaluate):
            fixed.update(self.points_to_evaluate[self.count])
        self.count += 1
        return self.space.sample(self.rng, fixed)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.count = int(state["count"])
