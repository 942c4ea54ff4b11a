"""The MLflow writer at scale: synthetic journal events through the real tracker.

``N`` trials x 9 results each (events shaped as the controller emits them: ``trial_created``,
``segment_started``, ``result``, ``decision``, ``trial_status``, a rare ``state`` and the final
``finished``) are appended to a real journal in a temporary directory; its group commits feed
``MlflowTracker.apply_async`` exactly as in a run (``journal.on_durable``). The tracker writes a
fresh SQLite store (and, with ``--server``, a local ``mlflow server`` on 127.0.0.1 that the
benchmark starts and stops).

Two ways of feeding it:

- ``flood``: every event handed over as fast as the journal takes it; the writer's throughput.
- ``paced``: trials finish at ``--rate`` trials/s (a run that fast), so the figure that
  matters is the tail: seconds from the last event handed over to everything written.

Printed per size: trials/s, the tail, the writer process's CPU per trial, the child runs
written (must equal N), and the ratios of the per-trial wall and writer CPU at the largest size
to those at the smallest, measured in the same run (on a shared machine the CPU ratio is the
steadier one).
Figures only; nothing is asserted.

    .venv/bin/python benchmarks/mlflow_writer.py                   # N = 1,000 and 10,000
    .venv/bin/python benchmarks/mlflow_writer.py --sizes 500 2000 --mode paced --rate 100
    .venv/bin/python benchmarks/mlflow_writer.py --server          # also through a server
    .venv/bin/python benchmarks/mlflow_writer.py --resume          # and the resume's lookup
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np

from tuning.experiment import Journal
from tuning.tracking.mlflow import MlflowTracker

RESULTS = 9
METRIC = "score"


def trial_events(n: int, concurrency: int, seed: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(event, data)`` in the order a run with ``concurrency`` trials in flight emits them."""
    rng = np.random.default_rng(seed)
    seg = 0
    for start in range(0, n, concurrency):
        ids = [f"trial-{i:03d}" for i in range(start, min(n, start + concurrency))]
        for tid in ids:
            seg += 1
            config = {"lr": float(10 ** rng.uniform(-4, -1)), "momentum": float(rng.uniform()),
                      "layers": int(rng.integers(1, 5))}
            yield "trial_created", {"trial_id": tid, "config": config, "info": {}}
            yield "segment_started", {"trial_id": tid, "segment_id": seg, "config": config,
                                      "checkpoint": None, "start_iteration": 0,
                                      "pause_at": None}
        for it in range(1, RESULTS + 1):
            for tid in ids:
                yield "result", {"trial_id": tid, "result": {
                    METRIC: float(rng.uniform()), "training_iteration": it,
                    "time_this_iter_s": 0.001, "time_total_s": 0.001 * it,
                    "timestamp": time.time()}}
        for tid in ids:
            yield "decision", {"trial_id": tid, "decision": "STOP", "iteration": RESULTS,
                               "rung": None}
            yield "trial_status", {"trial_id": tid, "status": "TERMINATED", "error": None,
                                   "stopped_at": None, "rung": None, "num_failures": 0,
                                   "checkpoint": None, "checkpoint_iteration": None}
        if (start // concurrency) % 50 == 49:  # a rare state snapshot
            yield "state", {"scheduler": {}, "searcher": {}, "controller": {}, "backend": {}}


def measure(n: int, uri: str, mode: str, rate: float, concurrency: int, seed: int,
            options: dict[str, Any]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mlflow-writer-") as d:
        journal = Journal(f"{d}/journal")
        tracker = MlflowTracker(uri, f"bench-{n}-{time.time_ns()}", "bench", METRIC, "max",
                                {"num_samples": n}, {}, **options)
        t_open = time.perf_counter()
        tracker.open_async(None, [], {})
        tracker.flush(timeout_s=600)
        opened_s = time.perf_counter() - t_open
        cpu0 = tracker.stats.get("writer_cpu_s", 0.0)
        follow(tracker, journal)
        journal.append("run_started", resumed=False, backend={}, pid=os.getpid(), host="bench")
        t0 = time.perf_counter()
        per_trial = 1.0 / rate if mode == "paced" else 0.0
        done = 0
        for event, data in trial_events(n, concurrency, seed):
            journal.append(event, **data)
            if event == "trial_status" and per_trial:
                done += 1
                lag = t0 + done * per_trial - time.perf_counter()
                if lag > 0:
                    time.sleep(lag)
        journal.append("finished", reason="completed", best_trial="trial-000")
        journal.flush()
        t_last = time.perf_counter()
        tracker.flush(timeout_s=3600)
        t_done = time.perf_counter()
        cpu = tracker.stats.get("writer_cpu_s", 0.0) - cpu0
        tracker.close()
        journal.close()
        children = count_children(uri, tracker.parent_run_id)
    return {"n": n, "open_s": opened_s, "feed_s": t_last - t0, "tail_s": t_done - t_last,
            "total_s": t_done - t0, "trials_per_s": n / (t_done - t0), "children": children,
            "cpu_s": cpu,
            "parent": tracker.parent_run_id, "experiment_id": tracker.experiment_id}


def resume_lookup(uri: str, row: dict[str, Any], per_run_history: bool) -> dict[str, float]:
    """Seconds to find every child run of a finished run and its last step, as a resume
    does: one SQL query (the bulk sink), the run search a page of 10,000 at a time, and (the
    former way, when asked) a ``get_metric_history`` per child."""
    from mlflow.tracking import MlflowClient

    from tuning.tracking._sinks import SqliteBulkSink
    from tuning.tracking.mlflow import search_children

    client = MlflowClient(uri)
    t0 = time.perf_counter()
    sink = SqliteBulkSink(client, uri)
    found = sink.children(row["parent"], METRIC)
    sink.close()
    out = {"sql_s": time.perf_counter() - t0, "found": len(found)}
    t0 = time.perf_counter()
    pages = list(search_children(client, row["experiment_id"], row["parent"], METRIC, 10_000))
    out["search_s"] = time.perf_counter() - t0
    assert len(pages) == len(found) == row["n"], (len(pages), len(found))
    if per_run_history:
        t0 = time.perf_counter()
        for _, run_id, _ in pages:
            client.get_metric_history(run_id, METRIC)
        out["history_s"] = time.perf_counter() - t0
    return out


def follow(tracker: MlflowTracker, journal: Journal) -> None:
    """As a run does (``tasks/experiment.py``); a tracker without ``follow`` (the baseline
    measured before it) is fed the same way."""
    if hasattr(tracker, "follow"):
        tracker.follow(journal)
    else:
        journal.on_durable = tracker.apply_async


def count_children(uri: str, parent: str | None) -> int:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    n, token = 0, None
    while True:
        page = c.search_runs([c.get_run(str(parent)).info.experiment_id],
                             f"tags.`mlflow.parentRunId` = '{parent}'", max_results=10000,
                             page_token=token)
        n += len(page)
        token = page.token
        if not token:
            return n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(folder: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false", "DO_NOT_TRACK": "1"}
    with open(f"{folder}/server.log", "wb") as log:  # the child keeps its own handle
        proc = subprocess.Popen([f"{bin_dir}/mlflow", "server", "--backend-store-uri",
                                 f"sqlite:///{folder}/server.db", "--default-artifact-root",
                                 f"{folder}/artifacts", "--host", "127.0.0.1", "--port",
                                 str(port), "--workers", str(workers)], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited; see {folder}/server.log") from None
            time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError("mlflow server did not answer within 180 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """The server and its workers: the process group it leads (its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def report_resume(rows: list[dict[str, Any]]) -> None:
    print("\nresume: finding every child run and its last step")
    print(f"{'children':>9} {'one SQL query s':>16} {'paged search s':>15} "
          f"{'history per run s':>18}")
    for r in rows:
        hist = f"{r['history_s']:>18.2f}" if "history_s" in r else f"{'-':>18}"
        print(f"{r['found']:>9,} {r['sql_s']:>16.2f} {r['search_s']:>15.2f} {hist}")


def report(label: str, rows: list[dict[str, float]]) -> None:
    print(f"\n{label}")
    print(f"{'trials':>8} {'open s':>7} {'feed s':>7} {'tail s':>7} {'total s':>8} "
          f"{'trials/s':>9} {'ms/trial':>9} {'writer cpu ms/trial':>20} {'children':>9}")
    for r in rows:
        print(f"{r['n']:>8,} {r['open_s']:>7.2f} {r['feed_s']:>7.2f} {r['tail_s']:>7.2f} "
              f"{r['total_s']:>8.2f} {r['trials_per_s']:>9.1f} "
              f"{1000 * r['total_s'] / r['n']:>9.2f} {1000 * r['cpu_s'] / r['n']:>20.2f} "
              f"{r['children']:>9,}")
    if len(rows) > 1:
        lo, hi = rows[0], rows[-1]
        ratio = (hi["total_s"] / hi["n"]) / (lo["total_s"] / lo["n"])
        print(f"per-trial wall at {hi['n']:,} / at {lo['n']:,}: {ratio:.2f}")
        if lo["cpu_s"] > 0:
            cpu = (hi["cpu_s"] / hi["n"]) / (lo["cpu_s"] / lo["n"])
            print(f"per-trial writer CPU at {hi['n']:,} / at {lo['n']:,}: {cpu:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--mode", choices=["flood", "paced"], default="flood")
    p.add_argument("--rate", type=float, default=100.0, help="paced: trials finished per second")
    p.add_argument("--concurrency", type=int, default=32, help="trials in flight at a time")
    p.add_argument("--server", action="store_true", help="also through a local mlflow server")
    p.add_argument("--server-workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--client", action="store_true",
                   help="SQLite through MlflowClient calls, not the bulk transaction")
    p.add_argument("--threads", type=int, help="server: writer threads (default 8)")
    p.add_argument("--resume", action="store_true",
                   help="also time finding the children again, as a resume does")
    args = p.parse_args()
    options: dict[str, Any] = {"bulk": False} if args.client else {}
    if args.threads:
        options["threads"] = args.threads
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with tempfile.TemporaryDirectory(prefix="mlflow-bench-") as d:
        rows = []
        for n in args.sizes:
            uri = f"sqlite:///{d}/store-{n}.db"
            rows.append(measure(n, uri, args.mode, args.rate, args.concurrency, args.seed,
                                options))
        sink = "MlflowClient calls" if args.client else "bulk transactions"
        report(f"SQLite store ({sink}), {args.mode}" + (f" at {args.rate:g} trials/s"
                                               if args.mode == "paced" else ""), rows)
        if args.resume:
            report_resume([resume_lookup(f"sqlite:///{d}/store-{r['n']}.db", r, i == 0)
                           for i, r in enumerate(rows)])
        if args.server:
            proc, url = start_server(d, args.server_workers)
            try:
                rows = [measure(n, url, args.mode, args.rate, args.concurrency, args.seed,
                                options) for n in args.sizes]
            finally:
                stop_server(proc)
            report(f"mlflow server ({args.server_workers} workers, SQLite behind it), "
                   f"{options.get('threads', 8)} writer threads, {args.mode}", rows)


if __name__ == "__main__":
    main()
