"""The store: API keys, their limits and the ledger of generations, on SQLite or PostgreSQL.

    store = Store(database_url(data_dir=Path("data")))      # or database_url(url="postgresql://...")
    await store.migrate()                                  # creates / upgrades the schema (Alembic)
    secret, key = await store.create_key("ci", limit_nanos=usd_to_nanos(5), limit_reset="daily")
    key = await store.key_by_secret(secret)                # None: unknown (or deleted) key
    reservation = await store.reserve(key.hash, worst_case_nanos)     # None: over the limit
    await store.record(generation, reservation)            # settle the key and write the ledger row
    await store.close()

Limits hold under concurrency, across server processes: a reservation is ONE conditional
UPDATE of the key's row (`period usage + reserved + amount <= limit`), so two requests cannot
both take the last of a limit, whichever replica they run on. Recording a generation settles
the reservation (`reserved` down by its worst case, `usage` up by the real cost) and inserts
the ledger row in the same transaction: a key's `usage` is always the sum of its rows.

SQLite runs in WAL mode with synchronous=NORMAL: a commit survives the server process being
killed (the OS still holds the WAL), not a power cut in the next moment. Writes of one process
go one at a time (an asyncio lock), so they never wait in SQLite's busy loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, bindparam, case, delete, event, func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from .clock import LIMIT_RESETS, Clock, period_start, system_clock
from .commands import DATABASE_FILE
from .schema import generations, keys, reservations

KEY_PREFIX = "sk-im-v1-"
NANOS_PER_USD = 10**9
# What the columns hold on every backend: limits in BIGINT nanodollars, rates in 32-bit INTEGER.
MAX_LIMIT_USD = 10**9
MAX_PER_MINUTE = 2**31 - 1
# A reservation left by a server that died is given back after this long; a request running
# longer than this keeps its row in the ledger, but its worst case stops counting against the limit.
RESERVATION_HOLD_MS = 30 * 60 * 1000


def usd_to_nanos(usd: Decimal | float | str, rounding: str = ROUND_HALF_UP) -> int:
    return int((Decimal(str(usd)) * NANOS_PER_USD).to_integral_value(rounding))


def worst_case_nanos(usd: Decimal) -> int:
    return usd_to_nanos(usd, ROUND_CEILING)


def nanos_to_usd(nanos: int | None) -> float | None:
    return None if nanos is None else nanos / NANOS_PER_USD


def hash_key(secret: str) -> str:
    """Keys are 256 random bits: a plain SHA-256 cannot be reversed or guessed (no salt needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def database_url(data_dir: Path | None = None, url: str | None = None) -> str:
    """SQLAlchemy's URL: `url` (postgresql://... or sqlite:///...) if given, else the SQLite file in `data_dir`."""
    if url:
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):
                return "postgresql+asyncpg://" + url[len(plain):]
        if url.startswith("sqlite:///"):
            return "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
        return url
    if data_dir is None:
        raise ValueError("a store needs a data directory or a database URL")
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{data_dir.resolve() / DATABASE_FILE}"


@dataclass(frozen=True)
class KeyRecord:
    hash: str
    name: str
    label: str
    is_management: bool
    disabled: bool
    limit_nanos: int | None
    limit_reset: str | None
    requests_per_minute: int | None
    tokens_per_minute: int | None
    usage_nanos: int
    period_usage_nanos: int
    period_start_ms: int
    reserved_nanos: int
    created_at_ms: int
    updated_at_ms: int | None
    expires_at_ms: int | None

    def period_usage(self, now_ms: int) -> int:
        """Settled spending in the current limit period (0 once the period has rolled over)."""
        return 0 if self.period_start_ms < period_start(self.limit_reset, now_ms) else self.period_usage_nanos

    def limit_remaining(self, now_ms: int) -> int | None:
        if self.limit_nanos is None:
            return None
        return max(0, self.limit_nanos - self.period_usage(now_ms) - self.reserved_nanos)

    def expired(self, now_ms: int) -> bool:
        return self.expires_at_ms is not None and self.expires_at_ms <= now_ms


