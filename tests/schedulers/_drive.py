"""A small deterministic controller that drives a scheduler the way the engine does.

Trials follow synthetic learning curves that cross (fast starters plateau high, slow starters
end low), one trial errors, one reports NaN. Every result also carries ``cost``, a second
metric that conflicts with ``loss`` (for multi-objective schedulers: ``metric=["loss", "cost"]``). Every call the controller makes and every answer
the scheduler gives is logged; protocol violations raise ``ProtocolError``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from tuning._trial import ITERATION, Status, Trial, format_trial_id
from tuning.schedulers import Decision, Resume, Scheduler, StartNew
from tuning.space import Space, choice, loguniform, randint, uniform

SPACE = Space({"x": uniform(0.0, 1.0), "lr": loguniform(1e-3, 1.0), "layers": randint(1, 4),
               "act": choice(["relu", "tanh"]), "epochs": 9})
ERROR_TRIAL, ERROR_AT = format_trial_id(3), 2
NAN_TRIAL = format_trial_id(5)


class ProtocolError(AssertionError):
    """The scheduler broke the controller protocol."""


def loss_curve(config: dict[str, Any], progress: int) -> float:
    """Crossing curves: large ``x`` learns fast but plateaus high; small ``x`` ends low."""
    x = float(config["x"])
    plateau, speed = 0.1 + 0.5 * x, 0.2 + 1.5 * x
    penalty = 0.05 * abs(math.log10(float(config["lr"])) + 1.5) + 0.01 * int(config["layers"])
    return plateau + (1 - plateau) * math.exp(-progress * speed) + penalty


def cost_of(config: dict[str, Any]) -> float:
    """A second metric, fixed per config, that conflicts with the loss: small ``x`` ends with a
    low loss but costs more."""
    return 10.0 * (1.0 - float(config["x"])) + float(config["layers"])


class Driver:
    """Simulates the controller: ``slots`` workers, ``num_samples`` trials, one step per tick."""

    def __init__(self, scheduler: Scheduler, *, num_samples: int = 20, slots: int = 3,
                 max_iter: int = 9, seed: int = 0, metric: str | list[str] = "loss",
                 mode: str | list[str] = "min",
                 constraints: dict[str, dict[str, float]] | None = None) -> None:
        self.num_samples, self.slots, self.max_iter, self.seed = num_samples, slots, max_iter, seed
        self.metric, self.mode, self.constraints = metric, mode, constraints
        self.scheduler = self._prepare(scheduler)
        self.trials: dict[str, Trial] = {}
        self.running: list[str] = []
        self.pause_points: dict[str, float | None] = {}
        self.progress: dict[str, int] = {}
        self.saved: dict[str, int] = {}
        self.log: list[tuple[Any, ...]] = []
        self.rng = np.random.default_rng(seed + 1000)
        self.done = False

    def _prepare(self, scheduler: Scheduler) -> Scheduler:
        rng = np.random.default_rng(self.seed)
        if self.constraints:
            scheduler.set_objective(self.metric, self.mode, rng, constraints=self.constraints)
        else:
            scheduler.set_objective(self.metric, self.mode, rng)
        scheduler.set_search_space(SPACE)
        return scheduler

    @property
    def max_t(self) -> float:
        max_t = getattr(self.scheduler, "max_t", None)
        return float(max_t) if max_t is not None else float(self.max_iter)

    # -- one tick --------------------------------------------------------------------------
    def step(self) -> None:
        """Fill free slots, advance every running trial one iteration, apply stops."""
        if self.done:
            return
        self._fill()
        if not self.running:
            self._finish()
            return
        for tid in list(self.running):
            self._advance(self.trials[tid])
        self._apply_stops()

    def run(self, max_steps: int = 2000) -> list[tuple[Any, ...]]:
        for _ in range(max_steps):
            if self.done:
                return self.log
            self.step()
        raise ProtocolError(f"run did not terminate within {max_steps} steps")

    def swap(self, make: Callable[[], Scheduler]) -> None:
        """Replace the scheduler by a fresh one restored from a JSON round trip of its state."""
        state = json.loads(json.dumps(self.scheduler.state_dict(), allow_nan=False))
        fresh = self._prepare(make())
        fresh.load_state_dict(state)
        self.scheduler = fresh

    # -- controller protocol ---------------------------------------------------------------
    def _fill(self) -> None:
        while len(self.running) < self.slots:
            can_start = len(self.trials) < self.num_samples and not self.scheduler.is_finished(self.trials)
            suggestion = self.scheduler.choose_trial_to_run(self.trials, can_start)
            if suggestion is None:
                self.log.append(("wait",))
                return
            if isinstance(suggestion, StartNew):
                if not can_start:
                    raise ProtocolError(f"StartNew while can_start_new is False: {suggestion}")
                self._start(suggestion)
            elif isinstance(suggestion, Resume):
                self._resume(suggestion)
            else:
                raise ProtocolError(f"not a suggestion: {suggestion!r}")

    def _start(self, suggestion: StartNew) -> None:
        tid = format_trial_id(len(self.trials))
        config = dict(suggestion.config) if suggestion.config is not None else SPACE.sample(self.rng)
        if not SPACE.contains(config):
            raise ProtocolError(f"StartNew config outside the space: {config}")
        trial = Trial(tid, config, info=dict(suggestion.info))
        self.trials[tid] = trial
        self.scheduler.on_trial_add(trial)
        self.log.append(("start", tid, _frozen(config), _frozen(suggestion.info)))
        self.progress[tid] = 0
        self._run_segment(trial)

    def _resume(self, suggestion: Resume) -> None:
        trial = self.trials.get(suggestion.trial_id)
        if trial is None or trial.status != Status.PAUSED:
            status = None if trial is None else trial.status
            raise ProtocolError(f"Resume of {suggestion.trial_id} in state {status}")
        donor = suggestion.checkpoint_from
        if donor is not None:
            if donor not in self.saved:
                raise ProtocolError(f"checkpoint_from {donor} has no checkpoint")
            self.progress[trial.trial_id] = self.saved[donor]
        else:
            self.progress[trial.trial_id] = self.saved[trial.trial_id]
        if suggestion.config is not None:
            trial.config = dict(suggestion.config)
        self.log.append(("resume", trial.trial_id, _frozen(trial.config), donor))
        self._run_segment(trial)

    def _run_segment(self, trial: Trial) -> None:
        trial.status = Status.RUNNING
        self.running.append(trial.trial_id)
        self.pause_points[trial.trial_id] = self.scheduler.pause_at(trial)

    def _advance(self, trial: Trial) -> None:
        tid = trial.trial_id
        it = trial.iteration + 1
        if tid == ERROR_TRIAL and it == ERROR_AT:
            self._end(trial, Status.ERROR)
            self.scheduler.on_trial_error(trial)
            self.log.append(("error", tid))
            return
        self.progress[tid] += 1
        loss = float("nan") if tid == NAN_TRIAL else loss_curve(trial.config, self.progress[tid])
        result = {ITERATION: it, "loss": loss, "cost": cost_of(trial.config),
                  "time_total_s": 1.5 * it}
        trial.observe(result)
        decision = self.scheduler.on_result(trial, result)
        self.log.append(("result", tid, it, str(decision), trial.rung))
        self._apply(trial, decision, float(result.get(self.scheduler.time_attr, it)))

    def _apply(self, trial: Trial, decision: Decision, t: float) -> None:
        pause = self.pause_points[trial.trial_id]
        at_pause = pause is not None and t >= pause
        if decision == Decision.PAUSE and not at_pause:
            raise ProtocolError(f"PAUSE of {trial.trial_id} at t={t}, pause_at={pause}")
        if decision == Decision.STOP:
            status = Status.TERMINATED if t >= self.max_t else Status.STOPPED
            if status == Status.STOPPED:
                trial.stopped_at = trial.iteration
            self._end(trial, status)
        elif t >= self.max_t or trial.iteration >= self.max_iter:  # the trainable returned
            self._end(trial, Status.TERMINATED)
        elif at_pause:
            if decision != Decision.PAUSE:
                raise ProtocolError(f"{decision} of {trial.trial_id} at its pause point t={t}")
            self._pause(trial)
        else:
            return
        if trial.status in (Status.TERMINATED, Status.STOPPED):
            self.scheduler.on_trial_complete(trial, trial.last_result)

    def _pause(self, trial: Trial) -> None:
        trial.status = Status.PAUSED
        trial.checkpoint = f"mem://{trial.trial_id}/{trial.iteration}"
        trial.checkpoint_iteration = trial.iteration
        self.saved[trial.trial_id] = self.progress[trial.trial_id]
        self.running.remove(trial.trial_id)

    def _end(self, trial: Trial, status: Status) -> None:
        trial.status = status
        self.running.remove(trial.trial_id)

    def _apply_stops(self) -> None:
        for tid in self.scheduler.trials_to_stop(self.trials):
            trial = self.trials.get(tid)
            if trial is None or trial.status != Status.PAUSED:
                raise ProtocolError(f"trials_to_stop named {tid} in state {trial and trial.status}")
            trial.status = Status.STOPPED
            trial.stopped_at = trial.iteration
            self.scheduler.on_trial_complete(trial, trial.last_result)
            self.log.append(("stopped", tid))

    def _finish(self) -> None:
        for trial in self.trials.values():
            if trial.status == Status.PAUSED:
                trial.status = Status.STOPPED
                trial.stopped_at = trial.iteration
                self.scheduler.on_trial_complete(trial, trial.last_result)
        self.log.append(("end", sorted((t.trial_id, str(t.status)) for t in self.trials.values())))
        self.done = True


def _frozen(d: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(d.items()))
