"""Tuner: the Python entry point. Builds the spec, runs the tune flow, returns the result.

Example:
    >>> from tuning import Tuner, ASHA, loguniform, uniform      # doctest: +SKIP
    >>> result = Tuner(train, space={"lr": loguniform(1e-4, 1e-1)}, metric="acc", mode="max",
    ...                num_samples=24, scheduler=ASHA(max_t=10)).run()  # doctest: +SKIP
    >>> result.best_config, result.best_metric, result.best_checkpoint  # doctest: +SKIP
"""

from __future__ import annotations

import contextvars
import ctypes
import math
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from tuning._env import quiet_defaults
from tuning.assemble import Components
from tuning.experiment import ExperimentState
from tuning.results import (
    NoResultError,
    TrialsFailedWarning,
    TuneResult,
    failure_summary,
    load_result,
    result_of,
)
from tuning.space import Domain, SampleFrom, Space
from tuning.spec import (
    ExperimentSpec,
    SpecError,
    custom_component,
    resolve_trainable,
    trainable_path,
    validate_spec,
)

__all__ = ["Tuner", "component_spec"]


def _warm_up_workers(spec: ExperimentSpec, components: Components) -> None:
    """Start the forkserver of a LocalCluster's trial workers now, so that it imports the
    trainable's packages (seconds for torch and scikit-learn) while the driver imports Prefect
    and makes the flow run, not after (:func:`tuning.backends._forkserver.warm_up`)."""
    from tuning.backends._forkserver import warm_up

    trainable = components.trainable
    if trainable is None:
        try:
            trainable = resolve_trainable(spec.trainable)
        except Exception:  # noqa: BLE001 - open-experiment reports it, inside the flow run
            return
    warm_up(spec.backend, trainable)


def run_to_completion(flow: Any, extra: dict[str, Any], **params: Any) -> Any:
    """Call the Prefect ``flow`` and return once Prefect has recorded its run as Completed.

    Prefect's sync engine, after the final state, joins the flow run's heartbeat thread,
    which sleeps in 1 s steps: a run returned up to a second after its end (0.5 s on average,
    a run's wall rounded up to the next whole second from its start). The flow runs in a
    thread of its own (the caller's context copied, so a calling flow stays its parent); an
    ``on_completion`` hook, which Prefect calls once the server has taken the Completed state,
    hands back the flow's return value (``extra["flow_return"]``, set by the flow) at once,
    and the engine finishes its teardown in the background (the interpreter waits for it at
    exit). A failed or crashed run returns (raises) only after the whole engine has ended, as
    before; Ctrl-C is passed on to the flow's thread, which winds the run down as it would in
    the main thread, and is raised here once it has.
    """
    completed, finished = threading.Event(), threading.Event()
    box: dict[str, Any] = {}

    def on_completion(*_: Any) -> None:
        completed.set()

    def body() -> None:
        try:
            box["value"] = ctx.run(with_hook, **params)
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
            box["error"] = exc
        finally:
            finished.set()
            completed.set()

    with_hook = flow.with_options(on_completion=[on_completion, *flow.on_completion_hooks])
    ctx = contextvars.copy_context()
    extra.pop("flow_return", None)
    thread = threading.Thread(target=body, name=f"rungflow-{flow.name}-flow", daemon=False)
    thread.start()
    try:
        while not completed.wait(0.5):  # in steps: Ctrl-C reaches this thread in between
            pass
        if not finished.is_set() and "flow_return" in extra:
            return extra.pop("flow_return")
        thread.join()
    except KeyboardInterrupt:
        _raise_in(thread, KeyboardInterrupt)
        thread.join()
        raise
    if "error" in box:
        raise box["error"]
    extra.pop("flow_return", None)
    return box["value"]


def _raise_in(thread: threading.Thread, exc: type[BaseException]) -> None:
    """Raise ``exc`` in ``thread`` at its next Python instruction (as Prefect does to cancel
    a flow running in a thread)."""
    if thread.ident is not None and thread.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident),
                                                   ctypes.py_object(exc))


_SCHEDULER_NAMES = {"FIFO": "fifo", "ASHA": "asha", "HyperBand": "hyperband",
                    "MedianStopping": "median", "MedianStoppingRule": "median", "PBT": "pbt",
                    "BOHB": "bohb", "MOASHA": "moasha"}
_SEARCHER_NAMES = {"RandomSearch": "random", "GridSearch": "grid", "OptunaSearch": "optuna"}


def component_spec(obj: Any, names: Mapping[str, str], kind: str) -> dict[str, Any]:
    """The spec dict of a scheduler or searcher instance (its constructor arguments)."""
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    cls = type(obj).__name__
    if cls == "ConcurrencyLimiter":
        inner = component_spec(obj.searcher, names, kind)
        return {**inner, "max_concurrent": obj.spec_args.get("max_concurrent")}
    if cls not in names:  # recorded as such: resume refuses until the instance is given again
        return {"type": f"custom:{type(obj).__module__}.{type(obj).__qualname__}"}
    args = {k: _plain(v) for k, v in getattr(obj, "spec_args", {}).items()}
    return {"type": names[cls], **args}


