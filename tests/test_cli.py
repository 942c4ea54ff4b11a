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


def _big_journal(tmp_path, n):
    """A finished run of ``n`` trials, written as the controller journals it."""
    import numpy as np

    from tuning.experiment import Journal

    d = tmp_path / "runs" / "big"
    j = Journal(str(d))
    j.append("experiment_created", spec={"name": "big", "metric": "acc", "mode": "max"})
    j.append("run_started", resumed=False, backend={}, pid=1, host="elsewhere")
    final = np.random.default_rng(0).uniform(size=n)
    for i in range(n):
        tid = f"trial-{i:03d}"
        j.append("trial_created", trial_id=tid, config={"x": i}, info={})
        j.append("segment_started", trial_id=tid, segment_id=i + 1, config={"x": i},
                 checkpoint=None, start_iteration=0, pause_at=None)
        for it in (1, 2, 3):
            j.append("result", trial_id=tid, result={"acc": float(final[i]) * it / 3,
                                                     "training_iteration": it,
                                                     "timestamp": 1.7e9 + it})
        j.append("trial_status", trial_id=tid, status="STOPPED" if i % 3 == 0 else "TERMINATED",
                 error=None, stopped_at=None, rung=None, num_failures=0, checkpoint=None,
                 checkpoint_iteration=None)
    j.append("state", scheduler={}, searcher={}, controller={}, backend={})
    j.append("finished", reason="completed", best_trial=f"trial-{int(final.argmax()):03d}")
    j.close()
    order = [f"trial-{i:03d}" for i in np.argsort(-final, kind="stable")]
    return str(d), order


def test_ls_prints_one_page_best_first(tmp_path, capsys, monkeypatch):
    import tuning.listing
    from tuning.experiment import Journal

    run_dir, best_first = _big_journal(tmp_path, 120)
    built = []
    real_row = tuning.listing.trial_row
    monkeypatch.setattr(tuning.listing, "trial_row", lambda *a: built.append(a) or real_row(*a))
    monkeypatch.setattr(Journal, "read", lambda self: pytest.fail("ls read the whole journal"))

    assert cli(["ls", run_dir, "--page", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["trial_id"] for r in rows] == best_first[50:100]
    assert len(built) == 50  # rows only for the page printed

    assert cli(["ls", run_dir, "--page", "2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "big: trials 51-100 of 120 (best acc first), page 2 of 3"
    assert best_first[50] in out and best_first[49] not in out and best_first[100] not in out
    assert f"next page: rungflow ls {run_dir} --page 3" in out

    assert cli(["ls", run_dir, "--status", "stopped", "--limit", "0", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["trial_id"] for r in rows] == [t for t in best_first if int(t[-3:]) % 3 == 0]
    assert {r["status"] for r in rows} == {"STOPPED"}

    assert cli(["ls", run_dir, "--sort", "trial", "--limit", "7", "--page", "3", "--json"]) == 0
    assert [r["trial_id"] for r in json.loads(capsys.readouterr().out)] == \
        [f"trial-{i:03d}" for i in range(14, 21)]

    assert cli(["ls", run_dir, "--page", "9"]) == 0
    assert "no trials on page 9 (120 trials, 3 pages)" in capsys.readouterr().out


@pytest.mark.parametrize("args, field", [(["--limit", "-1"], "--limit: -1"),
                                         (["--page", "0"], "--page: 0"),
                                         (["--status", "DONE"], "--status: 'DONE'")])
def test_ls_bad_paging_names_the_option(tmp_path, capsys, args, field):
    run_dir, _ = _big_journal(tmp_path, 3)
    assert cli(["ls", run_dir, *args]) == 2
    assert field in capsys.readouterr().err
