"""tuning.plots: files are real PNGs, colours follow status, the helpers compute what they say."""

from __future__ import annotations

import math
import struct
import sys

import pytest

from tuning import plots
from tuning._trial import Status, Trial


def _png_size(path: str) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    w, h = struct.unpack(">II", head[16:24])
    return w, h


class _HistoryTrial(Trial):
    """A trial that carries its whole history (the driver's Trial keeps none; a subclass
    without slots has a __dict__ for it)."""

    history: list[dict]


def _trial(i: int, iters: int, status: Status = Status.TERMINATED, rung: int | None = None,
           config: dict | None = None, metric: str = "acc") -> Trial:
    results = [{"training_iteration": k, metric: 1 - 0.5 / k - 0.01 * i, "timestamp": 1e9 + k}
               for k in range(1, iters + 1)]
    t = _HistoryTrial.with_results(f"trial-{i:03d}", config if config is not None else
                           {"lr": 10 ** -(i % 4)}, results, status=status, rung=rung)
    t.history = results  # the driver keeps none: tests do
    return t


def H(ts) -> dict:
    """The histories of test trials, as the journal would give them."""
    ts = ts.values() if isinstance(ts, dict) else ts
    return {t.trial_id: getattr(t, "history", []) for t in ts}


@pytest.fixture
def trials() -> list[Trial]:
    out = [_trial(0, 9, Status.TERMINATED, rung=3, config={"lr": 1e-4, "act": "relu", "n": 2}),
           _trial(1, 3, Status.STOPPED, rung=3, config={"lr": 1e-1, "act": "tanh", "n": 3}),
           _trial(2, 1, Status.STOPPED, rung=1, config={"lr": 1e-2, "act": "relu", "n": 4}),
           _trial(3, 2, Status.ERROR, config={"lr": 3e-3, "act": "gelu", "n": 2}),
           _trial(4, 3, Status.PAUSED, rung=3, config={"lr": 1e-3, "act": "tanh", "n": 1}),
           Trial("trial-005", {"lr": 0.5, "act": "relu", "n": 8})]  # no results yet
    out[1].stopped_at, out[2].stopped_at = 3, 1
    return out


def test_all_plots_write_pngs_of_a_useful_size(tmp_path, trials):
    decisions = [{"event": "decision", "trial_id": "trial-001", "decision": "STOP",
                  "iteration": 3, "rung": 3},
                 {"event": "decision", "trial_id": "trial-004", "decision": "PAUSE",
                  "iteration": 3, "rung": 3},
                 {"event": "result", "trial_id": "trial-000", "result": {}}]
    paths = plots.all_plots({t.trial_id: t for t in trials}, "acc", "max", decisions,
                            str(tmp_path / "plots"), H(trials))
    assert [p.rsplit("/", 1)[-1] for p in paths] == [
        "learning_curves.png", "rung_diagram.png", "parallel_coordinates.png"]
    for p in paths:
        w, h = _png_size(p)
        assert w >= 600 and h >= 400, (p, w, h)
        assert (tmp_path / "plots" / p.rsplit("/", 1)[-1]).stat().st_size > 10_000


@pytest.mark.parametrize("case", ["one", "no-results", "strings", "empty"])
def test_edge_cases_still_draw(tmp_path, case):
    ts = {"one": [_trial(0, 1, config={"lr": 0.1})],
          "no-results": [Trial("trial-000", {"lr": 0.1}), Trial("trial-001", {"lr": 0.2})],
          "strings": [_trial(0, 2, config={"opt": "adam", "layers": [1, 2], "flag": True}),
                      _trial(1, 3, Status.STOPPED, config={"opt": "sgd", "flag": False})],
          "empty": []}[case]
    for p in plots.all_plots(ts, "acc", "min", None, str(tmp_path), H(ts)):
        assert min(_png_size(p)) >= 400


def test_learning_curve_colours_follow_status(trials):
    from matplotlib.figure import Figure

    assert plots._colour_for(Status.STOPPED) != plots._colour_for(Status.TERMINATED)
    assert plots._colour_for("ERROR") == plots._colour_for(Status.ERROR)
    assert len({plots._colour_for(s) for s in Status}) == len(Status)
    ax = Figure().add_subplot()
    lines = plots._draw_learning_curves(ax, trials, "acc", "max", None, H(trials))
    by_id = {line.get_label(): line.get_color() for line in lines}
    assert "trial-005" not in by_id  # no results: no line
    assert by_id["trial-000"] == plots.STATUS_COLOURS["TERMINATED"]
    assert by_id["trial-001"] == by_id["trial-002"] == plots.STATUS_COLOURS["STOPPED"]
    assert by_id["trial-003"] == plots.STATUS_COLOURS["ERROR"]
    assert by_id["trial-004"] == plots.STATUS_COLOURS["PAUSED"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"finished", "stopped early", "error", "paused", "stopped here"} <= set(legend)
    assert "best: trial-000" in legend


