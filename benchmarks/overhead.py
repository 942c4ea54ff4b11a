"""Per-trial overhead of the full stack (Prefect flow + Dask + MLflow) against plain Dask futures.

Both run on the same 2-process LocalCluster; no-op trials with one report each, at N=50 and
N=500. The marginal cost per trial is (T(500) - T(50)) / 450, so fixed start-up (the Prefect
API, the cluster) neither hides nor inflates it. Prints, last, ``overhead_ratio``.

    .venv/bin/python benchmarks/overhead.py [--server]   # --server: a `prefect server start` too
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DASK_DISTRIBUTED__LOGGING__DISTRIBUTED", "error")


def noop_trial(config):
    from tuning import report

    report(score=config["x"])


def plain(x):
    return x


def time_plain(client, n: int) -> float:
    t0 = time.perf_counter()
    futs = [client.submit(plain, i, pure=False) for i in range(n)]
    client.gather(futs)
    return time.perf_counter() - t0


def time_full(address: str, n: int, root: str, tag: str) -> tuple[float, float]:
    from tuning import Tuner, uniform

    d = os.path.join(root, f"{tag}-{n}")
    tuner = Tuner(noop_trial, space={"x": uniform(0, 1)}, metric="score", mode="max",
                  num_samples=n, backend={"type": "dask", "address": address},
                  storage_path=d, tracking_uri=f"sqlite:///{d}/mlflow.db", seed=0,
                  name=f"overhead-{tag}-{n}")
    t0 = time.time()
    res = tuner.run()
    total = time.time() - t0
    first = min(t.first_timestamp for t in res.trials if t.first_timestamp is not None)
    assert len(res.trials) == n, len(res.trials)
    return total, first - t0


def time_full_subprocess(root: str) -> tuple[float, float]:
    """Start-up of a first run in a fresh process (Prefect's ephemeral API started by it)."""
    import json

    script = os.path.join(root, "first_run.py")
    with open(script, "w") as f:
        f.write("import json, sys\n"
                f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
                "import overhead\n"
                "from distributed import LocalCluster\n"
                "if __name__ == '__main__':\n"
                "    with LocalCluster(n_workers=2, threads_per_worker=1, host='127.0.0.1',"
                " dashboard_address=None) as c:\n"
                f"        print(json.dumps(overhead.time_full(c.scheduler_address, 5, {root!r},"
                " 'first')))\n")
    out = subprocess.run([sys.executable, script], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.getcwd()))
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))  # type: ignore[return-value]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_prefect_server(root: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=os.path.join(root, "prefect-home"),
               PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port))
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "prefect"), "server",
                             "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    import urllib.request

    for _ in range(240):
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("prefect server did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=50)
    ap.add_argument("--large", type=int, default=500)
    ap.add_argument("--server", action="store_true", help="also measure against a running "
                    "`prefect server start` (start-up with the API already up)")
    ap.add_argument("--repeat", type=int, default=3, help="measure T(small), T(large) this many "
                    "times; the median marginal cost is reported (the machine is noisy)")
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    root = tempfile.mkdtemp(prefix="rungflow-bench-")
    # start-up with Prefect's ephemeral API: the first flow of this process starts it
    _, startup_eph = time_full_subprocess(root)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.gather([client.submit(plain, 0, pure=False)])  # warm
        time_full(cluster.scheduler_address, 5, root, "warm")  # starts Prefect's ephemeral API
        span = args.large - args.small
        plain_margs, full_margs = [], []
        for rep in range(args.repeat):
            p_small, p_large = time_plain(client, args.small), time_plain(client, args.large)
            plain_margs.append((p_large - p_small) / span)
            f_small, _ = time_full(cluster.scheduler_address, args.small, root, f"e{rep}")
            f_large, _ = time_full(cluster.scheduler_address, args.large, root, f"e{rep}")
            full_margs.append((f_large - f_small) / span)
            print(f"repeat {rep}: plain_dask T({args.small})={p_small:.3f}s "
                  f"T({args.large})={p_large:.3f}s; full_stack T({args.small})={f_small:.3f}s "
                  f"T({args.large})={f_large:.3f}s; ratio {full_margs[-1] / plain_margs[-1]:.2f}")
        plain_marg, full_marg = statistics.median(plain_margs), statistics.median(full_margs)
        print(f"plain_dask marginal={plain_marg * 1e3:.2f}ms/trial (median of {args.repeat})")
        print(f"full_stack marginal={full_marg * 1e3:.2f}ms/trial (median of {args.repeat})")
        print(f"startup_s_ephemeral_api {startup_eph:.2f}")
        if args.server:
            proc, url = start_prefect_server(root)
            try:
                os.environ["PREFECT_API_URL"] = url
                from prefect.settings import PREFECT_API_URL, temporary_settings

                with temporary_settings({PREFECT_API_URL: url}):
                    time_full(cluster.scheduler_address, 5, root, "warm")  # the server's first flow
                    _, startup_srv = time_full(cluster.scheduler_address, args.small, root, "srv")
                print(f"startup_s {startup_srv:.2f}")
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
        else:
            print(f"startup_s {startup_eph:.2f}")
    print(f"overhead_ratio {full_marg / plain_marg:.2f}")


if __name__ == "__main__":
    main()
