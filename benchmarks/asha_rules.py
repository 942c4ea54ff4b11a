"""How many epochs each successive-halving rule trains on the same curves, in the same order.

rungflow's ASHA keeps Ray Tune's rule (``AsyncHyperBandScheduler``): at a milestone a trial
goes on unless its value is below the ``(1 - 1/rf)`` percentile of the values recorded there
before it. Optuna's ``SuccessiveHalvingPruner`` keeps only the top ``floor(n/rf)`` (at least
one) of the ``n`` trials at the rung, itself included: while a rung holds fewer than ``2 rf``
values it lets only the best through. The two rules therefore train different amounts of work
on one problem, whatever the control plane around them costs.

Here the three rules see identical learning curves in an identical order: 2 workers, every
epoch one time unit, a stopped trial's worker starting the next trial at once (an event
simulation, no cluster). Each rule is the library's own code: rungflow's
:class:`tuning.schedulers.ASHA`, Ray Tune's ``_Bracket`` (when ``ray`` is installed) and
Optuna's ``SuccessiveHalvingPruner`` through ask/tell. Two curve families:

* ``digits``: saturating curves, asymptotes spread over 0.6-0.98, one config in five
  diverging (stuck at chance, 0.1), noise 0.01; 60 trials, max_t 20 (the digits benchmark's
  shape);
* ``crossing``: :mod:`decisions`' curves (fast learners lead early, slow ones end higher);
  81 trials, max_t 27.

Printed per family: epochs trained by each rule over the seeds (median, range), and
``ray_matches_rungflow`` (the same decisions, trial by trial). Last line:
``epochs_ratio_rungflow_over_optuna X`` (median over families and seeds).

    .venv/bin/python benchmarks/asha_rules.py [--seeds 0 1 ... 19]
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import statistics
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

RF = 3
Decide = Callable[[int, int, float], bool]  # (trial, epoch, value) -> goes on


def digits_curves(rng: np.random.Generator, n: int, max_t: int) -> list[list[float]]:
    out = []
    for _ in range(n):
        if rng.random() < 0.2:
            out.append([0.1] * max_t)
            continue
        top, tau = rng.uniform(0.6, 0.98), rng.uniform(0.7, 6.0)
        out.append([float(min(1.0, top * (1 - math.exp(-t / tau)) + rng.normal(0, 0.01)))
                    for t in range(1, max_t + 1)])
    return out


def crossing_curves(rng: np.random.Generator, n: int, max_t: int) -> list[list[float]]:
    from decisions import score

    configs = [{"lr": float(10 ** rng.uniform(-5, 0)), "momentum": float(rng.uniform(0, 0.99)),
                "weight_decay": float(10 ** rng.uniform(-6, -1)),
                "dropout": float(rng.uniform(0, 0.7)),
                "batch_size": int(rng.choice([32, 64, 128, 256]))} for _ in range(n)]
    return [[score(c, t) for t in range(1, max_t + 1)] for c in configs]


def rungflow_rule(max_t: int) -> Decide:
    from tuning._trial import Trial
    from tuning.schedulers import ASHA

    s = ASHA(max_t=max_t, grace_period=1, reduction_factor=RF, metric="v", mode="max")
    trials: dict[int, Any] = {}

    def decide(i: int, t: int, v: float) -> bool:
        trial = trials.setdefault(i, Trial(f"t{i}", {}))
        return s.on_result(trial, {"training_iteration": t, "v": v}).value == "CONTINUE"
    return decide


def ray_rule(max_t: int) -> Decide | None:
    try:
        from ray.tune.schedulers.async_hyperband import _Bracket
    except ImportError:
        return None
    b = _Bracket(min_t=1, max_t=max_t, reduction_factor=RF, s=0, stop_last_trials=True)

    class _T:
        def __init__(self, i: int) -> None:
            self.trial_id = f"t{i}"

    def decide(i: int, t: int, v: float) -> bool:
        return t < max_t and b.on_result(_T(i), t, v) == "CONTINUE"
    return decide


def optuna_rule(max_t: int) -> Decide:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.SuccessiveHalvingPruner(
        min_resource=1, reduction_factor=RF))
    live: dict[int, Any] = {}

    def decide(i: int, t: int, v: float) -> bool:
        trial = live.get(i) or live.setdefault(i, study.ask())
        trial.report(v, t)
        if t >= max_t:
            study.tell(trial, v)
            return False
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return False
        return True
    return decide


def simulate(curves: list[list[float]], decide: Decide, workers: int = 2) -> list[int]:
    """Epochs each trial trained: ``workers`` run trials in order, one epoch a time unit."""
    trained = [0] * len(curves)
    running: list[tuple[int, int, int]] = []  # (time, trial, epoch)
    nxt = 0
    for _ in range(min(workers, len(curves))):
        heapq.heappush(running, (1, nxt, 1))
        nxt += 1
    while running:
        now, i, t = heapq.heappop(running)
        trained[i] = t
        if t < len(curves[i]) and decide(i, t, curves[i][t - 1]):
            heapq.heappush(running, (now + 1, i, t + 1))
        else:
            if t >= len(curves[i]):
                decide(i, t, curves[i][t - 1])  # the end is told too (Optuna's tell)
            if nxt < len(curves):
                heapq.heappush(running, (now + 1, nxt, 1))
                nxt += 1
    return trained


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(20)))
    args = ap.parse_args()
    ratios = []
    for family, make, n, max_t in (("digits", digits_curves, 60, 20),
                                   ("crossing", crossing_curves, 81, 27)):
        got: dict[str, list[int]] = {"rungflow": [], "ray": [], "optuna": []}
        same = 0
        for seed in args.seeds:
            curves = make(np.random.default_rng(seed), n, max_t)
            r = simulate(curves, rungflow_rule(max_t))
            got["rungflow"].append(sum(r))
            ray = ray_rule(max_t)
            if ray is not None:
                y = simulate(curves, ray)
                got["ray"].append(sum(y))
                same += y == r
            got["optuna"].append(sum(simulate(curves, optuna_rule(max_t))))
            ratios.append(got["rungflow"][-1] / got["optuna"][-1])
        parts = [f"{k} {statistics.median(v):.0f} ({min(v)}-{max(v)})" for k, v in got.items()
                 if v]
        ray_note = f", ray_matches_rungflow {same}/{len(args.seeds)}" if got["ray"] else ""
        mine = [a / b for a, b in zip(got["rungflow"], got["optuna"])]
        print(f"{family} ({n} trials, max_t {max_t}, {len(args.seeds)} seeds): epochs "
              + ", ".join(parts) + f"; rungflow / optuna {statistics.median(mine):.2f} "
              f"({min(mine):.2f}-{max(mine):.2f}){ray_note}", flush=True)
    print(f"epochs_ratio_rungflow_over_optuna {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
