"""A live terminal view of a running experiment (``rungflow run`` on a TTY).

The tuning loop does not know about the view: after each wave it calls :func:`notify` with
its controller, which costs one global lookup when nobody watches and is rate-limited (4
updates a second by default) when someone does. The CLI installs a :class:`LiveView` as the
observer for the duration of a run with :func:`live_view`::

    with live_view(spec):          # spec may be None (resume): the first controller names it
        result = tuner.run()

and the loop (``tasks/record.py`` or ``flows/tune.py``) calls::

    tuning.live.notify(ctl)        # after each wave; force=True at the end

At scale (10,000+ trials) a render must not sort every trial: the view keeps an index of the
trials (counts per status, every scored trial in order) that it updates incrementally and
reads the top rows from, so a render costs O(k). A caller that knows which trials changed
says so, and the update costs O(changed · log n)::

    ctl.run(on_events=lambda events: notify(ctl, changed=changed_trials(events)))

Without ``changed`` the view finds the changed trials itself with one cheap pass (status and
result count per trial; only those that moved are re-scored, nothing is sorted).

Rendering is a pure function of a controller-like object, so it is tested without a
terminal. What :meth:`LiveView.render` reads (all of :class:`tuning.controller.Controller`
has them):

- ``name``, ``metric``, ``mode``; ``trials``: ``{trial_id: Trial}``;
- ``budget`` with ``num_samples``, ``time_budget_s``, ``total_iterations``;
- ``iterations_total``, ``stopping`` (why no new work starts, or None), ``done``;
- ``elapsed()`` seconds; optional: ``trial_score(t)``, ``trial_count``, ``max_trials()``
  (samples times grid points), each computed from ``trials`` when missing. The counts and
  the best trial come from the view's own :class:`TrialIndex` (not ``counts()`` or
  ``best_trial()``, which walk every trial).

Example:
    >>> from rich.console import Console
    >>> from types import SimpleNamespace as NS
    >>> from tuning._trial import Status, Trial
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

import inspect
import logging
import math
import sys
import time
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Iterator, Mapping
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

__all__ = ["LiveView", "TrialIndex", "changed_trials", "flush", "live_view", "notify",
           "set_observer"]

log = logging.getLogger("tuning.live")

Observer = Callable[[Any], None]

_observer: Observer | None = None
_min_interval_s = 0.25
_last_sent = -math.inf
_pending: Any = None  # the latest controller held back by the rate limit
_changed: set[str] | None = set()  # trials changed since the last delivery; None: unknown
_takes_changed = False  # whether the observer accepts ``changed=``

_STYLES = {"RUNNING": "magenta", "PAUSED": "blue", "PENDING": "grey50", "STOPPED": "yellow",
           "TERMINATED": "green", "ERROR": "red"}
_WORDS = [("RUNNING", "running"), ("PAUSED", "paused"), ("PENDING", "pending"),
          ("STOPPED", "stopped"), ("TERMINATED", "finished"), ("ERROR", "errored")]


# -- the hook the loop calls ------------------------------------------------------------------
def set_observer(observer: Observer | None, min_interval_s: float = 0.25) -> Observer | None:
    """Install ``observer(controller)`` (or remove it with None); returns the previous one.

    ``min_interval_s`` is the least time between two deliveries (0: every notify). An observer
    with a ``changed`` parameter (as :meth:`LiveView.update`) is also given the ids of the
    trials changed since its last delivery (None when a notify did not say)."""
    global _observer, _min_interval_s, _last_sent, _pending, _changed, _takes_changed
    previous, _observer = _observer, observer
    _min_interval_s, _last_sent, _pending = float(min_interval_s), -math.inf, None
    _changed, _takes_changed = set(), _accepts_changed(observer)
    return previous


def _accepts_changed(observer: Observer | None) -> bool:
    if observer is None:
        return False
    try:
        return "changed" in inspect.signature(observer).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def notify(controller: Any, force: bool = False, changed: Iterable[str] | None = None) -> bool:
    """Tell the observer, if any, that ``controller`` changed; True when it was delivered.

    A no-op without an observer. Within ``min_interval_s`` of the last delivery the
    controller is only remembered, and :func:`flush` (or the next notify after the interval)
    delivers it. ``changed``: the ids of the trials that changed since the previous notify,
    when the caller knows them (see :func:`changed_trials`); held-back notifies add theirs up.
    An observer that raises is logged and never breaks the run."""
    global _pending
    if _observer is None:
        return False
    _remember(changed)
    if not force and time.monotonic() - _last_sent < _min_interval_s:
        _pending = controller
        return False
    _deliver(controller)
    return True


def _remember(changed: Iterable[str] | None) -> None:
    global _changed
    if changed is None:
        _changed = None
    elif _changed is not None:
        _changed.update(changed)


def _deliver(controller: Any) -> None:
    global _last_sent, _pending, _changed
    ids, _changed = _changed, set()
    _last_sent, _pending = time.monotonic(), None
    try:
        if _takes_changed:
            _observer(controller, changed=ids)  # type: ignore[misc,call-arg]
        else:
            _observer(controller)  # type: ignore[misc]
    except Exception:  # a display must never stop a tuning run
        log.debug("live view observer failed", exc_info=True)


def flush() -> bool:
    """Deliver the controller the rate limit held back, if any."""
    if _observer is None or _pending is None:
        return False
    _deliver(_pending)
    return True


def changed_trials(events: Iterable[Mapping[str, Any]]) -> set[str]:
    """The ids of the trials that journal ``events`` are about (created, result, status,
    decision, ...): what to pass as ``notify(ctl, changed=...)``."""
    return {str(tid) for e in events if (tid := e.get("trial_id")) is not None}


# -- rendering --------------------------------------------------------------------------------
def _duration(seconds: float) -> str:
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _score(ctl: Any, trial: Trial) -> float | None:
    return trial.last_value(ctl.metric)


def _status_key(status: Any) -> str:
    return str(getattr(status, "value", status))


# (signed score: smaller is better, first-seen order, trial id)
_Key = tuple[float, int, str]


class _Entry:
    """What the index last saw of one trial."""

    __slots__ = ("key", "n_results", "score", "seq", "status", "trial")

    def __init__(self, trial: Trial, seq: int, score: float | None, key: _Key | None) -> None:
        self.trial, self.status, self.n_results = trial, trial.status, trial.num_results
        self.seq, self.score, self.key = seq, score, key

    def stale(self, trial: Trial) -> bool:
        return (trial is not self.trial or trial.status != self.status
                or trial.num_results != self.n_results)


class TrialIndex:
    """Counts per status and every scored trial in rank order, kept up to date incrementally.

    Follows one controller's ``trials`` dict. :meth:`sync` re-reads only the trials named as
    changed (O(log n) each, plus a list insertion) or, told nothing, finds them with one pass
    comparing each trial's status and result count to what it saw (nothing is sorted, only
    the trials that moved are re-scored). :meth:`top` and :attr:`counts` then cost O(k) and
    O(1). The order is the one a stable sort of ``trials`` by score gives: best first (per
    ``mode``), ties in the dict's order; the score is ``ctl.trial_score(t)`` when the
    controller has it, else the last reported value of the metric.
    """

    def __init__(self, controller: Any) -> None:
        self.controller = controller
        self.trials: Mapping[str, Trial] = controller.trials
        self.metric, self.mode = controller.metric, controller.mode
        self.counts: dict[str, int] = {s.value: 0 for s in Status}
        self._entries: dict[str, _Entry] = {}
        self._ranked: list[_Key] = []
        self._seq = 0
        self._scan()

    def __len__(self) -> int:
        return len(self._entries)

    def follows(self, controller: Any) -> bool:
        """Whether :meth:`sync` can bring this index up to ``controller``'s state."""
        return (controller is self.controller and controller.trials is self.trials
                and controller.metric == self.metric and controller.mode == self.mode)

    def sync(self, changed: Iterable[str] | None = None) -> None:
        """Catch up with the trials: those in ``changed`` (None: find them by a scan)."""
        if changed is None:
            self._scan()
            return
        ids = set(changed)
        new = [tid for tid in ids if tid not in self._entries and tid in self.trials]
        if new and not self._put_new(new):
            self._scan()
            return
        for tid in ids.difference(new):
            self._refresh(tid)
        if len(self._entries) != len(self.trials):  # a creation nobody named: look
            self._scan()

    def top(self, k: int) -> list[tuple[float, Trial]]:
        """The ``k`` best scored trials, best first, with their scores."""
        out: list[tuple[float, Trial]] = []
        for key in self._ranked[: max(k, 0)]:
            e = self._entries[key[2]]
            out.append((e.score if e.score is not None else math.nan, e.trial))
        return out

    def best(self) -> tuple[float, Trial] | None:
        top = self.top(1)
        return top[0] if top else None

    # -- updating -----------------------------------------------------------------------------
    def _scan(self) -> None:
        items = list(self.trials.items())  # one C-level copy: safe against a growing dict
        for tid, t in items:
            e = self._entries.get(tid)
            if e is None or e.stale(t):
                self._put(tid, t)
        if len(self._entries) > len(items):
            for tid in set(self._entries).difference(tid for tid, _ in items):
                self._drop(tid)

    def _put_new(self, new: list[str]) -> bool:
        """Index new trials in the dict's order (they are its tail); False if they are not."""
        tail: list[str] = []
        try:
            keys: Any = reversed(self.trials)  # type: ignore[arg-type]
            for tid in keys:
                if len(tail) == len(new):
                    break
                tail.append(tid)
        except (TypeError, RuntimeError):  # not reversible, or grew meanwhile: scan instead
            return False
        if set(tail) != set(new):
            return False
        for tid in reversed(tail):
            self._put(tid, self.trials[tid])
        return True

    def _refresh(self, tid: str) -> None:
        t = self.trials.get(tid)
        if t is None:
            self._drop(tid)
        else:
            self._put(tid, t)

    def _put(self, tid: str, trial: Trial) -> None:
        old = self._unlink(tid)
        seq = old.seq if old is not None else self._next_seq()
        score = _score(self.controller, trial)
        if score is not None and math.isnan(score):
            score = None
        key = None if score is None else (-score if self.mode == "max" else score, seq, tid)
        if key is not None:
            insort(self._ranked, key)
        status = _status_key(trial.status)
        self.counts[status] = self.counts.get(status, 0) + 1
        self._entries[tid] = _Entry(trial, seq, score, key)

    def _drop(self, tid: str) -> None:
        if self._unlink(tid) is not None:
            del self._entries[tid]

    def _unlink(self, tid: str) -> _Entry | None:
        """Take ``tid``'s entry out of the counts and the ranking (not out of the entries)."""
        e = self._entries.get(tid)
        if e is None:
            return None
        self.counts[_status_key(e.status)] -= 1
        if e.key is not None:
            del self._ranked[bisect_left(self._ranked, e.key)]
        return e

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq


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
        self.index: TrialIndex | None = None  # of the last controller rendered or seen
        self._live: Live | None = None
        self._restore: list[Callable[[], None]] = []

    # -- rendering ----------------------------------------------------------------------------
    def render(self, controller: Any = None) -> RenderableType:
        """The panel for ``controller`` (default: the last one seen, as of its last
        :meth:`update`: O(k)). A controller given here is caught up with first (one pass)."""
        ctl = controller if controller is not None else self.controller
        if ctl is None:
            return Panel(Text("starting…", style="dim"), title=self._title(None))
        if controller is not None or self.index is None or not self.index.follows(ctl):
            self._sync(ctl, None)
        return self._panel(ctl, self.index)  # type: ignore[arg-type]

    def _sync(self, ctl: Any, changed: Iterable[str] | None) -> TrialIndex:
        if self.index is None or not self.index.follows(ctl):
            self.index = TrialIndex(ctl)
        else:
            self.index.sync(changed)
        return self.index

    def _panel(self, ctl: Any, index: TrialIndex) -> RenderableType:
        rows = Table.grid(padding=(0, 2))
        rows.add_column(style="bold")
        rows.add_column()
        rows.add_row("trials", self._counts_text(index))
        rows.add_row("best", self._best_text(ctl, index))
        rows.add_row("budget", _budget_text(ctl, self.budget or getattr(ctl, "budget", None)))
        if getattr(ctl, "stopping", None):
            rows.add_row("stopping", Text(str(ctl.stopping), style="yellow"))
        parts: list[RenderableType] = [rows]
        if self.top_k and len(index):
            parts.append(self._top_table(ctl, index))
        state = "done" if getattr(ctl, "done", False) else "running"
        return Panel(Group(*parts), title=self._title(ctl), subtitle=state,
                     border_style="green" if state == "done" else "blue")

    def _title(self, ctl: Any) -> str:
        name = getattr(ctl, "name", None) or self.name or "experiment"
        metric = getattr(ctl, "metric", None) or self.metric
        mode = getattr(ctl, "mode", None) or self.mode
        goal = f" · {mode} {metric}" if metric else ""
        return f"rungflow · {name}{goal}"

    def _counts_text(self, index: TrialIndex) -> Text:
        counts, total = index.counts, len(index)
        out = Text()
        for i, (key, word) in enumerate(_WORDS):
            if i:
                out.append(" · ")
            n = counts.get(key, 0)
            out.append(f"{n} {word}", style=_STYLES[key] if n else "dim")
        out.append(f"  ({total} trial{'' if total == 1 else 's'})")
        return out

    def _best_text(self, ctl: Any, index: TrialIndex) -> Text:
        best = index.best()
        if best is None:
            return Text(f"no trial has reported {ctl.metric} yet", style="dim")
        score, trial = best
        out = Text(trial.trial_id, style="bold green")
        out.append(f"  {ctl.metric}={score:.6g}  ")
        out.append(_config_text(trial.config), style="cyan")
        return out

    def _top_table(self, ctl: Any, index: TrialIndex) -> Table:
        table = Table(box=None, pad_edge=False, header_style="bold dim", expand=False)
        for col in ("trial", "status", "iter", ctl.metric, "config"):
            table.add_column(col, no_wrap=True, overflow="ellipsis",
                             justify="right" if col in ("iter", ctl.metric) else "left")
        for s, t in index.top(self.top_k):
            status = str(getattr(t.status, "value", t.status))
            table.add_row(t.trial_id, Text(status.lower(), style=_STYLES.get(status, "")),
                          str(t.iteration), f"{s:.6g}", _config_text(t.config, 60))
        return table

    # -- feeding ------------------------------------------------------------------------------
    def update(self, controller: Any, changed: Iterable[str] | None = None) -> None:
        """Show ``controller``'s state (the observer :func:`live_view` installs).

        ``changed``: the ids of the trials changed since the last update, if known (the
        index then re-reads only those); None: it finds them with one pass."""
        self.controller = controller
        index = self._sync(controller, changed)
        if self._live is not None:
            self._live.update(self._panel(controller, index))

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
    view = LiveView(name=getattr(spec, "name", None),  # several metrics: the first one's view
                    metric=getattr(spec, "primary_metric", None) or getattr(spec, "metric", None),
                    mode=getattr(spec, "primary_mode", None) or getattr(spec, "mode", None),
                    console=console,
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
