"""Views at scale: the live view and the static plots at N=1,000 and N=10,000 trials.

Synthetic trials (9 results each, a mix of statuses, three parameters) are fed to
:class:`tuning.live.LiveView` and :func:`tuning.plots.all_plots`. For each measure it prints the
seconds at both sizes, ``ratio`` (T(10k) / T(1k)) and ``per_trial`` (the ratio of the costs
per trial: 1.0 is linear, 0.1 is constant, above 1 worse than linear).

Measures (median of repeats):

- ``live_render``: ``view.render()`` of the controller last updated (the index read, O(k));
- ``live_draw``: that panel printed by rich (what the terminal refresh costs);
- ``live_update_changed``: 20 trials get a result, ``view.update(ctl, changed=ids)``;
- ``live_update_scan``: the same without ``changed`` (one pass to find them);
- ``sort_all_reference``: scoring and sorting every trial, what a render cost before;
- ``all_plots``: the three PNGs.

    .venv/bin/python benchmarks/plots_scale.py [--sizes 1000 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rich.console import Console

from tuning import live, plots
from tuning._trial import Status, Trial

METRIC = "acc"
ITERS = 9
_STATUSES = [Status.TERMINATED, Status.STOPPED, Status.STOPPED, Status.STOPPED, Status.PAUSED,
             Status.RUNNING, Status.ERROR]


def make_trials(n: int, seed: int = 0) -> dict[str, Trial]:
    """``n`` trials with up to :data:`ITERS` results each (stopped ones fewer)."""
    rng = np.random.default_rng(seed)
    out: dict[str, Trial] = {}
    for i in range(n):
        status = _STATUSES[int(rng.integers(len(_STATUSES)))]
        iters = ITERS if status in (Status.TERMINATED, Status.RUNNING) else int(rng.integers(1, 4)) * 3
        rate, final = float(rng.uniform(0.2, 1.5)), float(rng.uniform(0.5, 0.99))
        results = [{"training_iteration": k, METRIC: final * (1 - math.exp(-rate * k)),
                    "timestamp": 1e9 + k} for k in range(1, iters + 1)]
        config = {"lr": float(10 ** rng.uniform(-5, -1)), "layers": int(rng.integers(1, 6)),
                  "act": ["relu", "tanh", "gelu"][int(rng.integers(3))]}
        tid = f"trial-{i:05d}"
        t = Trial.with_results(tid, config, results, status=status,
                               rung=3 if status != Status.ERROR else None)
        if status == Status.STOPPED:
            t.stopped_at = iters
        out[tid] = t
    return out


def make_controller(trials: dict[str, Trial]) -> Any:
    budget = SimpleNamespace(num_samples=len(trials), time_budget_s=3600.0, total_iterations=None)
    return SimpleNamespace(name="scale", metric=METRIC, mode="max", trials=trials, budget=budget,
                           iterations_total=sum(t.num_results for t in trials.values()),
                           stopping=None, done=False, elapsed=lambda: 12.0)


def decisions(trials: dict[str, Trial]) -> list[dict[str, Any]]:
    return [{"event": "decision", "trial_id": t.trial_id, "decision": "STOP",
             "iteration": t.stopped_at, "rung": t.stopped_at}
            for t in trials.values() if t.status == Status.STOPPED]


def timed(fn: Callable[[], Any], repeats: int, setup: Callable[[], Any] | None = None) -> float:
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _touch(ctl: Any, rng: np.random.Generator, k: int = 20) -> list[str]:
    """Give ``k`` random trials one more result; their ids."""
    ids = list(ctl.trials)
    picked = [ids[int(i)] for i in rng.choice(len(ids), size=k, replace=False)]
    for tid in picked:
        t = ctl.trials[tid]
        t.observe({"training_iteration": t.iteration + 1, METRIC: float(rng.uniform())})
    return picked


def sort_all(ctl: Any) -> list[Any]:
    scored = [(s, t) for t in ctl.trials.values() if (s := live._score(ctl, t)) is not None]
    scored.sort(key=lambda st: -st[0])
    return scored[:5]


def measure(n: int, repeats: int) -> dict[str, float]:
    trials = make_trials(n)
    events = decisions(trials)
    ctl = make_controller(trials)
    view = live.LiveView(console=Console(file=io.StringIO(), width=120))
    view.update(ctl)
    console = Console(file=io.StringIO(), width=120)
    rng = np.random.default_rng(1)
    out = {"live_render": timed(view.render, repeats * 20),
           "live_draw": timed(lambda: console.print(view.render()), repeats)}
    held: list[list[str]] = []
    out["live_update_changed"] = timed(lambda: view.update(ctl, changed=held[-1]), repeats * 4,
                                       setup=lambda: held.append(_touch(ctl, rng)))
    out["live_update_scan"] = timed(lambda: view.update(ctl), repeats * 4,
                                    setup=lambda: _touch(ctl, rng))
    out["sort_all_reference"] = timed(lambda: sort_all(ctl), repeats * 4)
    with tempfile.TemporaryDirectory() as d:
        out["all_plots"] = timed(lambda: plots.all_plots(trials, METRIC, "max", events, d),
                                 max(repeats // 2, 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[1000, 10000])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    small, large = args.sizes
    a, b = measure(small, args.repeats), measure(large, args.repeats)
    print(f"{'measure':<22}{f'N={small} s':>14}{f'N={large} s':>14}{'ratio':>9}{'per_trial':>11}")
    for key in a:
        ratio = b[key] / a[key] if a[key] else math.nan
        per_trial = ratio * small / large
        print(f"{key:<22}{a[key]:>14.6f}{b[key]:>14.6f}{ratio:>9.2f}{per_trial:>11.3f}")


if __name__ == "__main__":
    main()
