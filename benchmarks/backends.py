"""Dask and Ray backends: per-trial overhead against each engine's own plain API, and worker
utilization under ASHA.

1. Overhead: no-op trials (one report each) through rungflow's controller on the backend,
   against the same function as plain Dask futures / plain Ray tasks on the same cluster; the
   marginal cost per trial is (T(large) - T(small)) / (large - small).
2. Utilization: ASHA with epochs of 0.2-1 s (drawn per trial) on 2 workers, through the full
   Tuner (Prefect flow + MLflow); utilization = time inside trainables / (workers x wall time),
   the wall time running from the first trial's start to the last trial's end.

    .venv/bin/python benchmarks/backends.py [--backend dask|ray|both]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def noop_trial(config):
    from tuning import report

    report(score=config["x"])


def plain(x):
    return x


def epochs_trial(config):
    from tuning import get_checkpoint, report

    ck = get_checkpoint()
    for it in range((ck or {}).get("it", 0) + 1, 10):
        time.sleep(config["epoch_s"])
        report(score=config["x"] * it / (1 + config["epoch_s"]), checkpoint={"it": it})


def engine_run(backend, n: int) -> float:
    """rungflow's own loop (no Prefect, no MLflow) over n no-op trials on a started backend."""
    from tuning.controller import Budget, Controller
    from tuning.experiment import Journal
    from tuning.schedulers import FIFO
    from tuning.searchers import RandomSearch
    from tuning.space import Space, uniform

    d = f"memory://bench-{time.time_ns()}"
    ctl = Controller(name="bench", trainable=noop_trial, space=Space({"x": uniform(0, 1)}),
                     metric="score", mode="max", scheduler=FIFO(), searcher=RandomSearch(),
                     backend=backend, journal=Journal(d), storage=tempfile.mkdtemp(),
                     budget=Budget(num_samples=n), seed=0)
    t0 = time.perf_counter()
    ctl.run()
    assert len(ctl.trials) == n
    return time.perf_counter() - t0


def overhead(kind: str, small: int, large: int) -> float:
    from tuning.backends import make_backend

    spec = {"type": "dask", "n_workers": 2} if kind == "dask" else {"type": "ray", "num_cpus": 2}
    backend = make_backend(spec)
    backend.start()
    try:
        if kind == "dask":
            c = backend.client
            c.gather([c.submit(plain, 0, pure=False)])

            def base(n):
                t0 = time.perf_counter()
                c.gather([c.submit(plain, i, pure=False) for i in range(n)])
                return time.perf_counter() - t0
        else:
            import ray

            rplain = ray.remote(num_cpus=1)(plain)
            ray.get(rplain.remote(0))

            def base(n):
                t0 = time.perf_counter()
                ray.get([rplain.remote(i) for i in range(n)])
                return time.perf_counter() - t0
        engine_run(backend, 4)  # warm
        b_small, b_large = base(small), base(large)
        e_small, e_large = engine_run(backend, small), engine_run(backend, large)
    finally:
        backend.close()
    b_m = (b_large - b_small) / (large - small)
    e_m = (e_large - e_small) / (large - small)
    print(f"{kind}: plain {b_m * 1e3:.2f} ms/trial, rungflow engine {e_m * 1e3:.2f} ms/trial, "
          f"overhead_ratio_{kind} {e_m / b_m:.2f}")
    return e_m / b_m


def utilization(kind: str, n: int) -> float:
    from tuning import ASHA, Tuner, uniform

    d = tempfile.mkdtemp(prefix=f"rungflow-util-{kind}-")
    backend = {"type": "dask", "n_workers": 2} if kind == "dask" else {"type": "ray", "num_cpus": 2}
    res = Tuner(epochs_trial, space={"x": uniform(0, 1), "epoch_s": uniform(0.2, 1.0)},
                metric="score", mode="max", num_samples=n,
                scheduler=ASHA(max_t=9, grace_period=1, reduction_factor=3), backend=backend,
                storage_path=d, tracking_uri=f"sqlite:///{d}/m.db", seed=0,
                name=f"util-{kind}").run()
    hist = [h for h in res.histories().values() if h]
    starts = [h[0]["timestamp"] - h[0]["time_this_iter_s"] for h in hist]
    ends = [h[-1]["timestamp"] for h in hist]
    busy = sum(r["time_this_iter_s"] for h in hist for r in h)
    wall = max(ends) - min(starts)
    u = busy / (2 * wall)
    print(f"{kind}: ASHA {n} trials, {sum(map(len, hist))} epochs, "
          f"busy {busy:.1f}s over 2 workers x {wall:.1f}s wall: utilization_{kind} {u:.3f}")
    return u


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=["dask", "ray", "both"], default="both")
    ap.add_argument("--small", type=int, default=50)
    ap.add_argument("--large", type=int, default=300)
    ap.add_argument("--trials", type=int, default=24)
    args = ap.parse_args()
    kinds = ["dask", "ray"] if args.backend == "both" else [args.backend]
    ratios, utils = {}, {}
    for kind in kinds:
        ratios[kind] = overhead(kind, args.small, args.large)
        utils[kind] = utilization(kind, args.trials)
    for kind in kinds:
        print(f"overhead_ratio_{kind} {ratios[kind]:.2f}  utilization_{kind} {utils[kind]:.3f}")


if __name__ == "__main__":
    main()
