"""The engine's decision core: each result decided the moment it arrives.

The controller owns the trial table and the journal; it asks the searcher what to try, the
scheduler what to run, pause or stop, and the backend to run segments. It knows nothing of
Prefect or MLflow. A *wave* is a window of wall time (:meth:`run_wave`, seconds, doubling up
to ``max_wave_s``): within it every backend message is applied at once (O(1) work here plus
the scheduler's own), the answer to a trial waiting at a decision point goes straight back,
and new segments start as slots free. Between waves :meth:`end_wave` closes rungs and, when the
journal's :class:`~tuning.experiment.SnapshotPolicy` says one is due, writes a state snapshot. Events go to the journal's group commits; nothing here waits on a disk, on
Prefect or on MLflow. ``flows/tune.py`` runs one ``dispatch`` and one ``end-wave`` task
per wave.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuning._objective import Objective, bind_objective
from tuning._trial import ITERATION, Status, Trial, best_trial, format_trial_id
from tuning.backends._base import Backend, Done, Lost, Message, Result, Started
from tuning.experiment import ExperimentState, Journal, SnapshotPolicy
from tuning.schedulers._base import Decision, Resume, Scheduler, StartNew
from tuning.searchers._base import Searcher
from tuning.space import Space
from tuning.stoppers import Stopper
from tuning.trainable import Segment

__all__ = ["Budget", "Controller", "Ending", "ExperimentAborted", "MetricMissingError",
           "WaveReport"]

log = logging.getLogger("tuning.controller")


class ExperimentAborted(RuntimeError):
    """``fail_fast``: a trial failed and the experiment was stopped."""


class MetricMissingError(ValueError):
    """The experiment's metric is not in what the trainable reports."""


@dataclass
class Budget:
    """Experiment-wide stop conditions."""

    num_samples: int = 1
    time_budget_s: float | None = None
    total_iterations: int | None = None  # sum of training iterations over all trials
    metric_threshold: float | None = None  # stop once the best result reaches it


@dataclass
class Ending:
    """How a running segment's trial ends, decided while it still runs (a STOP, a pause at a
    rung, an error); applied when the segment's end reaches the driver."""

    status: Status
    error: str | None = None


@dataclass
class _Flight:
    segment: Segment
    ending: Ending | None = None
    started: bool = False
    started_at: float | None = None  # wall clock, for timeout_s

    def end_as(self, status: Status, error: str | None = None, *, override: bool = False) -> bool:
        """Decide the segment's outcome once (``override``: an error replaces a decision)."""
        if self.ending is not None and not override:
            return False
        self.ending = Ending(status, error)
        return True


@dataclass
class WaveReport:
    """What one wave (a window of work) did: the ``dispatch`` task's result."""

    seconds: float = 0.0
    segments_started: int = 0
    results: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    trials_ended: int = 0


