"""ExperimentSpec: one validated schema for the Python API, YAML files, the CLI and Prefect
deployment parameters.

Example (the YAML form)::

    name: digits-asha
    trainable: tuning.examples.digits:train_digits
    metric: mean_accuracy
    mode: max
    num_samples: 24
    space:
      lr: {type: loguniform, low: 1.0e-4, high: 0.1}
      momentum: {type: uniform, low: 0.1, high: 0.9}
    scheduler: {type: asha, max_t: 10, grace_period: 1, reduction_factor: 3}
    searcher: {type: random}
    backend: {type: dask}

Every field is checked before any cluster starts; errors name the field and what is allowed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tuning.backends import BACKEND_TYPES
from tuning.space import Domain, SampleFrom, Space

__all__ = [
    "ExperimentSpec",
    "PlateauSpec",
    "SpecError",
    "StopSpec",
    "UniqueKeyLoader",
    "custom_component",
    "load_spec",
    "load_yaml",
    "resolve_trainable",
    "spec_diff",
    "trainable_path",
]


class SpecError(ValueError):
    """An experiment spec that cannot work; the message names the field."""


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class PlateauSpec(BaseModel):
    """``stop.plateau``: stop a trial whose metric stopped moving (see
    :class:`~tuning.stoppers.TrialPlateauStopper`)."""

    model_config = ConfigDict(extra="forbid")
    metric: str | None = None
    std: float = Field(0.01, ge=0)
    num_results: int = Field(4, ge=2)
    grace_period: int = Field(4, ge=0)


class StopSpec(BaseModel):
    """Stop conditions (``stop:`` in YAML)."""

    model_config = ConfigDict(extra="forbid")
    time_budget_s: float | None = Field(None, gt=0)
    total_iterations: int | None = Field(None, ge=1)
    metric_threshold: float | None = None
    max_iter: int | None = Field(None, ge=1)
    plateau: PlateauSpec | None = None

    @field_validator("plateau", mode="before")
    @classmethod
    def _plateau_flag(cls, v: Any) -> Any:
        if v is True:  # `plateau: true`: the defaults
            return {}
        if v is False:
            return None
        return v


class ExperimentSpec(BaseModel):
    """The whole description of a tuning experiment."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: str = "experiment"
    run_name: str | None = None
    trainable: str = Field(..., description="import path 'package.module:function' or "
                                            "'path/to/file.py:function'")
    space: dict[str, Any]
    metric: str | list[str] = Field(..., description="a metric name, or a list of them "
                                                     "(multi-objective)")
    mode: str | list[str] = Field("max", description="'min' or 'max', one per metric")
    constraints: dict[str, Any] = Field(default_factory=dict, description="metric -> {min, "
                                        "max}: a trial outside is infeasible")
    select: str | None = Field(None, description="how one trial of a multi-objective run is "
                               "picked, e.g. 'max accuracy s.t. latency_ms <= 20'")
    weights: dict[str, Any] | None = Field(None, description="or a weighted sum to maximise, "
                                           "e.g. {accuracy: 1.0, latency_ms: -0.01}")
    num_samples: int = Field(1, ge=1)
    scheduler: dict[str, Any] = Field(default_factory=lambda: {"type": "fifo"})
    searcher: dict[str, Any] = Field(default_factory=lambda: {"type": "random"})
    backend: dict[str, Any] = Field(default_factory=lambda: {"type": "dask"})
    resources: dict[str, float] = Field(default_factory=dict)
    storage_path: str = "./runs"
    tracking_uri: str | None = None
    seed: int | None = None
    max_failures: int = Field(0, ge=0)
    fail_fast: bool = False
    timeout_s: float | None = Field(None, gt=0)
    max_concurrent: int | None = Field(None, ge=1)
    stop: StopSpec = Field(default_factory=StopSpec)
    tags: dict[str, str] = Field(default_factory=dict)
    tensorboard: bool = False

    @field_validator("name", "run_name")
    @classmethod
    def _check_name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.match(v):
            raise ValueError(f"name must be letters, digits, '.', '_' or '-' (it names a "
                             f"directory and an MLflow experiment), got {v!r}")
        return v

    @field_validator("metric", mode="before")
    @classmethod
    def _check_metric(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            if not v or not all(isinstance(x, str) for x in v):
                raise ValueError(f"metric: must be a metric name or a non-empty list of names, "
                                 f"got {v!r}")
            return v[0] if len(v) == 1 else list(v)  # one metric: today's single objective
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"metric: must be a metric name or a non-empty list of names, "
                             f"got {v!r}")
        return v

    @field_validator("mode", mode="before")
    @classmethod
    def _check_mode(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, (list, tuple)):
            bad = [x for x in v if x not in ("min", "max")]
            if not v or bad:
                raise ValueError(f"mode: each value must be 'min' or 'max', got {v!r}")
            one = len(v) == 1 and isinstance(info.data.get("metric"), str)
            return v[0] if one else list(v)
        if v not in ("min", "max"):
            raise ValueError(f"mode: must be 'min' or 'max' (a list of them for several "
                             f"metrics), got {v!r}")
        return v

    @field_validator("trainable")
    @classmethod
    def _check_trainable(cls, v: str) -> str:
        if ":" not in v.replace("::", "") or v.endswith(":") or v.startswith(":"):
            raise ValueError(f"trainable must be an import path 'package.module:function' or "
                             f"'path/to/file.py:function', got {v!r}")
        return v

    @field_validator("space")
    @classmethod
    def _check_space(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name, d in (v.items() if isinstance(v, Mapping) else ()):
            if isinstance(d, Mapping) and d.get("type") == "sample_from":
                raise ValueError(
                    f"space.{name}: a sample_from parameter (function {d.get('fn', '?')!r}) is "
                    "Python code that a spec cannot hold; give the space again from Python: "
                    "Tuner(..., space=...) or Tuner.resume(path, space=...)")
        Space(v)  # raises ValueError naming the parameter
        return v

    @field_validator("scheduler")
    @classmethod
    def _check_scheduler(cls, v: dict[str, Any]) -> dict[str, Any]:
        from tuning.schedulers import make_scheduler

        _component(v, "scheduler", make_scheduler)
        return v

    @field_validator("searcher")
    @classmethod
    def _check_searcher(cls, v: dict[str, Any]) -> dict[str, Any]:
        from tuning.searchers import make_searcher

        _component(v, "searcher", make_searcher)
        return v

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, v: dict[str, Any]) -> dict[str, Any]:
        kind = v.get("type", "dask")
        if kind not in BACKEND_TYPES:
            raise ValueError(f"backend.type: unknown {kind!r}; allowed: {', '.join(BACKEND_TYPES)}")
        allowed = _BACKEND_FIELDS[kind]
        unknown = sorted(set(v) - allowed - {"type"})
        if unknown:
            raise ValueError(f"backend.{unknown[0]}: unknown field for type {kind!r}; allowed: "
                             f"{', '.join(sorted(allowed))}")
        addr = v.get("address")
        if addr is not None and (not isinstance(addr, str) or not addr):
            raise ValueError(f"backend.address must be a non-empty string, got {addr!r}")
        if kind == "dask" and "preload" in v:
            from tuning._imports import check_preload

            check_preload(v["preload"])
        return {"type": kind, **{k: x for k, x in v.items() if k != "type"}}

    @field_validator("resources")
    @classmethod
    def _check_resources(cls, v: dict[str, float]) -> dict[str, float]:
        out = {}
        for key, amount in v.items():
            k = key.lower()
            if k not in ("cpu", "gpu") and not k.startswith("custom:"):
                raise ValueError(f"resources.{key}: unknown resource; allowed: cpu, gpu")
            if amount < 0:
                raise ValueError(f"resources.{key} must be >= 0, got {amount}")
            out[k] = float(amount)
        return out

    @model_validator(mode="after")
    def _check_together(self) -> ExperimentSpec:
        sched = dict(self.scheduler)
        if sched.get("metric") not in (None, self.metric):
            raise ValueError(f"scheduler.metric {sched['metric']!r} differs from metric "
                             f"{self.metric!r}; leave it out")
        from tuning._objective import Selection

        objective = self.objective()  # lengths, modes, constraints: ValueError naming each
        _check_objective_fits(objective, self.scheduler, self.searcher, self.stop)
        Selection.build(objective, self.select, self.weights)
        return self

    def objective(self) -> Any:
        """The experiment's :class:`~tuning._objective.Objective` (metrics, modes,
        constraints)."""
        from tuning._objective import Objective

        return Objective.build(self.metric, self.mode, self.constraints)

    def selection(self) -> Any:
        """The :class:`~tuning._objective.Selection` from ``select`` or ``weights``, or None."""
        from tuning._objective import Selection

        return Selection.build(self.objective(), self.select, self.weights)

    @property
    def primary_metric(self) -> str:
        """The metric (the first one of a multi-objective experiment)."""
        return self.metric if isinstance(self.metric, str) else self.metric[0]

    @property
    def primary_mode(self) -> str:
        return self.mode if isinstance(self.mode, str) else self.mode[0]

    # -- conveniences ----------------------------------------------------------------------

    def experiment_dir(self) -> str:
        """``<storage_path>/<run_name>``: the journal and checkpoints of this run."""
        return f"{self.storage_path.rstrip('/')}/{self.run_name or self.name}"

    def effective_tracking_uri(self) -> str:
        """The MLflow tracking URI: given, or SQLite under the storage path."""
        if self.tracking_uri:
            return self.tracking_uri
        root = self.storage_path
        if "://" in root and not root.startswith("file://"):
            raise SpecError("tracking_uri: needed when storage_path is remote "
                            f"({root!r}); e.g. http://mlflow.internal:5000")
        path = Path(root.removeprefix("file://")).expanduser().resolve()
        return f"sqlite:///{path}/mlflow.db"

    def build_space(self) -> Space:
        return Space(self.space)

    def build_scheduler(self) -> Any:
        from tuning.schedulers import make_scheduler

        _refuse_custom(self.scheduler, "scheduler")
        return make_scheduler(**_domains_in(self.scheduler))

    def build_searcher(self) -> Any:
        from tuning.searchers import make_searcher

        _refuse_custom(self.searcher, "searcher")
        return make_searcher(**self.searcher)

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-able dict (sample_from parameters written as ``{"type": "sample_from",
        "fn": "module:qualname"}``: readable, and refused when read back as a spec)."""
        d = self.model_dump(mode="python")
        space = Space(self.space)
        d["space"] = {k: sample_from_record(v) if isinstance(v, SampleFrom) else
                      (v.to_dict() if isinstance(v, Domain) else v) for k, v in space.items()}
        return _jsonable(d)


def _check_objective_fits(objective: Any, scheduler: Mapping[str, Any],
                          searcher: Mapping[str, Any], stop: StopSpec) -> None:
    """Refuse, naming the field, a scheduler, searcher or stop condition that cannot work with
    several metrics or with constraints."""
    if objective.plain:
        return
    what = (f"metric {list(objective.metrics)}" if objective.multi else
            f"constraints on {', '.join(objective.constraints)}")
    kind = scheduler.get("type")
    if isinstance(kind, str) and custom_component(scheduler) is None:
        from tuning.schedulers._factory import scheduler_class

        cls = scheduler_class(kind)
        if not getattr(cls, "multi_objective", False):
            raise ValueError(f"scheduler.type: {kind!r} ranks trials by one metric and knows no "
                             f"constraints; with {what} use 'moasha' (multi-objective ASHA) or "
                             "'fifo'")
    if searcher.get("type") == "optuna" and isinstance(searcher.get("sampler", "tpe"), str):
        from tuning.searchers._optuna import check_sampler_objective

        check_sampler_objective(searcher.get("sampler", "tpe"), objective)
    if objective.multi and stop.metric_threshold is not None:
        raise ValueError(f"stop.metric_threshold: one threshold cannot stop a run with {what}; "
                         "leave it out (use stop.time_budget_s or stop.total_iterations)")


def sample_from_record(dom: SampleFrom) -> dict[str, Any]:
    """How a spec records a ``sample_from`` parameter: the function's import path, by name."""
    fn = dom.fn
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or repr(fn)
    return {"type": "sample_from", "fn": f"{module}:{name}" if module else name}


