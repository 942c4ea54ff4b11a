"""The environment rungflow sets for itself and the libraries it drives, in one place.

Telemetry is off (Prefect, MLflow) and third-party logs are kept to warnings unless the user's
environment says otherwise; the CLI silences them entirely unless ``--verbose``. Set before
Prefect, Dask and MLflow read their logging configuration, and on their loggers in case they
were imported already; child processes (Dask workers, the MLflow writer) inherit it.
"""

from __future__ import annotations

import logging
import os

__all__ = ["quiet_defaults", "silence_libraries"]

_TELEMETRY_OFF = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                  "MLFLOW_DISABLE_TELEMETRY": "true"}
_QUIET = {"PREFECT_LOGGING_LEVEL": "WARNING",
          "PREFECT_LOGGING_SERVER_LEVEL": "CRITICAL",  # the ephemeral API's noise
          "DASK_LOGGING__DISTRIBUTED": "warning",
          "MLFLOW_LOGGING_LEVEL": "WARNING"}  # "Creating initial MLflow database tables..."
_SILENT = {"PREFECT_LOGGING_LEVEL": "CRITICAL", "PREFECT_LOGGING_SERVER_LEVEL": "CRITICAL",
           "PREFECT_LOGGING_INTERNAL_LEVEL": "CRITICAL", "DASK_LOGGING__DISTRIBUTED": "critical",
           "MLFLOW_LOGGING_LEVEL": "CRITICAL"}
_LIBRARY_LOGGERS = ("prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.engine",
                    "prefect.flow_engine", "prefect.task_engine", "prefect.server",
                    "distributed", "mlflow", "alembic")


def quiet_defaults() -> None:
    """Telemetry off; Prefect, Dask and MLflow log warnings and errors only, unless the
    user's environment sets their levels."""
    for key, value in {**_TELEMETRY_OFF, **_QUIET}.items():
        os.environ.setdefault(key, value)
    _apply_levels()


def silence_libraries() -> None:
    """The CLI without ``--verbose``: the user sees rungflow's answer, not the libraries'
    logs of a failed task or flow (tracebacks before the one-line error)."""
    for key, value in _TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    os.environ.update(_SILENT)
    _apply_levels()


def _apply_levels() -> None:
    import dask

    dask.config.set({"logging.distributed": os.environ["DASK_LOGGING__DISTRIBUTED"]})
    for name in _LIBRARY_LOGGERS:
        var = {"distributed": "DASK_LOGGING__DISTRIBUTED",
               "mlflow": "MLFLOW_LOGGING_LEVEL"}.get(name.split(".")[0], "PREFECT_LOGGING_LEVEL")
        level = logging.getLevelName(os.environ.get(var, "WARNING").upper())
        level = level if isinstance(level, int) else logging.WARNING
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
