"""Static pictures of an experiment: learning curves, rungs reached, parallel coordinates.

Engine-side and headless: figures are built with :class:`matplotlib.figure.Figure` on the Agg
canvas, never through ``pyplot``, so no GUI backend is touched, no global figure registry grows
and nothing needs closing. Every function takes plain :class:`~tuning._trial.Trial` objects (a
list or the ``{trial_id: Trial}`` dict of a controller or a replayed journal) and writes a PNG
to a local path or any fsspec URL; the learning curves also take the trials' histories (the
driver keeps only each trial's last result).

Example:
    >>> from tuning._trial import Status, Trial
    >>> results = [{"training_iteration": 1, "loss": 0.5}, {"training_iteration": 2, "loss": 0.3}]
    >>> t = Trial.with_results("trial-000", {"lr": 0.1}, results, status=Status.TERMINATED)
    >>> import tempfile, os
    >>> out = all_plots([t], "loss", "min", [], tempfile.mkdtemp(), {"trial-000": results})
    >>> [os.path.basename(p) for p in out]
    ['learning_curves.png', 'rung_diagram.png', 'parallel_coordinates.png']
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from tuning._trial import ITERATION, Trial

__all__ = [
    "MANY_TRIALS",
    "STATUS_COLOURS",
    "TOP_LINES",
    "all_plots",
    "is_log_scale",
    "learning_curves",
    "normalise_param",
    "parallel_coordinates",
    "pareto_plot",
    "rung_counts",
    "rung_diagram",
]

# What the scheduler made of a trial -> its colour (colour-blind safe Okabe-Ito hues).
STATUS_COLOURS: dict[str, str] = {
    "TERMINATED": "#009E73",  # ran to the end: green
    "STOPPED": "#E69F00",  # stopped early: orange
    "ERROR": "#D55E00",  # failed: vermilion
    "PAUSED": "#0072B2",  # waiting at a rung: blue
    "RUNNING": "#CC79A7",  # still training: purple
    "PENDING": "#999999",  # not started: grey
}
_LABELS = {"TERMINATED": "finished", "STOPPED": "stopped early", "ERROR": "error",
           "PAUSED": "paused", "RUNNING": "running", "PENDING": "pending"}
_UNKNOWN_COLOUR = "#555555"
_DPI = 100
#: zlib level of the PNGs: 1 encodes in a fraction of the default's time (lossless either way;
#: files about 20 % larger)
_PNG = {"compress_level": 1}
#: parallel coordinates' axis names are cut to this many characters
_NAME = 24
#: beyond this many trials the learning curves stop drawing one line per trial: the best ones
#: become one LineCollection and the rest quantile bands; parallel coordinates draw the rest faint
MANY_TRIALS = 300
#: how many of the best trials keep a visible line of their own when there are many
TOP_LINES = 50



def _trials(trials: Any) -> list[Trial]:
    if isinstance(trials, Mapping):
        return list(trials.values())
    return list(trials)


def _status_name(status: Any) -> str:
    return str(getattr(status, "value", status)).upper()


def _colour_for(status: Any) -> str:
    """The line colour of a trial in ``status`` (a :class:`Status` or its name)."""
    return STATUS_COLOURS.get(_status_name(status), _UNKNOWN_COLOUR)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (
        isinstance(v, float) and math.isnan(v))


#: trial id -> its results in order (:meth:`tuning.results.TuneResult.histories`, or the
#: compact form :func:`histories_from_events` builds); the driver keeps no histories
Histories = Mapping[str, Sequence[Mapping[str, Any]]]


def histories_from_events(events: Iterable[Mapping[str, Any]], metric: str
                          ) -> dict[str, list[dict[str, Any]]]:
    """Each trial's ``(training_iteration, metric)`` pairs from journal ``result`` events,
    kept compact: what the learning curves need, not whole results."""
    out: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        if ev.get("event") == "result":
            r = ev["result"]
            out.setdefault(ev["trial_id"], []).append(
                {ITERATION: r.get(ITERATION), metric: r.get(metric)})
    return out


def _curve(trial: Trial, metric: str, histories: Histories | None
           ) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, r in enumerate((histories or {}).get(trial.trial_id, ())):
        v = r.get(metric)
        if _is_number(v):
            xs.append(float(r.get(ITERATION, i + 1)))
            ys.append(float(v))  # type: ignore[arg-type]
    return xs, ys


def _save(fig: Figure, path: str) -> str:
    path = os.fspath(path)
    FigureCanvasAgg(fig)
    if "://" in path and not path.startswith("file://"):
        import fsspec

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=_DPI, pil_kwargs=_PNG)
        with fsspec.open(path, "wb") as f:
            f.write(buf.getvalue())
    else:
        local = path.removeprefix("file://")
        parent = os.path.dirname(local)
        if parent:
            os.makedirs(parent, exist_ok=True)
        fig.savefig(local, format="png", dpi=_DPI, pil_kwargs=_PNG)
    fig.clear()
    return path


def _frame(fig: Figure, left: float, right: float, bottom: float, top: float) -> None:
    """Fixed margins, in inches, around the figure's axes.

    Each figure's texts are known in advance (tick numbers, the metric, a title, a legend
    placed outside), so margins are set once instead of by a layout engine: matplotlib's
    constrained layout measured every text before drawing it, a third of the CPU the plots
    took."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h)


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666666")


