"""Several metrics through the real Controller on the simulated backend: MO-ASHA's decisions,
constraints honoured, the front at the end, the missing-metric error; one metric unchanged."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tuning._pareto import dominates
from tuning._trial import Status
from tuning.backends.simulated import CrossingCurves, SimulatedBackend, SimulatedTrainable
from tuning.backends.tradeoff import TradeoffCurves
from tuning.controller import Budget, Controller, MetricMissingError
from tuning.experiment import Journal
from tuning.results import TuneResult
from tuning.schedulers import ASHA, FIFO, MOASHA
from tuning.searchers import OptunaSearch, RandomSearch
from tuning.space import Space, loguniform, uniform

SPACE = {"width": uniform(0, 1), "lr": loguniform(1e-4, 1e-1), "momentum": uniform(0, 1)}
LIMIT = {"latency_ms": {"max": 12.0}}


def make(tmp_path, scheduler, *, n=30, metric=("accuracy", "latency_ms"), mode=("max", "min"),
         constraints=None, trainable=None, searcher=None, name="mo", **kw) -> Controller:
    d = str(tmp_path / name)
    return Controller(
        name=name, trainable=trainable or TradeoffCurves(max_t=27), space=Space(SPACE),
        metric=list(metric) if not isinstance(metric, str) else metric,
        mode=list(mode) if not isinstance(mode, str) else mode, scheduler=scheduler,
        searcher=searcher or RandomSearch(), backend=SimulatedBackend(4), journal=Journal(d),
        storage=d, budget=Budget(num_samples=n), seed=kw.pop("seed", 0),
        constraints=constraints, **kw)


def events(ctl: Controller, kind: str) -> list[dict[str, Any]]:
    return [e for e in ctl.journal.read() if e["event"] == kind]


@pytest.mark.parametrize("variant", ["stop", "promote"])
def test_moasha_never_lets_an_infeasible_trial_past_a_milestone(tmp_path, variant) -> None:
    ctl = make(tmp_path, MOASHA(max_t=27, grace_period=1, reduction_factor=3, variant=variant),
               n=40, constraints=LIMIT).run()
    obj = ctl.objective
    infeasible = [t for t in ctl.trials.values() if not obj.is_feasible(t.last_result)]
    assert infeasible and len(infeasible) < len(ctl.trials)
    assert all(t.iteration == 1 for t in infeasible)
    resumed = {e["trial_id"] for e in events(ctl, "segment_started") if e["checkpoint"]}
    assert bool(resumed) == (variant == "promote")  # promoted from the rung's checkpoint
    assert not resumed & {t.trial_id for t in infeasible}
    full = [t for t in ctl.trials.values() if t.iteration == 27]
    assert full and all(obj.is_feasible(t.last_result) for t in full)
    assert ctl.iterations_total < 40 * 27 / 3  # early stopping saved most of the compute


def test_moasha_stop_decisions_follow_the_rung_ranking(tmp_path) -> None:
    """Replaying the journal's results through the pure helper gives each STOP/CONTINUE."""
    from tuning.schedulers import moasha_continues

    ctl = make(tmp_path, MOASHA(max_t=27, grace_period=1, reduction_factor=3), n=25,
               constraints=LIMIT).run()
    obj, rungs = ctl.objective, {1: [], 3: [], 9: []}
    decided = {(e["trial_id"], e["iteration"]): e["decision"] for e in events(ctl, "decision")}
    checked = 0
    for e in events(ctl, "result"):
        it = e["result"]["training_iteration"]
        if it not in rungs:
            continue
        point, viol = obj.signed(e["result"]), obj.violation(e["result"])
        goes_on = moasha_continues(point, viol, rungs[it], 3)
        rungs[it].append((point, viol))
        assert decided.get((e["trial_id"], it), "CONTINUE") == ("CONTINUE" if goes_on else "STOP")
        checked += 1
    assert checked > 25 and "STOP" in decided.values()