def custom_component(d: Mapping[str, Any]) -> str | None:
    """``module.Class`` when a scheduler/searcher spec records a custom instance, else None."""
    kind = d.get("type")
    if isinstance(kind, str) and kind.startswith(_CUSTOM):
        return kind[len(_CUSTOM):]
    return None


_CUSTOM = "custom:"


def _refuse_custom(d: Mapping[str, Any], kind: str) -> None:
    cls = custom_component(d)
    if cls is not None:
        raise SpecError(f"{kind}: the run used a custom {kind} instance ({cls}); a spec cannot "
                        f"rebuild it: pass it again, e.g. Tuner.resume(path, {kind}={cls}(...))")


_BACKEND_FIELDS: dict[str, set[str]] = {
    "dask": {"address", "cluster_class", "cluster_kwargs", "adapt", "n_workers",
             "connect_timeout_s", "direct", "preload"},
    "ray": {"address", "cluster_config", "num_cpus", "num_gpus", "init_kwargs",
            "connect_timeout_s", "runtime_env"},
    "simulated": {"n_workers", "time_scale"},
}


def _component(v: Mapping[str, Any], kind: str, factory: Callable[..., Any]) -> Any:
    if "type" not in v:
        raise ValueError(f"{kind}.type is required")
    cls = custom_component(v)
    if cls is not None:  # a record of an instance given through the API: not built here
        if not re.match(r"^[A-Za-z_][\w.]*$", cls):
            raise ValueError(f"{kind}.type: {v['type']!r}: a custom {kind} is recorded as "
                             f"'custom:module.Class'")
        return None
    try:
        return factory(**_domains_in(dict(v)))
    except TypeError as exc:
        raise ValueError(f"{kind}: {exc}") from None


