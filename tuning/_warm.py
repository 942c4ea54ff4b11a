"""Imported by the forkserver that rungflow's LocalCluster workers fork from: the worker side of
rungflow and the trainable's imports (``RUNGFLOW_PRELOAD``), once, for every worker it forks.
A module that fails to import is skipped; the forkserver must come up whatever the trainable
imports."""

from tuning._imports import import_preload

import_preload(["distributed", "tuning.backends.dask"])
import_preload()
