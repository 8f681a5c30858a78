"""Time for the store and the limits: milliseconds since the epoch, UTC, and the periods a
key's limit resets on (midnight UTC; weeks start on Monday).

    clock = system_clock                 # what a server uses
    clock = offset_clock(path)           # tests: the system clock plus the seconds written in `path`
    period_start("weekly", clock())      # the Monday 00:00 UTC that starts the current week

`imagemini serve` takes the offset clock when IMAGEMINI_CLOCK_OFFSET_FILE names a file: tests move a
real server's time (limit resets, rate-limit windows) without waiting for midnight.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

Clock = Callable[[], int]
LIMIT_RESETS = ("daily", "weekly", "monthly")


def system_clock() -> int:
    return int(time.time() * 1000)


def offset_clock(path: Path) -> Clock:
    """The system clock plus the number of seconds in `path` (0 while the file is missing or empty)."""

    def now() -> int:
        try:
            offset = float(path.read_text().strip() or 0)
        except FileNotFoundError:
            offset = 0.0
        return system_clock() + int(offset * 1000)

    return now


def clock_from_env() -> Clock:
    path = os.environ.get("IMAGEMINI_CLOCK_OFFSET_FILE")
    return offset_clock(Path(path)) if path else system_clock


def period_start(limit_reset: str | None, now_ms: int) -> int:
    """Start (ms) of the limit period containing `now_ms`; 0 for a limit that never resets."""
    if limit_reset is None:
        return 0
    now = datetime.fromtimestamp(now_ms / 1000, timezone.utc)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if limit_reset == "daily":
        start = day
    elif limit_reset == "weekly":
        start = day - timedelta(days=day.weekday())
    elif limit_reset == "monthly":
        start = day.replace(day=1)
    else:
        raise ValueError(f"limit_reset must be one of {', '.join(LIMIT_RESETS)} or null, not {limit_reset!r}")
    return int(start.timestamp() * 1000)


def iso(ms: int | None) -> str | None:
    """OpenRouter's timestamps: ISO 8601 in UTC."""
    return None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat().replace("+00:00", "Z")


def parse_iso(value: str) -> int:
    """An ISO 8601 time (a bare one is UTC) -> ms since the epoch."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp() * 1000)
