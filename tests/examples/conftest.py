from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")



class ListChannel:
    """An in-memory channel for ``run_segment``: collects messages, never asks to stop."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def started(self, segment: Any) -> dict[str, Any] | None:
        return None

    def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def should_stop(self) -> bool:
        return False

    def wait_decision(self, iteration: int, timeout: float) -> bool | None:
        return None
