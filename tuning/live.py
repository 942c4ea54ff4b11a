"""A live terminal view of a running experiment (``rungflow run`` on a TTY).

The tuning loop does not know about the view: after each wave it calls :func:`notify` with
its controller, which costs one global lookup when nobody watches and is rate-limited (4
updates a second by default) when someone does. The CLI installs a :class:`LiveView` as the
observer for the duration of a run with :func:`live_view`::

    with live_view(spec):          # spec may be None (resume): the first controller names it
        result = tuner.run()

and the loop (``tasks/record.py`` or ``flows/tune.py``) calls::

    tuning.live.notify(ctl)        # after each wave; force=True at the end

Rendering is a pure function of a controller-like object, so it is tested without a
terminal. What :meth:`LiveView.render` reads (all of :class:`tuning.controller.Controller`
has them):

- ``name``, ``metric``, ``mode``; ``trials``: ``{trial_id: Trial}``;
- ``budget`` with ``num_samples``, ``time_budget_s``, ``total_iterations``;
- ``iterations_total``, ``stopping`` (why no new work starts, or None), ``done``;
- ``elapsed()`` seconds; optional: ``counts()``, ``best_trial()``, ``trial_score(t)``,
  ``trial_count``, ``_max_trials()`` (samples times grid points), each computed from
  ``trials`` when missing.

Example:
    >>> from rich.console import Console
    >>> from types import SimpleNamespace as NS
    >>> from tuning._trial import Status, Trial

if TYPE_CHECKING:
    from typing_extensions import Self
    >>> t = Trial("trial-000", {"lr": 0.1}, Status.RUNNING,
    ...           [{"training_iteration": 1, "loss": 0.5}])
    >>> ctl = NS(name="demo", metric="loss", mode="min", trials={t.trial_id: t},
    ...          budget=NS(num_samples=4, time_budget_s=None, total_iterations=None),
    ...          iterations_total=1, stopping=None, done=False, elapsed=lambda: 3.0)
    >>> import io
    >>> c = Console(record=True, width=120, file=io.StringIO())
    >>> c.print(LiveView().render(ctl))
    >>> "samples left 3" in c.export_text()
    True
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from tuning._trial import Status, Trial

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["LiveView", "flush", "live_view", "notify", "set_observer"]

log = logging.getLogger("tuning.live")

Observer = Callable[[Any], None]

_observer: Observer | None = None
_min_interval_s = 0.25
_last_sent = -math.inf
_pending: Any = None  # the latest controller held back by the rate limit

_STYLES = {"RUNNING": "magenta", "PAUSED": "blue", "PENDING": "grey50", "STOPPED": "yellow",
           "TERMINATED": "green", "ERROR": "red"}
_WORDS = [("RUNNING", "running"), ("PAUSED", "paused"), ("PENDING", "pending"),
          ("STOPPED", "stopped"), ("TERMINATED", "finished"), ("ERROR", "errored")]


# -- the hook the loop calls ------------------------------------------------------------------
def set_observer(observer: Observer | None, min_interval_s: float = 0.25) -> Observer | None:
    """Install ``observer(controller)`` (or remove it with None); returns the previous one.

    ``min_interval_s`` is the least time between two deliveries (0: every notify)."""
    global _observer, _min_interval_s, _last_sent, _pending
    previous, _observer = _observer, observer
    _min_interval_s, _last_sent, _pending = float(min_interval_s), -math.inf, None
    return previous


def notify(controller: Any, force: bool = False) -> bool:
    """Tell the observer, if any, that ``controller`` changed; True when it was delivered.

    A no-op without an observer. Within ``min_interval_s`` of the last delivery the
    controller is only remembered, and :func:`flush` (or the next notify after the interval)
    delivers it. An observer that raises is logged and never breaks the run."""
    global _last_sent, _pending
    if _observer is None:
        return False
    now = time.monotonic()
    if not force and now - _last_sent < _min_interval_s:
        _pending = controller
        return False
    _last_sent, _pending = now, None
    try:
        _observer(controller)
    except Exception:  # a display must never stop a tuning run
        log.debug("live view observer failed", exc_info=True)
    return True


def flush() -> bool:
    """Deliver the controller the rate limit held back, if any."""
    if _observer is None or _pending is None:
        return False
    return notify(_pending, force=True)


# -- rendering --------------------------------------------------------------------------------
def _duration(seconds: float) -> str:
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _score(ctl: Any, trial: Trial) -> float | None:
    if hasattr(ctl, "trial_score"):
        v = ctl.trial_score(trial)
        return None if v is None else float(v)
    for r in reversed(trial.results):
        v = r.get(ctl.metric)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v):
            return float(v)
    return None


def _best(ctl: Any, trials: list[Trial]) -> Trial | None:
    if hasattr(ctl, "best_trial"):
        return ctl.best_trial()  # type: ignore[no-any-return]
    scored = [(s, t) for t in trials if (s := _score(ctl, t)) is not None]
    if not scored:
        return None
    pick = max if ctl.mode == "max" else min
    return pick(scored, key=lambda st: st[0])[1]


def _counts(ctl: Any, trials: list[Trial]) -> dict[str, int]:
    if hasattr(ctl, "counts"):
        return {str(k): int(v) for k, v in ctl.counts().items()}
    out = {s.value: 0 for s in Status}
    for t in trials:
        key = str(getattr(t.status, "value", t.status))
        out[key] = out.get(key, 0) + 1
    return out


def _config_text(config: dict[str, Any], limit: int = 90) -> str:
    parts = []
    for k, v in config.items():
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    text = ", ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _max_trials(ctl: Any, budget: Any) -> int | None:
    fn = getattr(ctl, "max_trials", None) or getattr(ctl, "_max_trials", None)
    if callable(fn):
        return int(fn())
    n = getattr(budget, "num_samples", None)
    return int(n) if n is not None else None


def _budget_text(ctl: Any, budget: Any) -> Text:
    elapsed = float(ctl.elapsed()) if callable(getattr(ctl, "elapsed", None)) else 0.0
    out = Text(f"elapsed {_duration(elapsed)}")
    started = int(getattr(ctl, "trial_count", len(ctl.trials)))
    total = _max_trials(ctl, budget)
    if total is not None:
        out.append(f" · samples left {max(total - started, 0)} of {total}")
    tb = getattr(budget, "time_budget_s", None)
    if tb is not None:
        out.append(f" · time left {_duration(max(float(tb) - elapsed, 0.0))} of {_duration(tb)}")
    ti = getattr(budget, "total_iterations", None)
    if ti is not None:
        used = int(getattr(ctl, "iterations_total", 0))
        out.append(f" · iterations left {max(int(ti) - used, 0)} of {int(ti)}")
    return out


class LiveView:
    """A rich ``Live`` display of one experiment, fed controllers through :meth:`update`.

    Args:
        name, metric, mode: shown before the first update; afterwards the controller's own
            (so a resumed run without a spec is named by its controller).
        budget: a :class:`~tuning.controller.Budget`-like object; default: the controller's.
        console: where to draw (default: a new :class:`rich.console.Console` on stdout).
        top_k: how many of the best trials the table lists.
        refresh_per_second: how often ``Live`` redraws.
    """

    def __init__(self, name: str | None = None, metric: str | None = None,
                 mode: str | None = None, budget: Any = None, console: Console | None = None,
                 top_k: int = 5, refresh_per_second: float = 4.0) -> None:
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k!r}")
        self.name, self.metric, self.mode, self.budget = name, metric, mode, budget
        self.console = console if console is not None else Console()
        self.top_k = top_k
        self.refresh_per_second = refresh_per_second
        self.controller: Any = None
        self._live: Live | None = None
        self._restore: list[Callable[[], None]] = []

    # -- rendering ----------------------------------------------------------------------------
    def render(self, controller: Any = None) -> RenderableType:
        """The panel for ``controller`` (default: the last one seen)."""
        ctl = controller if controller is not None else self.controller
        if ctl is None:
            return Panel(Text("starting…", style="dim"), title=self._title(None))
        trials = list(ctl.trials.values())
        rows = Table.grid(padding=(0, 2))
        rows.add_column(style="bold")
        rows.add_column()
        rows.add_row("trials", self._counts_text(ctl, trials))
        rows.add_row("best", self._best_text(ctl, trials))
        rows.add_row("budget", _budget_text(ctl, self.budget or getattr(ctl, "budget", None)))
        if getattr(ctl, "stopping", None):
            rows.add_row("stopping", Text(str(ctl.stopping), style="yellow"))
        parts: list[RenderableType] = [rows]
        if self.top_k and trials:
            parts.append(self._top_table(ctl, trials))
        state = "done" if getattr(ctl, "done", False) else "running"
        return Panel(Group(*parts), title=self._title(ctl), subtitle=state,
                     border_style="green" if state == "done" else "blue")

    def _title(self, ctl: Any) -> str:
        name = getattr(ctl, "name", None) or self.name or "experiment"
        metric = getattr(ctl, "metric", None) or self.metric
        mode = getattr(ctl, "mode", None) or self.mode
        goal = f" · {mode} {metric}" if metric else ""
        return f"rungflow · {name}{goal}"

    def _counts_text(self, ctl: Any, trials: list[Trial]) -> Text:
        counts = _counts(ctl, trials)
        out = Text()
        for i, (key, word) in enumerate(_WORDS):
            if i:
                out.append(" · ")
            n = counts.get(key, 0)
            out.append(f"{n} {word}", style=_STYLES[key] if n else "dim")
        out.append(f"  ({len(trials)} trial{'' if len(trials) == 1 else 's'})")
        return out

    def _best_text(self, ctl: Any, trials: list[Trial]) -> Text:
        best = _best(ctl, trials)
        if best is None:
            return Text(f"no trial has reported {ctl.metric} yet", style="dim")
        out = Text(best.trial_id, style="bold green")
        out.append(f"  {ctl.metric}={_score(ctl, best):.6g}  ")
        out.append(_config_text(best.config), style="cyan")
        return out

    def _top_table(self, ctl: Any, trials: list[Trial]) -> Table:
        sign = -1.0 if ctl.mode == "max" else 1.0
        scored = [(s, t) for t in trials if (s := _score(ctl, t)) is not None]
        scored.sort(key=lambda st: sign * st[0])
        table = Table(box=None, pad_edge=False, header_style="bold dim", expand=False)
        for col in ("trial", "status", "iter", ctl.metric, "config"):
            table.add_column(col, no_wrap=True, overflow="ellipsis",
                             justify="right" if col in ("iter", ctl.metric) else "left")
        for s, t in scored[: self.top_k]:
            status = str(getattr(t.status, "value", t.status))
            table.add_row(t.trial_id, Text(status.lower(), style=_STYLES.get(status, "")),
                          str(t.iteration), f"{s:.6g}", _config_text(t.config, 60))
        return table

    # -- feeding ------------------------------------------------------------------------------
    def update(self, controller: Any) -> None:
        """Show ``controller``'s state (the observer :func:`live_view` installs)."""
        self.controller = controller
        if self._live is not None:
            self._live.update(self.render(controller))

    def __enter__(self) -> Self:
        out, err = sys.stdout, sys.stderr
        self._live = Live(self.render(), console=self.console, transient=False,
                          refresh_per_second=self.refresh_per_second)
        self._live.start()
        # log handlers (Prefect's among them) that captured the real streams before the view
        # started would tear the display: point them at rich's proxies while it runs
        self._restore = (_redirect_handlers(out, sys.stdout) + _redirect_handlers(err, sys.stderr))
        return self

    def __exit__(self, *exc: object) -> None:
        for undo in reversed(self._restore):
            undo()
        self._restore = []
        live, self._live = self._live, None
        if live is not None:
            if self.controller is not None:
                live.update(self.render(self.controller), refresh=True)
            live.stop()


