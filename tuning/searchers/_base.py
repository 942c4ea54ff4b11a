"""The searcher interface: what to try next."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tuning._recorded import RecordsArgs
from tuning.space import Space

__all__ = ["FINISHED", "Searcher"]

#: returned by ``suggest`` when the searcher has nothing more to offer, ever
FINISHED = "FINISHED"


class Searcher(RecordsArgs):
    """Base searcher.

    The controller calls ``setup`` once, then ``suggest(trial_id)`` for each new trial:
    a config dict, ``None`` for "nothing right now" (e.g. a concurrency limit), or
    :data:`FINISHED`. It tells each trial's end with ``on_trial_complete`` (the trial's last
    result; ``error=True`` when it failed). Same seed and same sequence of calls give the same configs.
    ``state_dict()`` is JSON-able; ``load_state_dict`` restores it.
    """

    FINISHED = FINISHED

    def __init__(self) -> None:
        self.space: Space | None = None
        self.metric: str | None = None
        self.mode: str | None = None
        self.rng: np.random.Generator = np.random.default_rng()

    def setup(self, space: Space, metric: Any, mode: Any, rng: np.random.Generator,
              num_samples: int = 1) -> None:
        """Called once by the controller (``metric``/``mode``: lists of them when the
        experiment has several metrics). ``num_samples`` is the experiment's sample count: a
        searcher returns FINISHED after ``num_samples`` configs (times the number of grid points
        for searchers that cross grids)."""
        self.space, self.metric, self.mode, self.rng = space, metric, mode, rng
        self.num_samples = num_samples

    def settings(self) -> dict[str, Any]:
        return {"type": type(self).__name__.lower()}

    def set_constraints(self, constraints: Mapping[str, Any]) -> None:
        """The experiment's constraints (``metric -> {min, max}``), called after ``setup``
        when there are any. The default ignores them (random and grid search need not know);
        :class:`~tuning.searchers.OptunaSearch` tells its sampler."""

    def set_fidelity(self, time_attr: str, max_t: float) -> None:
        """The scheduler's resource attribute and its largest value, called after ``setup``
        for multi-objective experiments with a scheduler that has a ``max_t``: a trial that
        ended below it was stopped early, its values not comparable with fully trained ones.
        The default ignores it; :class:`~tuning.searchers.OptunaSearch` tells such trials as
        PRUNED."""

    def suggest(self, trial_id: str) -> dict[str, Any] | None | str:
        raise NotImplementedError

    def max_configs(self) -> int | None:
        """How many configs ``suggest`` gives before :data:`FINISHED` (after ``setup``), when
        the searcher knows; the controller starts that many trials. ``None``: the controller
        starts ``num_samples`` per grid point of the space."""
        return None

    def on_trial_complete(self, trial_id: str, result: Mapping[str, Any] | None = None,
                          error: bool = False) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
