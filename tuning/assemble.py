"""Build a :class:`~tuning.controller.Controller` from a spec: new, or resumed from its journal.

Engine layer: no Prefect, no MLflow. ``tasks/experiment.py`` wraps :func:`open_experiment`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tuning.backends import make_backend
from tuning.controller import Budget, Controller
from tuning.experiment import Journal, replay
from tuning.space import Space
from tuning.spec import ExperimentSpec, SpecError, resolve_trainable, spec_diff
from tuning.stoppers import stopper_from_dict

__all__ = ["Components", "ResumeRefused", "open_experiment"]

log = logging.getLogger("tuning.assemble")


class ResumeRefused(SpecError):
    """Resuming with a spec that changes what the experiment is."""


@dataclass
class Components:
    """Live Python objects given through the API (they override the spec's dict forms)."""

    trainable: Callable[..., Any] | None = None
    space: Mapping[str, Any] | None = None
    scheduler: Any = None
    searcher: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def open_experiment(spec: ExperimentSpec, components: Components | None = None,
                    resume: bool | None = False) -> Controller:
    """A controller ready to run: its journal opened (replayed when resuming), its backend not
    yet started. Refuses, before anything starts, an experiment that exists when not resuming,
    or a resume whose spec changes the space, metric, scheduler or searcher."""
    comp = components or Components()
    trainable = comp.trainable or resolve_trainable(spec.trainable)
    journal = Journal(spec.experiment_dir())
    events = journal.read()
    spec_json = spec.to_json_dict()
    if resume is None:  # auto: a retried flow run finds its own journal
        resume = bool(events)
    if resume and not events:
        raise SpecError(f"resume: no journal at {journal.url}: nothing to resume (run it "
                        "with `rungflow run`, or name the run's directory)")
    if events and not resume:
        raise SpecError(f"name: experiment {spec.name!r} already exists at "
                        f"{spec.experiment_dir()}; resume it (`rungflow resume "
                        f"{spec.experiment_dir()}`) or choose another name")
    state = replay(events) if events else None
    if state is not None and state.spec is not None:
        changed = spec_diff(state.spec, spec_json)
        if changed:
            raise ResumeRefused("cannot resume with a different spec; changed: "
                                + "; ".join(changed))
    backend = make_backend(spec.backend, spec.resources)
    backend.preflight()  # an unreachable cluster is refused before anything is written
    if state is not None:
        journal.repair_tail()
    else:
        journal.append("experiment_created", spec=spec_json, pid=os.getpid(),
                       host=socket.gethostname())
    ctl = Controller(
        name=spec.name, trainable=trainable, space=Space(comp.space or spec.space),
        metric=spec.metric, mode=spec.mode,
        scheduler=comp.scheduler or spec.build_scheduler(),
        searcher=comp.searcher or spec.build_searcher(),
        backend=backend,
        journal=journal, storage=spec.experiment_dir(),
        budget=Budget(num_samples=spec.num_samples, time_budget_s=spec.stop.time_budget_s,
                      total_iterations=spec.stop.total_iterations,
                      metric_threshold=spec.stop.metric_threshold),
        seed=spec.seed, max_failures=spec.max_failures, fail_fast=spec.fail_fast,
        stoppers=stopper_from_dict(spec.stop.model_dump(), spec.primary_metric),
        trial_timeout_s=spec.timeout_s, resources=dict(spec.resources),
        max_concurrent=spec.max_concurrent, replayed=state,
        constraints=spec.constraints or None, selection=spec.selection())
    return ctl