# -- learning curves --------------------------------------------------------------------------
def _stop_points(trials: Sequence[Trial], decisions: Iterable[Mapping[str, Any]] | None
                 ) -> dict[str, float]:
    """Iteration at which each stopped trial was stopped: the journal's STOP decision if there
    is one, else ``stopped_at``, else its last result."""
    out: dict[str, float] = {}
    for d in decisions or ():
        if str(d.get("decision", "")).upper() == "STOP" and d.get("trial_id") is not None:
            it = d.get("iteration", d.get("rung"))
            if _is_number(it):
                out[str(d["trial_id"])] = float(it)
    for t in trials:
        if _status_name(t.status) == "STOPPED" and t.trial_id not in out:
            if t.stopped_at is not None:
                out[t.trial_id] = float(t.stopped_at)
            elif t.num_results:
                out[t.trial_id] = float(t.iteration)
    return out


def _pause_points(decisions: Iterable[Mapping[str, Any]] | None) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for d in decisions or ():
        if str(d.get("decision", "")).upper() == "PAUSE" and _is_number(d.get("iteration")):
            out.setdefault(str(d["trial_id"]), []).append(float(d["iteration"]))
    return out


def _y_at(xs: list[float], ys: list[float], x: float) -> float:
    """The curve's value at iteration ``x`` (the last point at or before it)."""
    best = ys[0]
    for xi, yi in zip(xs, ys):
        if xi <= x:
            best = yi
    return best


_Curve = tuple[Trial, list[float], list[float]]


def _draw_learning_curves(ax: Axes, trials: Any, metric: str, mode: str,
                          decisions: Iterable[Mapping[str, Any]] | None = None,
                          histories: Histories | None = None) -> list[Line2D]:
    """Draw the learning curves on ``ax``, coloured by status; returns the per-trial lines.

    Up to :data:`MANY_TRIALS` curves: one line per trial (in trial order, trials without the
    metric skipped) so tests can check their colours. Beyond: the :data:`TOP_LINES` best
    trials as one :class:`~matplotlib.collections.LineCollection`, the rest as quantile bands
    per iteration, and only the best trial as its own line (the one returned)."""
    ts = _trials(trials)
    decisions = list(decisions or ())
    stops, pauses = _stop_points(ts, decisions), _pause_points(decisions)
    curves = [(t, xs, ys) for t in ts for xs, ys in [_curve(t, metric, histories)] if xs]
    best = _best_curve(curves, mode)
    many = len(curves) > MANY_TRIALS
    handles: list[Any] = []
    if many:
        lines, handles = _draw_many_curves(ax, curves, best, mode)
    else:
        lines = _draw_each_curve(ax, curves, best)
    _draw_markers(ax, curves, stops, pauses, small=many)
    if not curves:
        _empty(ax, f"no trial has reported {metric!r} yet")
    _curves_legend(ax, curves, best, bool(stops), bool(pauses), handles, many)
    ax.set_xlabel(ITERATION)
    ax.set_ylabel(metric)
    shown = f"; the best {TOP_LINES} drawn" if many else ""
    ax.set_title(f"Learning curves ({metric}, {mode}), {len(ts)} trials{shown}")
    ax.grid(True, alpha=0.3)
    return lines