def _handlers() -> Iterator[logging.Handler]:
    seen: set[int] = set()
    loggers: list[Any] = [logging.getLogger()]
    loggers += [lg for lg in logging.Logger.manager.loggerDict.values()
                if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for h in lg.handlers:
            if id(h) not in seen:
                seen.add(id(h))
                yield h


def _redirect_handlers(old: Any, new: Any) -> list[Callable[[], None]]:
    """Point every stream log handler writing to ``old`` at ``new``; return the undos."""
    if old is new:
        return []
    undos: list[Callable[[], None]] = []
    for h in list(_handlers()):
        if not isinstance(h, logging.StreamHandler) or h.stream is not old:
            continue
        h.setStream(new)
        console = getattr(h, "console", None)  # prefect's handler prints through rich
        moved = isinstance(console, Console) and console.file is old
        if moved:
            console.file = new  # type: ignore[union-attr]

        def undo(h: logging.StreamHandler = h, console: Any = console, moved: bool = moved
                 ) -> None:
            h.setStream(old)
            if moved:
                console.file = old
        undos.append(undo)
    return undos


@contextmanager
def live_view(spec: Any = None, *, console: Console | None = None, quiet: bool = False,
              min_interval_s: float = 0.25) -> Iterator[LiveView | None]:
    """Show a :class:`LiveView` fed by :func:`notify` while the block runs.

    ``spec`` (an ExperimentSpec, or None when resuming) names the view until the first
    controller arrives. Prints nothing (and yields None) when ``quiet`` or when ``console``
    is not a terminal. The previous observer is restored afterwards."""
    console = console if console is not None else Console()
    if quiet or not console.is_terminal:
        yield None
        return
    view = LiveView(name=getattr(spec, "name", None), metric=getattr(spec, "metric", None),
                    mode=getattr(spec, "mode", None), console=console,
                    refresh_per_second=max(1.0 / min_interval_s, 1.0) if min_interval_s else 4)
    previous = set_observer(view.update, min_interval_s)
    try:
        with view:
            try:
                yield view
            finally:
                flush()
    finally:
        set_observer(previous)
