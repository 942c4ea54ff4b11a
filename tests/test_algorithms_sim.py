"""Each algorithm on the simulated backend: small budgets, properties that could fail.

The measured comparison is ``benchmarks/algorithms.py`` (docs/algorithms.md); these tests only
check that each method does what it claims, on a virtual clock, in a few seconds.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest

from tuning._trial import Status
from tuning.backends.simulated import CrossingCurves, RealisticCurves, SimulatedBackend
from tuning.controller import Budget, Controller
from tuning.experiment import Journal
from tuning.schedulers import ASHA, BOHB, FIFO, PBT, HyperBand, MedianStopping
from tuning.schedulers._hyperband import hyperband_plan
from tuning.searchers import OptunaSearch, RandomSearch
from tuning.space import Space, loguniform, uniform

_names = itertools.count()


class NonCrossing(CrossingCurves):
    """CrossingCurves whose learning rate does not depend on ``lr``: the same ranking at every
    budget, so a model fit on low-budget results should point at lr = 1e-2."""

    def rate(self, config: dict[str, Any]) -> float:
        return 1.0


def make(scheduler, searcher=None, n=16, cap=None, max_t=27, seed=0, trainable=None):
    name = f"alg-{next(_names)}"
    return Controller(
        name=name, trainable=trainable or CrossingCurves(max_t=max_t),
        space=Space({"lr": loguniform(1e-4, 1e-1), "momentum": uniform(0, 1)}),
        metric="accuracy", mode="max", scheduler=scheduler, searcher=searcher or RandomSearch(),
        backend=SimulatedBackend(n_workers=4), journal=Journal(f"memory://{name}"),
        storage=f"memory://{name}", budget=Budget(num_samples=n, total_iterations=cap), seed=seed)


def assert_all_terminal(ctl: Controller) -> None:
    assert ctl.done
    assert ctl.trials
    assert all(t.is_terminal for t in ctl.trials.values()), ctl.counts()


def events(ctl: Controller, kind: str) -> list[dict[str, Any]]:
    return [e for e in ctl.journal.read() if e["event"] == kind]


@pytest.mark.parametrize("variant", ["stop", "promote"])
def test_asha_tries_more_configs_than_fifo_on_the_same_budget(variant):
    fifo = make(FIFO(), n=8).run()
    budget = fifo.iterations_total
    assert budget == 8 * 27
    asha = make(ASHA(max_t=27, grace_period=1, reduction_factor=3, variant=variant), n=10_000,
                cap=budget).run()
    assert "iteration budget" in (asha.stopping or "")
    assert budget <= asha.iterations_total <= budget + 4  # in-flight trials end at their next report
    assert len(asha.trials) >= 3 * len(fifo.trials)
    assert_all_terminal(asha)
    assert any(t.iteration == 27 and t.status == Status.TERMINATED for t in asha.trials.values())


def test_hyperband_brackets_follow_the_paper():
    hb = HyperBand(max_t=9, grace_period=1, reduction_factor=3, max_rounds=1)
    assert [(p.s, p.sizes, p.milestones) for p in hb.plan] == [
        (2, (9, 3, 1), (1, 3, 9)), (1, (5, 1), (3, 9)), (0, (3,), (9,))]
    assert [p.sizes[0] for p in hyperband_plan(81, 1, 3)] == [81, 34, 15, 8, 5]
    ctl = make(hb, n=1000, max_t=9).run()
    assert_all_terminal(ctl)
    assert len(ctl.trials) == 9 + 5 + 3
    first = [ctl.trials[f"trial-{i:03d}"] for i in range(9)]  # bracket s=2 is filled first
    assert all(t.bracket == 2 for t in first)
    for plan in hb.plan:  # sizes[i] trials of the bracket reach milestones[i], no more
        members = [t for t in ctl.trials.values() if t.bracket == plan.s]
        reached = [sum(t.iteration >= m for t in members) for m in plan.milestones]
        assert tuple(reached) == plan.sizes, (plan, reached)
        assert all(t.iteration in plan.milestones for t in members)  # paused exactly, then cut
    # 9*1 + 3*(3-1) + 1*(9-3) + 5*3 + 1*(9-3) + 3*9
    assert ctl.iterations_total == 9 + 6 + 6 + 15 + 6 + 27


def test_hyperband_starts_a_second_round_and_the_budget_ends_it():
    # one round of max_t=9: 9 + 5 + 3 = 17 trials, 69 iterations (above)
    ctl = make(HyperBand(max_t=9, grace_period=1, reduction_factor=3), n=100_000, max_t=9,
               cap=150).run()
    assert_all_terminal(ctl)
    assert "iteration budget" in (ctl.stopping or "")
    assert 150 <= ctl.iterations_total <= 150 + 4
    trials = list(ctl.trials.values())
    assert len(trials) > 17 + 9
    # round 2 begins with bracket s=2 again, right after round 1's last bracket (s=0) is filled
    assert [t.bracket for t in trials[14:17 + 9]] == [0] * 3 + [2] * 9
    assert ctl.scheduler.state_dict()["rounds"] >= 2
    assert sum(t.status == Status.TERMINATED and t.iteration == 9 for t in trials) >= 5


def test_hyperband_num_samples_closes_the_last_round_cleanly():
    # round 2: s=2 gets its 9 trials, s=1 only 3 of 5 (closed with rung sizes 3, 1), s=0 none
    ctl = make(HyperBand(max_t=9, grace_period=1, reduction_factor=3), n=17 + 9 + 3,
               max_t=9).run()
    assert_all_terminal(ctl)
    assert ctl.stopping is None
    trials = list(ctl.trials.values())
    assert [t.bracket for t in trials[17:]] == [2] * 9 + [1] * 3
    late = trials[26:]
    assert sorted(t.iteration for t in late) == [3, 3, 9]
    assert ctl.scheduler.is_finished(ctl.trials)
    # 69 for round 1, then 9 + 3*2 + 1*6 for s=2 and 3*3 + 1*6 for the short s=1
    assert ctl.iterations_total == 69 + 21 + 15


def _lr_distance(configs: list[dict[str, Any]]) -> float:
    return statistics.fmean(abs(math.log10(c["lr"]) + 2.0) for c in configs)


def test_bohb_later_configs_come_from_the_model():
    """On curves that rank the same at every budget, BOHB's configs proposed once its first rung
    holds 2 (d + 1) = 6 observations sit nearer the optimum lr = 1e-2 than HyperBand + random's
    (random: E|log10 lr + 2| = 0.83), on every seed."""
    bohb, rand = [], []
    for seed in range(5):
        dist = {}
        for sched, out in ((BOHB(max_t=27, grace_period=1, reduction_factor=3), bohb),
                           (HyperBand(max_t=27, grace_period=1, reduction_factor=3), rand)):
            ctl = make(sched, n=27, seed=seed, trainable=NonCrossing(max_t=27)).run()
            assert_all_terminal(ctl)
            assert {t.bracket for t in ctl.trials.values()} == {3}  # the first bracket only
            configs = [t.config for t in list(ctl.trials.values())[6:]]
            out.extend(configs)
            dist[type(sched).__name__] = _lr_distance(configs)
        assert dist["BOHB"] < dist["HyperBand"], (seed, dist)
    assert _lr_distance(rand) > 0.6
    assert _lr_distance(bohb) < _lr_distance(rand) - 0.25, (_lr_distance(bohb), _lr_distance(rand))


def test_bohb_second_round_uses_higher_budgets_on_realistic_curves():
    """On RealisticCurves (early rungs favour a too-high lr, later ones agree with the end),
    the configs BOHB proposes in its second round, fit on round 1's highest budget, sit nearer
    the optimum than HyperBand + random's on average over seeds. Not on every seed: that model
    is fit on 6-9 finalists whose values differ by little more than the noise, so the good/bad
    split is noisy and TPE's l/g ratio sometimes pushes proposals away from the optimum."""
    one_round = 27 + 12 + 6 + 4
    bohb, rand = [], []
    for seed in range(6):
        for sched, out in ((BOHB(max_t=27, grace_period=1, reduction_factor=3), bohb),
                           (HyperBand(max_t=27, grace_period=1, reduction_factor=3), rand)):
            ctl = make(sched, n=one_round + 27, seed=seed, trainable=RealisticCurves(max_t=27))
            ctl.run()
            assert_all_terminal(ctl)
            late = list(ctl.trials.values())[one_round:]
            assert len(late) == 27 and {t.bracket for t in late} == {3}
            out.extend(t.config for t in late)
    assert _lr_distance(rand) > 0.7
    assert _lr_distance(bohb) < _lr_distance(rand) - 0.1, (_lr_distance(bohb), _lr_distance(rand))


