"""The scheduler interface: decisions and suggestions are values, never side effects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from sortedcontainers import SortedList

from tuning._objective import Objective
from tuning._recorded import RecordsArgs
from tuning._trial import ITERATION, TERMINAL, Status, Trial
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


def _check_modes(mode: Any) -> Any:
    """None, ``'min'``/``'max'``, or a list of them (several metrics)."""
    if mode is None:
        return None
    if isinstance(mode, (list, tuple)):
        return [check_mode(m) for m in mode]
    return check_mode(mode)


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

    #: the most resource (``time_attr``) a trial gets: a segment ends there and a trial that
    #: reaches it is TERMINATED; None when the scheduler sets no limit (FIFO)
    max_t: float | None = None
    #: whether pausing/resuming needs the trainable to report checkpoints
    needs_checkpoints: bool = False
    #: whether the scheduler pauses trials (HyperBand, PBT, ASHA's promote variant) rather than
    #: only letting them run on or stopping them
    pauses_trials: bool = False
    #: whether the scheduler works with several metrics and with constraints (FIFO, which ranks
    #: nothing, and MO-ASHA); the others rank by one metric and are refused such an objective
    multi_objective: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap a subclass's own ``on_trial_add``/``on_result`` so that the base class sees
        every trial's arrival order and every PAUSE it decides (:class:`_PausedTrials`)."""
        super().__init_subclass__(**kwargs)
        if "on_trial_add" in cls.__dict__:
            cls.on_trial_add = _noting_add(cls.__dict__["on_trial_add"])  # type: ignore[method-assign]
        if "on_result" in cls.__dict__:
            cls.on_result = _noting_pause(cls.__dict__["on_result"])  # type: ignore[method-assign]

    def __init__(self, *, metric: str | list[str] | None = None,
                 mode: str | list[str] | None = None, time_attr: str = ITERATION,
                 seed: int | None = None) -> None:
        self.metric: Any = metric
        self.mode: Any = _check_modes(mode)
        self.time_attr = time_attr
        self.rng = np.random.default_rng(seed)
        self.objective: Objective | None = None
        self._paused = _PausedTrials()

    # -- configuration ---------------------------------------------------------------------
    def set_objective(self, metric: str | list[str], mode: str | list[str],
                      rng: np.random.Generator | None = None,
                      constraints: Mapping[str, Any] | None = None) -> None:
        """Called by the controller before the first trial: the experiment's metric and mode
        (lists of them for a multi-objective experiment) and its constraints.

        The scheduler's own ``metric``/``mode``, when given, win. ``self.objective`` holds the
        whole :class:`~tuning._objective.Objective`; ``self.metric``/``self.mode`` the first
        metric and its mode. A scheduler that ranks by one metric (``multi_objective`` False)
        refuses several metrics or constraints with a ValueError naming ``scheduler.type``.
        """
        objective = Objective.build(metric if self.metric is None else self.metric,
                                    mode if self.mode is None else self.mode, constraints)
        if not objective.plain and not self.multi_objective:
            raise ValueError(f"scheduler.type: {type(self).__name__} ranks trials by one metric "
                             f"and knows no constraints; with {objective.describe()} use MOASHA "
                             "('moasha') or FIFO ('fifo')")
        self.objective = objective
        self.metric, self.mode = objective.primary, objective.primary_mode
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
        self._paused.see(trial.trial_id)

    def on_result(self, trial: Trial, result: Mapping[str, Any]) -> Decision:
        return Decision.CONTINUE

    def on_trial_complete(self, trial: Trial, result: Mapping[str, Any] | None) -> None:
        self._paused.discard(trial.trial_id)

    def on_trial_error(self, trial: Trial) -> None:
        self._paused.discard(trial.trial_id)

    def _note_pause(self, trial: Trial) -> None:
        """Called after this scheduler decided PAUSE for ``trial``; schedulers with their own
        choice of paused trials (HyperBand, PBT, ASHA promote) override it."""
        self._paused.add(trial.trial_id)

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
        """Resume the first paused trial (in the order trials were added), else start new.

        O(log n): the paused trials are kept in a sorted set by the hooks, each checked against
        ``trials`` before it is returned.
        """
        tid = self._paused.first_paused(trials)
        if tid is not None:
            return Resume(tid)
        return StartNew() if can_start_new else None

    def trials_to_stop(self, trials: Mapping[str, Trial]) -> list[str]:
        """Ids of PAUSED trials that the controller must now STOP (they will never resume).

        Called after each batch of ``on_result``/``on_trial_complete``/``on_trial_error`` calls.
        The controller marks each STOPPED (``stopped_at`` = its last iteration) and calls
        ``on_trial_complete``. The default returns ``[]``.
        """
        return []

    def is_finished(self, trials: Mapping[str, Trial]) -> bool:
        """Whether the scheduler wants no more trials (e.g. every HyperBand bracket is done):
        the controller then starts none and asks the searcher for no more configs."""
        return False

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "paused": self._paused.to_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self._paused = _PausedTrials.from_dict(state.get("paused"))

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