def _best_curve(curves: Sequence[_Curve], mode: str) -> int | None:
    """Index of the curve with the best last value (the first such)."""
    best, best_v = None, None
    for i, (_, _, ys) in enumerate(curves):
        last = ys[-1]
        if best_v is None or (last > best_v if mode == "max" else last < best_v):
            best, best_v = i, last
    return best


def _emphasise(line: Line2D) -> None:
    line.set_linewidth(2.8)
    line.set_alpha(1.0)
    line.set_zorder(4)


def _draw_each_curve(ax: Axes, curves: Sequence[_Curve], best: int | None) -> list[Line2D]:
    lines: list[Line2D] = []
    for t, xs, ys in curves:
        (line,) = ax.plot(xs, ys, color=_colour_for(t.status), linewidth=1.2, alpha=0.85,
                          marker="." if len(xs) == 1 else None, label=t.trial_id)
        lines.append(line)
    if best is not None:
        _emphasise(lines[best])
    return lines


def _ranked(curves: Sequence[_Curve], mode: str) -> list[int]:
    """Curve indices, best last value first (stable)."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(range(len(curves)), key=lambda i: sign * curves[i][2][-1])


def _draw_many_curves(ax: Axes, curves: Sequence[_Curve], best: int | None, mode: str
                      ) -> tuple[list[Line2D], list[Any]]:
    """The best trials as one LineCollection, the others as quantile bands; returns the best
    trial's own line and the legend entries of the bands."""
    order = _ranked(curves, mode)
    top, rest = order[:TOP_LINES], order[TOP_LINES:]
    handles = _draw_quantile_bands(ax, [curves[i] for i in rest])
    drawn = [i for i in reversed(top) if i != best]  # the better drawn later, on top
    segs = [np.column_stack([curves[i][1], curves[i][2]]) for i in drawn]
    coll = LineCollection(segs, colors=[_colour_for(curves[i][0].status) for i in drawn],
                          linewidths=1.0, alpha=0.85, zorder=3)
    ax.add_collection(coll)
    lines: list[Line2D] = []
    if best is not None:
        t, xs, ys = curves[best]
        (line,) = ax.plot(xs, ys, color=_colour_for(t.status), marker="." if len(xs) == 1
                          else None, label=t.trial_id)
        _emphasise(line)
        lines.append(line)
    ax.autoscale_view()
    return lines, handles


def _draw_quantile_bands(ax: Axes, curves: Sequence[_Curve]) -> list[Any]:
    """5-95 % and 25-75 % bands and the median of ``curves`` at each iteration."""
    if not curves:
        return []
    x = np.concatenate([np.asarray(xs, dtype=float) for _, xs, _ in curves])
    y = np.concatenate([np.asarray(ys, dtype=float) for _, _, ys in curves])
    at, qs = _quantiles_by_x(x, y, (5, 25, 50, 75, 95))
    grey = "#7F7F7F"
    ax.fill_between(at, qs[0], qs[4], color=grey, alpha=0.15, linewidth=0, zorder=1)
    ax.fill_between(at, qs[1], qs[3], color=grey, alpha=0.3, linewidth=0, zorder=1)
    ax.plot(at, qs[2], color="#555555", linewidth=1.0, linestyle="--", zorder=2)
    n = len(curves)
    return [Patch(color=grey, alpha=0.45, label=f"other {n} trials: 25-75 %"),
            Patch(color=grey, alpha=0.15, label=f"other {n} trials: 5-95 %"),
            Line2D([], [], color="#555555", linestyle="--", label=f"other {n} trials: median")]


