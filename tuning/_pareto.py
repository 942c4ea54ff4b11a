"""Pure helpers for multi-objective ranking: dominance, non-dominated sorting, crowding distance,
the constrained rank order MO-ASHA uses, and the 2-D hypervolume.

Every helper takes plain sequences of points whose coordinates are *larger-is-better* (a
minimised metric is negated first, see :class:`tuning._objective.Objective`), so a unit test can
check each by hand.

Complexity, for ``n`` points with ``m`` objectives:

* :func:`non_dominated_sort`: ``O(n log n)`` for ``m <= 2`` (sort by the first objective, then
  a binary search over the fronts' last second-objective value, Jensen 2003); ``O(m n^2)``
  otherwise (Deb et al. 2002's fast non-dominated sort).
* :func:`crowding_distance`: ``O(m n log n)`` (one sort per objective).
* :func:`rank_order`: the two above, ``O(n log n)`` in 2-D; :func:`rank_position` (one
  point's place in it) the sort and one front's crowding distance.
* :func:`hypervolume_2d`: ``O(n log n)``.

Example:
    >>> non_dominated_sort([(1, 3), (2, 2), (3, 1), (1, 1), (0, 0)])
    [0, 0, 0, 1, 2]
    >>> rank_order([(1, 3), (2, 2), (3, 1), (1, 1)])
    [2, 0, 1, 3]
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "crowding_distance",
    "dominates",
    "front_indices",
    "hypervolume_2d",
    "non_dominated_sort",
    "rank_order",
    "rank_position",
]

Point = Sequence[float]


def dominates(a: Point, b: Point) -> bool:
    """Whether ``a`` Pareto-dominates ``b`` (larger is better): no worse in every objective
    and better in at least one.

    Example:
        >>> dominates((2, 2), (1, 2)), dominates((2, 1), (1, 2)), dominates((1, 1), (1, 1))
        (True, False, False)
    """
    better = False
    for x, y in zip(a, b, strict=True):
        if x < y:
            return False
        if x > y:
            better = True
    return better


def non_dominated_sort(points: Sequence[Point]) -> list[int]:
    """The front index of each point: 0 for the non-dominated ones, 1 for those dominated only
    by front 0, and so on. Equal points share a front. Points must be finite.

    Example:
        >>> non_dominated_sort([(0.9, -20.0), (0.8, -10.0), (0.7, -30.0), (0.9, -20.0)])
        [0, 0, 1, 0]
    """
    if not points:
        return []
    m = len(points[0])
    if any(len(p) != m for p in points):
        raise ValueError("non_dominated_sort: every point needs the same number of objectives")
    if m == 1:
        return _sort_1d(points)
    if m == 2:
        return _sort_2d(points)
    return _sort_general(points)


def _sort_1d(points: Sequence[Point]) -> list[int]:
    distinct = sorted({float(p[0]) for p in points}, reverse=True)
    where = {v: i for i, v in enumerate(distinct)}
    return [where[float(p[0])] for p in points]


def _sort_2d(points: Sequence[Point]) -> list[int]:
    """Points by the first objective (best first, ties by the second); each joins the first
    front whose last point does not dominate it. Fronts' last second-objective values never
    increase with the front index, so the front is found by binary search."""
    a = np.asarray(points, dtype=float)
    order = np.lexsort((-a[:, 1], -a[:, 0]))
    last_f2: list[float] = []  # negated, so that the list is ascending for bisect
    last: list[tuple[float, float]] = []
    out = [0] * len(points)
    for i, x, y in zip(order.tolist(), a[order, 0].tolist(), a[order, 1].tolist()):
        k = bisect.bisect_right(last_f2, -y)  # first front whose last f2 < p's f2
        if k > 0 and last[k - 1] == (x, y):  # an equal point is not dominated by it
            k -= 1
        if k == len(last):
            last.append((x, y))
            last_f2.append(-y)
        else:
            last[k] = (x, y)
            last_f2[k] = -y
        out[i] = k
    return out


def _sort_general(points: Sequence[Point]) -> list[int]:
    n = len(points)
    dominated_by: list[list[int]] = [[] for _ in range(n)]
    count = [0] * n
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j]):
                dominated_by[i].append(j)
                count[j] += 1
            elif dominates(points[j], points[i]):
                dominated_by[j].append(i)
                count[i] += 1
    out = [0] * n
    current = [i for i in range(n) if count[i] == 0]
    k = 0
    while current:
        nxt = []
        for i in current:
            out[i] = k
            for j in dominated_by[i]:
                count[j] -= 1
                if count[j] == 0:
                    nxt.append(j)
        current, k = nxt, k + 1
    return out


def crowding_distance(points: Sequence[Point]) -> list[float]:
    """NSGA-II's crowding distance of each point within one front: per objective, the gap
    between its two neighbours divided by the objective's range, summed; the points at either
    end of an objective get ``inf``. An objective whose values are all equal adds nothing.

    Example:
        >>> crowding_distance([(1, 3), (2, 2), (3, 1)])
        [inf, 2.0, inf]
        >>> [round(d, 3) for d in crowding_distance([(1, 4), (2, 3), (4, 1), (3, 2)])]
        [inf, 1.333, inf, 1.333]
    """
    if len(points) == 0:
        return []
    return _crowding(np.asarray(points, dtype=float)).tolist()


def _crowding(a: np.ndarray) -> np.ndarray:
    n = a.shape[0]
    if n <= _SMALL:
        return np.asarray(_crowding_small(a.tolist()))
    dist = np.zeros(n)
    for j in range(a.shape[1]):
        order = np.argsort(a[:, j], kind="stable")  # ties by index
        col = a[order, j]
        lo, hi = col[0], col[-1]
        if hi == lo:
            continue
        if n > 2:
            dist[order[1:-1]] += (col[2:] - col[:-2]) / (hi - lo)
        dist[order[0]] = dist[order[-1]] = math.inf
    return dist


#: fronts up to this size get the plain-Python crowding distance (numpy's call overhead
#: dominates below it); the same float operations in the same order either way
_SMALL = 24


def _crowding_small(pts: list[list[float]]) -> list[float]:
    n = len(pts)
    dist = [0.0] * n
    for j in range(len(pts[0])):
        order = sorted(range(n), key=lambda i: (pts[i][j], i))
        lo, hi = pts[order[0]][j], pts[order[-1]][j]
        if hi == lo:
            continue
        for a in range(1, n - 1):
            dist[order[a]] += (pts[order[a + 1]][j] - pts[order[a - 1]][j]) / (hi - lo)
        dist[order[0]] = dist[order[-1]] = math.inf
    return dist


def rank_position(points: Sequence[Point], violations: Sequence[float], index: int) -> int:
    """Where point ``index`` stands in :func:`rank_order` (0: first), computing only what that
    needs: the fronts of the feasible points and the crowding distance of its own front.

    Example:
        >>> pts = [(1, 3), (2, 2), (3, 1), (1, 1)]
        >>> [rank_position(pts, [0, 0, 0, 0], i) for i in range(4)]
        [1, 2, 0, 3]
    """
    a = np.asarray(points, dtype=float).reshape(len(points), -1)
    viol = np.asarray(violations, dtype=float)
    if np.isnan(a[index]).any() or viol[index] > 0:
        return rank_order(points, violations).index(index)
    feasible = np.flatnonzero(~np.isnan(a).any(axis=1) & ~(viol > 0))
    fronts = np.asarray(non_dominated_sort(a[feasible].tolist()))
    me = int(np.searchsorted(feasible, index))
    ahead = int((fronts < fronts[me]).sum())
    members = feasible[fronts == fronts[me]]
    if members.size == 1:
        return ahead
    crowd = _crowding(a[members])
    order = members[np.lexsort((members, -a[members, 0], -crowd))]
    return ahead + int(np.flatnonzero(order == index)[0])


def rank_order(points: Sequence[Point], violations: Sequence[float] | None = None) -> list[int]:
    """Indices of ``points``, best first, by Deb's constrained domination and NSGA-II's
    crowding tie-break: feasible points (violation 0) by front, within a front by larger
    crowding distance, then by the first objective (larger first), then by index (earlier
    first); then infeasible points by smaller total
    violation, then index; points with a NaN coordinate last, by index.

    ``violations[i] > 0`` marks point ``i`` infeasible (default: all feasible).

    Example:
        >>> rank_order([(1, 1), (3, 3), (2, 2), (9, 9)], violations=[0, 0, 0, 5])
        [1, 2, 0, 3]
        >>> rank_order([(0, 0), (float("nan"), 1), (1, 0)])
        [2, 0, 1]
    """
    n = len(points)
    if n == 0:
        return []
    a = np.asarray(points, dtype=float).reshape(n, -1)
    viol = np.zeros(n) if violations is None else np.asarray(violations, dtype=float)
    if viol.shape != (n,):
        raise ValueError("rank_order: one violation per point")
    nan = np.isnan(a).any(axis=1)
    bad = ~nan & (viol > 0)
    infeasible = np.flatnonzero(bad)
    infeasible = infeasible[np.lexsort((infeasible, viol[infeasible]))]
    feasible = np.flatnonzero(~nan & ~bad)
    out: list[int] = []
    if feasible.size:
        fronts = np.asarray(non_dominated_sort(a[feasible].tolist()))
        by_front = np.argsort(fronts, kind="stable")
        starts = np.flatnonzero(np.diff(fronts[by_front], prepend=-1))
        for members in np.split(feasible[by_front], starts[1:]):
            crowd = _crowding(a[members])
            out.extend(members[np.lexsort((members, -a[members, 0], -crowd))].tolist())
    return out + infeasible.tolist() + np.flatnonzero(nan).tolist()


def front_indices(points: Sequence[Point], feasible: Sequence[bool] | None = None) -> list[int]:
    """Indices of the non-dominated points among the feasible, finite ones, in input order.

    Example:
        >>> front_indices([(1, 3), (2, 2), (1, 1), (5, 5)], feasible=[True, True, True, False])
        [0, 1]
    """
    keep = [i for i in range(len(points))
            if (feasible is None or feasible[i])
            and not any(math.isnan(float(x)) for x in points[i])]
    fronts = non_dominated_sort([points[i] for i in keep])
    return [i for i, f in zip(keep, fronts) if f == 0]


def hypervolume_2d(points: Sequence[Point], reference: Point) -> float:
    """The area dominated by ``points`` (larger is better) and bounded below by ``reference``:
    the 2-D hypervolume indicator. Points not strictly better than the reference in both
    objectives add nothing.

    Example:
        >>> hypervolume_2d([(1, 3), (2, 2), (3, 1)], (0, 0))
        6.0
        >>> hypervolume_2d([(2, 2), (1, 1)], (0, 0)), hypervolume_2d([], (0, 0))
        (4.0, 0.0)
    """
    rx, ry = float(reference[0]), float(reference[1])
    pts = sorted(((float(x), float(y)) for x, y in points if x > rx and y > ry),
                 key=lambda p: (-p[0], -p[1]))
    area, top = 0.0, ry
    for x, y in pts:  # best first objective first; each adds the strip above the last height
        if y > top:
            area += (x - rx) * (y - top)
            top = y
    return area
