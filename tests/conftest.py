"""Shared fixtures. Every process and server a test starts binds 127.0.0.1 and is ended by pid."""

from __future__ import annotations

import os

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DASK_DISTRIBUTED__LOGGING__DISTRIBUTED", "warning")

import pytest


@pytest.fixture
def storage(tmp_path):
    """A fresh storage path and a SQLite MLflow store inside it."""
    return {"storage_path": str(tmp_path / "runs"), "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}
