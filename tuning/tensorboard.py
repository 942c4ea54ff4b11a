"""TensorBoard event files, one run per trial (optional: needs ``tensorboardX``).

``write_tensorboard(trials, log_dir)`` writes ``<log_dir>/<trial_id>/events.out.tfevents.*``
with every numeric metric a trial reported as a scalar at ``step=training_iteration`` (wall
time from the result's ``timestamp``), its config as text, and an HParams session (the config
against the last value of ``metric``, or of every metric) so TensorBoard's HParams tab
compares trials. Writing again replaces a trial's event files, so calling it after every wave,
or once at the end, gives the same files. View them with ``tensorboard --logdir <log_dir>``.

tensorboardX is imported only when writing; without it, :class:`ImportError` names the pip
command. :func:`read_scalars` reads the files back with nothing but tensorboardX's protobufs.

Example:
    >>> import tempfile
    >>> from tuning._trial import Trial
    >>> results = [{"training_iteration": 1, "loss": 0.5}, {"training_iteration": 2, "loss": 0.25}]
    >>> t = Trial.with_results("trial-000", {"lr": 0.1}, results)
    >>> d = tempfile.mkdtemp()
    >>> _ = write_tensorboard([t], d, metric="loss", histories={"trial-000": results})
    >>> read_scalars(f"{d}/trial-000")["loss"]
    [(1, 0.5), (2, 0.25)]
"""

from __future__ import annotations

import glob
import json
import math
import os
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from tuning._trial import ITERATION, Trial

__all__ = ["read_scalars", "write_tensorboard"]

INSTALL_HINT = "pip install tensorboardX  (or: pip install 'rungflow[dev]')"
EVENTS_GLOB = "events.out.tfevents.*"
# reported by the trainable machinery, not by the user: not worth a chart each
_SKIP = {ITERATION, "timestamp", "checkpoint", "time_this_iter_s"}


def _require() -> Any:
    try:
        import tensorboardX
    except ImportError:
        raise ImportError(f"TensorBoard logging needs tensorboardX: {INSTALL_HINT}") from None
    return tensorboardX


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _hparam(v: Any) -> bool | str | float | int:
    if isinstance(v, (bool, str, int)) or (isinstance(v, float) and math.isfinite(v)):
        return v
    return json.dumps(v, default=str) if isinstance(v, (list, dict, tuple)) else str(v)


def _final_metrics(trial: Trial, metric: str | None) -> dict[str, float]:
    """The last value of ``metric`` (or of every numeric metric) for the HParams tab."""
    out = {f"hparam/{k}": trial.last_value(k) for k in trial.metric_names()
           if k not in _SKIP and (metric is None or k == metric)}
    return {k: v for k, v in out.items() if v is not None}


def _clear(trial_dir: str) -> None:
    for path in glob.glob(os.path.join(trial_dir, EVENTS_GLOB)):
        os.remove(path)


def _write_trial(tbx: Any, trial: Trial, results: Iterable[Mapping[str, Any]], trial_dir: str,
                 metric: str | None) -> str:
    from tensorboardX.summary import hparams

    _clear(trial_dir)
    with tbx.SummaryWriter(logdir=trial_dir, flush_secs=3600) as w:
        for i, r in enumerate(results):
            step = int(r.get(ITERATION, i + 1))
            wall = _number(r.get("timestamp"))
            for k, v in r.items():
                x = _number(v)
                if x is not None and k not in _SKIP:
                    w.add_scalar(k, x, global_step=step, walltime=wall)
        w.add_text("config", "```json\n" + json.dumps(trial.config, indent=2, default=str)
                   + "\n```", global_step=0)
        final = _final_metrics(trial, metric)
        if trial.config and final:
            for summary in hparams({k: _hparam(v) for k, v in trial.config.items()}, final):
                w.file_writer.add_summary(summary)
            for k, x in final.items():
                w.add_scalar(k, x, global_step=trial.iteration)
    return trial_dir


def write_tensorboard(trials: Iterable[Trial] | Mapping[str, Trial], log_dir: str,
                      metric: str | None = None,
                      trial_ids: Iterable[str] | None = None,
                      histories: Mapping[str, Iterable[Mapping[str, Any]]] | None = None
                      ) -> list[str]:
    """Write (or rewrite) one TensorBoard run per trial under ``log_dir``.

    Args:
        trials: the trials, or a ``{trial_id: Trial}`` dict (``ctl.trials``).
        histories: each trial's results in order (``TuneResult.histories()`` or
            :func:`tuning.experiment.read_histories`); a trial without one gets its config and
            final metrics only.
        log_dir: a local directory (created if missing).
        metric: the metric the HParams tab compares; default: every numeric metric.
        trial_ids: only (re)write these trials, e.g. those a wave touched.

    Returns:
        The trial directories written. Trials without results get their config only.

    Raises:
        ImportError: tensorboardX is not installed (the message has the pip command).
    """
    tbx = _require()
    ts = list(trials.values()) if isinstance(trials, Mapping) else list(trials)
    only = set(trial_ids) if trial_ids is not None else None
    os.makedirs(log_dir, exist_ok=True)
    hist = histories or {}
    return [_write_trial(tbx, t, hist.get(t.trial_id, ()), os.path.join(log_dir, t.trial_id),
                         metric)
            for t in ts if only is None or t.trial_id in only]


def _records(path: str) -> Iterable[bytes]:
    """The payloads of a TFRecord file (length, crc, data, crc), checksums not verified."""
    with open(path, "rb") as f:
        while True:
            head = f.read(12)
            if len(head) < 12:
                return
            (length,) = struct.unpack("<Q", head[:8])
            data = f.read(length)
            f.read(4)
            if len(data) < length:
                return
            yield data


def read_scalars(trial_dir: str) -> dict[str, list[tuple[int, float]]]:
    """Scalars in a directory's event files: ``{tag: [(step, value), ...]}`` in write order."""
    _require()
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(trial_dir, EVENTS_GLOB))):
        for data in _records(path):
            ev = Event.FromString(data)
            for v in ev.summary.value:
                if v.WhichOneof("value") == "simple_value":
                    out.setdefault(v.tag, []).append((int(ev.step), float(v.simple_value)))
    return out
