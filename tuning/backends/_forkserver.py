"""The forkserver that rungflow's LocalCluster trial workers fork from, and starting it early.

Python's forkserver imports rungflow's worker side and the trainable's modules once
(:mod:`tuning._warm`); every worker then forks from it with them imported. Those imports are most
of a first run's wait for its first trial: torch, ``torch._dynamo`` and scikit-learn took 3.7-3.9 s
here, single-threaded. The server imports them in its own process, so it can start as soon as a
run knows it will want a LocalCluster (:func:`warm_up`, called by ``Tuner.run`` before Prefect is
imported and the flow run is made), and the cluster that starts a second later forks from it.

Only this module's standard-library imports, ``dask`` and ``yaml`` are loaded here: importing
``distributed`` costs the driver 0.3 s, which :func:`warm_up` does not wait for.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["DASK_MALLOC_TRIM", "MALLOC_TRIM", "PRE_SPAWN", "start_forkserver",
           "trial_workers_environ", "warm_up"]

log = logging.getLogger(__name__)

MALLOC_TRIM = "MALLOC_TRIM_THRESHOLD_"
DASK_MALLOC_TRIM = 65536  # distributed's default for it in nanny.pre-spawn-environ
PRE_SPAWN = "distributed.nanny.pre-spawn-environ"
_HASH_SEED = "6640"  # distributed's Nanny: one hash seed for every worker (dask/distributed#8400)


@functools.lru_cache(maxsize=1)
def _distributed_pre_spawn_defaults() -> dict[str, Any]:
    """``distributed.nanny.pre-spawn-environ`` as distributed's own ``distributed.yaml`` gives
    it, read without importing distributed (its import merges the same file into dask's
    config)."""
    spec = importlib.util.find_spec("distributed")
    if spec is None or not spec.submodule_search_locations:
        return {}
    import yaml

    path = os.path.join(list(spec.submodule_search_locations)[0], "distributed.yaml")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError:
        return {}
    return dict(data.get("distributed", {}).get("nanny", {}).get("pre-spawn-environ", {}) or {})


def trial_workers_environ() -> dict[str, str | None]:
    """The environment Dask's Nanny sets in the driver before it starts a worker process
    (``distributed.nanny.pre-spawn-environ``, the user's settings over distributed's defaults,
    a variable already set in the driver winning, and ``PYTHONHASHSEED``), which the forkserver
    must start with: glibc, OpenMP and the hash seed read it at process start, and every worker
    forked from the server keeps what the server read.

    One change to Dask's: ``MALLOC_TRIM_THRESHOLD_`` maps to None (unset) when it is Dask's
    default 65536. Dask sets it so that glibc hands freed memory back to the OS at once, which
    its own memory accounting wants for data workers; for training it is a tax on every
    allocation (PyTorch allocates and frees tensors at every step: the digits ConvNet's epochs
    took 30-31 ms with it instead of 18-22 ms, in Dask workers and in plain processes alike).
    Trial workers get glibc's default, as under Optuna or Ray Tune; a value the user set other
    than Dask's default stands."""
    import dask

    configured = dask.config.get(PRE_SPAWN, None) or {}
    merged = {**_distributed_pre_spawn_defaults(), **configured}
    env: dict[str, str | None] = {k: os.environ.get(k, str(v)) for k, v in merged.items()
                                  if v is not None}
    if str(merged.get(MALLOC_TRIM)) == str(DASK_MALLOC_TRIM) \
            and env.get(MALLOC_TRIM) == str(DASK_MALLOC_TRIM):
        env[MALLOC_TRIM] = None  # also when an earlier LocalCluster's Nanny left it set here
    if env.get("PYTHONHASHSEED") in (None, "0"):
        env["PYTHONHASHSEED"] = _HASH_SEED
    return env


def _put(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


@contextlib.contextmanager
def _environ(values: Mapping[str, str | None]) -> Iterator[None]:
    """``os.environ`` with ``values`` set (None: unset) inside the block; as before after it."""
    before = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            _put(k, v)
        yield
    finally:
        for k, v in before.items():
            _put(k, v)


def start_forkserver(modules: list[str]) -> bool:
    """Start this process's forkserver, if it is not running, in the trial workers' environment
    (:func:`trial_workers_environ`), importing :mod:`tuning._warm` and ``modules``. Returns
    at once: the server imports in its own process, and the first worker's fork waits for it.
    False where there is no forkserver (not POSIX)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    from multiprocessing import forkserver

    from tuning._imports import ENV

    multiprocessing.get_context("forkserver").set_forkserver_preload(["tuning._warm"])
    with _environ({**trial_workers_environ(), ENV: ",".join(modules)}):
        forkserver.ensure_running()  # a running one is kept, with what it imported
    return True


def warm_up(backend: Mapping[str, Any] | None, trainable: Callable[..., Any] | None) -> bool:
    """Start the forkserver now when ``backend`` (a spec's backend dict) is the default
    LocalCluster of worker processes that fork from it, with the trainable's imports
    (``preload``); anything else (an address, a cluster class, thread workers, Ray, the
    simulator, ``preload=False``) starts nothing. Never raises: the cluster's start does it all
    again, as it does without this."""
    b = dict(backend or {"type": "dask"})
    kwargs = b.get("cluster_kwargs") or {}
    if b.get("type", "dask") != "dask" or b.get("address") or b.get("cluster_class") \
            or kwargs.get("processes", True) is False or b.get("preload", "auto") is False \
            or trainable is None:
        return False
    try:
        from tuning._imports import check_preload, packages_of, preload_modules

        preload = check_preload(b.get("preload", "auto"))
        wanted = list(preload) if isinstance(preload, list) else packages_of(trainable)
        return start_forkserver(preload_modules(wanted))
    except Exception as exc:  # noqa: BLE001 - an optimisation: the cluster's start will tell
        log.debug("forkserver warm-up skipped: %s", exc)
        return False