@dataclass(frozen=True)
class Generation:
    """One ledger row (schema.generations)."""

    id: str
    key_hash: str | None
    model: str
    created_at_ms: int
    status: str
    streamed: bool
    cancelled: bool
    latency_ms: int | None
    generation_time_ms: int | None
    finish_reason: str | None
    native_finish_reason: str | None
    tokens_prompt: int
    tokens_completion: int
    native_tokens_reasoning: int
    native_tokens_completion_images: int
    native_tokens_cached: int
    num_media_prompt: int
    num_media_completion: int
    num_choices: int
    cost_nanos: int


KEY_CHANGES = ("name", "disabled", "limit_nanos", "limit_reset", "requests_per_minute", "tokens_per_minute", "expires_at_ms")

# The statements of every request, built once (bound parameters: daily_start, weekly_start,
# monthly_start from _period_starts, and their own; BigInteger, as asyncpg types them strictly).
# The key row's current period start, and its period usage as of now (zero once the period rolled over):
_PERIOD_START = case(*((keys.c.limit_reset == reset, bindparam(f"{reset}_start", type_=BigInteger)) for reset in LIMIT_RESETS), else_=0)
_PERIOD_USAGE = case((keys.c.period_start_ms < _PERIOD_START, 0), else_=keys.c.period_usage_nanos)
_RESERVE = (
    update(keys)
    .where(
        keys.c.hash == bindparam("key_hash"),
        or_(keys.c.limit_nanos.is_(None), _PERIOD_USAGE + keys.c.reserved_nanos + bindparam("amount", type_=BigInteger) <= keys.c.limit_nanos),
    )
    .values(period_usage_nanos=_PERIOD_USAGE, period_start_ms=_PERIOD_START, reserved_nanos=keys.c.reserved_nanos + bindparam("amount", type_=BigInteger))
)
_TAKE_RESERVATION = (
    delete(reservations)
    .where(reservations.c.id == bindparam("reservation"))
    .returning(reservations.c.key_hash, reservations.c.amount_nanos)
)
_SETTLE = (
    update(keys)
    .where(keys.c.hash == bindparam("key_hash"))
    .values(
        reserved_nanos=keys.c.reserved_nanos - bindparam("held", type_=BigInteger),
        usage_nanos=keys.c.usage_nanos + bindparam("cost", type_=BigInteger),
        period_usage_nanos=_PERIOD_USAGE + bindparam("cost", type_=BigInteger),
        period_start_ms=_PERIOD_START,
    )
)


def _period_starts(now_ms: int) -> dict[str, int]:
    return {f"{reset}_start": period_start(reset, now_ms) for reset in LIMIT_RESETS}


