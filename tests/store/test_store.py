"""The store on SQLite and PostgreSQL (conftest.py): keys, reservations that hold under
concurrency and across replicas, settlement into the ledger, limit periods, crash leftovers."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from storetest import FakeClock, with_store

from imagemini.store.clock import period_start
from imagemini.store.store import KEY_PREFIX, RESERVATION_HOLD_MS, Generation, Store, hash_key


def generation(key_hash: str | None, cost_nanos: int, created_at_ms: int = 0, **fields) -> Generation:
    row = dict(
        id=f"chatcmpl-{id(fields)}-{cost_nanos}-{created_at_ms}-{fields.pop('n', 0)}", key_hash=key_hash, model="m",
        created_at_ms=created_at_ms, status="completed", streamed=False, cancelled=False, latency_ms=1,
        generation_time_ms=2, finish_reason="stop", native_finish_reason="stop", tokens_prompt=3, tokens_completion=4,
        native_tokens_reasoning=0, native_tokens_completion_images=0, native_tokens_cached=0, num_media_prompt=0,
        num_media_completion=0, num_choices=1, cost_nanos=cost_nanos,
    )
    return Generation(**(row | fields))


def test_migrations_run_again_and_at_once(store_url):
    async def body(a: Store, b: Store) -> None:
        await asyncio.gather(a.migrate(), b.migrate())  # already migrated by with_store: no-ops
        assert not await a.has_keys()

    with_store(store_url, body, replicas=2)


def test_keys_are_stored_hashed_and_managed(store_url):
    async def body(store: Store) -> None:
        secret, key = await store.create_key("ci", limit_nanos=5_000, limit_reset="daily", requests_per_minute=3)
        assert secret.startswith(KEY_PREFIX) and key.hash == hash_key(secret) and secret not in key.hash
        assert key.label.startswith(secret[:12]) and key.label.endswith(secret[-3:]) and secret not in key.label
        assert await store.has_keys()
        assert (await store.key_by_secret(secret)).name == "ci"
        assert await store.key_by_secret(secret + "x") is None
        other, _ = await store.create_key("admin", management=True)
        assert sorted(k.name for k in await store.list_keys()) == ["admin", "ci"]
        disabled = await store.update_key(key.hash, disabled=True, name="ci-2", limit_nanos=7_000)
        assert (disabled.disabled, disabled.name, disabled.limit_nanos) == (True, "ci-2", 7_000)
        assert [k.name for k in await store.list_keys(include_disabled=False)] == ["admin"]
        with pytest.raises(ValueError):
            await store.update_key(key.hash, limit_reset="hourly")
        with pytest.raises(ValueError):
            await store.update_key(key.hash, hash="x")
        for too_big in ({"tokens_per_minute": 2**31}, {"requests_per_minute": 2**64}, {"limit_nanos": 10**19}):
            with pytest.raises(ValueError):  # past what the columns hold on either backend
                await store.update_key(key.hash, **too_big)
        assert await store.delete_key(key.hash)
        assert await store.key_by_secret(secret) is None and not await store.delete_key(key.hash)
        assert await store.update_key(key.hash, name="gone") is None
        assert (await store.key_by_secret(other)).is_management

    with_store(store_url, body, clock=FakeClock.at("2026-03-04T10:00:00"))


def test_parallel_reservations_on_two_replicas_never_pass_the_limit(store_url):
    """50 concurrent reservations, half through each of two Store objects (two servers on one
    database), against a limit that covers 10 of them: exactly 10 are granted."""

    async def body(a: Store, b: Store) -> None:
        _, key = await a.create_key("k", limit_nanos=10 * 1_000)
        granted = await asyncio.gather(*((a if i % 2 else b).reserve(key.hash, 1_000) for i in range(50)))
        assert sum(r is not None for r in granted) == 10
        assert (await a.get_key(key.hash)).reserved_nanos == 10_000
        # Settled at their real cost (less than reserved), the rest of the limit is free again.
        for i, reservation in enumerate(r for r in granted if r is not None):
            await (a if i % 2 else b).record(generation(key.hash, 600, n=i), reservation)
        settled = await b.get_key(key.hash)
        assert (settled.reserved_nanos, settled.usage_nanos, settled.period_usage_nanos) == (0, 6_000, 6_000)
        assert sum(g.cost_nanos for g in await a.generations_of(key.hash)) == settled.usage_nanos
        more = await asyncio.gather(*(a.reserve(key.hash, 1_000) for _ in range(10)))
        assert sum(r is not None for r in more) == 4

    with_store(store_url, body, replicas=2)


def test_release_gives_the_reservation_back_and_writes_no_row(store_url):
    async def body(store: Store) -> None:
        _, key = await store.create_key("k", limit_nanos=1_000)
        reservation = await store.reserve(key.hash, 1_000)
        assert reservation is not None and await store.reserve(key.hash, 1) is None
        await store.release(reservation)
        after = await store.get_key(key.hash)
        assert (after.reserved_nanos, after.usage_nanos) == (0, 0) and await store.generations_of(key.hash) == []
        assert await store.reserve(key.hash, 1_000) is not None

    with_store(store_url, body)


def test_rows_without_a_key_and_unlimited_keys(store_url):
    async def body(store: Store) -> None:
        await store.record(generation(None, 500))
        _, key = await store.create_key("free")
        reservation = await store.reserve(key.hash, 10**15)  # unlimited: any amount fits
        await store.record(generation(key.hash, 700), reservation)
        assert [g.cost_nanos for g in await store.generations_of(None)] == [500]
        assert (await store.get_key(key.hash)).usage_nanos == 700 == await store.usage_since(key.hash, 0)
        row = (await store.generations_of(key.hash))[0]
        assert await store.generation(row.id) == row and await store.generation("nope") is None

    with_store(store_url, body)


@pytest.mark.parametrize(
    ("reset", "start", "boundary"),
    [
        ("daily", "2026-03-04T23:59:00", "2026-03-05T00:00:00"),
        ("weekly", "2026-03-08T23:59:00", "2026-03-09T00:00:00"),  # Sunday -> Monday
        ("monthly", "2026-03-31T23:59:00", "2026-04-01T00:00:00"),
    ],
)
def test_limits_reset_at_their_boundary(store_url, reset, start, boundary):
    clock = FakeClock.at(start)
    end_of_period = FakeClock.at(boundary).now_ms

    async def body(store: Store) -> None:
        _, key = await store.create_key("k", limit_nanos=1_000, limit_reset=reset)
        await store.record(generation(key.hash, 1_000, clock()), await store.reserve(key.hash, 1_000))
        assert await store.reserve(key.hash, 1) is None
        clock.now_ms = end_of_period - 1
        assert await store.reserve(key.hash, 1) is None, "still the old period"
        clock.now_ms = end_of_period
        fresh = await store.get_key(key.hash)
        assert fresh.limit_remaining(clock()) == 1_000 and fresh.usage_nanos == 1_000
        reservation = await store.reserve(key.hash, 1_000)
        assert reservation is not None and await store.reserve(key.hash, 1) is None
        await store.record(generation(key.hash, 400, clock(), n=1), reservation)
        after = await store.get_key(key.hash)
        assert (after.period_usage_nanos, after.usage_nanos, after.limit_remaining(clock())) == (400, 1_400, 600)

    with_store(store_url, body, clock=clock)


def test_period_starts_are_midnight_utc_with_monday_weeks():
    at = FakeClock.at
    now = at("2026-03-04T15:30:00").now_ms  # a Wednesday
    assert period_start("daily", now) == at("2026-03-04T00:00:00").now_ms
    assert period_start("weekly", now) == at("2026-03-02T00:00:00").now_ms
    assert period_start("monthly", now) == at("2026-03-01T00:00:00").now_ms
    assert period_start(None, now) == 0
    with pytest.raises(ValueError):
        period_start("hourly", now)


def test_changing_limit_reset_counts_the_new_period_from_the_ledger(store_url):
    clock = FakeClock.at("2026-03-04T12:00:00")

    async def body(store: Store) -> None:
        _, key = await store.create_key("k", limit_nanos=10_000)
        await store.record(generation(key.hash, 3_000, FakeClock.at("2026-03-03T12:00:00").now_ms), None)
        await store.record(generation(key.hash, 2_000, clock(), n=1), None)
        daily = await store.update_key(key.hash, limit_reset="daily")
        assert (daily.period_usage_nanos, daily.usage_nanos, daily.limit_remaining(clock())) == (2_000, 5_000, 8_000)

    with_store(store_url, body, clock=clock)


def test_reservations_left_by_a_dead_server_are_swept_once_expired(store_url):
    clock = FakeClock.at("2026-03-04T12:00:00")

    async def body(dead: Store, alive: Store) -> None:
        _, key = await alive.create_key("k", limit_nanos=1_000)
        left_behind = await dead.reserve(key.hash, 1_000)
        assert left_behind is not None and await alive.reserve(key.hash, 1) is None
        assert await alive.sweep_reservations() == 0, "not before it expires"
        clock.advance(RESERVATION_HOLD_MS / 1000 + 1)
        assert await alive.sweep_reservations() == 1
        assert (await alive.get_key(key.hash)).reserved_nanos == 0
        # A request that outlived its reservation still records its cost, without giving back twice.
        await dead.record(generation(key.hash, 300), left_behind)
        after = await alive.get_key(key.hash)
        assert (after.reserved_nanos, after.usage_nanos) == (0, 300)

    with_store(store_url, body, clock=clock, replicas=2)


def test_a_generation_id_is_recorded_once(store_url):
    async def body(store: Store) -> None:
        row = generation(None, 1)
        await store.record(row)
        with pytest.raises(Exception):
            await store.record(dataclasses.replace(row, cost_nanos=2))
        assert (await store.generation(row.id)).cost_nanos == 1

    with_store(store_url, body)