def _noting_add(method: Any) -> Any:
    def on_trial_add(self: Scheduler, trial: Trial) -> None:
        self._paused.see(trial.trial_id)
        method(self, trial)

    on_trial_add.__doc__, on_trial_add.__wrapped__ = method.__doc__, method  # type: ignore[attr-defined]
    return on_trial_add


def _noting_pause(method: Any) -> Any:
    def on_result(self: Scheduler, trial: Trial, result: Mapping[str, Any]) -> Decision:
        decision = method(self, trial, result)
        if decision is Decision.PAUSE:
            self._note_pause(trial)
        return decision

    on_result.__doc__, on_result.__wrapped__ = method.__doc__, method  # type: ignore[attr-defined]
    return on_result


class _PausedTrials:
    """The trials a scheduler paused, in the order the trials were added (O(log n) each).

    A trial enters when its scheduler decides PAUSE and leaves when it is resumed, completes
    or errors. The controller's ``trials`` mapping has the last word: an entry is returned
    only while its trial is PAUSED there; an ended (or unknown) one is dropped, a RUNNING one
    (paused by the decision, its segment not yet over) is kept for later.

    Without a saved set (a state written before it existed) it is rebuilt once from ``trials``.
    """

    def __init__(self) -> None:
        self._order: dict[str, int] = {}
        self._sorted: SortedList = SortedList()
        self.known = True

    def see(self, tid: str) -> int:
        n = self._order.get(tid)
        if n is None:
            n = self._order[tid] = len(self._order)
        return n

    def add(self, tid: str) -> None:
        key = (self.see(tid), tid)
        if key not in self._sorted:
            self._sorted.add(key)

    def discard(self, tid: str) -> None:
        n = self._order.get(tid)
        if n is not None:
            self._sorted.discard((n, tid))

    def first_paused(self, trials: Mapping[str, Trial]) -> str | None:
        if not self.known:
            self._rebuild(trials)
        i = 0
        while i < len(self._sorted):
            key = self._sorted[i]
            trial = trials.get(key[1])
            if trial is not None and trial.status == Status.PAUSED:
                del self._sorted[i]
                return key[1]
            if trial is None or trial.status in TERMINAL:
                del self._sorted[i]
            else:
                i += 1
        return None

    def _rebuild(self, trials: Mapping[str, Trial]) -> None:
        for tid, trial in trials.items():
            self.see(tid)
            if trial.status == Status.PAUSED:
                self.add(tid)
        self.known = True

    def to_dict(self) -> dict[str, Any]:
        return {"order": list(self._order), "paused": [tid for _, tid in self._sorted]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> _PausedTrials:
        out = cls()
        if d is None:
            out.known = False
            return out
        for tid in d["order"]:
            out.see(str(tid))
        for tid in d["paused"]:
            out.add(str(tid))
        return out
