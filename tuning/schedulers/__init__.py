"""Schedulers: when to continue, pause or stop a trial, and what to run next.

Example:
    >>> from tuning.schedulers import make_scheduler
    >>> make_scheduler("asha", max_t=9).milestones()
    [1, 3, 9]
"""

from __future__ import annotations

from tuning.schedulers._asha import ASHA
from tuning.schedulers._base import (
    Decision,
    DecisionPoints,
    Resume,
    Scheduler,
    StartNew,
    Suggestion,
)
from tuning.schedulers._bohb import BOHB
from tuning.schedulers._factory import SCHEDULER_TYPES, make_scheduler, scheduler_settings
from tuning.schedulers._fifo import FIFO
from tuning.schedulers._hyperband import HyperBand
from tuning.schedulers._median import MedianStopping
from tuning.schedulers._moasha import MOASHA, moasha_continues, moasha_promotable
from tuning.schedulers._pbt import PBT

__all__ = [
    "ASHA",
    "BOHB",
    "FIFO",
    "MOASHA",
    "PBT",
    "SCHEDULER_TYPES",
    "Decision",
    "DecisionPoints",
    "HyperBand",
    "MedianStopping",
    "Resume",
    "Scheduler",
    "StartNew",
    "Suggestion",
    "make_scheduler",
    "moasha_continues",
    "moasha_promotable",
    "scheduler_settings",
]