def _quantiles_by_x(x: np.ndarray, y: np.ndarray, q: Sequence[float], max_bins: int = 200
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Percentiles ``q`` of ``y`` at each distinct ``x`` (binned when there are more than
    ``max_bins`` of them); returns the x positions and a ``(len(q), len(x))`` array."""
    ux = np.unique(x)
    if len(ux) > max_bins:
        edges = np.linspace(ux[0], ux[-1], max_bins + 1)
        group = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, max_bins - 1)
        centres = (edges[:-1] + edges[1:]) / 2
    else:
        group, centres = np.searchsorted(ux, x), ux
    order = np.argsort(group, kind="stable")
    g, ys = group[order], y[order]
    present, starts = np.unique(g, return_index=True)
    out = np.array([np.percentile(chunk, q) for chunk in np.split(ys, starts[1:])]).T
    return centres[present], out


def _draw_markers(ax: Axes, curves: Sequence[_Curve], stops: Mapping[str, float],
                  pauses: Mapping[str, list[float]], small: bool = False) -> None:
    """Stop markers (an ``X`` in the trial's colour) and pause dots: one artist per colour."""
    by_colour: dict[str, tuple[list[float], list[float]]] = {}
    paused: tuple[list[float], list[float]] = ([], [])
    for t, xs, ys in curves:
        if t.trial_id in stops:
            x = stops[t.trial_id]
            px, py = by_colour.setdefault(_colour_for(t.status), ([], []))
            px.append(x)
            py.append(_y_at(xs, ys, x))
        for x in pauses.get(t.trial_id, []):
            paused[0].append(x)
            paused[1].append(_y_at(xs, ys, x))
    for colour, (px, py) in by_colour.items():
        ax.plot(px, py, marker="X", markersize=5 if small else 8, color=colour,
                markeredgecolor="black", markeredgewidth=0.4 if small else 0.6,
                linestyle="none", zorder=3, alpha=0.6 if small else 1.0)
    if paused[0]:
        ax.plot(paused[0], paused[1], marker="o", markersize=3, color="#0072B2",
                linestyle="none", zorder=3)


def _curves_legend(ax: Axes, curves: Sequence[_Curve], best: int | None, stops: bool,
                   pauses: bool, extra: list[Any], many: bool) -> None:
    seen = list(dict.fromkeys(_status_name(t.status) for t, _, _ in curves))
    handles: list[Any] = [Line2D([], [], color=_colour_for(s), label=_LABELS.get(s, s.lower()))
                          for s in seen]
    if stops:
        handles.append(Line2D([], [], marker="X", color="#777777", markeredgecolor="black",
                              linestyle="none", label="stopped here"))
    if pauses:
        handles.append(Line2D([], [], marker="o", markersize=3, color="#0072B2",
                              linestyle="none", label="paused at rung"))
    if best is not None:
        handles.append(Line2D([], [], color="black", linewidth=2.8,
                              label=f"best: {curves[best][0].trial_id}"))
    handles += extra
    if not handles:
        return
    # a fixed place beside the axes, never over a curve: "best" searched every line for the
    # emptiest corner, the costliest step of drawing the curves
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              borderaxespad=0.0, fontsize=8, framealpha=0.8)


def learning_curves(trials: Any, metric: str, mode: str,
                    decisions: list[dict[str, Any]] | None, path: str,
                    histories: Histories | None = None) -> str:
    """``metric`` against ``training_iteration``, one line per trial, coloured by what the
    scheduler decided (finished, stopped early with an ``X`` where it stopped, error, paused,
    running); the best trial (last value) is drawn thicker. ``decisions`` are the journal's
    ``decision`` events (optional: they place the stop and pause markers exactly);
    ``histories`` the trials' results (:data:`Histories`)."""
    fig = Figure(figsize=(10, 6), dpi=_DPI)
    _frame(fig, left=0.8, right=2.0, bottom=0.6, top=0.45)  # the legend on the right
    _draw_learning_curves(fig.add_subplot(), trials, metric, mode, decisions, histories)
    return _save(fig, path)


# -- rungs ------------------------------------------------------------------------------------
def _reached(t: Trial) -> int:
    return max(t.iteration, int(t.rung or 0), int(t.stopped_at or 0) if t.num_results else 0)


def _at_least(reached: Sequence[int], levels: Sequence[int]) -> list[int]:
    """How many of ``reached`` are at least each of ``levels`` (a sort, not a pass a level)."""
    done = np.sort(np.asarray(reached, dtype=np.int64))
    return [int(len(done) - np.searchsorted(done, lv, side="left")) for lv in levels]


def _levels(ts: Sequence[Trial], reached_all: Sequence[int] | None = None) -> list[int]:
    reached = [r for r in (reached_all if reached_all is not None else map(_reached, ts))
               if r > 0]
    rungs = {int(t.rung) for t in ts if t.rung is not None and t.rung > 0}
    if rungs:  # the milestones decisions were taken at, and the furthest any trial went
        return sorted(rungs | ({max(reached)} if reached else set()))
    return sorted(set(reached))


def rung_counts(trials: Any, levels: Sequence[int] | None = None) -> dict[int, int]:
    """How many trials reached each milestone level.

    A trial reaches a level when its last training iteration (or the rung it was decided at)
    is at least that level. ``levels`` default to the rungs decisions were taken at plus the
    furthest iteration any trial reached; with no rungs at all (FIFO), to every distinct final
    iteration. Trials without results reach nothing.

    Example:
        >>> from tuning._trial import Trial
        >>> def t(i, it, rung): return Trial.with_results(f"t{i}", {}, [
        ...     {"training_iteration": k} for k in range(1, it + 1)], rung=rung)
        >>> rung_counts([t(0, 1, 1), t(1, 3, 3), t(2, 9, 3), t(3, 0, None)])
        {1: 3, 3: 2, 9: 1}
    """
    ts = _trials(trials)
    reached = [_reached(t) for t in ts]
    lv = sorted({int(x) for x in levels}) if levels is not None else _levels(ts, reached)
    return dict(zip(lv, _at_least(reached, lv)))


def rung_diagram(trials: Any, path: str, levels: Sequence[int] | None = None) -> str:
    """Bars: trials that reached each milestone, stacked by their current status."""
    ts = _trials(trials)
    counts = rung_counts(ts, levels)
    fig = Figure(figsize=(8, 5), dpi=_DPI)
    _frame(fig, left=0.7, right=0.2, bottom=0.6, top=0.45)
    ax = fig.add_subplot()
    if not counts:
        _empty(ax, "no trial has reported a result yet")
    else:
        xs = list(range(len(counts)))
        bottoms = [0] * len(counts)
        by_status: dict[str, list[int]] = {}
        for t in ts:
            by_status.setdefault(_status_name(t.status), []).append(_reached(t))
        statuses = [s for s in STATUS_COLOURS if s in by_status]
        for s in statuses:
            heights = _at_least(by_status[s], list(counts))
            ax.bar(xs, heights, bottom=bottoms, color=_colour_for(s), label=_LABELS[s],
                   edgecolor="white")
            bottoms = [b + h for b, h in zip(bottoms, heights)]
        for x, n in zip(xs, counts.values()):
            ax.text(x, n, str(n), ha="center", va="bottom", fontsize=9)
        ax.set_xticks(xs, [str(lv) for lv in counts])
        ax.set_ylim(0, max(counts.values()) * 1.15 + 0.5)
        ax.legend(loc="upper right", fontsize=8, title="status now", title_fontsize=8)
    ax.set_xlabel("milestone (training iterations reached)")
    ax.set_ylabel("trials")
    ax.set_title(f"Trials reaching each rung ({len(ts)} trials)")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


# -- parallel coordinates ---------------------------------------------------------------------
def is_log_scale(values: Iterable[Any]) -> bool:
    """True for positive numbers spanning more than two decades (``max / min > 100``)."""
    nums = [float(v) for v in values if _is_number(v)]
    return bool(nums) and min(nums) > 0 and max(nums) / min(nums) > 100


def normalise_param(values: Sequence[Any]) -> tuple[list[float], str, list[tuple[float, str]]]:
    """Map one parameter's values onto ``[0, 1]``.

    Returns ``(positions, kind, ticks)``: ``kind`` is ``"log"`` (positive numbers over more
    than two decades, placed by ``log10``), ``"linear"`` (other numbers), or ``"categorical"``
    (anything else: strings, bools, lists, mixed; sorted by their text and spread evenly).
    Missing values (``None`` among numbers) become ``nan``; a constant column sits at 0.5.
    ``ticks`` are ``(position, label)`` pairs for the axis.

    Example:
        >>> normalise_param([1e-4, 1e-2, 1.0])[:2]
        ([0.0, 0.5, 1.0], 'log')
        >>> normalise_param(["relu", "tanh", "relu"])[:2]
        ([0.0, 1.0, 0.0], 'categorical')
    """
    present = [v for v in values if v is not None]
    if present and all(_is_number(v) for v in present):
        log = is_log_scale(present)
        f = (lambda v: math.log10(float(v))) if log else (lambda v: float(v))
        lo, hi = min(f(v) for v in present), max(f(v) for v in present)
        span = hi - lo
        pos = [math.nan if v is None or not _is_number(v) else
               (0.5 if span == 0 else (f(v) - lo) / span) for v in values]
        lo_v, hi_v = min(present), max(present)
        ticks = [(0.5, f"{lo_v:.3g}")] if span == 0 else [(0.0, f"{lo_v:.3g}"),
                                                          (1.0, f"{hi_v:.3g}")]
        return pos, "log" if log else "linear", ticks
    cats = sorted({_cat(v) for v in values}, key=str)
    n = len(cats)
    code = {c: (0.5 if n == 1 else i / (n - 1)) for i, c in enumerate(cats)}
    return [code[_cat(v)] for v in values], "categorical", [(code[c], c) for c in cats]


def _cat(v: Any) -> str:
    return str(v)


def _score(t: Trial, metric: str) -> float | None:
    return t.last_value(metric)


def _draw_parallel(fig: Figure, ax: Axes, trials: Sequence[Trial], metric: str, mode: str
                   ) -> None:
    params = sorted({k for t in trials for k in t.config})
    cols: list[tuple[str, list[float], str, list[tuple[float, str]]]] = []
    for p in params:
        pos, kind, ticks = normalise_param([t.config.get(p) for t in trials])
        cols.append((p + (" (log)" if kind == "log" else ""), pos, kind, ticks))
    scores = [_score(t, metric) for t in trials]
    pos, kind, ticks = normalise_param(scores)
    cols.append((metric, pos, kind, ticks))
    known = [s for s in scores if s is not None]
    cmap = "viridis" if mode == "max" else "viridis_r"  # the best trials are the brightest
    norm = Normalize(min(known), max(known) if max(known) > min(known) else min(known) + 1) \
        if known else Normalize(0, 1)
    sm = ScalarMappable(norm=norm, cmap=cmap)
    xs = list(range(len(cols)))
    order = sorted(range(len(trials)), key=lambda i: (scores[i] is not None,
                   (scores[i] or 0) * (1 if mode == "max" else -1)))  # best drawn on top
    _draw_parallel_lines(ax, xs, [c[1] for c in cols], scores, order, sm,
                         many=len(trials) > MANY_TRIALS)
    for x, (_, _, _, tk) in zip(xs, cols):
        ax.axvline(x, color="#444444", linewidth=0.8)
        for y, label in tk[:12]:
            ax.text(x + 0.02, y, label[:16], fontsize=7, va="center", ha="left",
                    color="#222222", clip_on=False,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1})
    names = [c[0] if len(c[0]) <= _NAME else c[0][:_NAME - 1] + "\u2026" for c in cols]
    ax.set_xticks(xs, names, rotation=20, ha="right")
    # the names slant 20 degrees down to the left of their axis: the first one's length sets
    # the left margin, the longest one the bottom (about 0.08 inch a character at 10 pt)
    _frame(fig, left=max(0.3, 0.075 * len(names[0])), right=0.3,
           bottom=0.3 + 0.028 * max(map(len, names)), top=0.45)
    ax.set_xlim(-0.1, max(len(cols) - 1, 1) + 0.4)
    ax.set_ylim(-0.05, 1.05)
    ax.set_yticks([])
    fig.colorbar(sm, ax=ax, label=f"{metric} (last reported)")


