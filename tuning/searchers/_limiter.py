"""Cap the number of suggested trials that run at once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tuning.searchers._base import Searcher
from tuning.space import Space

__all__ = ["ConcurrencyLimiter"]


class ConcurrencyLimiter(Searcher):
    """Wrap a searcher so that at most ``max_concurrent`` of its trials are unfinished.

    ``suggest`` returns ``None`` while the limit is reached; results and completions pass
    through to the wrapped searcher.

    Example:
        >>> import numpy as np
        >>> from tuning.searchers import RandomSearch
        >>> from tuning.space import Space, uniform
        >>> s = ConcurrencyLimiter(RandomSearch(), max_concurrent=1)
        >>> s.setup(Space({"x": uniform(0, 1)}), "loss", "min", np.random.default_rng(0), 3)
        >>> isinstance(s.suggest("a"), dict), s.suggest("b")
        (True, None)
        >>> s.on_trial_complete("a", {"loss": 1.0})
        >>> isinstance(s.suggest("b"), dict)
        True
    """

    def __init__(self, searcher: Searcher, max_concurrent: int) -> None:
        super().__init__()
        if not isinstance(searcher, Searcher):
            raise ValueError(f"searcher must be a Searcher, got {type(searcher).__name__}")  # noqa: TRY004
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ValueError(f"searcher.max_concurrent must be an integer >= 1, got {max_concurrent!r}")
        self.searcher = searcher
        self.max_concurrent = max_concurrent
        self.live: list[str] = []

    def setup(self, space: Space, metric: str, mode: str, rng: np.random.Generator,
              num_samples: int = 1) -> None:
        """Set up both this wrapper and the wrapped searcher (sharing ``rng``)."""
        super().setup(space, metric, mode, rng, num_samples)
        self.searcher.setup(space, metric, mode, rng, num_samples)

    def set_constraints(self, constraints: Mapping[str, Any]) -> None:
        self.searcher.set_constraints(constraints)

    def set_fidelity(self, time_attr: str, max_t: float) -> None:
        self.searcher.set_fidelity(time_attr, max_t)

    def settings(self) -> dict[str, Any]:
        return {**self.searcher.settings(), "max_concurrent": self.max_concurrent}

    def suggest(self, trial_id: str) -> dict[str, Any] | None | str:
        """The wrapped searcher's suggestion, or ``None`` while the limit is reached."""
        if len(self.live) >= self.max_concurrent:
            return None
        config = self.searcher.suggest(trial_id)
        if isinstance(config, dict):
            self.live.append(trial_id)
        return config

    def max_configs(self) -> int | None:
        return self.searcher.max_configs()

    def on_trial_complete(self, trial_id: str, result: Mapping[str, Any] | None = None,
                          error: bool = False) -> None:
        """Free the trial's slot and forward the completion."""
        if trial_id in self.live:
            self.live.remove(trial_id)
        self.searcher.on_trial_complete(trial_id, result, error)

    def state_dict(self) -> dict[str, Any]:
        return {"live": list(self.live), "searcher": self.searcher.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.live = [str(t) for t in state["live"]]
        self.searcher.load_state_dict(state["searcher"])