def _pbt(seed: int = 0) -> Controller:
    muts = {"lr": loguniform(1e-4, 1e-1), "momentum": uniform(0, 1)}
    return make(PBT(perturbation_interval=9, hyperparam_mutations=muts, max_t=27), n=8,
                seed=seed).run()


def test_pbt_exploits_continue_from_the_donors_checkpoint():
    ctl = _pbt()
    assert_all_terminal(ctl)
    evs = ctl.journal.read()
    exploits = [(i, e) for i, e in enumerate(evs) if e["event"] == "exploit"]
    assert exploits, "PBT never exploited"
    for i, e in exploits:
        assert e["source"] != e["trial_id"]
        assert e["checkpoint"].startswith(f"sim://{e['source']}/")  # the donor's weights
        assert e["new_config"] != e["old_config"]
        nxt = evs[i + 1]  # the exploited trial's next segment restarts from that checkpoint
        assert nxt["event"] == "segment_started" and nxt["trial_id"] == e["trial_id"]
        assert nxt["checkpoint"] == e["checkpoint"] and nxt["config"] == e["new_config"]
    assert all(t.status == Status.TERMINATED and t.iteration == 27 for t in ctl.trials.values())


def test_pbt_exploit_checkpoint_is_at_the_iteration_the_trial_restarts_from():
    evs = _pbt().journal.read()
    for e, nxt in itertools.pairwise(evs):
        if e["event"] == "exploit":
            it = int(e["checkpoint"].split("#", 1)[0].rsplit("/", 1)[1])
            assert it == nxt["start_iteration"], (e, nxt)


