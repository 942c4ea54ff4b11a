"""The engine at 100,000 trials: the real controller on the simulated backend.

Each scheduler (ASHA stop variant, median stopping, synchronous HyperBand) runs N trials of up
to 9 results each through :class:`tuning.controller.Controller` (searcher, scheduler, journal
appends to a journal file, snapshots by the journal's policy) on a
:class:`~tuning.backends.simulated.SimulatedBackend` with 64 virtual workers. The cost per
result is the run's wall time over the results it decided; the simulated curves' own cost is
measured apart (stepping the same number of iterations alone) and taken out, so what is left
is the engine's. Printed per scheduler: the engine's microseconds per result at the two sizes,
their ratio (goal <= 1.2), the total wall at the large size (goal for ASHA: <= 120 s on 2
cores), the journal's bytes per trial, the process's peak RSS and its full garbage collections.
Last line: ``scale_growth X``, the largest of the ratios.

This machine's speed drifts by 20-40% over minutes (a run of 100,000 trials took 16.3 s and
26.0 s on the same code within ten minutes), so each size runs ``--repeat`` times, the sizes
interleaved (small, large, small, large, ...), and the fastest run of each size is compared
(``timeit``'s rule: the noise only ever adds time); the spread of each size is printed.

    .venv/bin/python benchmarks/sim_scale.py                     # 10,000 and 100,000
    .venv/bin/python benchmarks/sim_scale.py --sizes 2000 20000 --only asha --repeat 1
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_T = 9
WORKERS = 64


def _schedulers() -> dict[str, Callable[[], Any]]:
    from tuning.schedulers import ASHA, HyperBand, MedianStopping

    return {"asha": lambda: ASHA(max_t=MAX_T, grace_period=1, reduction_factor=3),
            "median": lambda: MedianStopping(grace_period=1, min_samples_required=3,
                                             max_t=MAX_T),
            "hyperband": lambda: HyperBand(max_t=MAX_T, grace_period=1, reduction_factor=3)}


def curves_cost(results: int) -> float:
    """Seconds the simulated curves alone take for ``results`` steps (not the engine's)."""
    from tuning.backends.simulated import CrossingCurves

    c = CrossingCurves(max_t=MAX_T)
    config = {"lr": 1e-2, "momentum": 0.5}
    state = c.init(config)
    t0 = time.perf_counter()
    for i in range(results):
        state, _, _ = c.step(state, config, i % MAX_T + 1)
    return time.perf_counter() - t0


def child(kind: str, n: int) -> dict[str, Any]:
    import tempfile

    from tuning.backends.simulated import CrossingCurves, SimulatedBackend
    from tuning.controller import Budget, Controller
    from tuning.experiment import Journal
    from tuning.searchers import RandomSearch
    from tuning.space import Space, loguniform, uniform

    full = [0]  # full garbage collections during the run

    def count_full(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            full[0] += 1

    gc.callbacks.append(count_full)
    url = tempfile.mkdtemp(prefix=f"rungflow-sim-{kind}-{n}-")  # a real journal file
    ctl = Controller(name="sim", trainable=CrossingCurves(max_t=MAX_T),
                     space=Space({"lr": loguniform(1e-4, 1.0), "momentum": uniform(0, 1)}),
                     metric="accuracy", mode="max", scheduler=_schedulers()[kind](),
                     searcher=RandomSearch(), backend=SimulatedBackend(n_workers=WORKERS),
                     journal=Journal(url), storage=url, budget=Budget(num_samples=n), seed=0)
    t0 = time.perf_counter()
    ctl.run()
    wall = time.perf_counter() - t0
    results = ctl.iterations_total
    sim = curves_cost(results)
    return {"kind": kind, "n": n, "wall": wall, "results": results, "sim_s": sim,
            "engine_us": (wall - sim) / results * 1e6, "bytes": ctl.journal.bytes_written,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "trials": len(ctl.trials), "full_gc": full[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs=2, default=[10_000, 100_000])
    ap.add_argument("--only", nargs="*", choices=["asha", "median", "hyperband"])
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs of each size, interleaved; the fastest is compared")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], int(args.child[1]))), flush=True)
        return
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
    ratios = []
    for kind in args.only or ["asha", "median", "hyperband"]:
        runs: dict[int, list[dict[str, Any]]] = {n: [] for n in args.sizes}
        for _ in range(args.repeat):
            for n in args.sizes:  # each run in a fresh process: its peak RSS is its own
                p = subprocess.run([sys.executable, __file__, "--child", kind, str(n)], env=env,
                                   capture_output=True, text=True, check=False)
                line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
                if p.returncode != 0 or not line:
                    raise SystemExit(f"{kind} at {n} failed:\n{p.stderr[-3000:]}")
                runs[n].append(json.loads(line[-1][7:]))
        small, large = (min(runs[n], key=lambda r: r["engine_us"]) for n in args.sizes)
        spread = "; ".join(f"{n:,}: " + " ".join(f"{r['engine_us']:.0f}" for r in runs[n])
                           for n in args.sizes)
        ratio = large["engine_us"] / small["engine_us"]
        ratios.append(ratio)
        print(f"{kind:<9} engine {small['engine_us']:.0f} us/result at {small['n']:,} "
              f"({small['results']:,} results), {large['engine_us']:.0f} at {large['n']:,} "
              f"({large['results']:,}): ratio {ratio:.2f}; total at {large['n']:,}: "
              f"{large['wall']:.1f} s (curves {large['sim_s']:.1f} s); journal "
              f"{small['bytes'] / small['n']:.0f} / {large['bytes'] / large['n']:.0f} B per "
              f"trial; peak RSS {small['rss_mb']:.0f} / {large['rss_mb']:.0f} MB; full GCs "
              f"{small['full_gc']} / {large['full_gc']} (every run, us/result: {spread})",
              flush=True)
    print(f"scale_growth {max(ratios):.2f}")


if __name__ == "__main__":
    main()
