"""Components that remember their constructor arguments, so an instance built in Python can be
written to the journal as the same dict the YAML spec would hold."""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["RecordsArgs"]


class RecordsArgs:
    _spec_args: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
            obj._spec_args = {k: v for k, v in bound.arguments.items() if k != "self"}
            extra = obj._spec_args.pop("kwargs", None)
            if isinstance(extra, dict):
                obj._spec_args.update(extra)
        except TypeError:
            obj._spec_args = dict(kwargs)
        return obj

    @property
    def spec_args(self) -> dict[str, Any]:
        return dict(getattr(self, "_spec_args", {}))