def test_median_stopping_stops_some_trials():
    ctl = make(MedianStopping(grace_period=1, min_samples_required=3, max_t=27), n=16).run()
    assert_all_terminal(ctl)
    stopped = [t for t in ctl.trials.values() if t.status == Status.STOPPED]
    finished = [t for t in ctl.trials.values() if t.status == Status.TERMINATED]
    assert stopped and finished
    assert all(t.iteration < 27 for t in stopped) and all(t.iteration == 27 for t in finished)
    assert ctl.iterations_total < 16 * 27
    assert {e["decision"] for e in events(ctl, "decision")} >= {"STOP"}


def test_tpe_with_fifo_runs_every_trial_to_the_end():
    ctl = make(FIFO(), OptunaSearch(sampler="tpe", n_startup_trials=4), n=12).run()
    assert_all_terminal(ctl)
    assert len(ctl.trials) == 12
    assert all(t.status == Status.TERMINATED and t.iteration == 27 for t in ctl.trials.values())


def _benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "algorithms.py"
    spec = importlib.util.spec_from_file_location("bench_algorithms", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_runs_every_method_on_a_tiny_budget():
    bench = _benchmark()
    assert bench.compute_to([(1, 1.0, 0.5), (7, 2.0, 0.9)], 0.8) == 7
    assert bench.compute_to([(1, 1.0, 0.5)], 0.8) is None
    runs = [bench.run_method(m, seed=0, n=2) for m in bench.methods()]
    for r in runs:
        assert r["all_terminal"], r["method"]
        assert r["compute"] <= 2 * 81 + 4, r["method"]
    rows = bench.summarize(runs, 2)
    assert rows[0]["method"] == bench.BASELINE and rows[0]["reached"] == 1
    assert "| FIFO + random |" in bench.table(rows, 2)
