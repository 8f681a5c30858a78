"""The server's durable state: API keys (hashed), their limits, and the ledger of generations.

SQLite (one WAL file under --data-dir) or PostgreSQL (--database-url postgresql://...), both
through SQLAlchemy 2's async engine, the schema kept by Alembic migrations (migrations/).
store.py says how limits stay exact under concurrency; clock.py how time and periods work.
"""

from .clock import LIMIT_RESETS, Clock, clock_from_env, iso, offset_clock, parse_iso, period_start, system_clock
from .store import (
    DATABASE_FILE,
    KEY_PREFIX,
    Generation,
    KeyRecord,
    Store,
    database_url,
    hash_key,
    nanos_to_usd,
    usd_to_nanos,
    worst_case_nanos,
)

__all__ = [
    "DATABASE_FILE", "KEY_PREFIX", "LIMIT_RESETS", "Clock", "Generation", "KeyRecord", "Store", "clock_from_env",
    "database_url", "hash_key", "iso", "nanos_to_usd", "offset_clock", "parse_iso", "period_start", "system_clock",
    "usd_to_nanos", "worst_case_nanos",
]
