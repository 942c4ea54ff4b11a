"""Bad input: a clear error naming the field, exit code 2 from the CLI, raised before any
cluster starts, and nothing already recorded lost (storage and MLflow store unchanged)."""

from __future__ import annotations

import os
import socket

import mlflow
import pytest
import yaml

from tuning import ASHA, Tuner, uniform
from tuning.cli import main as cli
from tuning.tracking.mlflow import join_writers

BASE = {"name": "bad", "trainable": "tests.trainables:curve", "metric": "score", "mode": "max",
        "num_samples": 2, "space": {"x": {"type": "uniform", "low": 0, "high": 1}},
        "scheduler": {"type": "asha", "max_t": 9}, "backend": {"type": "dask", "n_workers": 1}}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A storage path and MLflow store that already hold a finished experiment."""
    d = tmp_path_factory.mktemp("recorded")
    storage, uri = str(d / "runs"), f"sqlite:///{d}/mlflow.db"
    Tuner("tests.trainables:SIM", space={"lr": uniform(1e-3, 0.1), "momentum": uniform(0, 1)},
          metric="accuracy", mode="max", num_samples=3, scheduler=ASHA(max_t=9),
          backend={"type": "simulated"}, storage_path=storage, tracking_uri=uri, seed=0,
          name="earlier").run()
    assert join_writers(), "the MLflow writer is still drawing the plots"
    return d, storage, uri


def snapshot(d, uri):
    files = {}
    for root, _, names in os.walk(d):
        for n in names:
            if n.endswith(("-wal", "-shm")):  # SQLite's own files, there while it is open
                continue
            p = os.path.join(root, n)
            files[p] = os.path.getsize(p)
    c = mlflow.MlflowClient(tracking_uri=uri)
    runs = sorted(r.info.run_id for e in c.search_experiments()
                  for r in c.search_runs([e.experiment_id]))
    return files, runs


def run_cli(tmp_path, recorded, change, *extra, capsys):
    d, storage, uri = recorded
    spec = {**BASE, "storage_path": storage, "tracking_uri": uri, **change}
    spec = {k: v for k, v in spec.items() if v is not None}
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump(spec))
    before = snapshot(d, uri)
    rc = cli(["run", str(f), "--quiet", *extra])
    err = capsys.readouterr().err
    assert snapshot(d, uri) == before, "bad input changed what was recorded"
    return rc, err


CASES = [
    ({"space": {"x": {"type": "loguniform", "low": 0, "high": 1}}}, "space.x", "low > 0"),
    ({"space": {"x": {"type": "uniform", "low": 2, "high": 1}}}, "space.x", "low < high"),
    ({"space": {"x": {"type": "choice", "values": []}}}, "space.x", "non-empty"),
    ({"space": {"x": {"type": "normal", "mu": 0}}}, "space.x.type", "allowed"),
    ({"scheduler": {"type": "nope"}}, "scheduler.type", "allowed: asha"),
    ({"searcher": {"type": "nope"}}, "searcher.type", "allowed: grid"),
    ({"scheduler": {"type": "asha", "max_t": 5, "grace_period": 10}}, "grace_period", "max_t"),
    ({"scheduler": {"type": "asha", "max_t": 9, "reduction_factor": 1}}, "reduction_factor",
     ">= 2"),
    ({"mode": "maximize"}, "mode", "'min' or 'max'"),
    ({"trainable": "tests.nowhere:train"}, "trainable", "cannot import module 'tests.nowhere'"),
    ({"trainable": "tests.trainables:nothing_here"}, "trainable", "no attribute 'nothing_here'"),
    ({"num_samples": 0}, "num_samples", "greater than or equal to 1"),
    ({"backend": {"type": "kubernetes"}}, "backend.type", "allowed: dask, ray, simulated"),
    ({"backend": {"type": "dask", "preload": "torch"}}, "backend.preload",
     "'auto', false, or a list of module names"),
    ({"colour": "blue"}, "colour", "unknown field"),
]


@pytest.mark.parametrize("change,field,allowed", CASES, ids=[c[1] + "-" + c[2][:12] for c in CASES])
def test_bad_spec_is_refused_naming_the_field(tmp_path, recorded, capsys, change, field, allowed):
    rc, err = run_cli(tmp_path, recorded, change, capsys=capsys)
    assert rc == 2
    assert field in err and allowed in err, err


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_cluster_address(tmp_path, recorded, capsys):
    change = {"backend": {"type": "dask", "address": f"tcp://127.0.0.1:{_closed_port()}",
                          "connect_timeout_s": 2}}
    rc, err = run_cli(tmp_path, recorded, change, capsys=capsys)
    assert rc == 2 and "backend.address" in err and "cannot reach" in err


def test_unreachable_tracking_uri(tmp_path, recorded, capsys):
    rc, err = run_cli(tmp_path, recorded, {}, "--tracking-uri",
                      f"http://127.0.0.1:{_closed_port()}", capsys=capsys)
    assert rc == 2 and "tracking_uri" in err and "cannot reach the MLflow server" in err


def test_resume_with_a_changed_space_is_refused(tmp_path, recorded, capsys):
    import json
    import shutil

    from tuning.experiment import find_experiment_dirs

    d, storage, uri = recorded
    from tuning.tuner import Tuner as T

    # an interrupted copy of the recorded run: its journal without the final event
    src = find_experiment_dirs(storage)[0]
    dst = tmp_path / "runs" / src.rsplit("/", 1)[-1]
    shutil.copytree(src, dst)
    lines = (dst / "journal.jsonl").read_text().splitlines()
    kept = [ln for ln in lines if json.loads(ln)["event"] != "finished"]
    assert len(kept) < len(lines)
    (dst / "journal.jsonl").write_text("\n".join(kept) + "\n")
    before, journal_before = snapshot(d, uri), (dst / "journal.jsonl").read_bytes()
    with pytest.raises(ValueError, match=r"changed: space.lr"):
        T.resume(str(dst), space={"lr": {"type": "uniform", "low": 0.5, "high": 0.9},
                                  "momentum": {"type": "uniform", "low": 0, "high": 1}})
    assert snapshot(d, uri) == before
    assert (dst / "journal.jsonl").read_bytes() == journal_before


def test_an_existing_run_name_is_refused_without_resume(tmp_path, recorded, capsys):
    d, storage, uri = recorded
    from tuning.experiment import find_experiment_dirs

    run_name = find_experiment_dirs(storage)[0].rsplit("/", 1)[-1]
    rc, err = run_cli(tmp_path, recorded, {}, "--run-name", run_name, capsys=capsys)
    assert rc == 2 and "already exists" in err and "rungflow resume" in err
