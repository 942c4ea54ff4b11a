"""SIGKILL the driver at several moments, then `rungflow resume`: every trial once in MLflow,
histories without gaps or duplicates, the same parent run."""

from __future__ import annotations

import glob
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import mlflow
import pytest

pytestmark = pytest.mark.slow

SCRIPT = '''
import math, os, time
from tuning import Tuner, ASHA, uniform, report, get_checkpoint
def train(config):
    ck = get_checkpoint(); start = ck["it"] if ck else 0
    for it in range(start + 1, 10):
        time.sleep(float(os.environ.get("EPOCH_S", "0.1")))
        report(score=config["x"] * (1 - math.exp(-it / 3.0)), checkpoint={{"it": it}})
        open(os.path.join(os.environ["MARKS"], str(time.time_ns())), "w").close()
if __name__ == "__main__":
    Tuner(train, space={{"x": uniform(0.0, 1.0)}}, metric="score", mode="max", num_samples=8,
          scheduler=ASHA(max_t=9, grace_period=1, reduction_factor=3),
          backend={{"type": "dask", "n_workers": 2}},
          storage_path={d!r}, tracking_uri={uri!r}, seed=0, name="killed").run()
'''


def _children(uri):
    c = mlflow.MlflowClient(tracking_uri=uri)
    runs = [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id],
                                                                      max_results=1000)]
    return c, [r for r in runs if "mlflow.parentRunId" not in r.data.tags], \
        [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def _mlflow_child_runs(db):
    try:
        with sqlite3.connect(db, timeout=0.1) as con:  # WAL: readers need the -shm file
            return con.execute("select count(*) from tags where key='mlflow.parentRunId'"
                               ).fetchone()[0]
    except sqlite3.Error:
        return 0


MOMENTS = {
    "before-first-result": lambda d, marks: bool(glob.glob(f"{d}/killed-*/journal.jsonl")),
    "mid-run": lambda d, marks: len(os.listdir(marks)) >= 12,
    "during-mlflow-writes": lambda d, marks: _mlflow_child_runs(f"{d}/mlflow.db") >= 1,
}
# MLflow's writer process takes seconds to start (imports, a new SQLite store): longer epochs
# keep the run going while it writes
EPOCH_S = {"during-mlflow-writes": "0.5"}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_sigkill_then_resume_records_every_trial_once(tmp_path, moment):
    d, marks = tmp_path / "exp", tmp_path / "marks"
    d.mkdir()
    marks.mkdir()
    uri = f"sqlite:///{d}/mlflow.db"
    (d / "exp.py").write_text(textwrap.dedent(SCRIPT.format(d=str(d), uri=uri)))
    env = dict(os.environ, PYTHONPATH=f"{d}{os.pathsep}{os.getcwd()}", MARKS=str(marks),
               DO_NOT_TRACK="1", EPOCH_S=EPOCH_S.get(moment, "0.1"))
    p = subprocess.Popen([sys.executable, str(d / "exp.py")], env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    try:
        while time.time() < deadline and p.poll() is None and not MOMENTS[moment](d, marks):
            time.sleep(0.02)
        assert p.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    status = subprocess.run([os.path.join(os.path.dirname(sys.executable), "rungflow"),
                             "status", str(d)], env=env, capture_output=True, text=True)
    assert "interrupted" in status.stdout, status.stdout + status.stderr
    r = subprocess.run([os.path.join(os.path.dirname(sys.executable), "rungflow"), "resume",
                        str(d), "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    status = subprocess.run([os.path.join(os.path.dirname(sys.executable), "rungflow"),
                             "status", str(d)], env=env, capture_output=True, text=True)
    assert "finished" in status.stdout
    c, parents, kids = _children(uri)
    assert len(parents) == 1
    assert sorted(k.data.tags["rungflow.trial_id"] for k in kids) == \
        [f"trial-{i:03d}" for i in range(8)]
    for k in kids:
        steps = [m.step for m in c.get_metric_history(k.info.run_id, "score")]
        assert sorted(steps) == list(range(1, max(steps) + 1)), steps
        assert k.info.status == "FINISHED"
        assert k.data.tags["rungflow.status"] in ("TERMINATED", "STOPPED")
