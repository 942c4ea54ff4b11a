"""MO-ASHA: multi-objective asynchronous successive halving (Schmucker et al. 2021,
"Multi-objective multi-fidelity hyperparameter optimization with application to fairness";
Salinas et al. 2021 for the non-dominated ranking in ASHA's rungs).

ASHA's rungs and milestones, with one change: a rung ranks its trials by Deb's *constrained*
non-dominated sorting instead of by one value. The order inside a rung
(:func:`tuning._pareto.rank_order`):

1. feasible trials (every constraint met) by Pareto front, the non-dominated ones first;
2. inside a front by NSGA-II's crowding distance, larger first (the ends of each objective
   first), ties by the first metric (better first, as Syne Tune prefers its first objective),
   then by recording order. This is the tie-break used here; Syne Tune's MOASHA uses the
   epsilon-net of Salinas et al. instead;
3. then infeasible trials, by total constraint violation, smallest first;
4. then trials whose metrics are not numbers (NaN), by recording order.

Both ASHA variants:

* ``"stop"``: at a milestone a trial goes on when it is feasible and ranks in the top
  ``ceil(n / rf)`` of the rung's ``n`` trials (itself included), as Syne Tune's MOASHA decides
  (it stops a trial whose rank fraction exceeds ``1 / rf``). The first trial at a rung goes on.
* ``"promote"``: trials pause at milestones; a free worker resumes the best-ranked paused,
  feasible trial in the top ``floor(n / rf)`` of its rung (highest rung first), else starts a
  new trial.

Infeasible trials therefore never go on past a milestone and are never promoted.

Cost: a stop decision ranks the rung with the new trial, ``O(n log n)`` for two objectives
(``O(m n^2)`` for three or more); the promote variant ranks a rung once per change (cached)
and then scans at most ``floor(n / rf)`` trials per free slot.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from tuning._objective import Objective
from tuning._pareto import rank_order, rank_position
from tuning._trial import TERMINAL, Status, Trial
from tuning.schedulers._asha import ASHA
from tuning.schedulers._base import Decision, Scheduler
from tuning.schedulers._common import as_rung, decode_float, encode_float

__all__ = ["MOASHA", "moasha_continues", "moasha_promotable"]

Point = tuple[float, ...]


def _usable(point: Point, violation: float) -> bool:
    return violation == 0 and not any(math.isnan(x) for x in point)


def moasha_continues(point: Point, violation: float, recorded: Iterable[tuple[Point, float]],
                     reduction_factor: int) -> bool:
    """Whether a trial at ``point`` (larger is better in each objective) with constraint
    ``violation`` goes on past a milestone (stop variant): it is feasible and ranks in the top
    ``ceil(n / rf)`` of the rung's ``n`` trials, itself included, by :func:`rank_order`.

    Example:
        >>> rung = [((0.9, -30.0), 0.0), ((0.5, -5.0), 0.0)]
        >>> moasha_continues((0.7, -10.0), 0.0, rung, 3)   # front 0, but crowding ranks it last
        False
        >>> moasha_continues((0.95, -4.0), 0.0, rung, 3)   # dominates both
        True
        >>> moasha_continues((0.99, -1.0), 2.0, rung, 3)   # infeasible
        False
    """
    if not _usable(point, violation):
        return False
    rec = list(recorded)
    points = [p for p, _ in rec] + [point]
    where = rank_position(points, [v for _, v in rec] + [violation], len(rec))
    return where < math.ceil(len(points) / reduction_factor)


def moasha_promotable(rung: Mapping[str, tuple[Point, float]], promoted: Iterable[str],
                      reduction_factor: int) -> list[str]:
    """Feasible trials of ``rung`` in its top ``floor(n / rf)`` by :func:`rank_order`, not yet
    promoted, best first (the promote variant's candidates).

    Example:
        >>> rung = {"a": ((0.9, -30.0), 0.0), "b": ((0.5, -5.0), 0.0), "c": ((0.4, -50.0), 0.0),
        ...         "d": ((0.99, -1.0), 3.0), "e": ((0.3, -60.0), 0.0), "f": ((0.2, -70.0), 0.0)}
        >>> moasha_promotable(rung, [], 3)
        ['a', 'b']
        >>> moasha_promotable(rung, ["a"], 3)
        ['b']
    """
    tids = list(rung)
    order = rank_order([rung[t][0] for t in tids], [rung[t][1] for t in tids])
    done = set(promoted)
    top = order[: len(tids) // reduction_factor]
    return [tids[i] for i in top if tids[i] not in done and _usable(*rung[tids[i]])]


class _MORung:
    """One milestone's recorded points (larger is better) and constraint violations.

    ``values``: trial id -> (point, violation), in recording order: the state that is saved.
    The rank order is cached and recomputed after each new record.
    """

    def __init__(self) -> None:
        self.values: dict[str, tuple[Point, float]] = {}
        self.tids: list[str] = []
        self.promoted: set[str] = set()
        self._order: list[int] | None = None

    def record(self, tid: str, point: Point, violation: float, promoted: bool = False) -> None:
        self.values[tid] = (point, violation)
        self.tids.append(tid)
        if promoted:
            self.promoted.add(tid)
        self._order = None

    def continues(self, point: Point, violation: float, reduction_factor: int) -> bool:
        """:func:`moasha_continues` against this rung's records."""
        return moasha_continues(point, violation, self.values.values(), reduction_factor)

    def order(self) -> list[int]:
        if self._order is None:
            self._order = rank_order([p for p, _ in self.values.values()],
                                     [v for _, v in self.values.values()])
        return self._order

    def promote(self, reduction_factor: int, trials: Mapping[str, Trial]) -> str | None:
        """The best PAUSED trial of :func:`moasha_promotable`'s list, marked promoted."""
        top = len(self.tids) // reduction_factor
        for i in self.order()[:top]:
            tid = self.tids[i]
            if tid in self.promoted or not _usable(*self.values[tid]):
                continue
            trial = trials.get(tid)
            if trial is not None and trial.status == Status.PAUSED:
                self.promoted.add(tid)
                return tid
            if trial is not None and trial.status in TERMINAL:
                self.promoted.add(tid)  # ended: never resumed; it keeps its place in the top
        return None

    def to_dict(self) -> dict[str, Any]:
        return {tid: [[encode_float(x) for x in p], encode_float(v)]
                for tid, (p, v) in self.values.items()}

    @classmethod
    def restore(cls, values: Mapping[str, Any], promoted: Iterable[str]) -> _MORung:
        rung = cls()
        for tid, (p, v) in values.items():
            rung.record(tid, tuple(decode_float(x) for x in p), decode_float(v))
        rung.promoted = set(promoted)
        return rung


class MOASHA(ASHA):
    """ASHA whose rungs rank trials by constrained non-dominated sorting with a crowding
    distance tie-break (see the module docstring); several metrics and constraints allowed.

    Takes ASHA's arguments; ``metric``/``mode`` may be lists (the experiment's when None).
    With one metric and no constraint it ranks by that metric (a rank-based ASHA).

    Example:
        >>> from tuning._trial import Trial
        >>> s = MOASHA(max_t=9, reduction_factor=3)
        >>> s.set_objective(["acc", "ms"], ["max", "min"], constraints={"ms": {"max": 20}})
        >>> trials = [Trial(f"t{i}", {}) for i in range(3)]
        >>> for t in trials:
        ...     s.on_trial_add(t)
        >>> [s.on_result(t, {"training_iteration": 1, "acc": a, "ms": ms}).value
        ...  for t, a, ms in zip(trials, [0.5, 0.9, 0.95], [5.0, 10.0, 30.0])]
        ['CONTINUE', 'CONTINUE', 'STOP']
    """

    multi_objective = True

    def _reset(self) -> None:
        super()._reset()
        self._rung_state = [[_MORung() for _ in ms] for ms in self._milestones]  # type: ignore[misc]

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "type": "moasha", "tie_break": "crowding_distance"}

    def _objective(self) -> Objective:
        if self.objective is None:  # used without a controller: its own metric and mode
            if self.metric is None or self.mode is None:
                raise ValueError("MOASHA needs metric and mode (set_objective, or pass them)")
            self.objective = Objective.build(self.metric, self.mode)
        return self.objective

    def _point(self, result: Mapping[str, Any]) -> tuple[Point, float]:
        obj = self._objective()
        return obj.signed(result), obj.violation(result)

    def _on_result_stop(self, trial: Trial, result: Mapping[str, Any]) -> Decision:
        s, t = self._bracket_of(trial), self._time(result)
        point, violation = self._point(result)
        ms, rungs = self._milestones[s], self._rung_state[s]
        for k in reversed(range(len(ms))):  # the highest milestone passed decides (Ray Tune)
            if t < ms[k]:
                continue
            rung: _MORung = rungs[k]  # type: ignore[assignment]
            if trial.trial_id in rung.values:
                break
            goes_on = rung.continues(point, violation, self.reduction_factor)
            rung.record(trial.trial_id, point, violation)
            trial.rung = as_rung(ms[k])
            if not goes_on:
                return Decision.STOP
            break
        return Decision.STOP if t >= self.max_t else Decision.CONTINUE

    def _on_result_promote(self, trial: Trial, result: Mapping[str, Any]) -> Decision:
        s, t = self._bracket_of(trial), self._time(result)
        k = self._target_rung(trial)
        reached = False
        if k is not None and t >= self._milestones[s][k]:
            reached = True
            rung: _MORung = self._rung_state[s][k]  # type: ignore[assignment]
            rung.record(trial.trial_id, *self._point(result))
            trial.rung = as_rung(self._milestones[s][k])
        if t >= self.max_t:
            return Decision.STOP
        return Decision.PAUSE if reached else Decision.CONTINUE

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """ASHA's state, each rung's records being ``trial id -> [point, violation]``."""
        return {**Scheduler.state_dict(self), "n_added": self._n_added,
                "trial_bracket": dict(self._trial_bracket),
                "rungs": [[r.to_dict() for r in rungs]  # type: ignore[attr-defined]
                          for rungs in self._rung_state],
                "promoted": [[list(p) for p in ps] for ps in self._promoted]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        base = {**state, "rungs": [[{} for _ in rungs] for rungs in state["rungs"]]}
        super().load_state_dict(base)
        self._rung_state = [[_MORung.restore(r, p) for r, p in zip(rungs, ps)]  # type: ignore[misc]
                            for rungs, ps in zip(state["rungs"], self._promoted)]