def _draw_parallel_lines(ax: Axes, xs: list[int], cols: list[list[float]],
                         scores: list[float | None], order: list[int], sm: ScalarMappable,
                         many: bool) -> None:
    """Every trial's polyline, in :class:`~matplotlib.collections.LineCollection` layers drawn
    worst first: the trials without the metric as grey dashes, the scored ones coloured by
    it. Up to :data:`MANY_TRIALS` trials every scored line is bold with a dot at each axis;
    beyond, the :data:`TOP_LINES` best are bold on top and the rest faint (their density
    shows)."""
    pos = np.asarray(cols, dtype=float).T  # (trials, axes)
    x = np.asarray(xs, dtype=float)
    unscored = [i for i in order if scores[i] is None]
    scored = [i for i in order if scores[i] is not None]  # worst first
    cut = max(len(scored) - TOP_LINES, 0) if many else 0
    rest, top = scored[:cut], scored[cut:]
    layers = [(unscored, 0.6 if many else 0.8, 0.25 if many else 0.7, "--", 1),
              (rest, 0.5, 0.2, "-", 2), (top, 1.4, 0.9, "-", 3)]
    for idx, width, alpha, style, z in layers:
        if not idx:
            continue
        segs = np.stack([np.broadcast_to(x, (len(idx), len(x))), pos[idx]], axis=-1)
        colours = ("#BBBBBB" if style == "--" else
                   sm.to_rgba(np.asarray([scores[i] for i in idx], dtype=float)))
        ax.add_collection(LineCollection(list(segs), colors=colours, linewidths=width,
                                         alpha=alpha, linestyles=style, zorder=z))
        if not many and style == "-":
            ax.scatter(np.tile(x, len(idx)), pos[idx].ravel(), s=9, zorder=z, alpha=alpha,
                       c=np.repeat(np.atleast_2d(colours), len(x), axis=0))