def test_stop_marker_sits_at_the_stop_decision():
    from matplotlib.figure import Figure

    t = _trial(1, 5, Status.STOPPED)
    ax = Figure().add_subplot()
    plots._draw_learning_curves(ax, [t], "acc", "max",
                                [{"trial_id": t.trial_id, "decision": "STOP", "iteration": 3}],
                                H([t]))
    markers = [ln for ln in ax.get_lines() if ln.get_marker() == "X"]
    assert len(markers) == 1
    assert list(markers[0].get_xdata()) == [3.0]
    assert list(markers[0].get_ydata()) == [t.history[2]["acc"]]


def test_rung_counts_by_hand(trials):
    # reached: 9, 3, 1, 2, 3, 0; rungs {1, 3} plus the furthest iteration 9
    assert plots.rung_counts(trials) == {1: 5, 3: 3, 9: 1}
    assert plots.rung_counts(trials, levels=[2, 4]) == {2: 4, 4: 1}
    fifo = [_trial(0, 4), _trial(1, 4), _trial(2, 2)]  # no rungs: distinct final iterations
    assert plots.rung_counts(fifo) == {2: 3, 4: 2}
    assert plots.rung_counts([Trial("t", {})]) == {}
    assert plots.rung_counts([]) == {}


def test_log_scale_detection_and_normalisation():
    assert plots.is_log_scale([1e-5, 1e-3, 1e-1])
    assert not plots.is_log_scale([1, 50, 100])  # exactly two decades: linear
    assert not plots.is_log_scale([-1, 10, 1000])  # not all positive
    pos, kind, ticks = plots.normalise_param([1e-4, 1e-2, 1.0])
    assert kind == "log" and pos == pytest.approx([0.0, 0.5, 1.0])
    pos, kind, _ = plots.normalise_param([2, 4, 6, None])
    assert kind == "linear" and pos[:3] == pytest.approx([0.0, 0.5, 1.0]) and math.isnan(pos[3])
    pos, kind, ticks = plots.normalise_param(["sgd", "adam", "sgd", "rmsprop"])
    assert kind == "categorical"
    assert {label: p for p, label in ticks} == {"adam": 0.0, "rmsprop": 0.5, "sgd": 1.0}
    assert pos == [1.0, 0.0, 1.0, 0.5]
    assert plots.normalise_param([True, False])[1] == "categorical"
    assert plots.normalise_param([3, 3])[0] == [0.5, 0.5]