@dataclass
class Controller:
    """``metric``/``mode``: one of each, or lists (several metrics: ``self.objective`` holds
    them all, with ``constraints``; ``self.metric``/``self.mode`` become the first)."""

    name: str
    trainable: Callable[..., Any]
    space: Space
    metric: Any  # str, or a list of str
    mode: Any  # "min" | "max", or a list of them
    scheduler: Scheduler
    searcher: Searcher
    backend: Backend
    journal: Journal
    storage: str  # the experiment directory (checkpoints go under it)
    budget: Budget = field(default_factory=Budget)
    seed: int | None = None
    max_failures: int = 0
    fail_fast: bool = False
    stoppers: list[Stopper] = field(default_factory=list)
    trial_timeout_s: float | None = None
    resources: dict[str, float] = field(default_factory=dict)
    max_concurrent: int | None = None
    replayed: ExperimentState | None = None  # the journal replayed, when resuming
    first_wave_s: float = 8.0  # waves double from this, up to max_wave_s: a short run is one wave
    max_wave_s: float = 30.0
    snapshots: SnapshotPolicy = field(default_factory=SnapshotPolicy)
    constraints: Mapping[str, Any] | None = None  # metric -> {min, max}: infeasible outside
    selection: Any = None  # tuning._objective.Selection: how best_trial picks one of several

    def __post_init__(self) -> None:
        self.objective = Objective.build(self.metric, self.mode, self.constraints)
        self.metric, self.mode = self.objective.primary, self.objective.primary_mode
        self.trials: dict[str, Trial] = {}
        self.flights: dict[str, _Flight] = {}
        self.to_resubmit: list[str] = []
        self._decided_at_crash: dict[str, Ending] = {}  # see _restore
        self.trial_count = 0
        self.segment_count = 0
        self.iterations_total = 0
        self.elapsed_before = 0.0
        self.searcher_finished = False
        self.stopping: str | None = None  # why no new work is started
        self.aborted: str | None = None
        self._abort_kind: type[Exception] = ExperimentAborted
        self.finished = False
        self.waves = 0
        self.on_tick: Callable[[], None] | None = None  # the live view, at most every 0.5 s
        self._tick_t = 0.0
        self._t0 = 0.0
        self._seg_ema: float | None = None  # wall seconds a segment takes
        self._report = WaveReport()
        self._snap_bytes, self._snap_at, self._snap_t = 0, 0, time.monotonic()
        rng = np.random.default_rng(self.seed)
        s_seed, r_seed = rng.integers(2**31, size=2)
        bind_objective(self.objective, self.scheduler, self.searcher, self.space,
                       np.random.default_rng(int(s_seed)), np.random.default_rng(int(r_seed)),
                       self.budget.num_samples)
        # as many as the searcher gives (a grid search crosses choices too; every one of
        # points_to_evaluate runs), else num_samples per grid point
        self._max_trials = self.searcher.max_configs() or \
            self.budget.num_samples * max(len(self.space.grid_points()), 1)

    # -- opening ---------------------------------------------------------------------------
    def open(self) -> None:
        """Start fresh, or continue from the replayed journal (resume); the backend must be
        started."""
        self.backend.prepare(self.trainable)
        st = self.replayed
        if st is not None and st.state is not None:
            self._restore(st)
        self._t0 = self.backend.clock()
        import os
        import socket

        self._emit("run_started", resumed=bool(st and st.state), backend=self.backend.describe(),
                   pid=os.getpid(), host=socket.gethostname())
        for tid, ending in self._decided_at_crash.items():
            self._apply_decided_ending(self.trials[tid], ending)
        self._decided_at_crash.clear()
        self.commit()

    def _restore(self, st: ExperimentState) -> None:
        self.trials = st.trials
        state = st.state or {}
        self.scheduler.load_state_dict(state["scheduler"])
        self.searcher.load_state_dict(state["searcher"])
        c = state["controller"]
        self.trial_count, self.segment_count = c["trial_count"], c["segment_count"]
        self.iterations_total, self.elapsed_before = c["iterations_total"], c["elapsed_s"]
        self.searcher_finished = c["searcher_finished"]
        for stopper, s in zip(self.stoppers, c.get("stoppers", [])):
            stopper.load_state_dict(s)
        for tid, (rung, stopped_at, failures, bracket) in c.get("trials", {}).items():
            t = self.trials[tid]
            t.rung, t.stopped_at, t.num_failures, t.bracket = rung, stopped_at, failures, bracket
        in_flight: set[str] = set()
        if state.get("backend"):
            self.backend.load_state_dict(state["backend"])
            in_flight = self.backend.running_trials()  # a simulated backend resumes exactly
        for tid, fl in c.get("flights", {}).items():
            ending = Ending(Status(fl["end_as"]), fl.get("error")) if fl.get("end_as") else None
            if tid in in_flight:
                flight = _Flight(Segment(**fl["segment"]), started=bool(fl.get("started")))
                flight.ending = ending
                self.flights[tid] = flight
            elif ending is not None:  # decided, its segment's end lost: applied by open()
                self._decided_at_crash[tid] = ending
        for trial in self.trials.values():
            if trial.status == Status.RUNNING and trial.trial_id not in in_flight and \
                    trial.trial_id not in self._decided_at_crash:
                self.to_resubmit.append(trial.trial_id)  # interrupted: again from its checkpoint

    def _apply_decided_ending(self, trial: Trial, ending: Ending) -> None:
        """End a trial whose segment was lost after its ending was decided (and committed), as
        its segment's end would have: a STOP is not undone by training it on."""
        if ending.status == Status.PAUSED:
            if self.scheduler.needs_checkpoints and trial.checkpoint is None:
                self._end(trial, Status.ERROR, error=_needs_checkpoint_message(self.scheduler))
            else:
                self._set_status(trial, Status.PAUSED)
        else:
            self._end(trial, ending.status, error=ending.error)

    # -- planning --------------------------------------------------------------------------
    def _can_start_new(self) -> bool:
        return (not self.searcher_finished and self.stopping is None
                and self.trial_count < self._max_trials
                and not self.scheduler.is_finished(self.trials))

    def progress(self) -> float:
        """0..1: the largest fraction of any budget spent (trials, iterations, time)."""
        if self.finished:
            return 1.0
        done = sum(1 for t in self.trials.values() if t.is_terminal)
        parts = [done / max(self._max_trials, 1)]
        if self.budget.total_iterations:
            parts.append(self.iterations_total / self.budget.total_iterations)
        if self.budget.time_budget_s:
            parts.append(self.elapsed() / self.budget.time_budget_s)
        return min(max(parts), 1.0)

    def max_trials(self) -> int:
        """How many trials the experiment may start: num_samples times the grid's size."""
        return self._max_trials

    def free_slots(self) -> int:
        slots = self.backend.slots
        if self.max_concurrent:
            return min(slots, self.max_concurrent) - len(self.flights)
        return slots + self._prefetch(slots) - len(self.flights)

    def _prefetch(self, slots: int) -> int:
        """Segments queued beyond the workers, so that none idles for the round trip from a
        segment's end to the next one's start (short trials); none for long trials or for
        schedulers that pause trials to compare them (their choices must wait for results)."""
        if self.scheduler.pauses_trials or self.backend.virtual_clock:
            return 0
        if self._seg_ema is None or self._seg_ema <= 0:
            return 0
        return min(math.ceil(slots * _DISPATCH_LATENCY_S / self._seg_ema), 4 * slots)

    def plan_wave(self) -> list[Segment]:
        """Segments to start now: interrupted trials first, then the scheduler's choices."""
        wave: list[Segment] = []
        self._check_time_budget()
        while self.aborted is None and self.free_slots() > 0:
            seg = self._next_segment()
            if seg is None:
                break
            wave.append(seg)
        return wave

    def _next_segment(self) -> Segment | None:
        if self.to_resubmit:
            trial = self.trials[self.to_resubmit.pop(0)]
            return self._start_segment(trial, trial.config, trial.checkpoint,
                                       trial.checkpoint_iteration)
        if self.stopping is not None:
            return None
        for _ in range(3):  # a FINISHED searcher lets the scheduler choose again
            sugg = self.scheduler.choose_trial_to_run(self.trials, self._can_start_new())
            if isinstance(sugg, Resume):
                return self._resume(sugg)
            if isinstance(sugg, StartNew) and self._can_start_new():
                new = self._new_trial(sugg)
                if new is not None:
                    return self._start_segment(new, new.config, None, 0)
                if not self.searcher_finished:
                    return None  # the searcher asks to wait (concurrency limit)
                continue
            return None
        return None

    def _new_trial(self, sugg: StartNew) -> Trial | None:
        trial_id = format_trial_id(self.trial_count)
        config = sugg.config
        if config is None:
            got = self.searcher.suggest(trial_id)
            if got is None:
                return None
            if isinstance(got, str):  # FINISHED
                self.searcher_finished = True
                return None
            config = got
        self.trial_count += 1
        trial = Trial(trial_id, dict(config), info=dict(sugg.info) if sugg.info else _NO_INFO,
                      bracket=sugg.info.get("bracket"))
        self.trials[trial_id] = trial
        self._emit("trial_created", trial_id=trial_id, config=trial.config, info=trial.info)
        self.scheduler.on_trial_add(trial)
        return trial

    def _resume(self, sugg: Resume) -> Segment:
        trial = self.trials[sugg.trial_id]
        if trial.status != Status.PAUSED:
            raise RuntimeError(f"scheduler asked to resume {trial.trial_id}, which is {trial.status}")
        if sugg.checkpoint_from is not None:  # PBT exploit: another trial's weights
            source = self.trials[sugg.checkpoint_from]
            config = dict(sugg.config or trial.config)
            # the donor's state at the same point in training (its checkpoint at this trial's
            # iteration), not wherever the donor has got to since
            ckpt, _ = source.checkpoint_at(trial.iteration)
            ckpt = ckpt or source.checkpoint
            self._emit("exploit", trial_id=trial.trial_id, source=source.trial_id,
                       checkpoint=ckpt, old_config=trial.config, new_config=config)
            return self._start_segment(trial, config, ckpt, trial.iteration)
        config = dict(sugg.config) if sugg.config is not None else trial.config
        return self._start_segment(trial, config, trial.checkpoint, trial.checkpoint_iteration)

    def _start_segment(self, trial: Trial, config: dict[str, Any], checkpoint: str | None,
                       start_iteration: int) -> Segment:
        self.segment_count += 1
        offset = float(trial.last_result.get("time_total_s", 0.0)) if trial.last_result else 0.0
        points = self.scheduler.decision_points(trial)
        seg = Segment(trial_id=trial.trial_id, segment_id=self.segment_count, config=config,
                      storage=self.storage, start_iteration=start_iteration if checkpoint else 0,
                      checkpoint=checkpoint, pause_at=self.scheduler.pause_at(trial),
                      max_t=self.scheduler.max_t,
                      time_attr=self.scheduler.time_attr, time_offset_s=offset,
                      resources=dict(self.resources), timeout_s=self.trial_timeout_s,
                      decide_at=list(points.at), decide_from=points.every_from)
        trial.status = Status.RUNNING
        trial.config = config
        self.flights[trial.trial_id] = _Flight(seg)
        self._emit("segment_started", trial_id=trial.trial_id, segment_id=seg.segment_id,
                   config=config, checkpoint=checkpoint, start_iteration=seg.start_iteration,
                   pause_at=seg.pause_at)
        return seg

    # -- the decision core -----------------------------------------------------------------
    def next_wave_s(self) -> float:
        """The length of the next wave: waves double from ``first_wave_s`` up to
        ``max_wave_s``, so Prefect task runs grow with wall time, not with trials."""
        return min(self.first_wave_s * 2.0 ** self.waves, self.max_wave_s)

    def run_wave(self, seconds: float | None = None) -> WaveReport:
        """One wave: for ``seconds`` (wall), decide each result the moment it arrives and start
        segments as slots free. Never waits on anything but the backend's messages."""
        seconds = self.next_wave_s() if seconds is None else seconds
        self.waves += 1
        self._report = WaveReport()
        t0 = time.monotonic()
        deadline = t0 + seconds
        self._fill()
        while not self.finished:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.step(min(left, _POLL_S))
            self._tick()
        self._report.seconds = time.monotonic() - t0
        return self._report

    def step(self, timeout: float = 0.0) -> None:
        """The core's unit: wait up to ``timeout`` for messages, apply each, then close rungs,
        check timeouts and budgets, and start what the freed slots allow."""
        msgs = self.backend.poll(timeout if self.flights else 0.0)
        for msg in msgs:
            self.handle(msg)
        self._after_messages()

    def _fill(self) -> None:
        """Start what the free slots allow; finish when nothing runs and nothing can start."""
        for seg in self.plan_wave():
            self.backend.submit(seg)
            self._report.segments_started += 1
        if not self.flights and not self.to_resubmit:
            self._finish()

    def _after_messages(self) -> None:
        self._stop_chosen()
        self._check_timeouts()
        self._check_time_budget()
        self._fill()

    def _tick(self) -> None:
        if self.on_tick is None:
            return
        now = time.monotonic()
        if now - self._tick_t >= 0.5 or self.finished:
            self._tick_t = now
            self.on_tick()

    def end_wave(self) -> dict[str, Any]:
        """Between waves: rungs a scheduler that pauses trials has closed, the time budget,
        and a state snapshot (the commit that resume replays up to); returns the rungs."""
        self._stop_chosen()
        self._check_time_budget()
        if not self.finished and not self.flights and not self.to_resubmit:
            self._fill()
        self.commit(force=False)
        return self.rung_summary()

    def rung_summary(self) -> dict[str, Any]:
        """Trials per rung reached and per status: what the scheduler task reports."""
        rungs: dict[str, int] = {}
        for t in self.trials.values():
            key = "none" if t.rung is None else f"{t.rung:g}"
            rungs[key] = rungs.get(key, 0) + 1
        return {"waves": self.waves, "rungs": rungs, "counts": self.counts(),
                "stopping": self.stopping, "finished": self.finished}

    def handle(self, msg: Message) -> None:
        """Apply one backend message: a decision on a result, a segment's start or end."""
        if isinstance(msg, Result):
            try:
                self._on_result(msg)
            finally:
                if msg.awaits:  # the trial waits for this answer, whatever happened here
                    self._answer(msg)
        elif isinstance(msg, Started):
            self._on_started(msg)
        elif isinstance(msg, Done):
            self._on_done(msg)
        elif isinstance(msg, Lost):
            self._on_lost(msg)

    def _answer(self, msg: Result) -> None:
        fl = self._flight(msg)
        stop = fl is None or (fl.ending is not None and fl.ending.status != Status.PAUSED)
        self.backend.decide(msg.trial_id, msg.segment_id, int(msg.result[ITERATION]), stop)

    def _check_timeouts(self) -> None:
        """A trial running past ``timeout_s`` (hung, or never reporting) is ended: its worker
        is restarted where the backend can, and the trial is an ERROR."""
        limit = self.trial_timeout_s
        if limit is None or self.backend.virtual_clock:
            return
        now = time.time()
        for tid, fl in list(self.flights.items()):
            if fl.started_at is None or fl.ending is not None or now - fl.started_at <= limit:
                continue
            fl.end_as(Status.ERROR, f"trial {tid} ran past timeout_s={limit:g} without "
                                    "finishing; ended")
            self._emit("decision", trial_id=tid, decision="STOP",
                       iteration=self.trials[tid].iteration, rung=self.trials[tid].rung,
                       reason="timeout")
            self.backend.kill(tid)

    def _stop_chosen(self) -> None:
        """Paused trials that a scheduler dropped at a rung (HyperBand)."""
        for tid in self.scheduler.trials_to_stop(self.trials):
            trial = self.trials[tid]
            if trial.status == Status.PAUSED:
                trial.stopped_at = trial.rung if trial.rung is not None else trial.iteration
                self._emit("decision", trial_id=tid, decision="STOP", iteration=trial.iteration,
                           rung=trial.rung)
                self._count_decision("STOP")
                self._end(trial, Status.STOPPED)

    def _flight(self, msg: Message) -> _Flight | None:
        fl = self.flights.get(msg.trial_id)
        if fl is None or fl.segment.segment_id != msg.segment_id:
            return None  # a stale message from an earlier segment
        return fl

    def _on_started(self, msg: Started) -> None:
        fl = self._flight(msg)
        if fl is None:
            return
        if fl.started:  # the cluster re-ran the segment after losing its worker
            self._failure(self.trials[msg.trial_id], fl,
                          f"worker lost; segment {fl.segment.segment_id} restarted by the cluster",
                          resubmit=False)
        fl.started = True
        fl.started_at = time.time()

    def _on_result(self, msg: Result) -> None:
        fl = self._flight(msg)
        trial = self.trials.get(msg.trial_id)
        if fl is None or trial is None:
            return
        result = msg.result
        if int(result[ITERATION]) <= trial.iteration:
            return  # already recorded (a re-run from an older checkpoint)
        trial.observe(result)
        self.iterations_total += 1
        self._report.results += 1
        if result.get("checkpoint") and trial.checkpoint is not None:
            self.backend.checkpoint_saved(trial.trial_id, trial.checkpoint,
                                          trial.checkpoint_iteration)
        self._emit("result", trial_id=trial.trial_id, result=result)
        if fl.ending is None:
            self._decide(trial, fl, result)
        self._check_experiment_stops(result)

    def _decide(self, trial: Trial, fl: _Flight, result: dict[str, Any]) -> None:
        missing = self.objective.missing(result)
        if missing:
            self._abort_metric_missing(trial, result, missing[0])
            return
        bad = self.objective.non_finite(result)
        if bad is not None:
            name, value = bad
            fl.end_as(Status.ERROR, f"metric {name!r} was {value!r} at iteration "
                                    f"{result[ITERATION]}: a NaN or infinite value cannot be "
                                    "ranked (the trial diverged?)")
            self.backend.stop(trial.trial_id)
            self._emit("decision", trial_id=trial.trial_id, decision="STOP",
                       iteration=result[ITERATION], rung=trial.rung, reason="non-finite metric")
            self._count_decision("STOP")
            return
        decision = self.scheduler.on_result(trial, result)
        if decision == Decision.CONTINUE and any(s(trial.trial_id, result) for s in self.stoppers):
            decision = Decision.STOP
        if decision == Decision.CONTINUE:
            return
        t = float(result.get(self.scheduler.time_attr, result[ITERATION]))
        max_t = self.scheduler.max_t
        if decision == Decision.PAUSE:
            if self.scheduler.needs_checkpoints and trial.checkpoint is None:
                fl.end_as(Status.ERROR, _needs_checkpoint_message(self.scheduler))
                self.backend.stop(trial.trial_id)
            else:
                fl.end_as(Status.PAUSED)
        else:
            finished = max_t is not None and t >= max_t
            fl.end_as(Status.TERMINATED if finished else Status.STOPPED)
            if not finished:
                trial.stopped_at = trial.rung if trial.rung is not None else int(t)
            self.backend.stop(trial.trial_id)
        self._emit("decision", trial_id=trial.trial_id, decision=str(decision),
                   iteration=result[ITERATION], rung=trial.rung)
        self._count_decision(str(decision))

    def _count_decision(self, decision: str) -> None:
        self._report.decisions[decision] = self._report.decisions.get(decision, 0) + 1

    def _abort_metric_missing(self, trial: Trial, result: Mapping[str, Any], metric: str) -> None:
        reported = sorted(k for k in result if k not in _RESERVED)
        msg = (f"metric {metric!r} was never reported: trial {trial.trial_id} reported "
               f"{', '.join(reported) or 'nothing'}; set `{self.objective.field_of(metric)}` to "
               "one of these or report it")
        self._fail_all(msg, MetricMissingError)

    def _fail_all(self, msg: str, kind: type[Exception]) -> None:
        self.aborted = msg
        self._abort_kind = kind
        for tid, fl in self.flights.items():
            fl.end_as(Status.ERROR, msg, override=True)
            self.backend.stop(tid)

    def _on_done(self, msg: Done) -> None:
        fl = self._flight(msg)
        if fl is None:
            return
        summary = msg.summary
        trial = self.trials[msg.trial_id]
        del self.flights[trial.trial_id]
        self._report.trials_ended += 1
        if fl.started_at is not None:
            self._seg_ema = _ema(self._seg_ema, max(time.time() - fl.started_at, 1e-4))
        self.backend.segment_finished(trial.trial_id)
        ending = fl.ending
        if summary.status == "error" and ending is None:
            error = summary.error or "unknown error"
            if summary.retryable:
                self._failure(trial, fl, error, resubmit=True)
            else:
                self._end(trial, Status.ERROR, error=error)
                self._maybe_fail_fast(trial, error)
        elif ending is not None and ending.status == Status.ERROR:
            self._end(trial, Status.ERROR, error=ending.error)
            if self.aborted is None:
                self._maybe_fail_fast(trial, ending.error or "")
        elif ending is not None and ending.status != Status.PAUSED:
            self._end(trial, ending.status)
        elif summary.status == "paused" or ending is not None:
            if self.scheduler.needs_checkpoints and trial.checkpoint is None:
                self._end(trial, Status.ERROR, error=_needs_checkpoint_message(self.scheduler))
            else:
                self._set_status(trial, Status.PAUSED)
        else:  # the trainable returned or reached max_t, or was stopped at the experiment's end
            done = summary.status in ("returned", "finished")
            self._end(trial, Status.TERMINATED if done else Status.STOPPED)

    def _on_lost(self, msg: Lost) -> None:
        fl = self._flight(msg)
        if fl is None:
            return
        del self.flights[msg.trial_id]
        self.backend.segment_finished(msg.trial_id)
        trial = self.trials[msg.trial_id]
        ending = fl.ending
        if ending is not None and ending.status == Status.ERROR:
            self._end(trial, Status.ERROR, error=ending.error)
        elif ending is not None:
            self._end(trial, ending.status if ending.status != Status.PAUSED else Status.STOPPED)
        else:
            self._failure(trial, fl, msg.error, resubmit=True)

    def _failure(self, trial: Trial, fl: _Flight, error: str, resubmit: bool) -> None:
        trial.num_failures += 1
        self._emit("failure", trial_id=trial.trial_id, error=error,
                   num_failures=trial.num_failures, segment_id=fl.segment.segment_id)
        if trial.num_failures <= self.max_failures and self.aborted is None:
            if resubmit:
                trial.status = Status.PENDING
                self.to_resubmit.append(trial.trial_id)
            return
        if trial.trial_id in self.flights:  # still running after a restart: end it
            fl.end_as(Status.ERROR, error, override=True)
            self.backend.stop(trial.trial_id)
            return
        self._end(trial, Status.ERROR, error=error)
        self._maybe_fail_fast(trial, error)

    def _maybe_fail_fast(self, trial: Trial, error: str) -> None:
        if self.fail_fast and self.aborted is None:
            self._fail_all(f"fail_fast: trial {trial.trial_id} failed:\n{error}", ExperimentAborted)

    def _end(self, trial: Trial, status: Status, error: str | None = None) -> None:
        if status == Status.ERROR:
            trial.error = error
            self.scheduler.on_trial_error(trial)
            self.searcher.on_trial_complete(trial.trial_id, trial.last_result, error=True)
        else:
            self.scheduler.on_trial_complete(trial, trial.last_result)
            self.searcher.on_trial_complete(trial.trial_id, trial.last_result)
        self._set_status(trial, status)

    def _set_status(self, trial: Trial, status: Status) -> None:
        trial.status = status
        self._emit("trial_status", trial_id=trial.trial_id, status=str(status), error=trial.error,
                   stopped_at=trial.stopped_at, rung=trial.rung, num_failures=trial.num_failures,
                   checkpoint=trial.checkpoint, checkpoint_iteration=trial.checkpoint_iteration)

    # -- experiment-wide stops -------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + self.backend.clock() - self._t0

    def _check_time_budget(self) -> None:
        b = self.budget.time_budget_s
        if b is not None and self.stopping is None and self.elapsed() >= b:
            self._stop_everything(f"time_budget_s={b:g} reached")

    def _check_experiment_stops(self, result: Mapping[str, Any]) -> None:
        b = self.budget
        if b.total_iterations is not None and self.iterations_total >= b.total_iterations:
            self._stop_everything(f"total iteration budget {b.total_iterations} reached")
        v = result.get(self.metric)
        if b.metric_threshold is not None and isinstance(v, (int, float)) and \
                (v >= b.metric_threshold if self.mode == "max" else v <= b.metric_threshold):
            self._stop_everything(f"{self.metric} reached the threshold {b.metric_threshold:g}")

    def _stop_everything(self, why: str) -> None:
        if self.stopping is not None:
            return
        self.stopping = why
        self._emit("stopping", reason=why)
        for tid, fl in self.flights.items():
            if fl.end_as(Status.STOPPED):
                self.trials[tid].stopped_at = self.trials[tid].iteration
            self.backend.stop(tid)
        self.to_resubmit.clear()

    def _finish(self) -> None:
        if self.finished:
            return
        for trial in self.trials.values():
            if trial.status in (Status.PAUSED, Status.PENDING, Status.RUNNING):
                trial.stopped_at = trial.rung if trial.rung is not None else trial.iteration
                self._end(trial, Status.STOPPED)
        self.finished = True
        best = self.best_trial()
        front = {} if self.objective.plain else {
            "pareto_front": [t.trial_id for t in self.objective.front(self.trials.values())]}
        self._emit("finished", reason=self.aborted or self.stopping or "completed",
                   best_trial=best.trial_id if best else None, **front)
        self.journal.flush()

    @property
    def done(self) -> bool:
        return self.finished

    def raise_if_aborted(self) -> None:
        if self.aborted is not None:
            raise self._abort_kind(self.aborted)

    def run(self, on_events: Callable[[list[dict[str, Any]]], None] | None = None) -> Controller:
        """The whole run without Prefect (benchmarks, tests, the simulated backend).

        The backend must be started already; ``on_events`` sees the journal's events as they
        are written.
        """
        if on_events is not None:
            self.journal.on_durable = on_events
        self.open()
        while not self.done:
            self.run_wave()
            self.end_wave()
        self.journal.flush()
        return self

    # -- results ---------------------------------------------------------------------------
    def trial_score(self, trial: Trial) -> float | None:
        """The trial's last reported value of the metric (Ray Tune's default scope)."""
        return trial.last_value(self.metric)

    def best_trial(self) -> Trial | None:
        """The best trial by the last reported metric; with several metrics or constraints, the
        :class:`~tuning._objective.Objective`'s pick (None for several metrics without a
        ``selection``: there is a Pareto front instead)."""
        if not self.objective.plain:
            return self.objective.best(self.trials.values(), self.selection)
        return best_trial(self.trials.values(), self.metric, self.mode)

    # -- journal ---------------------------------------------------------------------------
    def _emit(self, event: str, **data: Any) -> None:
        self.journal.append(event, **data)

    def commit(self, force: bool = True) -> None:
        """Append a state snapshot (what resume replays up to) when forced or when the
        snapshot policy says one is due; ``force`` also waits for the journal to be written."""
        j = self.journal
        since = j.bytes_appended - self._snap_at
        if not force and not self.snapshots.due(since, self._snap_bytes,
                                                time.monotonic() - self._snap_t):
            return
        with _collector_paused():
            j.append("state", scheduler=self.scheduler.state_dict(),
                     searcher=self.searcher.state_dict(), controller=self._controller_state(),
                     backend=self.backend.state_dict())
        self._snap_bytes, self._snap_at = j.last_line_bytes, j.bytes_appended
        self._snap_t = time.monotonic()
        if force:
            j.flush()

    def _controller_state(self) -> dict[str, Any]:
        return {"trial_count": self.trial_count, "segment_count": self.segment_count,
                "iterations_total": self.iterations_total, "elapsed_s": self.elapsed(),
                "searcher_finished": self.searcher_finished,
                "stoppers": [s.state_dict() for s in self.stoppers],
                "trials": {t.trial_id: [t.rung, t.stopped_at, t.num_failures, t.bracket]
                           for t in self.trials.values() if not t.is_terminal},
                "flights": {tid: {"segment": fl.segment.to_dict(),
                                  "end_as": str(fl.ending.status) if fl.ending else None,
                                  "error": fl.ending.error if fl.ending else None,
                                  "started": fl.started}
                            for tid, fl in self.flights.items()}}

    def final_state(self) -> ExperimentState:
        """What replaying this run's journal would give, from memory (the end of a run does
        not read its journal again)."""
        st = self.replayed
        return ExperimentState(spec=st.spec if st else None, trials=self.trials,
                               finished=self.finished, attempts=(st.attempts if st else 0) + 1,
                               parent_run_id=st.parent_run_id if st else None)

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in Status}
        for t in self.trials.values():
            out[t.status.value] += 1
        return out