def test_the_finished_event_names_the_pareto_front(tmp_path) -> None:
    ctl = make(tmp_path, FIFO(), n=12, constraints=LIMIT).run()
    (fin,) = events(ctl, "finished")
    front = [ctl.trials[tid] for tid in fin["pareto_front"]]
    assert fin["best_trial"] is None  # several metrics and no select/weights
    assert front and ctl.best_trial() is None
    obj = ctl.objective
    feasible = [t for t in ctl.trials.values() if obj.is_feasible(t.last_result)]
    for t in feasible:  # the front: feasible, and no feasible trial dominates a front trial
        in_front = t in front
        dominated = any(dominates(obj.signed(u.last_result), obj.signed(t.last_result))
                        for u in feasible)
        assert in_front == (not dominated)
    assert all(obj.is_feasible(t.last_result) for t in front)


def test_select_picks_the_best_trial_of_a_multi_objective_run(tmp_path) -> None:
    from tuning._objective import Objective, Selection

    obj = Objective.build(["accuracy", "latency_ms"], ["max", "min"])
    rule = Selection.parse("max accuracy s.t. latency_ms <= 8", obj)
    ctl = make(tmp_path, FIFO(), n=12, selection=rule).run()
    best = ctl.best_trial()
    assert best is not None and best.last_result["latency_ms"] <= 8
    ok = [t for t in ctl.trials.values() if t.last_result["latency_ms"] <= 8]
    assert best.last_result["accuracy"] == max(t.last_result["accuracy"] for t in ok)
    assert events(ctl, "finished")[0]["best_trial"] == best.trial_id


@pytest.mark.parametrize(("metric", "constraints", "missing", "field"), [
    (("accuracy", "size"), None, "size", "metric"),
    (("accuracy", "latency_ms"), {"memory_mb": {"max": 3}}, "memory_mb", "constraints.memory_mb"),
])
def test_a_metric_never_reported_aborts_naming_the_field(tmp_path, metric, constraints,
                                                         missing, field) -> None:
    ctl = make(tmp_path, FIFO(), n=4, metric=metric, constraints=constraints).run()
    assert ctl.aborted is not None
    with pytest.raises(MetricMissingError, match=rf"^metric '{missing}' was never reported: "
                                                 rf"trial trial-\d+ reported accuracy, "
                                                 rf"latency_ms; set `{field}` to one of these"):
        ctl.raise_if_aborted()


class HalfNan(SimulatedTrainable):
    max_t = 3

    def step(self, state, config, t):
        ms = float("nan") if config["width"] > 0.5 else 1.0
        return state, {"accuracy": 0.5, "latency_ms": ms}, 1.0


def test_a_non_finite_second_metric_fails_the_trial(tmp_path) -> None:
    ctl = make(tmp_path, FIFO(), n=8, trainable=HalfNan()).run()
    for t in ctl.trials.values():
        bad = t.config["width"] > 0.5
        assert (t.status == Status.ERROR) == bad
        if bad:
            assert "metric 'latency_ms' was nan at iteration 1" in t.error


def test_nsga2_and_moasha_together(tmp_path) -> None:
    searcher = OptunaSearch("nsga2", sampler_kwargs={"population_size": 6})
    ctl = make(tmp_path, MOASHA(max_t=27, variant="promote"), n=24, searcher=searcher,
               constraints=LIMIT).run()
    told = searcher.study.get_trials()
    assert len(told) == 24 and all(len(t.values) == 2 for t in told if t.values)
    # a trial stopped before max_t is told PRUNED: its values were measured on a smaller budget
    full = {int(tid.rsplit("-", 1)[1]) for tid, t in ctl.trials.items() if t.iteration == 27}
    assert full and {t.number for t in told if t.state.name == "COMPLETE"} == full
    assert {t.state.name for t in told if t.number not in full} == {"PRUNED"}
    # constraints are told with pruned trials too: the sampler learns what is infeasible
    assert ctl.iterations_total < 24 * 27 / 2
    assert any(t.constraints and max(t.constraints.values()) > 0 for t in told)


