"""Objective (metrics, modes, constraints) and Selection (select / weights), by hand."""

from __future__ import annotations

import math

import pytest

from tuning._objective import Objective, Selection
from tuning._trial import Status, Trial

OBJ = Objective.build(["acc", "ms"], ["max", "min"], {"ms": {"max": 20}, "mem": {"min": 1,
                                                                                 "max": 4}})


def trial(tid: str, **last: float) -> Trial:
    return Trial.with_results(tid, {}, [{"training_iteration": 1, **last}],
                              status=Status.TERMINATED)


def test_values_signs_and_what_must_be_reported() -> None:
    r = {"acc": 0.9, "ms": 12.0, "mem": 2}
    assert OBJ.values(r) == (0.9, 12.0) and OBJ.signed(r) == (0.9, -12.0)
    assert OBJ.reported == ("acc", "ms", "mem")
    assert OBJ.missing({"acc": 1.0}) == ["ms", "mem"]
    assert OBJ.field_of("ms") == "metric" and OBJ.field_of("mem") == "constraints.mem"
    assert OBJ.non_finite({"acc": 0.9, "ms": float("inf")}) == ("ms", float("inf"))
    assert OBJ.non_finite(r) is None


def test_feasibility_and_violations() -> None:
    assert OBJ.violation_names() == ["ms.max", "mem.min", "mem.max"]
    assert OBJ.violations({"acc": 1, "ms": 25.0, "mem": 0.5}) == [5.0, 0.5, -3.5]
    assert OBJ.violation({"acc": 1, "ms": 25.0, "mem": 0.5}) == 5.5
    assert OBJ.is_feasible({"acc": 1, "ms": 20.0, "mem": 4})  # bounds are inclusive
    assert not OBJ.is_feasible({"acc": 1, "ms": 20.0})  # a missing constrained metric
    assert math.isinf(OBJ.violation({"acc": 1, "ms": float("nan"), "mem": 2}))


@pytest.mark.parametrize(("metric", "mode", "constraints", "message"), [
    (["a", "b"], ["max"], None, r"^mode: 1 value\(s\) \['max'\] for 2 metric\(s\)"),
    (["a", "b"], "max", None, r"^mode: metric lists 2 metrics"),
    (["a", "b"], ["max", "up"], None, r"^mode: 'up' for metric 'b'; must be 'min' or 'max'$"),
    (["a", "a"], ["max", "max"], None, r"^metric: 'a' is listed twice"),
    ([], [], None, r"^metric: must be a metric name or a non-empty list"),
    ("a", "max", {"b": {"below": 3}}, r"^constraints.b.below: unknown key; allowed: max, min$"),
    ("a", "max", {"b": {"max": "3"}}, r"^constraints.b.max: must be a finite number, got '3'$"),
    ("a", "max", {"b": {"max": float("nan")}}, r"^constraints.b.max: must be a finite number"),
    ("a", "max", {"b": {"min": 5, "max": 1}}, r"^constraints.b: min 5 is above max 1$"),
    ("a", "max", {"b": {}}, r"^constraints.b: must be a mapping with 'min' and/or 'max'"),
    ("a", "max", [1], r"^constraints: must be a mapping"),
])
def test_build_refuses_naming_the_field(metric, mode, constraints, message) -> None:
    with pytest.raises(ValueError, match=message):
        Objective.build(metric, mode, constraints)


def test_front_uses_each_trials_last_result_and_leaves_infeasible_out() -> None:
    ts = [trial("a", acc=0.9, ms=15.0, mem=2), trial("b", acc=0.8, ms=5.0, mem=2),
          trial("c", acc=0.99, ms=30.0, mem=2),  # the best accuracy, but too slow
          trial("d", acc=0.7, ms=10.0, mem=2),  # dominated by b
          Trial("e", {}, Status.PENDING)]
    # "a" once reported a value that would dominate everything: only its last result counts
    ts[0] = Trial.with_results("a", {}, [{"training_iteration": 0, "acc": 1.0, "ms": 1.0,
                                          "mem": 2}, ts[0].last_result], status=Status.TERMINATED)
    assert [t.trial_id for t in OBJ.front(ts)] == ["a", "b"]


