"""A stand-in for a cloud cluster class (dask-cloudprovider's are SpecCluster subclasses too):
a LocalCluster that records its instances and close() calls, and a trainable that always fails."""

from __future__ import annotations

from typing import Any, ClassVar

from distributed import LocalCluster


class RecordingLocalCluster(LocalCluster):
    instances: ClassVar[list[RecordingLocalCluster]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.close_calls = 0
        super().__init__(*args, **kwargs)
        RecordingLocalCluster.instances.append(self)

    def close(self, *args: Any, **kwargs: Any) -> Any:
        self.close_calls += 1
        return super().close(*args, **kwargs)


def broken(config: dict[str, Any]) -> None:
    raise RuntimeError(f"boom at x={config['x']:.3f}")


def crash(config: dict[str, Any]) -> None:
    """The worker process dies (as on a reclaimed spot machine)."""
    import os

    os._exit(1)