def _plain(v: Any) -> Any:
    if isinstance(v, Domain):
        return v.to_dict()
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


class Tuner:
    """Tune ``trainable`` over ``space``.

    Args:
        trainable: a function ``f(config)`` that calls :func:`tuning.report`, or its import
            path ``"package.module:function"``.
        space: parameter name -> domain (``uniform(...)``, ``loguniform(...)``, ...) or constant.
        metric, mode: what to optimise, ``"min"`` or ``"max"``; lists of them for several
            metrics (``metric=["accuracy", "latency_ms"], mode=["max", "min"]``: the result
            then has a Pareto front, see :meth:`TuneResult.pareto_front`).
        num_samples: how many trials (times the grid size when the space has grids).
        scheduler, searcher: instances or spec dicts (``{"type": "asha", "max_t": 10}``).
        backend: ``{"type": "dask"}`` (default: a LocalCluster with a worker per core),
            ``{"type": "dask", "address": ...}``, ``{"type": "ray"}``, ...
        storage_path: where the journal and checkpoints go (a directory or an fsspec URL).
        tracking_uri: MLflow; default SQLite under ``storage_path``.
        name: the experiment's name (a directory under storage_path and the MLflow experiment).
        **kwargs: any other :class:`~tuning.spec.ExperimentSpec` field (seed, max_failures,
            fail_fast, timeout_s, resources, stop, max_concurrent, tags, constraints, select,
            weights, ...).
    """

    def __init__(self, trainable: Callable[..., Any] | str, *, space: Mapping[str, Any],
                 metric: str | list[str], mode: str | list[str] = "max", num_samples: int = 1,
                 scheduler: Any = None,
                 searcher: Any = None, backend: Mapping[str, Any] | None = None,
                 storage_path: str = "./runs", tracking_uri: str | None = None,
                 name: str | None = None, **kwargs: Any) -> None:
        self._trainable = trainable if callable(trainable) else None
        path = trainable if isinstance(trainable, str) else trainable_path(trainable)
        self._space = Space(space)  # raises, naming the parameter
        sched = component_spec(scheduler, _SCHEDULER_NAMES, "scheduler") or {"type": "fifo"}
        search = component_spec(searcher, _SEARCHER_NAMES, "searcher") or {"type": "random"}
        data: dict[str, Any] = {
            "name": name or _default_name(path), "trainable": path,
            "space": {k: v for k, v in self._space.items() if not isinstance(v, SampleFrom)},
            "metric": metric, "mode": mode, "num_samples": num_samples,
            "scheduler": sched, "searcher": search,
            "backend": dict(backend or {"type": "dask"}), "storage_path": str(storage_path),
            "tracking_uri": tracking_uri, **kwargs}
        self.spec: ExperimentSpec = validate_spec(data)
        if any(isinstance(v, SampleFrom) for v in self._space.values()):
            self.spec.space = dict(self._space.items())
        self.components = Components(
            trainable=self._trainable, space=self._space,
            scheduler=scheduler if scheduler is not None and not isinstance(scheduler, Mapping)
            else None,
            searcher=searcher if searcher is not None and not isinstance(searcher, Mapping)
            else None)

    @classmethod
    def from_spec(cls, spec: ExperimentSpec | Mapping[str, Any]) -> Tuner:
        s = spec if isinstance(spec, ExperimentSpec) else validate_spec(spec)
        self = cls.__new__(cls)
        self.spec, self.components, self._trainable = s, Components(), None
        return self

    def run(self, resume: bool = False) -> TuneResult:
        """Run the tune flow to the end and return the result.

        Trials that failed (an exception, a NaN or non-numeric metric, an unsafe checkpoint)
        are reported at the end by a :class:`RuntimeWarning` giving their count and the first
        error; when no trial produced the metric at all, :class:`~tuning.results.NoResultError`
        is raised with the first error instead.
        """
        quiet_defaults()
        _warm_up_workers(self.spec, self.components)  # before Prefect's import and flow run
        from tuning.flows.tune import tune

        self.components.extra.pop("final_state", None)
        out = run_to_completion(tune, self.components.extra, spec=self.spec, resume=resume,
                                components=self.components)
        self.spec = self.spec.model_copy(update={"run_name": out["run_name"]})
        res = self._result_from(self.components.extra.pop("final_state", None))
        _check_outcome(res)
        return res

    def result(self) -> TuneResult:
        """The run's result, read from its journal."""
        return self._result_from(None)

    def _result_from(self, state: ExperimentState | None) -> TuneResult:
        if state is None:
            res = load_result(self.spec.experiment_dir())
        else:
            if state.spec is None:
                state.spec = self.spec.to_json_dict()
            res = result_of(self.spec.experiment_dir(), state)
        res.tracking_uri = self.spec.effective_tracking_uri()
        return res

    @classmethod
    def resume(cls, path: str, trainable: Callable[..., Any] | None = None,
               **overrides: Any) -> TuneResult:
        """Continue an interrupted experiment from its journal (the spec is read from it).

        A run that used a custom scheduler or searcher instance, or ``sample_from`` parameters,
        needs them again: ``Tuner.resume(path, scheduler=..., searcher=..., space=...)``. A
        finished run is refused (nothing is started or written).
        """
        from tuning.experiment import Journal, find_experiment_dirs, replay

        dirs = find_experiment_dirs(path)
        if len(dirs) != 1:
            raise SpecError(f"resume: {path!r} holds {len(dirs)} experiments"
                            + (f": {', '.join(dirs)}" if dirs else "") + "; name exactly one")
        st = replay(Journal(dirs[0]).read())
        if st.spec is None:
            raise SpecError(f"resume: {dirs[0]} has no experiment_created event")
        if st.finished:
            raise SpecError(f"resume: the run at {dirs[0]} is finished (its journal ends with "
                            "a 'finished' event); nothing to resume: see `rungflow best "
                            f"{dirs[0]}`, or start a new run with `rungflow run`")
        scheduler, searcher = overrides.pop("scheduler", None), overrides.pop("searcher", None)
        space = overrides.pop("space", None)
        _needs_again(st.spec, scheduler, searcher, space, dirs[0])
        data = {**st.spec, **overrides}
        data["storage_path"] = dirs[0].rsplit("/", 1)[0]
        live_space: Space | None = None
        if scheduler is not None:
            data["scheduler"] = component_spec(scheduler, _SCHEDULER_NAMES, "scheduler")
        if searcher is not None:
            data["searcher"] = component_spec(searcher, _SEARCHER_NAMES, "searcher")
        if space is not None:
            live_space = Space(space)
            data["space"] = {k: v for k, v in live_space.items() if not isinstance(v, SampleFrom)}
        tuner = cls.from_spec(data)
        if live_space is not None and any(isinstance(v, SampleFrom) for v in live_space.values()):
            tuner.spec.space = dict(live_space.items())
        tuner.components = Components(
            trainable=trainable, space=live_space,
            scheduler=None if scheduler is None or isinstance(scheduler, Mapping) else scheduler,
            searcher=None if searcher is None or isinstance(searcher, Mapping) else searcher)
        return tuner.run(resume=True)