class Store:
    def __init__(self, url: str, clock: Clock = system_clock) -> None:
        self.url = url
        self.clock = clock
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            self.engine = create_async_engine(url, connect_args={"timeout": 30})
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
        self._write_lock = asyncio.Lock() if self.sqlite else None
        self._has_keys = False

    async def close(self) -> None:
        await self.engine.dispose()

    # --- schema ------------------------------------------------------------------------------------
    async def migrate(self) -> None:
        """Upgrade the schema to the newest migration; several processes may call it at once."""
        logging.getLogger("alembic").setLevel(logging.WARNING)  # its per-start INFO lines say nothing new
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))

        def upgrade(connection: Any) -> None:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

        async with self._migration_lock():
            async with self.engine.begin() as conn:
                if not self.sqlite:
                    await conn.execute(text("SELECT pg_advisory_xact_lock(7316055)"))  # one migrator at a time
                await conn.run_sync(upgrade)

    @contextlib.asynccontextmanager
    async def _migration_lock(self) -> AsyncIterator[None]:
        if not self.sqlite:
            yield
            return
        path = Path(self.engine.url.database).with_suffix(".migrate-lock")
        with open(path, "a") as handle:
            await asyncio.to_thread(fcntl.flock, handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction (in this process, one at a time on SQLite)."""
        async with self._write_lock or contextlib.nullcontext():
            async with self.engine.begin() as conn:
                yield conn

    # --- keys ---------------------------------------------------------------------------------------
    async def create_key(
        self,
        name: str,
        *,
        limit_nanos: int | None = None,
        limit_reset: str | None = None,
        expires_at_ms: int | None = None,
        management: bool = False,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key: (the key itself, shown only now; its record)."""
        _check_key_fields(limit_nanos, limit_reset, requests_per_minute, tokens_per_minute)
        secret = KEY_PREFIX + secrets.token_hex(32)
        now = self.clock()
        row = dict(
            hash=hash_key(secret), name=name, label=f"{secret[:len(KEY_PREFIX) + 3]}...{secret[-3:]}",
            is_management=management, disabled=False, limit_nanos=limit_nanos, limit_reset=limit_reset,
            requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute,
            usage_nanos=0, period_usage_nanos=0, period_start_ms=period_start(limit_reset, now), reserved_nanos=0,
            created_at_ms=now, updated_at_ms=None, expires_at_ms=expires_at_ms,
        )
        async with self._write() as conn:
            await conn.execute(insert(keys).values(**row))
        self._has_keys = True
        return secret, KeyRecord(**row)

    async def key_by_secret(self, secret: str) -> KeyRecord | None:
        return await self.get_key(hash_key(secret))

    async def get_key(self, key_hash: str) -> KeyRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(keys).where(keys.c.hash == key_hash))).mappings().first()
        return KeyRecord(**row) if row else None

    async def list_keys(self, offset: int = 0, include_disabled: bool = True, limit: int = 100) -> list[KeyRecord]:
        query = select(keys).order_by(keys.c.created_at_ms, keys.c.hash).offset(offset).limit(limit)
        if not include_disabled:
            query = query.where(keys.c.disabled.is_(False))
        async with self.engine.connect() as conn:
            return [KeyRecord(**row) for row in (await conn.execute(query)).mappings()]

    async def has_keys(self) -> bool:
        """Whether any key was ever found here (once true, stays true for this process)."""
        if not self._has_keys:
            async with self.engine.connect() as conn:
                self._has_keys = (await conn.execute(select(keys.c.hash).limit(1))).first() is not None
        return self._has_keys

    async def update_key(self, key_hash: str, **changes: Any) -> KeyRecord | None:
        """Change the fields named in KEY_CHANGES; None when there is no such key. A new
        limit_reset starts its current period with what the ledger says was spent in it."""
        unknown = set(changes) - set(KEY_CHANGES)
        if unknown:
            raise ValueError(f"cannot change {', '.join(sorted(unknown))}")
        now = self.clock()
        async with self._write() as conn:
            current = (await conn.execute(select(keys).where(keys.c.hash == key_hash))).mappings().first()
            if current is None:
                return None
            merged = {**current, **changes}
            _check_key_fields(merged["limit_nanos"], merged["limit_reset"], merged["requests_per_minute"], merged["tokens_per_minute"])
            values = {**changes, "updated_at_ms": now}
            if "limit_reset" in changes and changes["limit_reset"] != current["limit_reset"]:
                start = period_start(changes["limit_reset"], now)
                spent = select(func.coalesce(func.sum(generations.c.cost_nanos), 0)).where(
                    generations.c.key_hash == key_hash, generations.c.created_at_ms >= start
                )
                values |= {"period_start_ms": start, "period_usage_nanos": spent.scalar_subquery()}
            await conn.execute(update(keys).where(keys.c.hash == key_hash).values(**values))
            row = (await conn.execute(select(keys).where(keys.c.hash == key_hash))).mappings().first()
        return KeyRecord(**row)

    async def delete_key(self, key_hash: str) -> bool:
        """The key stops working at once; its generations stay in the ledger."""
        async with self._write() as conn:
            deleted = (await conn.execute(delete(keys).where(keys.c.hash == key_hash))).rowcount == 1
            await conn.execute(delete(reservations).where(reservations.c.key_hash == key_hash))
        return deleted

    async def usage_since(self, key_hash: str | None, since_ms: int) -> int:
        """Nano-dollars of the key's generations created at or after `since_ms` (from the ledger)."""
        query = select(func.coalesce(func.sum(generations.c.cost_nanos), 0)).where(generations.c.created_at_ms >= since_ms)
        query = query.where(generations.c.key_hash.is_(None) if key_hash is None else generations.c.key_hash == key_hash)
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    # --- limits -------------------------------------------------------------------------------------
    async def reserve(self, key_hash: str, amount_nanos: int) -> str | None:
        """Hold `amount_nanos` of the key's limit; the reservation's id, or None when it would pass the limit."""
        now = self.clock()
        reservation = uuid.uuid4().hex
        async with self._write() as conn:
            taken = await conn.execute(_RESERVE, {"key_hash": key_hash, "amount": amount_nanos, **_period_starts(now)})
            if taken.rowcount != 1:
                return None
            await conn.execute(
                insert(reservations),
                {"id": reservation, "key_hash": key_hash, "amount_nanos": amount_nanos, "expires_at_ms": now + RESERVATION_HOLD_MS},
            )
        return reservation

    async def release(self, reservation: str) -> None:
        """Give a reservation back unused (the request never ran)."""
        async with self._write() as conn:
            await self._settle(conn, reservation, key_hash=None, cost_nanos=0)

    async def record(self, generation: Generation, reservation: str | None = None) -> None:
        """Write the generation's ledger row and settle its key, in one transaction."""
        async with self._write() as conn:
            if reservation is not None or generation.key_hash is not None:
                await self._settle(conn, reservation, generation.key_hash, generation.cost_nanos)
            await conn.execute(insert(generations), generation.__dict__)

    async def _settle(self, conn: AsyncConnection, reservation: str | None, key_hash: str | None, cost_nanos: int) -> None:
        held = 0
        if reservation is not None:
            row = (await conn.execute(_TAKE_RESERVATION, {"reservation": reservation})).first()
            if row is not None:  # else swept once expired: nothing held any more
                key_hash, held = key_hash or row.key_hash, row.amount_nanos
        if key_hash is not None:
            params = {"key_hash": key_hash, "held": held, "cost": cost_nanos, **_period_starts(self.clock())}
            await conn.execute(_SETTLE, params)

    async def sweep_reservations(self) -> int:
        """Give back expired reservations (left by a server that died); how many."""
        async with self._write() as conn:
            expired = delete(reservations).where(reservations.c.expires_at_ms < self.clock())
            rows = (await conn.execute(expired.returning(reservations.c.key_hash, reservations.c.amount_nanos))).all()
            for row in rows:
                await conn.execute(
                    update(keys).where(keys.c.hash == row.key_hash).values(reserved_nanos=keys.c.reserved_nanos - row.amount_nanos)
                )
        return len(rows)

    # --- ledger -------------------------------------------------------------------------------------
    async def generation(self, generation_id: str) -> Generation | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(generations).where(generations.c.id == generation_id))).mappings().first()
        return Generation(**row) if row else None

    async def generations_of(self, key_hash: str | None) -> list[Generation]:
        where = generations.c.key_hash.is_(None) if key_hash is None else generations.c.key_hash == key_hash
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(generations).where(where).order_by(generations.c.created_at_ms))).mappings()
            return [Generation(**row) for row in rows]


def _check_key_fields(limit_nanos: int | None, limit_reset: str | None, rpm: int | None, tpm: int | None) -> None:
    if limit_nanos is not None and not 0 <= limit_nanos <= MAX_LIMIT_USD * NANOS_PER_USD:
        raise ValueError(f"limit must be between 0 and {MAX_LIMIT_USD} USD (or null: unlimited)")
    if limit_reset is not None and limit_reset not in LIMIT_RESETS:
        raise ValueError(f"limit_reset must be one of {', '.join(LIMIT_RESETS)} or null")
    for name, value in (("requests_per_minute", rpm), ("tokens_per_minute", tpm)):
        if value is not None and not 1 <= value <= MAX_PER_MINUTE:
            raise ValueError(f"{name} must be between 1 and {MAX_PER_MINUTE} (or null: no limit)")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
