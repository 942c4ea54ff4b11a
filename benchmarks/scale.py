"""Flat cost per trial on the full stack: the tune flow, a Dask LocalCluster (2 workers), a
SQLite MLflow store and a running ``prefect server``, at 1,000 and 10,000 trials in one run.

The trainable is instant and reports 9 times; ASHA(max_t=9, grace_period=1, rf=3) with random
search. Each size runs in a fresh driver process (its peak RSS is that process's own). Printed
per size: wall, wall per trial, journal bytes per trial, driver peak RSS, Prefect task runs of
the flow run, MLflow child runs, seconds from the last result to ``run()`` returning. Then the
ratios at 10,000 over 1,000 (goals: wall per trial <= 1.1, journal bytes per trial <= 1.1,
peak RSS <= 1.2; task runs at 10,000 <= 1,000; child runs == N).

    .venv/bin/python benchmarks/scale.py                 # 1,000 and 10,000 trials
    .venv/bin/python benchmarks/scale.py --sizes 300 3000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

HERE = os.path.dirname(os.path.abspath(__file__))


def instant(config: dict) -> None:
    from tuning import report

    for it in range(1, 10):
        report(score=config["x"] * it / 9.0)


def count_task_runs(flow_run_id: str) -> int:
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


def child_runs(uri: str, experiment: str) -> int:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(experiment)
    n, token = 0, None
    while True:
        page = c.search_runs([exp.experiment_id], "tags.`rungflow.trial_id` LIKE 'trial-%'",
                             max_results=10_000, page_token=token)
        n += len(page)
        token = page.token
        if not token:
            return n


def child(n: int, root: str) -> dict:
    """One size in this (fresh) process."""
    sys.path.insert(0, HERE)
    from tuning import ASHA, Tuner, uniform
    from tuning.experiment import Journal
    from tuning.flows.tune import tune

    name = f"scale-{n}"
    uri = f"sqlite:///{root}/mlflow-{n}.db"
    tuner = Tuner(instant, space={"x": uniform(0, 1)}, metric="score", mode="max",
                  num_samples=n, scheduler=ASHA(max_t=9, grace_period=1, reduction_factor=3),
                  backend={"type": "dask", "n_workers": 2}, storage_path=f"{root}/runs",
                  tracking_uri=uri, seed=0, name=name)
    t0 = time.time()
    state = tune(spec=tuner.spec, components=tuner.components, return_state=True)
    t_end = time.time()
    out = state.result()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    journal = Journal(out["experiment_dir"])
    last_result = max(e["t"] for e in journal.iter_events() if e["event"] == "result")
    size = os.path.getsize(journal.path)
    return {"n": n, "wall": t_end - t0, "journal_bytes": size, "rss_mb": rss_mb,
            "task_runs": count_task_runs(str(state.state_details.flow_run_id)),
            "children": child_runs(uri, name), "tail_s": t_end - last_result}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs=2, default=[1000, 10000])
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.root)), flush=True)
        return
    sys.path.insert(0, HERE)
    from overhead import start_prefect_server

    root = tempfile.mkdtemp(prefix="rungflow-scale-")
    proc, url = start_prefect_server(root)
    env = dict(os.environ, PREFECT_API_URL=url, PYTHONPATH=os.path.dirname(HERE))
    rows = []
    try:
        for n in args.sizes:
            p = subprocess.run([sys.executable, __file__, "--child", str(n), "--root", root],
                               env=env, capture_output=True, text=True, check=False)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            if p.returncode != 0 or not line:
                raise SystemExit(f"size {n} failed (rc={p.returncode}):\n{p.stderr[-3000:]}")
            rows.append(json.loads(line[-1][7:]))
            r = rows[-1]
            print(f"N={r['n']:>6}: wall {r['wall']:.1f} s ({r['wall'] / r['n'] * 1e3:.1f} ms per "
                  f"trial), journal {r['journal_bytes'] / 1e6:.2f} MB "
                  f"({r['journal_bytes'] / r['n']:.0f} B per trial), driver peak RSS "
                  f"{r['rss_mb']:.0f} MB, Prefect task runs {r['task_runs']}, MLflow child runs "
                  f"{r['children']}, returned {r['tail_s']:.2f} s after the last result",
                  flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    small, large = rows
    per = [r["wall"] / r["n"] for r in rows]
    jb = [r["journal_bytes"] / r["n"] for r in rows]
    print(f"wall_per_trial_ratio {per[1] / per[0]:.2f}  (goal <= 1.1)")
    print(f"journal_bytes_per_trial_ratio {jb[1] / jb[0]:.2f}  (goal <= 1.1)")
    print(f"driver_peak_rss_ratio {large['rss_mb'] / small['rss_mb']:.2f}  (goal <= 1.2)")
    print(f"task_runs_at_{large['n']} {large['task_runs']}  (goal <= 1000)")
    print(f"mlflow_child_runs {small['children']}/{small['n']} {large['children']}/{large['n']}")
    print(f"seconds_after_last_result {large['tail_s']:.2f}  (goal <= 5)")


if __name__ == "__main__":
    main()