def _domains_in(d: dict[str, Any]) -> dict[str, Any]:
    return dict(d)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Domain):
        return obj.to_dict()
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):
        return obj.item()
    return repr(obj)


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a mapping with a duplicated key (plain PyYAML keeps the
    last one silently: a setting written twice would be half ignored)."""


def _construct_unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode,
                              deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            dup = key in seen
        except TypeError:  # an unhashable key: let the base loader say so
            break
        if dup:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"duplicate key {key!r} (first at line {seen[key].line + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                _construct_unique_mapping)


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML (or JSON) text safely: no Python tags, no duplicated keys; a SpecError naming
    ``where`` and the line otherwise."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = " ".join(str(exc.problem or exc.context or exc).split())
        if what.startswith("could not determine a constructor for the tag"):
            what += ": Python tags are not allowed (safe YAML only)"
        raise SpecError(f"{where}: not valid YAML{at}: {what}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{where}: not valid YAML: {' '.join(str(exc).split())}") from None


def read_text_file(path: str | os.PathLike[str], what: str) -> str:
    """A UTF-8 text file's content; a SpecError saying what is wrong with the path."""
    p = Path(path)
    if p.is_dir():
        raise SpecError(f"{what} {str(p)!r} is a directory, not a YAML file")
    if not p.is_file():
        raise SpecError(f"{what} {str(p)!r} not found")
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{what} {str(p)!r} is not UTF-8 text (byte {data[exc.start]:#04x} at "
                        f"offset {exc.start}); save it as UTF-8") from None


def load_spec(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None
              ) -> ExperimentSpec:
    """Read a YAML experiment file with a safe loader and validate it."""
    p = Path(path)
    data = load_yaml(read_text_file(p, "experiment file"), str(p))
    if not isinstance(data, dict):
        raise SpecError(f"{p}: must be a mapping of fields (name, trainable, space, ...)")
    data.update(overrides or {})
    return validate_spec(data)


def validate_spec(data: Mapping[str, Any]) -> ExperimentSpec:
    """Validate, turning pydantic's errors into one message naming each field."""
    from pydantic import ValidationError

    try:
        return ExperimentSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc)) from None