def test_plots_module_stays_off_pyplot_prefect_and_mlflow():
    import subprocess

    code = ("import sys, tuning.plots; bad = [m for m in ('matplotlib.pyplot', 'prefect', "
            "'mlflow') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_plots_from_a_replayed_asha_journal(tmp_path):
    """What `summarize` would draw: trials and decisions straight from the journal."""
    from matplotlib.figure import Figure

    from tuning.backends.simulated import CrossingCurves, SimulatedBackend
    from tuning.controller import Budget, Controller
    from tuning.experiment import Journal, replay
    from tuning.schedulers import ASHA
    from tuning.searchers import RandomSearch
    from tuning.space import Space, choice, loguniform

    d = str(tmp_path / "sim")
    ctl = Controller(name="sim", trainable=CrossingCurves(max_t=9),
                     space=Space({"lr": loguniform(1e-4, 1e-1), "opt": choice(["adam", "sgd"])}),
                     metric="accuracy", mode="max",
                     scheduler=ASHA(max_t=9, grace_period=1, reduction_factor=3),
                     searcher=RandomSearch(), backend=SimulatedBackend(3), journal=Journal(d),
                     storage=d, budget=Budget(num_samples=9), seed=0).run()
    events = Journal(d).read()
    st = replay(events)
    counts = plots.rung_counts(st.trials)
    assert counts[1] == 9  # every trial reached the first rung
    assert list(counts.values()) == sorted(counts.values(), reverse=True)
    assert max(counts) == 9
    n_finished = sum(t.status == Status.TERMINATED for t in ctl.trials.values())
    assert counts[9] == n_finished
    hist = plots.histories_from_events(events, "accuracy")
    assert sum(map(len, hist.values())) == ctl.iterations_total
    lines = plots._draw_learning_curves(Figure().add_subplot(), st.trials, "accuracy", "max",
                                        None, hist)
    assert len(lines) == len(st.trials)
    for p in plots.all_plots(st.trials, "accuracy", "max", events, str(tmp_path / "plots"),
                             hist):
        assert min(_png_size(p)) >= 400


# -- many trials: collections and aggregates instead of a line each ----------------------------
def _many(n: int) -> list[Trial]:
    statuses = [Status.TERMINATED, Status.STOPPED, Status.STOPPED, Status.PAUSED, Status.ERROR]
    out = []
    for i in range(n):
        t = _trial(i % 97, 1 + i % 9, statuses[i % len(statuses)], rung=3,
                   config={"lr": 10 ** -(1 + i % 5), "act": ["relu", "tanh"][i % 2]})
        t.trial_id = f"trial-{i:05d}"
        if t.status == Status.STOPPED:
            t.stopped_at = t.iteration
        out.append(t)
    return out


def _trial_lines(ax):
    """Per-trial polylines of a parallel-coordinates axes (not its vertical axis lines)."""
    return [ln for ln in ax.get_lines() if ln.get_marker() == "o" or ln.get_linestyle() == "--"]


def _collections(ax):
    from matplotlib.collections import LineCollection

    return [c for c in ax.collections if isinstance(c, LineCollection)]


def test_many_trials_draw_a_line_collection_and_bands_with_a_fixed_legend(tmp_path):
    from matplotlib.figure import Figure

    ts = _many(2000)
    ax = Figure().add_subplot()
    lines = plots._draw_learning_curves(ax, ts, "acc", "max", None, H(ts))
    colls = _collections(ax)
    assert len(colls) == 1 and len(colls[0].get_segments()) == plots.TOP_LINES - 1
    assert len(lines) == 1 and lines[0].get_linewidth() == 2.8  # only the best's own line
    assert len(ax.get_lines()) < 20  # the best, the median, one stop-marker set per colour
    legend = ax.get_legend()
    assert legend._loc != 0  # not "best": a fixed place
    texts = [t.get_text() for t in legend.get_texts()]
    assert any("other" in t and "median" in t for t in texts)
    assert f"best: {lines[0].get_label()}" in texts

    ax = Figure().add_subplot()
    plots._draw_parallel(ax.figure, ax, ts, "acc", "max")
    assert len(_collections(ax)) >= 2 and not _trial_lines(ax)
    assert sum(len(c.get_segments()) for c in _collections(ax)) == len(ts)

    paths = plots.all_plots(ts, "acc", "max", None, str(tmp_path / "many"), H(ts))
    assert [p.rsplit("/", 1)[-1] for p in paths] == [
        "learning_curves.png", "rung_diagram.png", "parallel_coordinates.png"]
    for p in paths:
        assert min(_png_size(p)) >= 400


def test_up_to_the_threshold_each_trial_keeps_its_line():
    from matplotlib import colormaps
    from matplotlib.collections import PathCollection
    from matplotlib.figure import Figure

    ts = _many(plots.MANY_TRIALS)
    ax = Figure().add_subplot()
    lines = plots._draw_learning_curves(ax, ts, "acc", "max", None, H(ts))
    assert len(lines) == len(ts) and not _collections(ax)
    legend = ax.get_legend()
    assert legend._loc != 0  # not "best" (it searched every line): beside the axes
    assert legend.get_bbox_to_anchor().transformed(ax.transAxes.inverted()).x0 > 1.0
    ax = Figure().add_subplot()
    plots._draw_parallel(ax.figure, ax, ts, "acc", "max")
    colls = _collections(ax)
    assert not _trial_lines(ax) and sum(len(c.get_segments()) for c in colls) == len(ts)
    scored = [t for t in ts if t.last_value("acc") is not None]
    bold = [c for c in colls if c.get_linewidths()[0] == 1.4]
    assert len(bold) == 1 and len(bold[0].get_segments()) == len(scored)  # every one bold
    n_axes = len(bold[0].get_segments()[0])
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in dots) == len(scored) * n_axes
    # drawn worst first, so the best trial's line is the last segment, in the brightest colour
    assert bold[0].get_segments()[-1][-1][1] == 1.0  # the metric axis: the best at the top
    assert tuple(bold[0].get_colors()[-1][:3]) == pytest.approx(colormaps["viridis"](1.0)[:3])
    assert tuple(bold[0].get_colors()[0][:3]) == pytest.approx(colormaps["viridis"](0.0)[:3])


def test_quantiles_by_iteration_and_binned():
    import numpy as np

    x = np.array([1, 1, 1, 2, 2, 3], dtype=float)
    y = np.array([0, 1, 2, 5, 7, 9], dtype=float)
    at, q = plots._quantiles_by_x(x, y, (0, 50, 100))
    assert list(at) == [1, 2, 3]
    assert q.tolist() == [[0, 5, 9], [1, 6, 9], [2, 7, 9]]
    x = np.arange(1000, dtype=float)
    at, q = plots._quantiles_by_x(x, x, (50,), max_bins=10)
    assert len(at) == 10 and q.shape == (1, 10)
    assert abs(q[0][0] - 49.5) < 1e-9


def test_rung_counts_agree_with_counting_each_trial():
    ts = _many(500)
    counts = plots.rung_counts(ts)
    for level, n in counts.items():
        assert n == sum(1 for t in ts if plots._reached(t) >= level)
