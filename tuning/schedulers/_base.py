"""The scheduler interface: decisions and suggestions are values, never side effects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from tuning._recorded import RecordsArgs
from tuning._trial import ITERATION, Status, Trial
from tuning.space import Space

__all__ = ["Decision", "DecisionPoints", "Resume", "Scheduler", "StartNew", "Suggestion",
           "check_mode"]


class Decision(str, Enum):
    CONTINUE = "CONTINUE"
    PAUSE = "PAUSE"
    STOP = "STOP"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class StartNew:
    """Start a new trial; ``config`` given (PBT, BOHB) or ``None`` to ask the searcher.

    ``info`` is kept on the new trial (``trial.info``), e.g. ``{"bracket": 2}``.
    """

    config: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Resume:
    """Resume a paused trial from a checkpoint.

    Exploit (PBT): ``checkpoint_from`` names the trial whose checkpoint to load and ``config``
    the new (perturbed) config.
    """

    trial_id: str
    config: dict[str, Any] | None = None
    checkpoint_from: str | None = None


Suggestion = StartNew | Resume


@dataclass(frozen=True)
class DecisionPoints:
    """Where a running trial's ``report()`` waits for the scheduler's decision.

    ``at``: resource values (``time_attr``) at which a decision falls (ASHA's milestones);
    ``every_from``: every result at or past this value is decided (median stopping after its
    grace period). Between decision points results stream to the driver without waiting, so a
    STOP lands before the next iteration without a round trip per report.

    Example:
        >>> p = DecisionPoints(at=(1, 3, 9))
        >>> [p.contains(t) for t in (1, 2, 3)]
        [True, False, True]
        >>> DecisionPoints(every_from=5).contains(7)
        True
    """

    at: tuple[float, ...] = ()
    every_from: float | None = None

    def contains(self, t: float) -> bool:
        return (self.every_from is not None and t >= self.every_from) or t in self.at

    def __bool__(self) -> bool:
        return bool(self.at) or self.every_from is not None


def check_mode(mode: str) -> str:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    return mode


class Scheduler(RecordsArgs):
    """Base scheduler: FIFO behaviour (every trial runs to the end, new trials while allowed).

    Subclasses override the hooks. The contract:

    * ``on_result`` returns a :class:`Decision` for a result of a RUNNING trial. ``PAUSE`` is
      only returned at the iteration given by :meth:`pause_at` for that trial.
    * ``choose_trial_to_run`` is called whenever a worker slot is free; ``can_start_new`` is
      False when the searcher or the sample budget is exhausted. It returns a suggestion or
      ``None`` (nothing to run now: wait for more results).
    * Decisions are a deterministic function of the results shown and ``self.rng``.
    * ``state_dict()`` is JSON-able; ``load_state_dict(state)`` restores it exactly.
    * Schedulers that pause trials at rungs (HyperBand, BOHB) decide at a rung that some PAUSED trials will
      never resume: :meth:`trials_to_stop` names them, and the controller STOPs them.
    * Schedulers that build configs themselves (PBT, BOHB) read the experiment's search space,
      given once through :meth:`set_search_space`.

    The controller calls, in this order: ``set_objective`` and ``set_search_space`` before the
    first trial (and, on resume, before ``load_state_dict``); then ``choose_trial_to_run`` per
    free slot, ``on_trial_add`` per new trial, ``pause_at`` and ``decision_points`` at each segment start, ``on_result``
    per result, ``on_trial_complete``/``on_trial_error`` when a trial ends, and
    ``trials_to_stop`` after each batch of those hooks (before choosing again).
    """

    #: whether pausing/resuming needs the trainable to report checkpoints
    needs_checkpoints: bool = False
    #: whether the scheduler pauses trials (HyperBand, PBT, ASHA's promote variant) rather than
    #: only letting them run on or stopping them
    pauses_trials: bool = False

    def __init__(self, *, metric: str | None = None, mode: str | None = None,
                 time_attr: str = ITERATION, seed: int | None = None) -> None:
        self.metric = metric
        self.mode = check_mode(mode) if mode is not None else None
        self.time_attr = time_attr
        self.rng = np.random.default_rng(seed)

    # -- configuration ---------------------------------------------------------------------
    def set_objective(self, metric: str, mode: str, rng: np.random.Generator | None = None) -> None:
        """Called by the controller before the first trial: the experiment's metric and mode."""
        if self.metric is None:
            self.metric = metric
        if self.mode is None:
            self.mode = check_mode(mode)
        if rng is not None:
            self.rng = rng

    def set_search_space(self, space: Space) -> None:
        """Called by the controller before the first trial with the experiment's search space.

        The default ignores it; PBT (mutations) and BOHB (model-based configs) use it.
        """

    def settings(self) -> dict[str, Any]:
        """The scheduler's settings, for the MLflow parent run's params."""
        return {"type": type(self).__name__.lower(), "time_attr": self.time_attr}

    # -- hooks -----------------------------------------------------------------------------
    def on_trial_add(self, trial: Trial) -> None:
        pass

    def on_result(self, trial: Trial, result: Mapping[str, Any]) -> Decision:
        return Decision.CONTINUE

    def on_trial_complete(self, trial: Trial, result: Mapping[str, Any] | None) -> None:
        pass

    def on_trial_error(self, trial: Trial) -> None:
        pass

    def pause_at(self, trial: Trial) -> float | None:
        """The resource value at which the trial's next segment must pause, or None.

        An ``int`` for integral milestones (``training_iteration``); a float for other
        ``time_attr`` values. The controller pauses the segment at the first result with
        ``result[time_attr] >= pause_at``.
        """
        return None

    def decision_points(self, trial: Trial) -> DecisionPoints:
        """Where a running segment of ``trial`` waits for the decision on its result.

        A pause point (:meth:`pause_at`) needs none: the segment ends there and the decision
        is taken while the trial is paused. The default, for schedulers that never stop a
        running trial (FIFO), is none.
        """
        return DecisionPoints()

    def choose_trial_to_run(self, trials: Mapping[str, Trial], can_start_new: bool) -> Suggestion | None:
        for trial in trials.values():
            if trial.status == Status.PAUSED:
                return Resume(trial.trial_id)
        return StartNew() if can_start_new else None

    def trials_to_stop(self, trials: Mapping[str, Trial]) -> list[str]:
        """Ids of PAUSED trials that the controller must now STOP (they will never resume).

        Called after each batch of ``on_result``/``on_trial_complete``/``on_trial_error`` calls.
        The controller marks each STOPPED (``stopped_at`` = its last iteration) and calls
        ``on_trial_complete``. The default returns ``[]``.
        """
        return []

    def is_finished(self, trials: Mapping[str, Trial]) -> bool:
        """Whether the scheduler wants no more trials (e.g. every HyperBand bracket is done)."""
        return False

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    # -- helpers ---------------------------------------------------------------------------
    def _value(self, result: Mapping[str, Any]) -> float:
        """The metric, sign-flipped so that larger is better; NaN when missing or not finite."""
        v = result.get(self.metric) if self.metric else None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return float("nan")
        v = float(v)
        return v if self.mode == "max" else -v

    def _time(self, result: Mapping[str, Any]) -> float:
        return float(result.get(self.time_attr, result.get(ITERATION, 0)))
