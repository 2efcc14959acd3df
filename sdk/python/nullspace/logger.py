"""``default_build_logger()``: a ready-made ``on_log_entry`` callback."""

from __future__ import annotations

import sys
from typing import Callable, Optional, TextIO

from .models import LogEntry

_LEVELS = {"debug": 0, "info": 1, "warn": 2, "error": 3}


def default_build_logger(
    min_level: str = "info", stream: Optional[TextIO] = None
) -> Callable[[LogEntry], None]:
    """A callback that prints entries at ``min_level`` or above as ``[kind] message``."""
    threshold = _LEVELS.get(min_level, 1)

    def log(entry: LogEntry) -> None:
        if _LEVELS.get(entry.level, 1) < threshold:
            return
        out = stream if stream is not None else sys.stderr
        step = f" {entry.step_index}/{entry.total_steps}" if entry.step_index else ""
        print(f"[{entry.kind}{step}] {entry.message}", file=out, flush=True)

    return log