def parallel_coordinates(trials: Any, metric: str, path: str, mode: str = "max") -> str:
    """One polyline per trial across its config values and the metric.

    Numeric parameters are normalised to their range (``log10`` when they span more than two
    decades), categorical ones placed by code; lines are coloured by the metric (brighter is
    better for ``mode``) with a colorbar; trials without the metric are grey dashes.
    """
    ts = _trials(trials)
    fig = Figure(figsize=(max(8.0, 1.6 * (len({k for t in ts for k in t.config}) + 2)), 5.5),
                 dpi=_DPI)
    _frame(fig, left=0.3, right=0.3, bottom=0.5, top=0.45)
    ax = fig.add_subplot()
    if not ts:
        _empty(ax, "no trials")
    else:
        _draw_parallel(fig, ax, ts, metric, mode)
    ax.set_title(f"Configurations against {metric} ({len(ts)} trials)")
    return _save(fig, path)


# -- Pareto front -----------------------------------------------------------------------------
_FEASIBLE = "#0072B2"  # blue
_INFEASIBLE = "#999999"  # grey
_FRONT = "#D55E00"  # vermilion


def pareto_plot(trials: Any, objective: Any, path: str) -> str:
    """Every trial at its last reported values of the first two metrics: feasible trials as
    blue dots, infeasible ones (a constraint broken) as grey crosses, the Pareto front as
    vermilion dots joined by the boundary of the region it dominates, constraint bounds on
    those two metrics as dashed lines.

    ``objective`` is a :class:`~tuning._objective.Objective` with at least two metrics (with
    more, the front is the one in all of them, drawn in the first two).
    """
    fig = Figure(figsize=(8, 6), dpi=_DPI)
    _frame(fig, left=0.8, right=0.25, bottom=0.6, top=0.45)
    _draw_pareto(fig.add_subplot(), trials, objective)
    return _save(fig, path)


