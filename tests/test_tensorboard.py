"""tuning.tensorboard: one run per trial, scalars at their iterations, rewrites replace."""

from __future__ import annotations

import builtins
import glob
import os

import pytest

from tuning._trial import Status, Trial

pytest.importorskip("tensorboardX")

from tuning.tensorboard import read_scalars, write_tensorboard


class _HistoryTrial(Trial):
    """A trial that carries its whole history (the driver's Trial keeps none; a subclass
    without slots has a __dict__ for it)."""

    history: list[dict]


def _trial(tid: str, n: int, config: dict | None = None) -> Trial:
    res = [{"training_iteration": k, "loss": 1.0 / k, "acc": 0.1 * k, "timestamp": 1.7e9 + k,
            "time_total_s": 0.5 * k, "checkpoint": f"file:///ck/{k}", "done": False,
            "note": "text"} for k in range(1, n + 1)]
    t = _HistoryTrial.with_results(tid, config if config is not None else {"lr": 0.01, "opt": "adam"},
                           res, status=Status.TERMINATED)
    t.history = res  # what the journal holds
    return t


def H(ts) -> dict:
    ts = ts.values() if isinstance(ts, dict) else ts
    return {t.trial_id: getattr(t, "history", []) for t in ts}


def _events(d: str) -> list[str]:
    return glob.glob(os.path.join(d, "events.out.tfevents.*"))


def test_one_run_per_trial_with_scalars_at_their_iterations(tmp_path):
    trials = {"trial-000": _trial("trial-000", 3),
              "trial-001": _trial("trial-001", 1, {"lr": 0.1, "layers": [1, 2], "wd": None}),
              "trial-002": Trial("trial-002", {"lr": 0.5})}  # no results yet
    dirs = write_tensorboard(trials, str(tmp_path / "tb"), metric="loss", histories=H(trials))
    assert [os.path.basename(d) for d in dirs] == ["trial-000", "trial-001", "trial-002"]
    for d in dirs:
        assert len(_events(d)) == 1
    s = read_scalars(dirs[0])
    assert s["loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert [step for step, _ in s["acc"]] == [1, 2, 3]
    assert s["time_total_s"][-1] == (3, 1.5)
    assert s["hparam/loss"] == [(3, pytest.approx(1 / 3))]
    assert not {"training_iteration", "timestamp", "checkpoint", "done", "note"} & set(s)
    assert read_scalars(dirs[1])["loss"] == [(1, 1.0)]
    assert read_scalars(dirs[2]) == {}


def test_rewriting_replaces_and_grows(tmp_path):
    t = _trial("trial-000", 2)
    (d,) = write_tensorboard([t], str(tmp_path), histories=H([t]))
    size = sum(os.path.getsize(p) for p in _events(d))
    more = _trial("trial-000", 6)
    write_tensorboard([more], str(tmp_path), histories=H([more]))
    files = _events(d)
    assert len(files) == 1  # the old file was replaced, not added to
    assert os.path.getsize(files[0]) > size
    assert [step for step, _ in read_scalars(d)["loss"]] == [1, 2, 3, 4, 5, 6]


def test_only_the_named_trials_are_written(tmp_path):
    ts = [_trial("trial-000", 1), _trial("trial-001", 1)]
    assert write_tensorboard(ts, str(tmp_path), trial_ids=["trial-001"]) == [
        str(tmp_path / "trial-001")]
    assert not (tmp_path / "trial-000").exists()


def test_hparams_cover_every_metric_without_a_named_one(tmp_path):
    (d,) = write_tensorboard([_trial("trial-000", 2)], str(tmp_path))
    s = read_scalars(d)
    assert {"hparam/loss", "hparam/acc", "hparam/time_total_s"} <= set(s)


def test_the_event_files_read_back_with_tensorboards_own_reader(tmp_path):
    """TensorBoard (a dev dependency) reads what TensorBoard's UI would show: every scalar at
    its step and value, the config as text, and the hparams plugin's session for the trial."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    t = _trial("trial-000", 3)
    (d,) = write_tensorboard([t], str(tmp_path), metric="loss", histories=H([t]))
    acc = EventAccumulator(d, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert {"loss", "acc", "time_total_s", "hparam/loss"} <= set(acc.Tags()["scalars"])
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == \
        [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("acc")] == \
        [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert [(e.step, e.value) for e in acc.Scalars("hparam/loss")] == \
        [(3, pytest.approx(1 / 3))]
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["lr"].number_value == pytest.approx(0.01)
    assert start.hparams["opt"].string_value == "adam"
    texts = [tag for tag in acc.Tags()["tensors"] if "config" in tag]
    assert texts, acc.Tags()
    assert b'"lr": 0.01' in acc.Tensors(texts[0])[0].tensor_proto.string_val[0]


def test_missing_tensorboardx_names_the_pip_command(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "tensorboardX" or name.startswith("tensorboardX."):
            raise ImportError("No module named 'tensorboardX'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install tensorboardX"):
        write_tensorboard([_trial("trial-000", 1)], str(tmp_path))


def test_importing_the_module_does_not_import_tensorboardx():
    import subprocess
    import sys

    code = "import sys, tuning.tensorboard; sys.exit('tensorboardX' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
