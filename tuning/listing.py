"""One page of an experiment's trials, best first: what ``rungflow ls <run>`` prints.

The journal is replayed in one streamed pass (:func:`tuning.experiment.replay`: a trial is
its last result and a few numbers, never its history); the page is then chosen with a
bounded heap (``page * limit`` trials, not a sort of all of them) and only its rows are
built.

Example:
    >>> from tuning._trial import Trial
    >>> ts = [Trial.with_results(f"t{i}", {}, [{"training_iteration": 1, "acc": i / 10}])
    ...       for i in range(5)]
    >>> pg = trial_page(ts, "acc", "max", limit=2, page=2)
    >>> pg.total, [r["trial_id"] for r in pg.rows], pg.first, pg.pages
    (5, ['t2', 't1'], 3, 3)
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tuning._trial import Status, Trial
from tuning.results import trial_row

__all__ = ["SORTS", "TrialPage", "trial_page"]

#: how a page is ordered: ``best`` (the metric's last value, best first; trials without one
#: last) or ``trial`` (by trial id)
SORTS = ("best", "trial")


@dataclass
class TrialPage:
    """Rows ``first`` to ``first + len(rows) - 1`` (1-based) of ``total`` matching trials."""

    rows: list[dict[str, Any]]
    total: int
    page: int
    limit: int

    @property
    def first(self) -> int:
        return (self.page - 1) * self.limit + 1 if self.limit else 1

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.limit)) if self.limit else 1


def trial_page(trials: Iterable[Trial], metric: str, mode: str, limit: int = 50, page: int = 1,
               statuses: Iterable[str] | None = None, sort: str = "best") -> TrialPage:
    """Page ``page`` (1-based) of ``limit`` trials (``limit=0``: all of them), of those whose
    status is in ``statuses`` (any when None), ordered by ``sort`` (see :data:`SORTS`)."""
    _check(limit, page, sort)
    wanted = None if statuses is None else {_status(s) for s in statuses}
    chosen = [t for t in trials if wanted is None or t.status in wanted]
    key = _key(metric, mode) if sort == "best" else _by_id
    if limit:
        top = heapq.nsmallest(page * limit, chosen, key=key)[(page - 1) * limit:]
    else:
        top = sorted(chosen, key=key)
    return TrialPage([trial_row(t, metric, mode) for t in top], len(chosen), page, limit)


def _key(metric: str, mode: str) -> Callable[[Trial], tuple[Any, ...]]:
    sign = -1.0 if mode == "max" else 1.0

    def key(t: Trial) -> tuple[Any, ...]:
        v = t.last_value(metric)
        return (v is None, sign * v if v is not None else 0.0, _by_id(t))

    return key


def _by_id(t: Trial) -> tuple[int, str]:
    return (len(t.trial_id), t.trial_id)  # trial-999 before trial-1000


def _status(s: str) -> Status:
    try:
        return Status(s.upper())
    except ValueError:
        raise ValueError(f"--status: {s!r} is not a trial status; one of "
                         + ", ".join(x.value for x in Status)) from None


def _check(limit: int, page: int, sort: str) -> None:
    if not isinstance(limit, int) or limit < 0:
        raise ValueError(f"--limit: {limit!r} is not allowed; it must be 0 (all) or more")
    if not isinstance(page, int) or page < 1:
        raise ValueError(f"--page: {page!r} is not allowed; pages start at 1")
    if sort not in SORTS:
        raise ValueError(f"--sort: {sort!r} is not one of {', '.join(SORTS)}")
