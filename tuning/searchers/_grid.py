"""Grid search: every combination of grid and choice parameters."""

from __future__ import annotations

from typing import Any

import numpy as np

from tuning.searchers._random import RandomSearch
from tuning.space import Choice, SampleFrom, Space, grid

__all__ = ["GridSearch"]


def as_grid_space(space: Space) -> Space:
    """The space with every ``choice`` turned into a ``grid``.

    Raises:
        ValueError: naming the parameter when a domain is neither grid, choice nor sample_from.
    """
    params: dict[str, Any] = {}
    for name in space:
        value = space[name]
        dom = space.domains.get(name)
        if dom is None or isinstance(dom, SampleFrom):
            params[name] = value
        elif isinstance(dom, Choice):
            params[name] = grid(dom.categories)
        else:
            raise ValueError(f"space.{name}: grid search needs grid or choice parameters, "
                             f"got {dom.kind}; use the random or optuna searcher")
    return Space(params)


class GridSearch(RandomSearch):
    """Every combination of the grid and choice parameters, repeated ``num_samples`` times.

    Example:
        >>> import numpy as np
        >>> from tuning.space import Space, choice, grid
        >>> s = GridSearch()
        >>> s.setup(Space({"a": grid([1, 2]), "b": choice(["x", "y"])}), "loss", "min",
        ...         np.random.default_rng(0))
        >>> [tuple(s.suggest(str(i)).values()) for i in range(4)]
        [(1, 'x'), (1, 'y'), (2, 'x'), (2, 'y')]
    """

    def __init__(self) -> None:
        super().__init__()

    def setup(self, space: Space, metric: str, mode: str, rng: np.random.Generator,
              num_samples: int = 1) -> None:
        """Check that the space is a grid (choice counts as grid) and bind it."""
        super().setup(as_grid_space(Space(space)), metric, mode, rng, num_samples)

    def settings(self) -> dict[str, Any]:
        return {"type": "grid"}
