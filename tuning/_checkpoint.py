"""Checkpoint storage: dicts (torch tensors allowed) written through fsspec, loaded safely.

Plain JSON-able dicts are stored as JSON; anything else with ``torch.save`` and read back with
``torch.load(weights_only=True)``, so loading never runs arbitrary code. A checkpoint that
cannot be read back safely is refused when it is saved, naming what is wrong.
"""

from __future__ import annotations

import io
import json
from typing import Any

import fsspec

__all__ = ["CheckpointError", "checkpoint_url", "load_checkpoint", "save_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be serialized or read back safely."""


def checkpoint_url(storage: str, trial_id: str, iteration: int, suffix: str) -> str:
    return f"{storage.rstrip('/')}/checkpoints/{trial_id}/iter-{iteration:06d}{suffix}"


def _json_bytes(obj: Any) -> bytes | None:
    try:
        text = json.dumps(obj, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return text.encode() if json.loads(text) == obj else None


def _torch_bytes(obj: Any) -> bytes:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            "checkpoint: not JSON-serializable and torch is not installed; report a dict of "
            "numbers, strings, lists and dicts (or torch tensors with torch installed)") from None
    buf = io.BytesIO()
    try:
        torch.save(obj, buf)
        data = buf.getvalue()
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here is the user's object
        raise CheckpointError(
            f"checkpoint cannot be serialized for safe loading ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}); use dicts of tensors, numbers, strings and lists"
        ) from None
    return data


def save_checkpoint(obj: Any, storage: str, trial_id: str, iteration: int) -> str:
    """Write ``obj`` under ``storage`` and return its URL."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint must be a dict, got {type(obj).__name__}")
    data = _json_bytes(obj)
    suffix = ".json"
    if data is None:
        data, suffix = _torch_bytes(obj), ".pt"
    url = checkpoint_url(storage, trial_id, iteration, suffix)
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    tmp = path + ".tmp"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)
    return url


def load_checkpoint(url: str) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (no arbitrary code runs)."""
    with fsspec.open(url, "rb") as f:
        data = f.read()
    if url.endswith(".json"):
        return json.loads(data)
    import torch

    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


