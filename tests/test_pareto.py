"""The pure multi-objective helpers, checked by hand on small sets and against brute force."""

from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pytest

import tuning._objective
import tuning._pareto
from tuning._pareto import (
    _sort_general,
    crowding_distance,
    dominates,
    front_indices,
    hypervolume_2d,
    non_dominated_sort,
    rank_order,
)


@pytest.mark.parametrize("module", [tuning._pareto, tuning._objective])
def test_docstring_examples_run(module) -> None:
    assert doctest.testmod(module).failed == 0


def test_non_dominated_sort_by_hand() -> None:
    # accuracy (larger better) and -latency (larger better)
    pts = [(0.90, -20.0),  # a: best accuracy                     -> front 0
           (0.80, -10.0),  # b: a trade-off                       -> front 0
           (0.70, -5.0),   # c: fastest                           -> front 0
           (0.85, -25.0),  # d: dominated by a only               -> front 1
           (0.75, -12.0),  # e: dominated by b only               -> front 1
           (0.60, -30.0),  # f: dominated by a, b, c, d, e        -> front 2
           (0.80, -10.0)]  # g: equal to b: not dominated by it   -> front 0
    assert non_dominated_sort(pts) == [0, 0, 0, 1, 1, 2, 0]
    assert _sort_general(pts) == [0, 0, 0, 1, 1, 2, 0]


def test_non_dominated_sort_ties_in_one_objective() -> None:
    pts = [(1, 1), (1, 2), (2, 1), (2, 2), (0, 2)]
    # (2, 2) dominates all; (1, 2) and (2, 1) only by it; (1, 1) by those; (0, 2) by (1, 2)
    assert non_dominated_sort(pts) == [2, 1, 1, 0, 2]


def test_one_and_three_objectives() -> None:
    assert non_dominated_sort([(3,), (1,), (3,), (2,)]) == [0, 2, 0, 1]
    pts = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 0), (1, 1, 1), (-1, -1, -1)]
    assert non_dominated_sort(pts) == [1, 1, 1, 2, 0, 3]
    with pytest.raises(ValueError, match="same number of objectives"):
        non_dominated_sort([(1, 2), (1,)])


@pytest.mark.parametrize("seed", range(5))
def test_fast_2d_sort_agrees_with_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pts = [tuple(map(float, p)) for p in rng.integers(0, 6, size=(60, 2))]  # many ties
    assert non_dominated_sort(pts) == _brute_fronts(pts)


def _brute_fronts(pts):
    left, out, k = set(range(len(pts))), [0] * len(pts), 0
    while left:
        front = {i for i in left if not any(dominates(pts[j], pts[i]) for j in left)}
        for i in front:
            out[i] = k
        left -= front
        k += 1
    return out


def test_crowding_distance_by_hand() -> None:
    # sorted by the first objective: 1, 2, 4, 7 (range 6); by the second: 1, 3, 5, 8 (range 7)
    pts = [(1, 8), (2, 5), (4, 3), (7, 1)]
    d = crowding_distance(pts)
    assert d[0] == d[3] == math.inf
    assert d[1] == pytest.approx((4 - 1) / 6 + (8 - 3) / 7)
    assert d[2] == pytest.approx((7 - 2) / 6 + (5 - 1) / 7)
    assert crowding_distance([(1, 1), (1, 1)]) == [0.0, 0.0]  # no spread: nothing added
    assert crowding_distance([]) == []


def test_rank_order_front_then_crowding_then_first_objective_then_index() -> None:
    # one front of five: the ends (inf) by the first objective, then the middle by crowding
    pts = [(1, 8), (2, 5), (4, 3), (7, 1), (3, 4)]
    d = crowding_distance(pts)
    middle = sorted([1, 2, 4], key=lambda i: -d[i])
    assert rank_order(pts) == [3, 0, *middle]
    # equal points: same front and crowding; the earlier index first
    assert rank_order([(1, 1), (2, 2), (2, 2)]) == [1, 2, 0]


def test_rank_order_puts_infeasible_after_feasible_by_violation() -> None:
    pts = [(0.5, -5.0), (0.99, -1.0), (0.1, -50.0), (0.98, -2.0), (float("nan"), 0.0)]
    order = rank_order(pts, violations=[0.0, 3.0, 0.0, 1.0, 0.0])
    assert order == [0, 2, 3, 1, 4]  # feasible by front, then violation 1 < 3, then NaN
    with pytest.raises(ValueError, match="one violation per point"):
        rank_order(pts, violations=[0.0])