def test_one_metric_given_as_a_list_is_the_single_objective_run(tmp_path) -> None:
    runs = [make(tmp_path, ASHA(max_t=9), n=10, metric=m, mode=d, trainable=CrossingCurves(9),
                 name=f"one-{i}").run()
            for i, (m, d) in enumerate([("accuracy", "max"), (["accuracy"], ["max"])])]
    logs = [[(e["event"], e.get("trial_id"), e.get("decision"), e.get("iteration"))
             for e in ctl.journal.read() if e["event"] in ("decision", "trial_status")]
            for ctl in runs]
    assert logs[0] == logs[1] and logs[0]
    for ctl in runs:
        (fin,) = events(ctl, "finished")
        assert "pareto_front" not in fin and ctl.objective.plain
        scores = {t.trial_id: t.last_result["accuracy"] for t in ctl.trials.values()}
        assert fin["best_trial"] == max(scores, key=scores.get)


def test_results_of_a_multi_objective_run(tmp_path) -> None:
    from tuning._objective import MultiObjectiveError
    from tuning.experiment import replay

    ctl = make(tmp_path, MOASHA(max_t=27), n=20, constraints=LIMIT).run()
    st = replay(ctl.journal.read())
    res = TuneResult("mo", ctl.storage, "accuracy", "max", st, objective=ctl.objective)
    front = res.pareto_front()
    assert list(front.columns[:5]) == ["trial_id", "status", "accuracy", "latency_ms",
                                       "iterations"]
    expected = {t.trial_id for t in ctl.objective.front(ctl.trials.values())}
    assert set(front["trial_id"]) == expected and (front["latency_ms"] <= 12).all()
    assert list(front["accuracy"]) == sorted(front["accuracy"], reverse=True)
    for attr in ("best_trial", "best_config", "best_metric"):
        with pytest.raises(MultiObjectiveError, match=r"see result.pareto_front\(\)"):
            getattr(res, attr)
    pick = res.best_trial_by(select="max accuracy s.t. latency_ms <= 6")
    assert pick is not None and pick.last_result["latency_ms"] <= 6
    df = res.dataframe()
    assert {"latency_ms", "feasible", "pareto"} <= set(df.columns)
    assert set(df.loc[df["pareto"], "trial_id"]) == expected
    assert not df.loc[~df["feasible"], "pareto"].any()
    assert "pareto_front=" in repr(res)
    assert math.isfinite(float(front["accuracy"].max()))


@pytest.mark.parametrize("variant", ["stop", "promote"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, variant) -> None:
    from tests.test_controller_sim import decisions
    from tuning.experiment import replay

    def build(name: str, replayed=None) -> Controller:
        return make(tmp_path, MOASHA(max_t=27, variant=variant), n=24, name=name,
                    constraints=LIMIT, replayed=replayed,
                    searcher=OptunaSearch("tpe", n_startup_trials=4))

    whole = build("whole").run()
    crashed = build("crash")
    crashed.open()
    for i in range(45):  # the process "dies" after step 45: what is uncommitted is lost
        crashed.step()
        if i % 10 == 9:
            crashed.end_wave()
    assert not crashed.done
    crashed.journal.flush()  # its writer has written all it had when the process "dies"
    resumed = build("crash", replay(crashed.journal.read()))
    resumed.run()
    assert decisions(resumed) == decisions(whole)
    got = {t.trial_id: (t.config, str(t.status), t.iteration) for t in resumed.trials.values()}
    assert got == {t.trial_id: (t.config, str(t.status), t.iteration)
                   for t in whole.trials.values()}
    fronts = [e["pareto_front"] for c in (whole, resumed) for e in events(c, "finished")]
    assert fronts[0] == fronts[-1]
