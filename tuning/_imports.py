"""What a trainable imports, found without running it, so that worker processes can have it
imported before their first trial (:class:`tuning.backends.dask.DaskBackend`'s ``preload``).

A trainable's heavy imports (torch, scikit-learn, xgboost) cost each fresh worker process
seconds before its first result, often more than the trials themselves in a short study. The
scan reads the trainable's code the way the interpreter would run it: ``import`` statements
anywhere in its functions (including the lazy ones inside a function body), the modules and
library objects its globals name, and the functions of its own module it calls, transitively.
Only packages outside the standard library and outside rungflow count. The driver's own
``sys.modules`` then gives every submodule of those packages that the driver has imported, in
the order it imported them (an import order that is known to work), and the modules a package
is known to import on the first use of its everyday API (:data:`FIRST_USE`), which a driver that
has not trained yet has not imported.
"""

from __future__ import annotations

import dis
import functools
import importlib
import logging
import os
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["ENV", "check_preload", "packages_of", "preload_modules", "import_preload"]

log = logging.getLogger(__name__)

ENV = "RUNGFLOW_PRELOAD"  # the modules a forkserver imports, comma-separated
_SKIP = frozenset({"tuning", "__main__", "__mp_main__", "builtins"})
_MAX_FUNCTIONS = 500  # a bound on the transitive walk through the trainable's own helpers
# Imports a package does lazily on the first use of what every trainable of it calls. PyTorch:
# the first optimizer made (``torch.optim.Optimizer.__init__``) imports ``torch._dynamo``, and
# with it sympy: 1.1 s here, as long as ``import torch`` itself, in each fresh worker process.
FIRST_USE: dict[str, tuple[str, ...]] = {"torch": ("torch._dynamo",)}


def _top(name: str) -> str:
    return name.partition(".")[0]


def _is_library(name: str) -> bool:
    top = _top(name)
    return bool(top) and top not in _SKIP and top not in sys.stdlib_module_names


def _code_objects(code: types.CodeType) -> Iterable[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _callables(obj: Any) -> list[Callable[..., Any]]:
    """The Python functions behind ``obj``: itself, a partial's function, a class's methods, a
    callable instance's ``__call__``."""
    if isinstance(obj, functools.partial):
        return _callables(obj.func)
    if isinstance(obj, types.MethodType):
        return _callables(obj.__func__)
    if isinstance(obj, types.FunctionType):
        return [obj]
    wrapped = getattr(obj, "__wrapped__", None)  # functools.wraps, lru_cache
    if wrapped is not None and wrapped is not obj:
        return _callables(wrapped)
    if isinstance(obj, type):
        return [f for v in vars(obj).values()
                for f in _callables(v.__func__ if isinstance(v, (staticmethod, classmethod))
                                    else v) if isinstance(f, types.FunctionType)]
    call = vars(type(obj)).get("__call__") if callable(obj) else None
    return [call] if isinstance(call, types.FunctionType) else []


def packages_of(trainable: Any) -> list[str]:
    """Module names the trainable imports or uses, outside the standard library and rungflow:
    ``import x`` / ``from x.y import z`` statements in its functions (lazy ones included), the
    modules its globals are, and the modules of the library functions and classes its globals
    name; functions of the trainable's own code that it calls are read too."""
    found: dict[str, None] = {}
    seen: set[int] = set()
    todo = _callables(trainable)
    while todo and len(seen) < _MAX_FUNCTIONS:
        fn = todo.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        home = getattr(fn, "__module__", None) or ""
        glob = getattr(fn, "__globals__", {})
        names: set[str] = set()
        for code in _code_objects(fn.__code__):
            for ins in dis.get_instructions(code):
                if ins.opname == "IMPORT_NAME" and isinstance(ins.argval, str):
                    if _is_library(ins.argval):
                        found[ins.argval] = None
                elif ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and isinstance(ins.argval, str):
                    names.add(ins.argval)
        for cell in fn.__closure__ or ():
            try:
                names_value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            todo.extend(_follow(names_value, home, found))
        for name in names:
            if name in glob:
                todo.extend(_follow(glob[name], home, found))
    return list(found)


def _follow(value: Any, home: str, found: dict[str, None]) -> list[Callable[..., Any]]:
    """Record the library module behind ``value``; return the functions to read next (the
    trainable's own code, not a library's)."""
    if isinstance(value, types.ModuleType):
        if _is_library(value.__name__):
            found[value.__name__] = None
        return []
    module = getattr(value, "__module__", None)
    if isinstance(module, str) and module != home and _is_library(module):
        found[module] = None
        return []
    if isinstance(module, str) and _top(module) == "tuning":
        return []
    return _callables(value) if callable(value) else []


def preload_modules(packages: Iterable[str]) -> list[str]:
    """The driver's imported modules under the top-level packages of ``packages``, in the order
    they were imported (a package the driver has not imported is named as it is), then the
    packages' :data:`FIRST_USE` imports the driver has not done."""
    wanted = [n for n in packages if _is_library(n)]
    tops = {_top(n) for n in wanted}
    out = [name for name, mod in list(sys.modules.items())
           if mod is not None and _top(name) in tops]
    have = set(out)
    out.extend(n for n in wanted if n not in have)
    have.update(wanted)
    out.extend(m for top in sorted(tops) for m in FIRST_USE.get(top, ()) if m not in have)
    return out


def import_preload(names: Iterable[str] | None = None) -> list[str]:
    """Import ``names`` (default: the ``RUNGFLOW_PRELOAD`` environment variable), each on its
    own: one that fails is logged and skipped (the trial then imports it, or fails, as it would
    have). Returns the ones that failed."""
    if names is None:
        names = [n for n in os.environ.get(ENV, "").split(",") if n]
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a preload must never stop a worker
            failed.append(name)
            log.debug("preload of %s failed: %s", name, exc)
    return failed


def check_preload(preload: Any) -> str | list[str] | bool:
    """``preload``: ``"auto"``, ``False`` (or ``True``, the same as ``"auto"``), or a list of
    module names."""
    if preload is True or preload == "auto":
        return "auto"
    if preload is False:
        return False
    if isinstance(preload, (list, tuple)) and all(
            isinstance(m, str) and m and all(p.isidentifier() for p in m.split("."))
            for m in preload):
        return list(preload)
    raise ValueError(f"backend.preload must be 'auto', false, or a list of module names "
                     f"(e.g. ['torch', 'sklearn']), got {preload!r}")