#: the info of every trial created without any (shared: nothing writes a trial's info)
_NO_INFO: dict[str, Any] = {}
_RESERVED = {ITERATION, "time_this_iter_s", "time_total_s", "timestamp", "checkpoint"}
#: how long the backend's message wait may last before timeouts and budgets are checked
_POLL_S = 0.25
#: a segment's end to the next one's start on a cluster (the prefetch covers it)
_DISPATCH_LATENCY_S = 0.02


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a snapshot is built and encoded. A snapshot
    makes containers per trial (a median stopping snapshot: two lists per trial) that live until
    it is written; surviving the young collections, they count towards the next full one, which
    then walks every object of the process. At a hundred thousand trials on the simulator the
    snapshots triggered 4-5 of the run's 10-11 full collections (6 with this), which cost
    5-8 us a result there. Nothing a snapshot makes is cyclic: reference counting frees it all
    as before. The collector is left as it was (a caller who turned it off keeps it off)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _ema(old: float | None, new: float, alpha: float = 0.3) -> float:
    return new if old is None else (1 - alpha) * old + alpha * new


def _needs_checkpoint_message(scheduler: Scheduler) -> str:
    return (f"scheduler {type(scheduler).__name__} pauses trials and resumes them from "
            "checkpoints, but this trial reported none: pass checkpoint={...} to report() "
            "(and restore it with get_checkpoint()), or use a scheduler that does not pause")