def _draw_pareto(ax: Axes, trials: Any, objective: Any) -> dict[str, list[str]]:
    """Draw :func:`pareto_plot` on ``ax``; returns the trial ids drawn as ``feasible``,
    ``infeasible`` and ``front``."""
    ts = [t for t in _trials(trials) if t.last_result is not None]
    m0, m1 = objective.metrics[0], objective.metrics[1]
    pts = [(t, objective.values(t.last_result)) for t in ts]
    pts = [(t, v) for t, v in pts if all(math.isfinite(x) for x in v[:2])]
    front = {t.trial_id for t in objective.front(t for t, _ in pts)}
    groups: dict[str, list[tuple[Trial, tuple[float, ...]]]] = {
        "feasible": [(t, v) for t, v in pts if t.trial_id not in front
                     and objective.is_feasible(t.last_result)],
        "infeasible": [(t, v) for t, v in pts if not objective.is_feasible(t.last_result)],
        "front": [(t, v) for t, v in pts if t.trial_id in front]}
    if not pts:
        _empty(ax, f"no trial has reported {m0!r} and {m1!r} yet")
    style = {"feasible": {"s": 22, "color": _FEASIBLE, "alpha": 0.6},
             "infeasible": {"s": 26, "color": _INFEASIBLE, "marker": "x"}}
    for name, kw in style.items():
        g = groups[name]
        if g:
            ax.scatter([v[0] for _, v in g], [v[1] for _, v in g], label=f"{name} ({len(g)})",
                       **kw)  # type: ignore[arg-type]
    if groups["front"]:
        _draw_front(ax, [v for _, v in groups["front"]], objective.modes[0])
    _draw_bounds(ax, objective, m0, m1)
    ax.set_xlabel(f"{m0} ({objective.modes[0]})")
    ax.set_ylabel(f"{m1} ({objective.modes[1]})")
    more = "" if len(objective.metrics) == 2 else f" (front in all {len(objective.metrics)} metrics)"
    ax.set_title(f"Pareto front{more}: {len(front)} of {len(pts)} trials, "
                 f"{len(groups['infeasible'])} infeasible")
    ax.grid(True, alpha=0.3)
    if pts:
        ax.legend(loc="best", fontsize=8)
    return {k: [t.trial_id for t, _ in g] for k, g in groups.items()}


