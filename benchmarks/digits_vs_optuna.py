"""A real workload against Optuna in one process: a small ConvNet on scikit-learn's digits.

4 hyperparameters (lr, momentum, channels, batch size), 60 trials, up to 20 epochs, successive
halving with reduction factor 3 from 1 epoch, random search, 2 workers, per seed:

* Optuna: ``RandomSampler`` + ``SuccessiveHalvingPruner``, ``n_jobs=2`` threads, in-memory
  storage, in this process (the baseline, measured in the same run);
* rungflow: ``Tuner`` with ASHA (stop variant) on a Dask LocalCluster of 2 workers, a running
  ``prefect server``, a SQLite MLflow store (one for all seeds, its tables made
  before the clock, as a team's store exists): the whole stack a user runs.

Printed per seed: wall seconds of each and their ratio, epochs trained, median seconds per epoch
inside the trials, the best validation accuracy and the held-out test accuracy of the config each
picked (retrained with a fixed seed), and for rungflow the CPU-seconds of the control plane
(driver + MLflow writer processes) as a share of the CPU-seconds of the whole process tree,
counted until the writer has finished its run (it draws the plots after ``run()`` returns) and the
cluster has finished closing (the next seed waits for both, so that Optuna's study has the cores
to itself), and the seconds from ``run()`` to
its first result and from its last result to ``run()`` returning.
Last line: ``wall_ratio X`` (median over seeds; goal <= 1.5) and ``control_plane_cpu_share Y``
(goal <= 0.15).

Optuna's in-process wall starts with optuna and torch imported, its study created and the data
loaded; rungflow's starts with its flow module (Prefect) imported, and each of its worker
processes imports torch and loads the data itself inside its wall. ``--backend '{"type":
"dask", "n_workers": 2, "cluster_kwargs": {"processes": false}}'`` runs rungflow's trials as
threads in the driver, as Optuna's ``n_jobs`` does (its control-plane share then counts the
trials too). ``--cold`` also
times each side as a script from a fresh interpreter to its exit (``python -c`` running one
study), which is what either costs a user who starts it: ``cold_wall_ratio X``.

    .venv/bin/python benchmarks/digits_vs_optuna.py [--seeds 0 1 2] [--trials 60] [--cold]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from functools import lru_cache
from typing import Any

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_T = 20
RF = 3


@lru_cache(maxsize=1)
def data() -> tuple[Any, ...]:
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    xa, xte, ya, yte = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    xtr, xva, ytr, yva = train_test_split(xa, ya, test_size=0.25, random_state=0, stratify=ya)
    return tuple(map(torch.tensor, (xtr, ytr, xva, yva, xte, yte)))


def _model(channels: int) -> Any:
    from torch import nn

    return nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(channels * 16, 10))


def epochs(config: dict[str, Any], n: int, each: Any, seed: int = 0, test: bool = False) -> float:
    """Train ``n`` epochs; ``each(epoch, accuracy, seconds)`` after every one."""
    import torch
    from torch import nn

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    xtr, ytr, xva, yva, xte, yte = data()
    m = _model(int(config["channels"]))
    opt = torch.optim.SGD(m.parameters(), lr=config["lr"], momentum=config["momentum"])
    bs = int(config["batch_size"])
    acc = 0.0
    for ep in range(1, n + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), bs):
            idx = perm[i:i + bs]
            opt.zero_grad()
            nn.functional.cross_entropy(m(xtr[idx]), ytr[idx]).backward()
            opt.step()
        with torch.no_grad():
            x, y = (xte, yte) if test else (xva, yva)
            out = m(x)
            acc = float((out.argmax(1) == y).float().mean()) if torch.isfinite(out).all() else 0.0
        if each is not None and each(ep, acc, time.perf_counter() - t0):
            break
    return acc


def test_accuracy(config: dict[str, Any]) -> float:
    return epochs(config, MAX_T, None, seed=123, test=True)


def _log_epoch(log_dir: str, seconds: float) -> None:
    with open(os.path.join(log_dir, f"ep-{os.getpid()}.txt"), "a") as f:
        f.write(f"{seconds}\n")


def rungflow_trainable(config: dict[str, Any]) -> None:
    from tuning import report

    log_dir = config["log_dir"]

    def each(ep: int, acc: float, seconds: float) -> bool:
        _log_epoch(log_dir, seconds)
        report(mean_accuracy=acc)
        return False

    epochs(config, MAX_T, each)


def run_optuna(seed: int, n_trials: int, log_dir: str) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data()  # the data set loads once, as it would in any in-process study
    trained = [0]

    def objective(trial: optuna.Trial) -> float:
        config = {"lr": trial.suggest_float("lr", 1e-4, 1.0, log=True),
                  "momentum": trial.suggest_float("momentum", 0.0, 0.99),
                  "channels": trial.suggest_categorical("channels", [4, 8, 16, 32]),
                  "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64, 128])}

        def each(ep: int, acc: float, seconds: float) -> bool:
            trained[0] += 1
            _log_epoch(log_dir, seconds)
            trial.report(acc, ep)
            if trial.should_prune():
                raise optuna.TrialPruned()
            return False

        return epochs(config, MAX_T, each)

    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=seed),
                                pruner=optuna.pruners.SuccessiveHalvingPruner(
                                    min_resource=1, reduction_factor=RF))
    t0 = time.time()
    study.optimize(objective, n_trials=n_trials, n_jobs=2)
    wall = time.time() - t0
    best = study.best_trial
    return {"wall": wall, "epochs": trained[0], "best_val": best.value,
            "best_config": dict(best.params)}


def tracking_store(root: str) -> str:
    """The run's MLflow store: one SQLite file for all seeds, as a team's store is one, its
    tables created before any clock starts (as Optuna's storage is made before its clock):
    MLflow's schema migrations cost a new SQLite store about 1.7 CPU-s, once."""
    import subprocess

    uri = f"sqlite:///{root}/mlflow.db"
    if not os.path.exists(f"{root}/mlflow.db"):
        subprocess.run([sys.executable, "-c", "import sys; from mlflow.tracking import "
                        "MlflowClient; MlflowClient(sys.argv[1]).search_experiments()", uri],
                       check=True, capture_output=True)
    return uri


def run_rungflow(seed: int, n_trials: int, root: str, log_dir: str,
                 backend: dict[str, Any] | None = None) -> dict[str, Any]:
    sys.path.insert(0, HERE)
    from decisions import CpuSampler

    from tuning import ASHA, Tuner, choice, loguniform, uniform
    from tuning.backends._base import join_closing
    from tuning.experiment import Journal
    from tuning.tracking.mlflow import join_writers

    tuner = Tuner(rungflow_trainable, space={
        "lr": loguniform(1e-4, 1.0), "momentum": uniform(0.0, 0.99),
        "channels": choice([4, 8, 16, 32]), "batch_size": choice([16, 32, 64, 128]),
        "log_dir": log_dir},
        metric="mean_accuracy", mode="max", num_samples=n_trials,
        scheduler=ASHA(max_t=MAX_T, grace_period=1, reduction_factor=RF),
        backend=backend or {"type": "dask", "n_workers": 2}, storage_path=os.path.join(root, "runs"),
        tracking_uri=tracking_store(root), seed=seed, name=f"digits-{seed}")
    import tuning.flows.tune  # noqa: F401 - the library imported before the clock, as Optuna is

    with CpuSampler() as cpu:
        t0 = time.time()
        res = tuner.run()
        wall = time.time() - t0
        # the MLflow writer draws the plots after run() returns, and the LocalCluster's
        # workers finish exiting after it: their CPU counts until they are done, and the next
        # seed's Optuna study does not share the cores with them
        join_writers()
        join_closing()
        after = time.time() - t0 - wall
    roles = cpu.by_role()
    results = [e["t"] for e in Journal(res.path).iter_events() if e["event"] == "result"]
    best = res.best_trial
    assert best is not None
    config = {k: v for k, v in best.config.items() if k != "log_dir"}
    return {"wall": wall, "epochs": sum(t.iteration for t in res.trials),
            "best_val": res.best_metric, "best_config": config,
            "control_cpu": roles.get("driver", 0.0) + roles.get("mlflow_writer", 0.0),
            "writer_after_return_s": after, "driver_cpu": roles.get("driver", 0.0), "writer_cpu": roles.get("mlflow_writer", 0.0),
            "total_cpu": sum(roles.values()),
            "first_result_s": min(results) - t0, "after_last_s": t0 + wall - max(results)}


def _median_epoch(log_dir: str) -> float:
    xs = [float(x) for f in glob.glob(os.path.join(log_dir, "ep-*.txt"))
          for x in open(f).read().split()]
    return statistics.median(xs) if xs else float("nan")


def cold(which: str, seed: int, n_trials: int, root: str,
         backend: dict[str, Any] | None = None) -> float:
    """Seconds from starting a fresh interpreter that runs one study (``which``) to its exit."""
    import subprocess

    log_dir = tempfile.mkdtemp(dir=root)
    call = (f"run_optuna({seed}, {n_trials}, {log_dir!r})" if which == "optuna" else
            f"run_rungflow({seed}, {n_trials}, {root!r}, {log_dir!r}, {backend!r})")
    code = (f"import sys; sys.path.insert(0, {HERE!r})\n"
            f"if __name__ == '__main__':\n    from digits_vs_optuna import *\n    {call}")
    t0 = time.time()
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(
        os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), HERE])))
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--backend", type=json.loads, default=None,
                    help='JSON, e.g. \'{"type": "dask", "n_workers": 2, "cluster_kwargs": '
                         '{"processes": false}}\' for thread workers in the driver, as '
                         "Optuna's n_jobs threads")
    ap.add_argument("--cold", action="store_true",
                    help="also time each study as a script from a fresh interpreter")
    args = ap.parse_args()
    sys.path.insert(0, HERE)
    from overhead import start_prefect_server

    root = tempfile.mkdtemp(prefix="rungflow-digits-")
    proc, url = start_prefect_server(root)
    os.environ["PREFECT_API_URL"] = url
    ratios, shares, cold_ratios, per_epoch = [], [], [], []
    epochs: list[tuple[int, int]] = []
    try:
        for seed in args.seeds:
            o_log, r_log = (tempfile.mkdtemp(dir=root) for _ in range(2))
            o = run_optuna(seed, args.trials, o_log)
            r = run_rungflow(seed, args.trials, root, r_log, args.backend)
            ratio, share = r["wall"] / o["wall"], r["control_cpu"] / max(r["total_cpu"], 1e-9)
            ratios.append(ratio)
            shares.append(share)
            epochs.append((r["epochs"], o["epochs"]))
            per_epoch.append((r["wall"] / max(r["epochs"], 1)) / (o["wall"] / max(o["epochs"], 1)))
            print(f"seed {seed}: optuna {o['wall']:.1f} s, {o['epochs']} epochs, "
                  f"{_median_epoch(o_log) * 1e3:.0f} ms/epoch, best val {o['best_val']:.3f}, "
                  f"test {test_accuracy(o['best_config']):.3f} | rungflow {r['wall']:.1f} s, "
                  f"{r['epochs']} epochs, {_median_epoch(r_log) * 1e3:.0f} ms/epoch, best val "
                  f"{r['best_val']:.3f}, test {test_accuracy(r['best_config']):.3f}, control "
                  f"plane {r['control_cpu']:.1f} of {r['total_cpu']:.1f} CPU-s (driver "
                  f"{r['driver_cpu']:.1f}, MLflow writer {r['writer_cpu']:.1f}, which finishes "
                  f"{r['writer_after_return_s']:.1f} s after run() returns), first result "
                  f"{r['first_result_s']:.2f} s after run(), which returns "
                  f"{r['after_last_s']:.2f} s after the last | ratio "
                  f"{ratio:.2f}", flush=True)
            if args.cold:
                oc = cold("optuna", seed, args.trials, root)
                rc = cold("rungflow", seed, args.trials, root, args.backend)
                cold_ratios.append(rc / oc)
                print(f"seed {seed} cold (fresh interpreter to exit): optuna {oc:.1f} s, "
                      f"rungflow {rc:.1f} s | ratio {rc / oc:.2f}", flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    # rungflow's ASHA has Ray Tune's rule (a trial goes on when not below the (1 - 1/rf)
    # percentile of the values recorded before it); Optuna's pruner keeps only the top
    # floor(n/rf) of the n trials at a rung, itself included, so it stops more trials while the
    # rungs are small. The same curves in the same order give rungflow more epochs to train:
    print(f"epochs_ratio {statistics.median(r_ep / o_ep for r_ep, o_ep in epochs):.2f}  "
          f"wall_per_epoch_ratio {statistics.median(per_epoch):.2f}  (rungflow / Optuna)")
    print(f"control_plane_cpu_share {statistics.median(shares):.3f}  (goal <= 0.15)")
    if cold_ratios:
        print(f"cold_wall_ratio {statistics.median(cold_ratios):.2f}")
    print(f"wall_ratio {statistics.median(ratios):.2f}  (goal <= 1.5)")


if __name__ == "__main__":
    main()