@pytest.mark.parametrize(("text", "message"), [
    ("maximize acc", r"^select: cannot read 'maximize acc'"),
    ("max acc s.t.", r"^select: cannot read"),
    ("max acc s.t. ms <= twenty", r"^select: cannot read the condition 'ms <= twenty'"),
    ("max acc s.t. ms == 3", r"^select: cannot read the condition 'ms == 3'"),
    ("max acc s.t. size <= 3", (r"^select: 'size' is not a metric of this experiment; "
                                r"allowed: acc, ms, mem$")),
    ("min acc", r"^select: 'min acc' goes against the experiment's mode 'max' for acc$"),
    ("max acc; drop table", r"^select: cannot read"),
])
def test_select_is_parsed_strictly(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Selection.parse(text, OBJ)


def test_select_forms_that_parse() -> None:
    s = Selection.parse("  max acc  subject to ms < 15 and mem >= 2  ", OBJ)
    assert (s.metric, s.mode, s.conditions) == ("acc", "max", (("ms", "<", 15.0),
                                                                ("mem", ">=", 2.0)))
    assert s.describe() == "max acc s.t. ms < 15 and mem >= 2"
    assert Selection.parse("min ms s.t. acc >= 0.9", OBJ).conditions == (("acc", ">=", 0.9),)
    assert Selection.parse("max mem", OBJ).metric == "mem"  # a constrained metric is allowed
    assert Selection.parse("max acc s.t. ms <= 1e1", OBJ).conditions == (("ms", "<=", 10.0),)


def test_select_picks_the_best_feasible_trial_meeting_its_conditions() -> None:
    ts = [trial("a", acc=0.90, ms=15.0, mem=2), trial("b", acc=0.85, ms=8.0, mem=2),
          trial("c", acc=0.99, ms=25.0, mem=2),  # infeasible (ms > 20): never picked
          trial("d", acc=0.95, ms=9.0, mem=9)]  # infeasible (mem > 4)
    pick = lambda text: Selection.parse(text, OBJ).pick(ts, OBJ).trial_id
    assert pick("max acc") == "a"
    assert pick("max acc s.t. ms <= 10") == "b"
    assert pick("min ms") == "b"
    assert Selection.parse("max acc s.t. ms <= 1", OBJ).pick(ts, OBJ) is None


def test_a_tie_goes_to_the_trial_no_tied_one_dominates() -> None:
    ts = [trial("a", acc=0.9, ms=15.0, mem=2), trial("b", acc=0.9, ms=9.0, mem=2),
          trial("c", acc=0.9, ms=9.0, mem=2)]
    assert Selection.parse("max acc", OBJ).pick(ts, OBJ).trial_id == "b"  # then the first id


def test_weights_pick_the_largest_weighted_sum() -> None:
    ts = [trial("a", acc=0.90, ms=15.0, mem=2), trial("b", acc=0.85, ms=5.0, mem=2)]
    assert Selection.from_weights({"acc": 1.0, "ms": -0.001}, OBJ).pick(ts, OBJ).trial_id == "a"
    assert Selection.from_weights({"acc": 1.0, "ms": -0.01}, OBJ).pick(ts, OBJ).trial_id == "b"
    assert Selection.from_weights({"ms": -1}, OBJ).describe() == "max -1*ms"


@pytest.mark.parametrize(("weights", "message"), [
    ({"acc": 1.0, "ms": 0.01}, r"^weights.ms: 0.01 must be <= 0: ms is minimised"),
    ({"acc": -1.0}, r"^weights.acc: -1.0 must be >= 0: acc is maximised"),
    ({"mem": 1.0}, r"^weights.mem: not an objective of this experiment; allowed: acc, ms$"),
    ({"acc": "1"}, r"^weights.acc: must be a finite number, got '1'$"),
    ({"acc": 0.0}, r"^weights: at least one weight must be non-zero$"),
    ({}, r"^weights: must be a non-empty mapping"),
])
def test_weights_are_validated(weights, message) -> None:
    with pytest.raises(ValueError, match=message):
        Selection.from_weights(weights, OBJ)


def test_select_and_weights_together_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^select/weights: give one of them, not both$"):
        Selection.build(OBJ, "max acc", {"acc": 1.0})
    assert Selection.build(OBJ) is None


def test_best_of_one_constrained_metric_is_the_best_feasible() -> None:
    obj = Objective.build("acc", "max", {"ms": {"max": 10}})
    ts = [trial("a", acc=0.9, ms=15.0), trial("b", acc=0.8, ms=5.0)]
    assert obj.best(ts).trial_id == "b"
    assert OBJ.best(ts) is None  # several metrics and no rule: no single best