def _draw_front(ax: Axes, front: Sequence[Sequence[float]], mode0: str) -> None:
    """The front's points and the boundary of the region they dominate (in the first two
    metrics): from each point, along the first metric to the next one's value, then to it."""
    s0 = 1.0 if mode0 == "max" else -1.0
    pts = sorted(((v[0], v[1]) for v in front), key=lambda p: -s0 * p[0])  # best x first
    xs, ys = [pts[0][0]], [pts[0][1]]
    for x, y in pts[1:]:
        xs += [x, x]
        ys += [ys[-1], y]
    ax.plot(xs, ys, color=_FRONT, linewidth=1.2, alpha=0.8)
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=46, color=_FRONT, zorder=3,
               edgecolor="black", linewidth=0.5, label=f"Pareto front ({len(pts)})")


def _draw_bounds(ax: Axes, objective: Any, m0: str, m1: str) -> None:
    for metric, (lo, hi) in objective.constraints.items():
        for b in (lo, hi):
            if b is None:
                continue
            if metric == m0:
                ax.axvline(b, color=_INFEASIBLE, linestyle="--", linewidth=1)
            elif metric == m1:
                ax.axhline(b, color=_INFEASIBLE, linestyle="--", linewidth=1)


def all_plots(trials: Any, metric: str, mode: str, events: Iterable[Mapping[str, Any]] | None,
              out_dir: str, histories: Histories | None = None,
              objective: Any = None) -> list[str]:
    """Write ``learning_curves.png``, ``rung_diagram.png`` and ``parallel_coordinates.png``
    under ``out_dir`` (a local directory or fsspec URL); ``events`` are the journal's
    ``decision`` events (may be empty), ``histories`` the trials' results for the curves. With
    an ``objective`` of several metrics (:class:`~tuning._objective.Objective`), also
    ``pareto_front.png``. Returns the paths."""
    ts = _trials(trials)
    decisions = [dict(e) for e in events or () if e.get("event", "decision") == "decision"]
    base = os.fspath(out_dir).rstrip("/")
    out = [learning_curves(ts, metric, mode, decisions, f"{base}/learning_curves.png",
                           histories),
           rung_diagram(ts, f"{base}/rung_diagram.png"),
           parallel_coordinates(ts, metric, f"{base}/parallel_coordinates.png", mode=mode)]
    if objective is not None and objective.multi:
        out.append(pareto_plot(ts, objective, f"{base}/pareto_front.png"))
    return out
