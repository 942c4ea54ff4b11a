"""Do ASHA's STOP decisions reach the trials in time? What does the control plane cost?

A real Dask LocalCluster with 2 workers and a running ``prefect server``; ASHA (stop variant,
max_t=27, grace_period=1, reduction_factor=3) with random search over 5 hyperparameters;
81 trials whose iterations each take 20 ms (synthetic learning curves that cross: fast
learners lead early, slow ones end higher). Measured, per seed:

* iterations trained, and iterations trained after their trial's STOP decision (per trial
  p50 / p90, and their share of all iterations);
* the decision latency seen by the trial: how long ``report()`` waited at a decision point
  for its answer (timed inside the trainable), p50 / p90 in ms;
* the Prefect task runs of the flow run, and task runs per second of the run;
* the CPU-seconds of the driver and of the MLflow writer as a share of the CPU-seconds of the
  whole process tree (psutil, sampled every 0.2 s);
* seconds from ``Tuner.run()`` to the first result, and from the last result to its return.

The last line is ``late_share X``: iterations trained after their trial's STOP over all
iterations trained (goal <= 0.02).

    .venv/bin/python benchmarks/decisions.py [--seeds 0 1 2] [--no-server]
"""

from __future__ import annotations

import argparse
import glob
import math
import multiprocessing
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DASK_DISTRIBUTED__LOGGING__DISTRIBUTED", "error")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

EPOCH_S = 0.02
MAX_T = 27
N_TRIALS = 81


def final_score(c: dict[str, Any]) -> float:
    d = (((math.log10(c["lr"]) + 2.5) / 0.5) ** 2 + ((c["momentum"] - 0.9) / 0.1) ** 2
         + ((math.log10(c["weight_decay"]) + 4.0) / 1.0) ** 2 + ((c["dropout"] - 0.3) / 0.2) ** 2
         + (0.0 if c["batch_size"] == 64 else 0.3))
    return math.exp(-d / 2.0)


def score(c: dict[str, Any], epoch: int) -> float:
    tau = max(1.0, 3.0 * 10 ** (-(math.log10(c["lr"]) + 2.5)))
    rng = random.Random(hash((tuple(sorted((k, str(v)) for k, v in c.items())), epoch)))
    s = final_score(c) * (1.0 - math.exp(-epoch / tau))
    return max(0.0, min(1.0, s + rng.gauss(0.0, 0.02)))


def trainable(config: dict[str, Any]) -> None:
    """20 ms per iteration; logs how long report() waited at each decision point."""
    from tuning import report

    log = os.path.join(config["lat_dir"], f"lat-{os.getpid()}.txt")
    c = {k: v for k, v in config.items() if k != "lat_dir"}
    for epoch in range(1, MAX_T + 1):
        time.sleep(EPOCH_S)
        t0 = time.perf_counter()
        try:
            report(score=score(c, epoch))
        finally:
            waited = time.perf_counter() - t0
            if epoch in (1, 3, 9):  # ASHA's milestones below max_t: decision points
                with open(log, "a") as f:
                    f.write(f"{waited}\n")


class CpuSampler:
    """CPU-seconds per process of this process tree, sampled until stopped (processes that end
    keep their last sample). The tree is listed every second (a scan of /proc) and the known
    processes are read every 0.2 s; the sampler's own CPU (its thread, in this process) is not
    counted as the driver's."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.cpu: dict[int, float] = {}
        self.role: dict[int, str] = {}
        self.own = 0.0
        self._procs: dict[int, Any] = {}
        self._listed = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _list(self) -> None:
        names = {p.pid: p.name for p in multiprocessing.active_children()}
        for p in [self.me, *self.me.children(recursive=True)]:
            self._procs.setdefault(p.pid, p)
            if p.pid == self.me.pid:
                self.role[p.pid] = "driver"
            elif names.get(p.pid) == "rungflow-mlflow":
                self.role[p.pid] = "mlflow_writer"
            else:
                self.role.setdefault(p.pid, "other")
        self._listed = time.monotonic()

    def _sample(self, relist: bool = False) -> None:
        import psutil

        if relist or time.monotonic() - self._listed >= 1.0:
            self._list()
        for pid, p in list(self._procs.items()):
            try:
                t = p.cpu_times()
            except psutil.Error:
                del self._procs[pid]
                continue
            self.cpu[pid] = t.user + t.system

    def _run(self) -> None:
        t0 = time.thread_time()
        while not self._stop.wait(0.2):
            self._sample()
        self.own = time.thread_time() - t0

    def __enter__(self) -> CpuSampler:
        self._sample(relist=True)
        self.base = dict(self.cpu)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(relist=True)

    def by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, c in self.cpu.items():
            role = self.role.get(pid, "other")
            out[role] = out.get(role, 0.0) + c - self.base.get(pid, 0.0)
        out["driver"] = out.get("driver", 0.0) - self.own
        return out


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def count_task_runs(flow_run_id: Any) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flt = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    n, offset = 0, 0
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_task_runs(flow_run_filter=flt, limit=200, offset=offset)
            n += len(page)
            offset += 200
            if len(page) < 200:
                return n


def latest_flow_run_id(name: str) -> Any:
    """The id of the newest flow run named ``name`` (the tune flow is named after the spec)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(any_=[name])), sort=FlowRunSort.START_TIME_DESC, limit=1)
    return runs[0].id


