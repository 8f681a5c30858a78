"""The store's tables, as SQLAlchemy Core metadata (migrations/ creates and upgrades them).

Money is an integer of nano-dollars (1e-9 USD): sums are exact, and a key's `usage_nanos` is
always the sum of its generations' `cost_nanos`. Times are integer milliseconds since the epoch
(UTC): the same comparisons on SQLite and PostgreSQL, no time zone to get wrong.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

keys = Table(
    "keys",
    metadata,
    Column("hash", String(64), primary_key=True),  # sha256 of the key, hex; the key itself is never stored
    Column("name", Text, nullable=False),
    Column("label", Text, nullable=False),  # the key's first and last characters, to recognise it
    Column("is_management", Boolean, nullable=False, default=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("limit_nanos", BigInteger, nullable=True),  # spending limit per period; NULL: unlimited
    Column("limit_reset", String(16), nullable=True),  # daily | weekly | monthly; NULL: the limit never resets
    Column("requests_per_minute", Integer, nullable=True),
    Column("tokens_per_minute", Integer, nullable=True),
    Column("usage_nanos", BigInteger, nullable=False, default=0),  # all time, settled generations
    # Settled spending since `period_start_ms`, the start of the current limit_reset period
    # (0 when the limit never resets). A reservation or a settlement that finds an older
    # period starts the new one at zero, in the same UPDATE.
    Column("period_usage_nanos", BigInteger, nullable=False, default=0),
    Column("period_start_ms", BigInteger, nullable=False, default=0),
    Column("reserved_nanos", BigInteger, nullable=False, default=0),  # worst cases of requests running now
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=True),
    Column("expires_at_ms", BigInteger, nullable=True),
)

# One row per running request that holds part of a key's limit. A server killed mid-request
# leaves its rows behind; they are swept once past `expires_at_ms` (keys.reserved_nanos is
# given back in the same transaction), so a crash cannot hold a key's limit for ever.
reservations = Table(
    "reservations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("key_hash", String(64), nullable=False),
    Column("amount_nanos", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
    Index("ix_reservations_expires", "expires_at_ms"),
)

# OpenRouter's generation record, one row per chat completion, whatever its end.
generations = Table(
    "generations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("key_hash", String(64), nullable=True),  # NULL: a server without keys
    Column("model", Text, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),  # completed | error | cancelled
    Column("streamed", Boolean, nullable=False),
    Column("cancelled", Boolean, nullable=False),
    Column("latency_ms", Integer, nullable=True),  # request start -> first output
    Column("generation_time_ms", Integer, nullable=True),  # first output -> end
    Column("finish_reason", String(32), nullable=True),
    Column("native_finish_reason", String(32), nullable=True),
    Column("tokens_prompt", Integer, nullable=False),
    Column("tokens_completion", Integer, nullable=False),
    Column("native_tokens_reasoning", Integer, nullable=False),
    Column("native_tokens_completion_images", Integer, nullable=False),
    Column("native_tokens_cached", Integer, nullable=False),
    Column("num_media_prompt", Integer, nullable=False),
    Column("num_media_completion", Integer, nullable=False),
    Column("num_choices", Integer, nullable=False),
    Column("cost_nanos", BigInteger, nullable=False),
    Index("ix_generations_key_created", "key_hash", "created_at_ms"),
)