def _needs_again(spec: Mapping[str, Any], scheduler: Any, searcher: Any, space: Any,
                 where: str) -> None:
    """Refuse a resume that would silently change the algorithm or the space: what the run was
    given as Python objects must be given again."""
    missing = []
    for kind, given in (("scheduler", scheduler), ("searcher", searcher)):
        cls = custom_component(spec.get(kind) or {})
        if cls is not None and given is None:
            missing.append(f"{kind}: the run used a custom {kind} instance ({cls}), which its "
                           f"journal cannot rebuild; pass it again: Tuner.resume({where!r}, "
                           f"{kind}={cls.rsplit('.', 1)[-1]}(...))")
    fns = {k: v.get("fn", "?") for k, v in (spec.get("space") or {}).items()
           if isinstance(v, Mapping) and v.get("type") == "sample_from"}
    if fns and space is None:
        missing.append("space: the run's space has sample_from parameters ("
                       + ", ".join(f"{k}={fn}" for k, fn in fns.items())
                       + f"), Python functions its journal cannot rebuild; pass the space "
                       f"again: Tuner.resume({where!r}, space={{...}})")
    if missing:
        raise SpecError("resume: " + "; ".join(missing)
                        + " (the CLI cannot resume such a run: resume it from Python)")


def _check_outcome(res: TuneResult) -> None:
    """Failure is never silent: raise when no trial produced the metric or every trial
    failed, warn when some trials failed."""
    failed, first = failure_summary(res)
    n = len(res.trials)
    where = f"; see `rungflow ls {res.path}`"
    error = f"; first error ({first[0]}): {first[1]}" if first else ""
    obj = res.objective
    if obj is not None and not obj.plain:
        if not any(all(math.isfinite(v) for v in obj.values(t.last_result))
                   for t in res.trials):
            raise NoResultError(f"no trial produced every metric of {obj.describe()} ({failed} "
                                f"of {n} trials failed){error}{where}")
        if not obj.front(res.trials):
            warnings.warn(f"no trial of {n} meets the constraints ({obj.describe()}): the "
                          "Pareto front is empty", TrialsFailedWarning, stacklevel=3)
    elif res.best_trial is None:
        raise NoResultError(f"no trial produced metric {res.metric!r} ({failed} of {n} trials "
                            f"failed){error}{where}", res)
    if failed and failed == n:
        raise NoResultError(f"every trial failed ({n} of {n}){error}{where}", res)
    if failed and first is not None:
        warnings.warn(f"{failed} of {n} trials failed; first error ({first[0]}): {first[1]}",
                      TrialsFailedWarning, stacklevel=3)


def _default_name(path: str) -> str:
    fn = path.rsplit(":", 1)[-1].replace(".", "-").strip("_") or "experiment"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in fn) or "experiment"
