"""`rungflow run|status|best|ls` on a YAML experiment (simulated backend: fast, real flow)."""

from __future__ import annotations

import json

import pytest
import yaml

from tuning.cli import main as cli


def test_run_then_status_best_ls(tmp_path, capsys):
    spec = {"name": "cli-sim", "trainable": "tests.trainables:SIM", "metric": "accuracy",
            "mode": "max", "num_samples": 6,
            "space": {"lr": {"type": "loguniform", "low": "1e-4", "high": 0.1},
                      "momentum": {"type": "uniform", "low": 0.0, "high": 1.0}},
            "scheduler": {"type": "hyperband", "max_t": 9, "reduction_factor": 3},
            "backend": {"type": "simulated", "n_workers": 2},
            "storage_path": str(tmp_path / "runs"), "tracking_uri": f"sqlite:///{tmp_path}/m.db",
            "seed": 0}
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump(spec))
    assert cli(["run", str(f), "--quiet", "--run-name", "first"]) == 0
    out = capsys.readouterr().out
    assert "experiment cli-sim: 6 trials" in out and "best trial trial-" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/m.db --host 127.0.0.1" in out
    run_dir = str(tmp_path / "runs" / "first")

    assert cli(["status", run_dir, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["status"] == "finished" and sum(status["trials"].values()) == 6

    assert cli(["best", run_dir, "--json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["trial_id"].startswith("trial-") and 0 < best["accuracy"] < 1

    assert cli(["ls", run_dir, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 6 and {r["trial_id"] for r in rows} >= {best["trial_id"]}
    assert max(r["accuracy"] for r in rows) == pytest.approx(best["accuracy"])

    assert cli(["run", str(f), "--quiet", "--run-name", "second", "--num-samples", "3"]) == 0
    capsys.readouterr()
    assert cli(["ls", str(tmp_path / "runs")]) == 0
    listing = capsys.readouterr().out
    assert "first" in listing and "second" in listing and listing.count("finished") == 2
