"""Scheduler decision cost at scale: microseconds per ``on_result`` + ``choose_trial_to_run``.

Drives each scheduler directly (no controller, no backend) with synthetic trials: ``n`` trials
of 9 results each, values from a seeded ``numpy.random.Generator``, ``slots`` trials running at
a time. Prints the cost per call at two sizes and their ratio (the goal is <= 1.2: O(log n) per
decision). Figures only; nothing is asserted.

    .venv/bin/python benchmarks/engine_scale.py            # 10,000 and 100,000 trials
    .venv/bin/python benchmarks/engine_scale.py --sizes 2000 20000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from tuning._trial import ITERATION, Status, Trial
from tuning.schedulers import ASHA, Decision, HyperBand, MedianStopping, Resume, Scheduler, StartNew

RESULTS = 9

FACTORIES: dict[str, Callable[[], Scheduler]] = {
    "asha-stop": lambda: ASHA(max_t=RESULTS, grace_period=1, reduction_factor=3),
    "median": lambda: MedianStopping(grace_period=1, min_samples_required=3),
    "hyperband": lambda: HyperBand(max_t=RESULTS, grace_period=1, reduction_factor=3),
}


def drive(make: Callable[[], Scheduler], n: int, slots: int = 64, seed: int = 0) -> tuple[float, int]:
    """Run ``n`` trials through the scheduler; return (seconds in its calls, calls)."""
    rng = np.random.default_rng(seed)
    sched = make()
    sched.set_objective("loss", "min", np.random.default_rng(seed))
    trials: dict[str, Trial] = {}
    running: list[Trial] = []
    values = rng.normal(size=(n, RESULTS)).cumsum(axis=1)
    spent, calls, started = 0.0, 0, 0
    clock = time.perf_counter
    while True:
        while len(running) < slots:
            can = started < n
            t0 = clock()
            sug = sched.choose_trial_to_run(trials, can)
            spent += clock() - t0
            calls += 1
            if isinstance(sug, StartNew):
                trial = Trial(f"trial-{started:06d}", {"i": started}, status=Status.RUNNING,
                              info=dict(sug.info))
                trials[trial.trial_id] = trial
                sched.on_trial_add(trial)
                started += 1
            elif isinstance(sug, Resume):
                trial = trials[sug.trial_id]
                trial.status = Status.RUNNING
            else:
                break
            running.append(trial)
        if not running:
            break
        trial = running.pop(int(rng.integers(len(running))))
        it = trial.iteration + 1
        result = {ITERATION: it, "loss": float(values[trial.config["i"], it - 1])}
        trial.observe(result)
        t0 = clock()
        d = sched.on_result(trial, result)
        spent += clock() - t0
        calls += 1
        if d == Decision.STOP or it >= RESULTS:
            trial.status = Status.STOPPED if d == Decision.STOP else Status.TERMINATED
            sched.on_trial_complete(trial, result)
        elif d == Decision.PAUSE:
            trial.status = Status.PAUSED
        else:
            running.append(trial)
        for tid in sched.trials_to_stop(trials):
            trials[tid].status = Status.STOPPED
            sched.on_trial_complete(trials[tid], trials[tid].last_result)
    return spent, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[10_000, 100_000])
    parser.add_argument("--only", choices=sorted(FACTORIES), nargs="*")
    args = parser.parse_args()
    small, large = args.sizes
    print(f"{'scheduler':<11} {'us/call @' + format(small, ','):>16} "
          f"{'us/call @' + format(large, ','):>17} {'ratio':>6}")
    for name in args.only or list(FACTORIES):
        per_call = []
        for n in (small, large):
            spent, calls = drive(FACTORIES[name], n)
            per_call.append(spent / calls * 1e6)
        print(f"{name:<11} {per_call[0]:>16.2f} {per_call[1]:>17.2f} "
              f"{per_call[1] / per_call[0]:>6.2f}")


if __name__ == "__main__":
    main()