def run_seed(seed: int, root: str) -> dict[str, Any]:
    from tuning import ASHA, Tuner, choice, loguniform, uniform
    from tuning.experiment import Journal

    lat_dir = os.path.join(root, f"lat-{seed}")
    os.makedirs(lat_dir)
    tuner = Tuner(trainable, space={
        "lr": loguniform(1e-5, 1.0), "momentum": uniform(0.0, 0.99),
        "weight_decay": loguniform(1e-6, 1e-1), "dropout": uniform(0.0, 0.7),
        "batch_size": choice([32, 64, 128, 256]), "lat_dir": lat_dir},
        metric="score", mode="max", num_samples=N_TRIALS,
        scheduler=ASHA(max_t=MAX_T, grace_period=1, reduction_factor=3),
        backend={"type": "dask", "n_workers": 2}, storage_path=os.path.join(root, "runs"),
        tracking_uri=f"sqlite:///{root}/mlflow-{seed}.db", seed=seed, name=f"decisions-{seed}")
    import tuning.flows.tune  # noqa: F401 - Prefect imported before the clock (1-1.5 s once)

    with CpuSampler() as cpu:
        t0 = time.time()
        res = tuner.run()  # what a user calls
        t_end = time.time()
    events = Journal(res.path).read()
    last_iter: dict[str, int] = {}
    stop_at: dict[str, int] = {}
    result_ts = []
    for e in events:
        if e["event"] == "result":
            last_iter[e["trial_id"]] = max(last_iter.get(e["trial_id"], 0),
                                           int(e["result"]["training_iteration"]))
            result_ts.append(e["result"]["timestamp"])
        elif e["event"] == "decision" and e["decision"] == "STOP":
            stop_at.setdefault(e["trial_id"], int(e["iteration"]))
    late = [last_iter[t] - it for t, it in stop_at.items()]
    waits = [float(x) * 1e3 for f in glob.glob(os.path.join(lat_dir, "lat-*.txt"))
             for x in open(f).read().split()]
    roles = cpu.by_role()
    total_cpu = sum(roles.values())
    wall = t_end - t0
    task_runs = count_task_runs(latest_flow_run_id(f"decisions-{seed}"))
    return {"iterations": sum(last_iter.values()), "late": sum(late), "late_p50": pct(late, 0.5),
            "late_p90": pct(late, 0.9), "lat_p50": pct(waits, 0.5), "lat_p90": pct(waits, 0.9),
            "task_runs": task_runs, "wall": wall, "runs_per_s": task_runs / wall,
            "driver_cpu": roles.get("driver", 0.0), "writer_cpu": roles.get("mlflow_writer", 0.0),
            "total_cpu": total_cpu, "first_s": min(result_ts) - t0, "tail_s": t_end - max(result_ts),
            "stopped": len(stop_at), "trials": len(last_iter)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-server", action="store_true", help="use Prefect's ephemeral API")
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    root = tempfile.mkdtemp(prefix="rungflow-decisions-")
    proc = None
    if not args.no_server:
        from overhead import start_prefect_server

        proc, url = start_prefect_server(root)
        os.environ["PREFECT_API_URL"] = url
    try:
        rows = [run_seed(seed, root) for seed in args.seeds]
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    for seed, r in zip(args.seeds, rows):
        ctl_share = (r["driver_cpu"] + r["writer_cpu"]) / max(r["total_cpu"], 1e-9)
        print(f"seed {seed}: trials {r['trials']} ({r['stopped']} stopped), iterations trained "
              f"{r['iterations']}, after STOP {r['late']} (per trial p50 {r['late_p50']:.0f}, "
              f"p90 {r['late_p90']:.0f}); decision latency at the trial p50 "
              f"{r['lat_p50']:.1f} ms, p90 {r['lat_p90']:.1f} ms; wall {r['wall']:.1f} s, "
              f"first result after {r['first_s']:.2f} s, returned {r['tail_s']:.2f} s after "
              f"the last; Prefect task runs {r['task_runs']} ({r['runs_per_s']:.2f}/s); CPU-s "
              f"driver {r['driver_cpu']:.1f} + MLflow writer {r['writer_cpu']:.1f} of "
              f"{r['total_cpu']:.1f} ({ctl_share:.0%})")
    iters = sum(r["iterations"] for r in rows)
    late = sum(r["late"] for r in rows)
    print(f"iterations_trained median {statistics.median(r['iterations'] for r in rows)}")
    print(f"late_p90_iterations max {max(r['late_p90'] for r in rows):.0f}")
    print(f"decision_latency_p50_ms median {statistics.median(r['lat_p50'] for r in rows):.1f}")
    print(f"task_runs_per_s max {max(r['runs_per_s'] for r in rows):.2f}")
    print(f"late_share {late / max(iters, 1):.4f}")


if __name__ == "__main__":
    main()
