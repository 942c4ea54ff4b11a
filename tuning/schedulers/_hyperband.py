"""Synchronous HyperBand (Li et al., JMLR 2018): brackets of successive halving.

The brackets ``s_max .. 0`` form one *round* (one "HyperBand iteration" of the paper); like Ray
Tune's ``HyperBandScheduler``, a new round starts once every bracket of the current one has all
its trials, so the experiment's budget (``num_samples``, an iteration or time budget), not the
bracket table, decides how much is run (``max_rounds`` caps it).

With ``R = max_t / grace_period`` and ``eta = reduction_factor``: ``s_max = floor(log_eta R)``
(integer loop, no float logarithm), ``B = (s_max + 1) R``; bracket ``s`` (from ``s_max`` down
to 0) starts ``n = ceil(B/R * eta**s / (s+1))`` trials at resource ``r = max_t * eta**-s``, and
each rung keeps the top ``floor(n_i / eta)`` for ``eta`` times the resource.

Example (the paper's table, R=81, eta=3):
    >>> [(p.s, p.sizes[0], p.milestones[0]) for p in hyperband_plan(81, 1, 3)]
    [(4, 81, 1), (3, 34, 3), (2, 15, 9), (1, 8, 27), (0, 5, 81)]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from tuning._trial import ITERATION, TERMINAL, Status, Trial
from tuning.schedulers._asha import rank_trials
from tuning.schedulers._base import Decision, Resume, Scheduler, StartNew, Suggestion
from tuning.schedulers._common import (
    Number,
    as_rung,
    check_int,
    check_number,
    decode_values,
    encode_values,
)

__all__ = [
    "BracketPlan",
    "HyperBand",
    "hyperband_plan",
    "hyperband_s_max",
    "rung_sizes",
    "successive_halving",
]


@dataclass(frozen=True)
class BracketPlan:
    """One HyperBand bracket: ``sizes[i]`` trials run to ``milestones[i]``."""

    s: int
    sizes: tuple[int, ...]
    milestones: tuple[Number, ...]


def hyperband_s_max(max_t: Number, grace_period: Number, eta: int) -> int:
    """``floor(log_eta(max_t / grace_period))`` by an integer loop.

    Example:
        >>> hyperband_s_max(81, 1, 3), hyperband_s_max(80, 1, 3), hyperband_s_max(9, 1, 3)
        (4, 3, 2)
    """
    s = 0
    while grace_period * eta ** (s + 1) <= max_t * (1 + 1e-12):
        s += 1
    return s


def rung_sizes(n: int, eta: int, s: int) -> tuple[int, ...]:
    """Trials per rung of a bracket that starts ``n``: ``floor(n / eta**i)``, at least 1.

    Example:
        >>> rung_sizes(81, 3, 4)
        (81, 27, 9, 3, 1)
        >>> rung_sizes(34, 3, 3)
        (34, 11, 3, 1)
    """
    return tuple(max(1, n // eta ** i) for i in range(s + 1))


def _milestone(max_t: Number, grace_period: Number, eta: int, power: int) -> Number:
    """``max_t / eta**power``, an int (rounded, at least ``grace_period``) for int settings."""
    if isinstance(max_t, int) and isinstance(grace_period, int):
        return max(grace_period, round(max_t / eta ** power)) if power else max_t
    return max_t / eta ** power


def hyperband_plan(max_t: Number, grace_period: Number, eta: int) -> list[BracketPlan]:
    """Every bracket, ``s = s_max`` first: its rung sizes and milestones.

    Example:
        >>> hyperband_plan(81, 1, 3)[0]
        BracketPlan(s=4, sizes=(81, 27, 9, 3, 1), milestones=(1, 3, 9, 27, 81))
    """
    s_max = hyperband_s_max(max_t, grace_period, eta)
    plans = []
    for s in range(s_max, -1, -1):
        n = -(-(s_max + 1) * eta ** s // (s + 1))  # ceil(B/R * eta^s / (s+1)), integers
        ms = tuple(_milestone(max_t, grace_period, eta, s - i) for i in range(s + 1))
        plans.append(BracketPlan(s, rung_sizes(n, eta, s), ms))
    return plans


def successive_halving(recorded: Mapping[str, float], keep: int,
                       ended: set[str] | frozenset[str] = frozenset()) -> tuple[list[str], list[str]]:
    """Split a complete rung: the best ``keep`` (not ended, not NaN) go on, the rest stop.

    Example:
        >>> successive_halving({"a": 0.1, "b": 0.9, "c": 0.5}, 1)
        (['b'], ['a', 'c'])
    """
    alive = {tid: v for tid, v in recorded.items() if tid not in ended}
    top = rank_trials(alive)[:keep]
    return top, [tid for tid in alive if tid not in top]


@dataclass
class _Bracket:
    """The running state of one bracket (plain data; ``to_dict`` is JSON-able)."""

    plan: BracketPlan
    eta: int
    members: list[list[str]] = field(default_factory=list)
    recorded: list[dict[str, float]] = field(default_factory=list)
    level: int = 0
    closed: bool = False
    done: bool = False
    #: members of the current level neither recorded there nor ended (kept by HyperBand)
    waiting: int = 0

    def __post_init__(self) -> None:
        if not self.members:
            self.members = [[] for _ in self.plan.milestones]
            self.recorded = [{} for _ in self.plan.milestones]

    @property
    def sizes(self) -> tuple[int, ...]:
        """Rung sizes for the trials it actually has (the plan's when it was filled)."""
        return rung_sizes(len(self.members[0]), self.eta, self.plan.s)

    def finish(self) -> None:
        """Done: its members and levels never change again. Tuples of strings and a tuple of
        the recorded dicts (of floats) are left alone by Python's garbage collector, so a
        finished bracket is one scanned object, not one per level (a hundred thousand trials
        leave ~18,000 brackets behind)."""
        self.done = True
        self.members = cast(Any, tuple(tuple(m) for m in self.members))
        self.recorded = cast(Any, tuple(self.recorded))

    def to_dict(self) -> dict[str, Any]:
        return {"members": [list(m) for m in self.members], "level": self.level,
                "recorded": [encode_values(r) for r in self.recorded],
                "closed": self.closed, "done": self.done}

    @classmethod
    def from_dict(cls, plan: BracketPlan, eta: int, d: Mapping[str, Any]) -> _Bracket:
        b = cls(plan, eta, [list(m) for m in d["members"]],
                [decode_values(r) for r in d["recorded"]], int(d["level"]),
                bool(d["closed"]), bool(d["done"]))
        if b.done:
            b.finish()
        return b


class HyperBand(Scheduler):
    """Synchronous HyperBand: trials pause at each rung; a rung is decided once all are in.

    Brackets are filled in order (``s_max`` first); the next bracket's trials start as soon as
    the current one has all its trials, so brackets overlap in time. When a rung of a bracket is
    complete (every member paused at its milestone or ended), the top ``floor(n_i/eta)`` are
    resumed (:meth:`choose_trial_to_run` returns ``Resume``) and the rest are named by
    :meth:`trials_to_stop`. When the controller can start no more trials, the bracket being
    filled is closed with the trials it has (rung sizes ``floor(c/eta**i)``, at least 1) and
    later brackets are dropped. When every bracket of a round has all its trials and trials can
    still start, a new round of brackets (``s_max`` .. 0) begins, up to ``max_rounds`` rounds
    (unlimited when None). :meth:`is_finished` is True once every bracket is done and no round
    will start (the controller could start no more trials, or ``max_rounds`` were run).

    Args:
        max_t: The resource of the last rung of every bracket.
        grace_period: The smallest resource (the first rung of bracket ``s_max``).
        reduction_factor: ``eta``.
        max_rounds: Rounds of brackets to run at most; None: until the budget ends them.
        time_attr: The resource attribute of results.
        metric: The metric; the experiment's when None.
        mode: ``"min"`` or ``"max"``; the experiment's when None.
        seed: Seed of ``self.rng``.

    Example:
        >>> hb = HyperBand(max_t=9, reduction_factor=3)
        >>> [p.sizes for p in hb.plan]
        [(9, 3, 1), (5, 1), (3,)]
    """

    pauses_trials = True
    needs_checkpoints = True

    def __init__(self, max_t: float = 81, grace_period: float = 1, reduction_factor: int = 3, *,
                 max_rounds: int | None = None, time_attr: str = ITERATION,
                 metric: str | None = None, mode: str | None = None,
                 seed: int | None = None) -> None:
        super().__init__(metric=metric, mode=mode, time_attr=time_attr, seed=seed)
        self.max_rounds = None if max_rounds is None else check_int("max_rounds", max_rounds,
                                                                    low=1)
        self.max_t: float = check_number("max_t", max_t, low=0)
        self.grace_period = check_number("grace_period", grace_period, low=0)
        self.reduction_factor = check_int("reduction_factor", reduction_factor, low=2)
        if self.grace_period > self.max_t:
            raise ValueError(f"grace_period must be <= max_t, got grace_period={grace_period}, "
                             f"max_t={max_t}")
        self.plan = hyperband_plan(self.max_t, self.grace_period, self.reduction_factor)
        self._brackets = [_Bracket(p, self.reduction_factor) for p in self.plan]
        self._trial_bracket: dict[str, int] = {}
        self._trial_level: dict[str, int] = {}
        self._ended: set[str] = set()
        self._to_resume: list[str] = []
        self._to_stop: list[str] = []
        self._filling = 0
        self._rounds = 1  # rounds of brackets begun; self._brackets holds them all, in order
        self._no_more = False  # the controller can start no more trials: no round will begin
        self._first_not_done = 0  # every bracket before it is done

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "max_t": self.max_t, "grace_period": self.grace_period,
                "reduction_factor": self.reduction_factor, "max_rounds": self.max_rounds}

    # -- hooks -----------------------------------------------------------------------------
    def on_trial_add(self, trial: Trial) -> None:
        if trial.trial_id in self._trial_bracket:
            return
        j = self._bracket_index(trial.info.get("bracket"))
        b = self._brackets[j]
        b.members[0].append(trial.trial_id)
        if b.level == 0 and trial.trial_id not in self._ended:
            b.waiting += 1
        self._trial_bracket[trial.trial_id] = j
        self._trial_level[trial.trial_id] = 0
        trial.bracket = b.plan.s
        if len(b.members[0]) >= b.plan.sizes[0]:
            self._close(j)

    def _bracket_index(self, s: Any) -> int:
        # every bracket before ``_filling`` is closed: the first open one with plan ``s`` is
        # found from there (the one being filled, nearly always)
        for j in range(min(self._filling, len(self._brackets)), len(self._brackets)):
            b = self._brackets[j]
            if b.plan.s == s and not b.closed:
                return j
        return min(self._filling, len(self._brackets) - 1)

    def _close(self, j: int) -> None:
        self._brackets[j].closed = True
        if self._filling == j:
            self._filling = j + 1
        self._advance(j)

    def on_result(self, trial: Trial, result: Mapping[str, Any]) -> Decision:
        if trial.trial_id not in self._trial_bracket:
            self.on_trial_add(trial)
        j, i = self._trial_bracket[trial.trial_id], self._trial_level[trial.trial_id]
        b, t = self._brackets[j], self._time(result)
        milestone = b.plan.milestones[i]
        if t < milestone and t < self.max_t:
            return Decision.CONTINUE
        if trial.trial_id not in b.recorded[i]:
            self._record(trial, j, i, self._value(result))
            trial.rung = as_rung(milestone)
        final = i == len(b.plan.milestones) - 1 or t >= self.max_t
        if final:  # it ends now; do not wait for on_trial_complete
            self._mark_ended(trial.trial_id)
        self._advance(j)
        return Decision.STOP if final else Decision.PAUSE

    def _record(self, trial: Trial, j: int, i: int, value: float) -> None:
        """Record a rung value (BOHB extends this to feed its model)."""
        b = self._brackets[j]
        b.recorded[i][trial.trial_id] = value
        if i == b.level and trial.trial_id not in self._ended:
            b.waiting -= 1

    def on_trial_complete(self, trial: Trial, result: Mapping[str, Any] | None) -> None:
        self._end(trial)

    def on_trial_error(self, trial: Trial) -> None:
        self._end(trial)

    def _end(self, trial: Trial) -> None:
        self._mark_ended(trial.trial_id)
        if trial.trial_id in self._trial_bracket:
            self._advance(self._trial_bracket[trial.trial_id])

    def _mark_ended(self, tid: str) -> None:
        if tid in self._ended:
            return
        self._ended.add(tid)
        j = self._trial_bracket.get(tid)
        if j is not None:
            b = self._brackets[j]
            i = self._trial_level[tid]
            if i == b.level and tid not in b.recorded[i]:
                b.waiting -= 1

    def _count_waiting(self, b: _Bracket) -> int:
        i = b.level
        return sum(1 for t in b.members[i] if t not in b.recorded[i] and t not in self._ended)

    def _note_pause(self, trial: Trial) -> None:
        """Paused trials are resumed from the rung decisions (``_to_resume``)."""

    def _advance(self, j: int) -> None:
        """Decide the current rung of bracket ``j`` once it is complete."""
        b = self._brackets[j]
        while not b.done and b.closed:
            i = b.level
            if b.waiting > 0:  # a member is neither recorded at this level nor ended
                return
            if i == len(b.plan.milestones) - 1:
                b.finish()
                return
            top, rest = successive_halving(b.recorded[i], b.sizes[i + 1], self._ended)
            b.members[i + 1], b.level = top, i + 1
            b.waiting = self._count_waiting(b)
            for tid in top:
                self._trial_level[tid] = i + 1
            self._to_resume.extend(top)
            self._to_stop.extend(rest)

    def pause_at(self, trial: Trial) -> Number | None:
        j = self._trial_bracket.get(trial.trial_id)
        if j is None:  # not added: the controller calls on_trial_add first
            return None
        ms = self._brackets[j].plan.milestones
        i = self._trial_level[trial.trial_id]
        return ms[i] if i < len(ms) - 1 else None

    def choose_trial_to_run(self, trials: Mapping[str, Trial], can_start_new: bool) -> Suggestion | None:
        resume = self._next_resume(trials)
        if resume is not None:
            return resume
        if self._filling >= len(self._brackets):  # every bracket begun has all its trials
            if not can_start_new:
                self._no_more = True
            if self._no_more or not self._may_begin_round():
                return None
            self._begin_round()
        if can_start_new:
            return self._start_new(self._brackets[self._filling].plan.s)
        self._close_all_unfilled()
        return self._next_resume(trials)

    def _may_begin_round(self) -> bool:
        return self.max_rounds is None or self._rounds < self.max_rounds

    def _begin_round(self) -> None:
        """Append a new round of brackets, ``s_max`` first; the first one is filled next."""
        self._brackets.extend(_Bracket(p, self.reduction_factor) for p in self.plan)
        self._rounds += 1

    def _start_new(self, s: int) -> StartNew:
        return StartNew(info={"bracket": s})

    def _next_resume(self, trials: Mapping[str, Trial]) -> Resume | None:
        for tid in list(self._to_resume):
            trial = trials.get(tid)
            if trial is None:
                continue
            if trial.status == Status.PAUSED:
                self._to_resume.remove(tid)
                return Resume(tid)
            if trial.status in TERMINAL:
                self._to_resume.remove(tid)
        return None

    def _close_all_unfilled(self) -> None:
        """No more trials can start: close the bracket being filled, drop the later ones."""
        first = self._filling
        for j in range(first, len(self._brackets)):
            if j == first and self._brackets[j].members[0]:
                self._close(j)
            else:
                self._brackets[j].closed = True
                self._brackets[j].finish()
        self._filling = len(self._brackets)
        self._no_more = True

    def trials_to_stop(self, trials: Mapping[str, Trial]) -> list[str]:
        out, keep = [], []
        for tid in self._to_stop:
            trial = trials.get(tid)
            if trial is not None and trial.status == Status.PAUSED:
                out.append(tid)
            elif trial is None or trial.status not in TERMINAL:
                keep.append(tid)
        self._to_stop = keep
        return out

    def is_finished(self, trials: Mapping[str, Trial]) -> bool:
        while (self._first_not_done < len(self._brackets)
               and self._brackets[self._first_not_done].done):
            self._first_not_done += 1
        if self._first_not_done < len(self._brackets):
            return False
        return self._no_more or not self._may_begin_round()

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "brackets": [b.to_dict() for b in self._brackets],
                "trial_bracket": dict(self._trial_bracket), "trial_level": dict(self._trial_level),
                "ended": sorted(self._ended), "to_resume": list(self._to_resume),
                "to_stop": list(self._to_stop), "filling": self._filling,
                "rounds": self._rounds, "no_more": self._no_more}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._rounds = int(state.get("rounds", 1))
        self._no_more = bool(state.get("no_more", False))
        if len(state["brackets"]) != self._rounds * len(self.plan):
            raise ValueError(f"state: {len(state['brackets'])} brackets for {self._rounds} "
                             f"round(s) of {len(self.plan)}; the settings differ from the run's")
        self._brackets = [_Bracket.from_dict(self.plan[j % len(self.plan)], self.reduction_factor, d)
                          for j, d in enumerate(state["brackets"])]
        self._trial_bracket = {k: int(v) for k, v in state["trial_bracket"].items()}
        self._trial_level = {k: int(v) for k, v in state["trial_level"].items()}
        self._ended = set(state["ended"])
        self._to_resume = list(state["to_resume"])
        self._to_stop = list(state["to_stop"])
        self._filling = int(state["filling"])
        self._first_not_done = 0
        for b in self._brackets:
            b.waiting = self._count_waiting(b)