def format_validation_error(exc: Any, model: type[BaseModel] | None = None,
                            prefix: tuple[str, ...] = ()) -> str:
    """One line per error, naming the field (``prefix`` + the error's location in ``model``,
    ExperimentSpec by default) and what is allowed."""
    lines = []
    for err in exc.errors():
        err = {**err, "loc": (*prefix, *err["loc"])}
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if msg.split(":")[0].split(".")[0] == loc.split(".")[0] or msg.startswith(f"{loc}"):
            lines.append(msg)
        elif err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown field; allowed: "
                         f"{', '.join(_fields_at(err['loc'][len(prefix):-1], model))}")
        elif err["type"] == "missing":
            lines.append(f"{loc}: required field missing")
        else:
            lines.append(f"{loc}: {msg} (got {err.get('input')!r})")
    return "invalid experiment spec:\n  " + "\n  ".join(lines)


def _fields_at(loc: tuple[Any, ...], root: type[BaseModel] | None = None) -> list[str]:
    """The field names of the (nested) model at ``loc``: ExperimentSpec, stop, stop.plateau."""
    model: Any = root or ExperimentSpec
    for part in loc:
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        ann = getattr(field, "annotation", None)
        nested = [a for a in (getattr(ann, "__args__", None) or (ann,))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            break
        model = nested[0]
    return list(model.model_fields)


# -- trainables ----------------------------------------------------------------------------
def trainable_path(fn: Callable[..., Any]) -> str:
    """An import path for a function, also for one defined in a script's ``__main__``."""
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", "")
    if not module or "<" in name:
        raise SpecError(f"trainable {fn!r} has no import path (a lambda or a nested function): "
                        "define it at module level")
    if module != "__main__":
        return f"{module}:{name}"
    main_file = getattr(sys.modules["__main__"], "__file__", None)
    if not main_file:
        return f"__main__:{name}"  # an interactive session: resumable from Python only
    main = Path(main_file).resolve()
    for entry in sys.path:
        try:
            rel = main.relative_to(Path(entry or os.getcwd()).resolve())
        except ValueError:
            continue
        if rel.suffix == ".py":
            return ".".join(rel.with_suffix("").parts) + f":{name}"
    return f"{main}:{name}"


def resolve_trainable(path: str, field: str = "trainable") -> Callable[..., Any]:
    """Import ``package.module:function`` (or ``path/to/file.py:function``); a SpecError naming
    ``field`` when it does not resolve."""
    if not isinstance(path, str) or ":" not in path or path.startswith(":") or \
            path.endswith(":"):
        raise SpecError(f"{field}: must be an import path 'package.module:function', got "
                        f"{path!r}")
    module_part, _, attr = path.rpartition(":")
    try:
        if module_part.endswith(".py"):
            module = _import_file(module_part)
        else:
            module = importlib.import_module(module_part)
    except Exception as exc:  # noqa: BLE001 - report any import failure the same way
        raise SpecError(f"{field}: cannot import module {module_part!r} for {path!r} "
                        f"({type(exc).__name__}: {exc})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{field}: module {module_part!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError(f"{field}: {path!r} is not callable")
    return obj


def _import_file(file: str) -> Any:
    p = Path(file).expanduser().resolve()
    if not p.is_file():
        raise FileNotFoundError(str(p))
    name = f"rungflow_trainable_{p.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, p)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    import cloudpickle

    cloudpickle.register_pickle_by_value(module)  # workers need not see the file
    return module


def spec_diff(old: Mapping[str, Any], new: Mapping[str, Any],
              fields: tuple[str, ...] = ("space", "metric", "mode", "constraints", "num_samples",
                                         "scheduler", "searcher", "trainable", "seed")) -> list[str]:
    """What changed between two JSON spec dicts, in the fields that resume cannot change."""
    out = []
    for f in fields:
        a, b = old.get(f), new.get(f)
        if f == "constraints":  # a journal written before constraints existed has none
            a, b = a or {}, b or {}
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                keys = sorted(set(a) | set(b))
                parts = [f"{f}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys
                         if a.get(k) != b.get(k)]
                out.extend(parts)
            else:
                out.append(f"{f}: {a!r} -> {b!r}")
    return out
