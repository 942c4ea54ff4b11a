"""ASHA: asynchronous successive halving (Li et al. 2018, arXiv 1810.05934).

Two variants:

* ``"stop"`` (Ray Tune's ``AsyncHyperBandScheduler``): trials run on; at each milestone a trial
  goes on only if its value is not below the ``(1 - 1/rf)`` percentile of the values recorded
  at that milestone before it.
* ``"promote"`` (the paper's Algorithm 2): trials pause at each milestone; a free worker resumes
  the best paused trial that is in the top ``1/rf`` of its rung, else starts a new trial.

The pure helpers (:func:`asha_cutoff`, :func:`asha_continues`, :func:`rank_trials`,
:func:`promotable`) take plain data, so each decision can be checked by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from sortedcontainers import SortedList

from tuning._trial import ITERATION, TERMINAL, Status, Trial
from tuning.schedulers._base import (
    Decision,
    DecisionPoints,
    Resume,
    Scheduler,
    StartNew,
    Suggestion,
)
from tuning.schedulers._common import (
    Number,
    as_rung,
    check_choice,
    check_int,
    check_number,
    geometric_milestones,
    pack_values,
    unpack_values,
)

__all__ = ["ASHA", "asha_continues", "asha_cutoff", "percentile_of_sorted", "promotable",
           "rank_trials"]

VARIANTS = ("stop", "promote")


def asha_cutoff(recorded: Iterable[float], reduction_factor: int) -> float | None:
    """The value a trial must reach to go on: the ``(1 - 1/rf) * 100`` percentile (Ray Tune).

    NaN values are ignored; ``None`` when there is no finite value yet (the trial goes on).

    Example:
        >>> round(asha_cutoff([0.5, 0.9], 3), 4)  # 0.5 + (2/3) * (0.9 - 0.5)
        0.7667
        >>> asha_cutoff([], 3) is None
        True
    """
    values = np.asarray([v for v in recorded if not math.isnan(v)], dtype=float)
    if values.size == 0:
        return None
    return float(np.percentile(values, (1 - 1 / reduction_factor) * 100))


def percentile_of_sorted(at: Callable[[int], float], n: int, q: float) -> float:
    """``np.percentile(a, q)`` (method ``"linear"``) of a sorted ``a`` of ``n > 0`` values, read
    through ``at(i) = a[i]``: two order statistics, the same float operations as numpy.

    Example:
        >>> a = [0.1, 0.5, 0.9]
        >>> percentile_of_sorted(a.__getitem__, 3, 200 / 3) == float(np.percentile(a, 200 / 3))
        True
    """
    vi = (n - 1) * (q / 100)
    if vi >= n - 1:  # numpy takes the last value, with the weight measured from index -1
        lo = hi = n - 1
        gamma = vi + 1
    else:
        lo = math.floor(vi)
        hi, gamma = lo + 1, vi - lo
    a, b = at(lo), at(hi)
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


def asha_continues(value: float, recorded: Iterable[float], reduction_factor: int) -> bool:
    """Whether a trial with ``value`` (larger is better) goes on past a milestone (stop variant).

    ``recorded`` are the values recorded at the milestone before this one. NaN never goes on.

    Example:
        >>> asha_continues(0.1, [0.5, 0.9], 3)
        False
        >>> asha_continues(0.9, [0.5], 3)
        True
    """
    if math.isnan(value):
        return False
    cutoff = asha_cutoff(recorded, reduction_factor)
    return cutoff is None or value >= cutoff


def rank_trials(values: Mapping[str, float]) -> list[str]:
    """Trial ids, best (largest) value first; NaN left out; ties keep the recording order.

    Example:
        >>> rank_trials({"a": 0.5, "b": float("nan"), "c": 0.9})
        ['c', 'a']
    """
    finite = [(tid, v) for tid, v in values.items() if not math.isnan(v)]
    return [tid for tid, _ in sorted(finite, key=lambda item: -item[1])]


def promotable(rung: Mapping[str, float], promoted: Iterable[str], reduction_factor: int) -> list[str]:
    """Trials of ``rung`` in its top ``floor(n / rf)`` not yet promoted, best first (Algorithm 2).

    Example:
        >>> promotable({"a": 0.5, "b": 0.9, "c": 0.1}, [], 3)
        ['b']
        >>> promotable({"a": 0.5, "b": 0.9, "c": 0.1}, ["b"], 3)
        []
    """
    done = set(promoted)
    top = rank_trials(rung)[: len(rung) // reduction_factor]
    return [tid for tid in top if tid not in done]


class _Rung:
    """One milestone's recorded values, kept sorted for O(log n) cutoffs and promotions.

    ``values``: trial id -> value (larger is better, NaN kept) in recording order, the state
    that is saved. ``ranked``: the finite values negated, best first: plain floats for the stop
    variant, which only reads a cutoff from them; ``(-value, seq)`` with ``promotes``, ties in
    recording order (``rank_trials``'s order). ``candidates`` (``promotes`` only): the ranked
    keys not promoted yet and not seen ended.
    """

    def __init__(self, promotes: bool = False) -> None:
        self.promotes = promotes
        self.values: dict[str, float] = {}
        self.ranked: SortedList = SortedList()
        self.candidates: SortedList = SortedList()
        self.tids: list[str] = []

    def record(self, tid: str, value: float, promoted: bool = False) -> None:
        self.values[tid] = value
        if math.isnan(value):
            if self.promotes:
                self.tids.append(tid)
            return
        if not self.promotes:
            self.ranked.add(-value)
            return
        key = (-value, len(self.tids))
        self.tids.append(tid)
        self.ranked.add(key)
        if not promoted:
            self.candidates.add(key)

    def cutoff(self, reduction_factor: int) -> float | None:
        """:func:`asha_cutoff` of the recorded values, in O(log n)."""
        n = len(self.ranked)
        if n == 0:
            return None
        ranked = self.ranked
        at = (lambda i: -ranked[n - 1 - i][0]) if self.promotes else (lambda i: -ranked[n - 1 - i])
        return percentile_of_sorted(at, n, (1 - 1 / reduction_factor) * 100)

    def promote(self, reduction_factor: int, trials: Mapping[str, Trial]) -> str | None:
        """The best PAUSED trial of :func:`promotable`'s list, taken out of the candidates."""
        top = len(self.values) // reduction_factor
        i = 0
        while i < len(self.candidates):
            key = self.candidates[i]
            if self.ranked.bisect_left(key) >= top:
                return None
            tid = self.tids[key[1]]
            trial = trials.get(tid)
            if trial is not None and trial.status == Status.PAUSED:
                del self.candidates[i]
                return tid
            if trial is not None and trial.status in TERMINAL:
                del self.candidates[i]  # ended: never resumed; it keeps its place in the top
            else:
                i += 1
        return None

    @classmethod
    def restore(cls, values: Mapping[str, float], promoted: Iterable[str],
                promotes: bool = False) -> _Rung:
        rung, done = cls(promotes), set(promoted)
        for tid, v in values.items():
            rung.record(tid, v, promoted=tid in done)
        return rung


class ASHA(Scheduler):
    """Asynchronous successive halving, stopping (Ray Tune) or promoting (the ASHA paper).

    Milestones are ``grace_period * reduction_factor**k`` up to ``max_t`` (``max_t=9,
    grace_period=1, reduction_factor=3``: 1, 3, 9). With ``brackets > 1``, bracket ``s`` starts
    at ``grace_period * reduction_factor**s``; trials are assigned to brackets round robin in
    the order they are added (trial ``i`` goes to bracket ``i % brackets``), which is
    deterministic and replays identically on resume.

    Args:
        max_t: The most resource a trial gets; at ``max_t`` it is stopped (finished).
        grace_period: The first milestone (bracket 0).
        reduction_factor: Keep the top ``1/reduction_factor`` at each milestone.
        brackets: The number of brackets.
        variant: ``"stop"`` (trials run on, bad ones stopped) or ``"promote"`` (trials pause).
        time_attr: The resource attribute of results.
        metric: The metric; the experiment's when None.
        mode: ``"min"`` or ``"max"``; the experiment's when None.
        seed: Seed of ``self.rng`` (unused by ASHA's decisions, kept in its state).

    Example:
        >>> from tuning._trial import Trial
        >>> s = ASHA(max_t=9, reduction_factor=3, metric="acc", mode="max")
        >>> trials = [Trial(f"t{i}", {}) for i in range(3)]
        >>> for t in trials:
        ...     s.on_trial_add(t)
        >>> [s.on_result(t, {"training_iteration": 1, "acc": v}).value
        ...  for t, v in zip(trials, [0.5, 0.9, 0.1])]
        ['CONTINUE', 'CONTINUE', 'STOP']
    """

    def __init__(self, max_t: float = 100, grace_period: float = 1, reduction_factor: int = 3,
                 brackets: int = 1, variant: str = "stop", *, time_attr: str = ITERATION,
                 metric: str | None = None, mode: str | None = None,
                 seed: int | None = None) -> None:
        super().__init__(metric=metric, mode=mode, time_attr=time_attr, seed=seed)
        self.max_t: float = check_number("max_t", max_t, low=0)
        self.grace_period = check_number("grace_period", grace_period, low=0)
        self.reduction_factor = check_int("reduction_factor", reduction_factor, low=2)
        self.brackets = check_int("brackets", brackets, low=1)
        self.variant = check_choice("variant", variant, VARIANTS)
        if self.grace_period > self.max_t:
            raise ValueError(f"grace_period must be <= max_t, got grace_period={grace_period}, "
                             f"max_t={max_t}")
        n = len(geometric_milestones(self.grace_period, self.reduction_factor, self.max_t))
        if self.brackets > n:
            raise ValueError(f"brackets must be <= {n} (the number of milestones for max_t={max_t}, "
                             f"grace_period={grace_period}, reduction_factor={reduction_factor}), "
                             f"got {brackets}")
        self.pauses_trials = self.variant == "promote"
        self.needs_checkpoints = self.variant == "promote"
        self._milestones = [self._bracket_milestones(s) for s in range(self.brackets)]
        self._reset()

    def _bracket_milestones(self, s: int) -> list[Number]:
        first = self.grace_period * self.reduction_factor ** s
        return geometric_milestones(first, self.reduction_factor, self.max_t)

    def _reset(self) -> None:
        self._n_added = 0
        self._trial_bracket: dict[str, int] = {}
        promotes = self.variant == "promote"
        self._rung_state: list[list[_Rung]] = [[_Rung(promotes) for _ in ms]
                                               for ms in self._milestones]
        self._promoted: list[list[list[str]]] = [[[] for _ in ms] for ms in self._milestones]
        self._promotion_order = sorted(
            ((m, s, k) for s, ms in enumerate(self._milestones) for k, m in enumerate(ms)
             if m < self.max_t), key=lambda x: (-x[0], x[1]))

    @property
    def _rungs(self) -> list[list[dict[str, float]]]:
        """Each bracket's rungs as trial id -> value (recording order)."""
        return [[r.values for r in rungs] for rungs in self._rung_state]

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "max_t": self.max_t, "grace_period": self.grace_period,
                "reduction_factor": self.reduction_factor, "brackets": self.brackets,
                "variant": self.variant}

    def milestones(self, bracket: int = 0) -> list[Number]:
        """The milestones of ``bracket`` (the last may equal ``max_t``)."""
        return list(self._milestones[bracket])

    # -- hooks -----------------------------------------------------------------------------
    def on_trial_add(self, trial: Trial) -> None:
        if trial.trial_id in self._trial_bracket:
            return
        s = self._n_added % self.brackets
        self._n_added += 1
        self._trial_bracket[trial.trial_id] = s
        trial.bracket = s

    def _bracket_of(self, trial: Trial) -> int:
        s = self._trial_bracket.get(trial.trial_id)
        if s is not None:
            return s
        if self.brackets == 1:  # restored from a snapshot, which keeps no map for one bracket
            return 0
        self.on_trial_add(trial)
        return self._trial_bracket[trial.trial_id]

    def on_result(self, trial: Trial, result: Mapping[str, Any]) -> Decision:
        if self.variant == "promote":
            return self._on_result_promote(trial, result)
        return self._on_result_stop(trial, result)

    def _on_result_stop(self, trial: Trial, result: Mapping[str, Any]) -> Decision:
        s, t, v = self._bracket_of(trial), self._time(result), self._value(result)
        ms, rungs = self._milestones[s], self._rung_state[s]
        for k in reversed(range(len(ms))):  # the highest milestone passed decides (Ray Tune)
            if t < ms[k]:
                continue
            if trial.trial_id in rungs[k].values:
                break
            cutoff = None if math.isnan(v) else rungs[k].cutoff(self.reduction_factor)
            goes_on = not math.isnan(v) and (cutoff is None or v >= cutoff)  # asha_continues
            rungs[k].record(trial.trial_id, v)
            trial.rung = as_rung(ms[k])
            if not goes_on:
                return Decision.STOP
            break
        return Decision.STOP if t >= self.max_t else Decision.CONTINUE

    def _target_rung(self, trial: Trial) -> int | None:
        """The index of the next milestone at which the trial records a value (promote)."""
        s = self._bracket_of(trial)
        for k, rung in enumerate(self._rung_state[s]):
            if trial.trial_id not in rung.values:
                return k
        return None

    def _on_result_promote(self, trial: Trial, result: Mapping[str, Any]) -> Decision:
        s, t = self._bracket_of(trial), self._time(result)
        k = self._target_rung(trial)
        reached = False
        if k is not None and t >= self._milestones[s][k]:
            reached = True
            self._rung_state[s][k].record(trial.trial_id, self._value(result))
            trial.rung = as_rung(self._milestones[s][k])
        if t >= self.max_t:
            return Decision.STOP
        return Decision.PAUSE if reached else Decision.CONTINUE

    def pause_at(self, trial: Trial) -> Number | None:
        if self.variant != "promote":
            return None
        k = self._target_rung(trial)
        if k is None:
            return None
        m = self._milestones[self._bracket_of(trial)][k]
        return as_rung(m) if m < self.max_t else None

    def decision_points(self, trial: Trial) -> DecisionPoints:
        """The stop variant decides at each milestone of the trial's bracket below ``max_t``
        (at ``max_t`` the segment ends by itself); the promote variant pauses there instead."""
        if self.variant != "stop":
            return DecisionPoints()
        ms = self._milestones[self._bracket_of(trial)]
        return DecisionPoints(at=tuple(float(m) for m in ms if m < self.max_t))

    def choose_trial_to_run(self, trials: Mapping[str, Trial], can_start_new: bool) -> Suggestion | None:
        if self.variant == "stop":
            return super().choose_trial_to_run(trials, can_start_new)
        promoted = self._promotion(trials)
        if promoted is not None:
            return promoted
        return StartNew() if can_start_new else None

    def _promotion(self, trials: Mapping[str, Trial]) -> Resume | None:
        """Scan rungs from the highest milestone down; resume the best promotable paused trial
        (:func:`promotable`'s first PAUSED one), O(log n) per rung amortized."""
        for _, s, k in self._promotion_order:
            tid = self._rung_state[s][k].promote(self.reduction_factor, trials)
            if tid is not None:
                self._promoted[s][k].append(tid)
                return Resume(tid)
        return None

    def _note_pause(self, trial: Trial) -> None:
        """The promote variant picks paused trials from its rungs, not in pause order."""

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # with one bracket every trial is in bracket 0: no map (a quarter of a snapshot)
        return {**super().state_dict(), "n_added": self._n_added,
                "trial_bracket": dict(self._trial_bracket) if self.brackets > 1 else {},
                "rungs": [[pack_values(r) for r in rungs] for rungs in self._rungs],
                "promoted": [[list(p) for p in ps] for ps in self._promoted]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._n_added = int(state["n_added"])
        self._trial_bracket = {k: int(v) for k, v in state["trial_bracket"].items()}
        self._promoted = [[list(p) for p in ps] for ps in state["promoted"]]
        promotes = self.variant == "promote"
        self._rung_state = [[_Rung.restore(unpack_values(r), p, promotes)
                             for r, p in zip(rungs, ps)]
                            for rungs, ps in zip(state["rungs"], self._promoted)]