def test_front_indices_skip_infeasible_and_nan() -> None:
    pts = [(1, 3), (2, 2), (5, 5), (3, 1), (float("nan"), 9)]
    assert front_indices(pts) == [2]
    assert front_indices(pts, feasible=[True, True, False, True, True]) == [0, 1, 3]


def test_hypervolume_2d_by_hand_and_against_optuna() -> None:
    from optuna._hypervolume import compute_hypervolume

    assert hypervolume_2d([(1, 3), (2, 2), (3, 1)], (0, 0)) == 6.0
    assert hypervolume_2d([(1, 3), (2, 2), (1, 1), (-1, 5)], (0, 0)) == 5.0  # -1 < reference
    rng = np.random.default_rng(0)
    for _ in range(5):
        pts = rng.uniform(0, 1, size=(40, 2))
        ref = np.array([0.1, 0.2])
        ours = hypervolume_2d([tuple(p) for p in pts], tuple(ref))
        inside = pts[(pts > ref).all(axis=1)]
        theirs = compute_hypervolume(-inside, -ref)  # Optuna minimises
        assert ours == pytest.approx(theirs, rel=1e-12)


def test_hypervolume_grows_with_a_dominating_point() -> None:
    base = [(0.5, -10.0), (0.7, -15.0)]
    ref = (0.0, -30.0)
    hv = hypervolume_2d(base, ref)
    assert hypervolume_2d(base + [(0.6, -12.0)], ref) > hv  # a new non-dominated point
    assert hypervolume_2d(base + [(0.4, -20.0)], ref) == hv  # a dominated one adds nothing
    for a, b in itertools.permutations(base + [(0.6, -12.0)], 2):
        assert hypervolume_2d([a, b], ref) == hypervolume_2d([b, a], ref)


def _reference_rank(pts, viol):
    """rank_order written out plainly: brute-force fronts, NSGA-II crowding by its formula."""
    nan = [i for i, p in enumerate(pts) if any(math.isnan(x) for x in p)]
    feas = [i for i in range(len(pts)) if i not in nan and viol[i] == 0]
    infeas = sorted((i for i in range(len(pts)) if i not in nan and viol[i] > 0),
                    key=lambda i: (viol[i], i))
    fronts = _brute_fronts([pts[i] for i in feas])
    out = []
    for f in sorted(set(fronts)):
        members = [i for i, fi in zip(feas, fronts) if fi == f]
        crowd = {i: 0.0 for i in members}
        for j in range(len(pts[0])):
            srt = sorted(members, key=lambda i: (pts[i][j], i))
            lo, hi = pts[srt[0]][j], pts[srt[-1]][j]
            if hi == lo:
                continue
            for a in range(1, len(srt) - 1):
                crowd[srt[a]] += (pts[srt[a + 1]][j] - pts[srt[a - 1]][j]) / (hi - lo)
            crowd[srt[0]] = crowd[srt[-1]] = math.inf
        out += sorted(members, key=lambda i: (-crowd[i], -pts[i][0], i))
    return out + infeas + nan


@pytest.mark.parametrize("seed", range(6))
def test_rank_order_matches_a_plain_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 80
    pts = [tuple(float(x) for x in p) for p in rng.integers(0, 8, size=(n, 2 + seed % 2))]
    pts[3] = (float("nan"),) + pts[3][1:]
    viol = [float(v) if v > 6 else 0.0 for v in rng.integers(0, 9, size=n)]
    assert rank_order(pts, viol) == _reference_rank(pts, viol)


@pytest.mark.parametrize("seed", range(4))
def test_rank_position_is_the_place_in_rank_order(seed: int) -> None:
    from tuning._pareto import rank_position

    rng = np.random.default_rng(seed)
    n = 60 if seed < 2 else 400  # small fronts (plain crowding) and large ones (numpy)
    pts = [tuple(float(x) for x in p) for p in rng.uniform(0, 1, size=(n, 2))]
    if seed == 3:
        pts = [(x, 1.0 - x) for x, _ in pts]  # one big front
    viol = [0.0 if v > 0.2 else float(v) + 0.1 for v in rng.uniform(size=n)]
    order = rank_order(pts, viol)
    assert [rank_position(pts, viol, i) for i in range(0, n, 7)] == \
        [order.index(i) for i in range(0, n, 7)]
