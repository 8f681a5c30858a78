"""Keys, limits and the ledger through a real server (SQLite store under --data-dir).

One server for the module, its store made by `imagemini keys create --management` before it
starts; every other key is made through POST /api/v1/keys. The server's clock is moved through
IMAGEMINI_CLOCK_OFFSET_FILE (store/clock.py) to cross minutes and midnights. The durability
test runs servers of its own and kills one with SIGKILL under load.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import openai
import pytest
from apitest import REPO, chat_body, check_stream_framing, sse_data

from imagemini.store.store import Store, database_url


def cli_key(data_dir: Path, *args: str) -> str:
    """`imagemini keys create ...` -> the new key (printed once, in JSON)."""
    out = subprocess.run(
        [sys.executable, "-m", "imagemini.cli", "keys", "create", "--data-dir", str(data_dir), *args],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout)["key"]


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("keys-store")


@pytest.fixture(scope="module")
def clock_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clock") / "offset"
    path.write_text("0")
    return path


@pytest.fixture(scope="module")
def admin(data_dir) -> str:
    return cli_key(data_dir, "--name", "admin", "--management")


@pytest.fixture(scope="module")
def server(start_server, tiny_checkpoint, data_dir, clock_file, admin):
    with start_server(tiny_checkpoint, "--data-dir", str(data_dir), env={"IMAGEMINI_CLOCK_OFFSET_FILE": str(clock_file)}) as s:
        yield s


@pytest.fixture(scope="module")
def model(server, http, admin) -> str:
    plain = make_key(server, admin, "reader")
    return http.get(f"{server.url}/v1/models", headers=bearer(plain)).json()["data"][0]["id"]


@pytest.fixture
def move_clock(clock_file):
    """`move_clock(seconds)` moves the server's clock forward; put back after the test."""
    offset = [0.0]

    def move(seconds: float) -> None:
        offset[0] += seconds
        clock_file.write_text(str(offset[0]))

    yield move
    clock_file.write_text("0")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_key(server, admin: str, name: str, **fields) -> str:
    response = httpx.post(f"{server.url}/api/v1/keys", json={"name": name, **fields}, headers=bearer(admin), timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["key"]


def key_hash(server, key: str) -> str:
    return httpx.get(f"{server.url}/api/v1/key", headers=bearer(key), timeout=30).json()["data"]["hash"]


def post_chat(server, key: str, body: dict) -> httpx.Response:
    # Not the validating client: OpenRouter's 402 carries `code: 402`, a number where OpenAI's schema has a string.
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=bearer(key), timeout=120)


def test_the_key_api_speaks_openrouter(server, http, admin):
    created = httpx.post(
        f"{server.url}/api/v1/keys", headers=bearer(admin), timeout=30,
        json={"name": "shop", "limit": 1.5, "limit_reset": "weekly", "expires_at": "2099-01-01T00:00:00Z"},
    )
    assert created.status_code == 201
    secret, data = created.json()["key"], created.json()["data"]
    assert secret.startswith("sk-im-v1-") and secret not in json.dumps(data)
    assert (data["name"], data["limit"], data["limit_reset"], data["limit_remaining"]) == ("shop", 1.5, "weekly", 1.5)
    assert data["expires_at"].startswith("2099-01-01T00:00:00")
    mine = http.get(f"{server.url}/api/v1/key", headers=bearer(secret)).json()["data"]
    for field in ("label", "limit", "limit_reset", "limit_remaining", "usage", "usage_daily", "usage_weekly",
                  "usage_monthly", "expires_at", "is_free_tier", "include_byok_in_limit"):
        assert field in mine
    assert mine["label"] == data["label"] and mine["usage"] == 0 and mine["is_management_key"] is False
    listed = http.get(f"{server.url}/api/v1/keys", headers=bearer(admin)).json()["data"]
    assert data["hash"] in [k["hash"] for k in listed]
    patched = httpx.patch(f"{server.url}/api/v1/keys/{data['hash']}", headers=bearer(admin), timeout=30,
                          json={"name": "shop-2", "limit": 2, "limit_reset": None})
    assert patched.status_code == 200
    assert (patched.json()["data"]["name"], patched.json()["data"]["limit"], patched.json()["data"]["limit_reset"]) == ("shop-2", 2, None)
    one = http.get(f"{server.url}/api/v1/keys/{data['hash']}", headers=bearer(admin)).json()["data"]
    assert one["name"] == "shop-2"
    credits = http.get(f"{server.url}/api/v1/credits", headers=bearer(secret)).json()["data"]
    assert credits == {"total_credits": 2, "total_usage": 0}
    bad = httpx.post(f"{server.url}/api/v1/keys", headers=bearer(admin), json={"name": "x", "limit_reset": "hourly"}, timeout=30)
    assert bad.status_code == 400
    for too_big in ({"tokens_per_minute": 10**30}, {"requests_per_minute": 2**31}, {"limit": 1e300}):
        bad = httpx.post(f"{server.url}/api/v1/keys", headers=bearer(admin), json={"name": "x", **too_big}, timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == next(iter(too_big)), bad.text


def test_wrong_disabled_expired_and_deleted_keys_get_401(server, sdk, admin, model, move_clock):
    disabled = make_key(server, admin, "to-disable")
    expiring = make_key(server, admin, "to-expire",
                        expires_at=(datetime.now(timezone.utc) + timedelta(hours=1)).isoformat())
    deleted = make_key(server, admin, "to-delete")
    for key in (disabled, expiring, deleted):  # each works first
        sdk(server, api_key=key).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert httpx.patch(f"{server.url}/api/v1/keys/{key_hash(server, disabled)}", json={"disabled": True},
                       headers=bearer(admin), timeout=30).status_code == 200
    assert httpx.delete(f"{server.url}/api/v1/keys/{key_hash(server, deleted)}", headers=bearer(admin), timeout=30).json() == {"deleted": True}
    move_clock(2 * 3600)
    for key in ("sk-im-v1-wrong", disabled, expiring, deleted):
        with pytest.raises(openai.AuthenticationError):
            sdk(server, api_key=key).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert httpx.get(f"{server.url}/api/v1/key", headers=bearer(key), timeout=30).status_code == 401
    assert httpx.get(f"{server.url}/v1/models", timeout=30).status_code == 401  # no key at all
    assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200  # health needs none


def test_management_keys_manage_and_plain_keys_complete(server, sdk, admin, model):
    plain = make_key(server, admin, "plain")
    with pytest.raises(openai.PermissionDeniedError):
        sdk(server, api_key=admin).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert httpx.get(f"{server.url}/api/v1/keys", headers=bearer(plain), timeout=30).status_code == 403
    assert httpx.post(f"{server.url}/api/v1/keys", json={"name": "x"}, headers=bearer(plain), timeout=30).status_code == 403


def _check_generation(server, key: str, generation_id: str, usage: dict, streamed: bool) -> dict:
    row = httpx.get(f"{server.url}/api/v1/generation", params={"id": generation_id}, headers=bearer(key), timeout=30)
    assert row.status_code == 200, row.text
    data = row.json()["data"]
    assert data["id"] == generation_id and data["streamed"] is streamed and data["cancelled"] is False
    assert data["tokens_prompt"] == usage["prompt_tokens"] and data["tokens_completion"] == usage["completion_tokens"]
    assert data["native_tokens_reasoning"] == usage["completion_tokens_details"]["reasoning_tokens"]
    assert data["native_tokens_completion_images"] == usage["completion_tokens_details"]["image_tokens"]
    assert data["native_tokens_cached"] == usage["prompt_tokens_details"]["cached_tokens"]
    assert data["total_cost"] == usage["cost"] == data["usage"]
    assert data["finish_reason"] in ("stop", "length") and data["generation_time"] >= 0
    return data


def test_generation_agrees_with_usage_and_is_private_to_its_key(server, sdk, http, admin, model):
    key, other = make_key(server, admin, "ledger"), make_key(server, admin, "other")
    answer = sdk(server, api_key=key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=6, seed=1
    )
    _check_generation(server, key, answer.id, answer.usage.model_dump(), streamed=False)
    events = sse_data(http.post(
        f"{server.url}/v1/chat/completions", headers=bearer(key),
        json=chat_body(model, "hello", max_tokens=5, stream=True, n=2, seed=2),
    ).text.splitlines())
    usage = check_stream_framing(events)
    _check_generation(server, key, events[0]["id"], usage, streamed=True)
    assert httpx.get(f"{server.url}/api/v1/generation", params={"id": answer.id}, headers=bearer(other), timeout=30).status_code == 404
    assert httpx.get(f"{server.url}/api/v1/generation", params={"id": "nope"}, headers=bearer(key), timeout=30).status_code == 404
    spent = http.get(f"{server.url}/api/v1/key", headers=bearer(key)).json()["data"]
    assert spent["usage"] == pytest.approx(answer.usage.model_dump()["cost"] + usage["cost"], rel=1e-9)
    assert spent["usage_daily"] == spent["usage_weekly"] == spent["usage_monthly"] == spent["usage"]


def test_the_ledger_counts_prompt_tokens_read_from_the_prefix_cache(server, sdk, admin, model):
    key = make_key(server, admin, "cached")
    messages = [{"role": "user", "content": "Describe the large red circle at the top left. " * 30}]
    answers = [sdk(server, api_key=key).chat.completions.create(model=model, messages=messages, max_tokens=4, seed=1)
               for _ in range(2)]
    assert answers[1].usage.prompt_tokens_details.cached_tokens > 0
    for answer in answers:
        _check_generation(server, key, answer.id, answer.usage.model_dump(), streamed=False)


def _worst_case(server, admin: str, model: str, body: dict) -> tuple[float, int]:
    """(cost, prompt tokens) of one request of `body` that runs to max_tokens: its reservation."""
    probe = make_key(server, admin, "probe")
    usage = post_chat(server, probe, body).json()["usage"]
    assert usage["completion_tokens"] == body["max_tokens"]
    return usage["cost"], usage["prompt_tokens"]


def test_50_concurrent_requests_never_spend_past_the_limit(server, admin, model, tok):
    body = chat_body(model, "count", max_tokens=4, temperature=0, logit_bias={str(tok.special.eos): -100})
    cost, _ = _worst_case(server, admin, model, body)
    key = make_key(server, admin, "ten", limit=round(10 * cost, 9))

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=300) as client:
            return await asyncio.gather(*(
                client.post(f"{server.url}/v1/chat/completions", json=body, headers=bearer(key)) for _ in range(50)
            ))

    responses = asyncio.run(fire())
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 402} and statuses.count(200) == 10
    refused = next(r.json()["error"] for r in responses if r.status_code == 402)
    assert refused["code"] == 402 and refused["metadata"]["reason"] == "key_limit"
    mine = httpx.get(f"{server.url}/api/v1/key", headers=bearer(key), timeout=30).json()["data"]
    spent = sum(r.json()["usage"]["cost"] for r in responses if r.status_code == 200)
    assert mine["usage"] == pytest.approx(spent, rel=1e-9) and mine["usage"] <= mine["limit"] + 1e-12
    assert mine["limit_reserved"] == 0


def test_rate_limits_answer_429_then_recover(server, admin, model, move_clock):
    move_clock(60 - time.time() % 60 + 1)  # the start of a minute: the test does not straddle two
    key = make_key(server, admin, "rpm", requests_per_minute=2)
    body = chat_body(model, "hi", max_tokens=2)
    assert [post_chat(server, key, body).status_code for _ in range(2)] == [200, 200]
    limited = post_chat(server, key, body)
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"
    headers = limited.headers
    assert headers["X-RateLimit-Limit"] == "2" and headers["X-RateLimit-Remaining"] == "0"
    assert int(headers["X-RateLimit-Reset"]) > 0 and 1 <= int(headers["Retry-After"]) <= 60
    move_clock(60)
    assert post_chat(server, key, body).status_code == 200
    tokens = make_key(server, admin, "tpm", tokens_per_minute=1)
    assert post_chat(server, tokens, body).status_code == 200
    assert post_chat(server, tokens, body).json()["error"]["type"] == "tokens"


def test_a_daily_limit_resets_at_midnight_utc(server, admin, model, tok, move_clock):
    body = chat_body(model, "count", max_tokens=3, temperature=0, logit_bias={str(tok.special.eos): -100})
    cost, _ = _worst_case(server, admin, model, body)
    key = make_key(server, admin, "daily", limit=round(cost, 9), limit_reset="daily")
    assert post_chat(server, key, body).status_code == 200
    assert post_chat(server, key, body).status_code == 402
    now = datetime.now(timezone.utc)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    move_clock((midnight - now).total_seconds() + 1)
    assert post_chat(server, key, body).status_code == 200
    mine = httpx.get(f"{server.url}/api/v1/key", headers=bearer(key), timeout=30).json()["data"]
    assert mine["usage"] == pytest.approx(2 * cost) and mine["usage_daily"] == pytest.approx(cost)


def test_a_public_host_without_keys_is_refused(tiny_checkpoint, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "imagemini.cli", "serve", "--model", str(tiny_checkpoint), "--host", "0.0.0.0",
         "--data-dir", str(tmp_path / "empty")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "IMAGEMINI_DATA_DIR": str(tmp_path / "none"), "IMAGEMINI_DATABASE_URL": ""},
    )
    assert done.returncode != 0 and "refusing to serve on 0.0.0.0 without API keys" in done.stderr
    assert "--no-auth" in done.stderr


# --- durability -------------------------------------------------------------------------------------
def _load(url: str, key: str, model: str, received: list[str], stop: threading.Event) -> None:
    """Requests one after another, alternately streamed; the id of every answer received whole."""
    with httpx.Client(timeout=60) as client:
        for i in range(10_000):
            if stop.is_set():
                return
            body = chat_body(model, f"load {i}", max_tokens=8, stream=bool(i % 2))
            try:
                response = client.post(f"{url}/v1/chat/completions", json=body, headers=bearer(key))
                if response.status_code != 200:
                    continue
                if body["stream"]:
                    events = sse_data(response.text.splitlines())
                    if events and events[-1] == "[DONE]":
                        received.append(events[0]["id"])
                else:
                    received.append(response.json()["id"])
            except httpx.HTTPError:
                return  # the server is gone


def test_every_answer_received_survives_sigkill(start_server, tiny_checkpoint, tmp_path):
    data_dir = tmp_path / "store"
    admin = cli_key(data_dir, "--name", "admin", "--management")
    received: list[str] = []
    with start_server(tiny_checkpoint, "--data-dir", str(data_dir)) as first:
        keys = [make_key(first, admin, f"load-{i}", limit=100) for i in range(3)]
        model = httpx.get(f"{first.url}/v1/models", headers=bearer(keys[0]), timeout=30).json()["data"][0]["id"]
        stop = threading.Event()
        threads = [threading.Thread(target=_load, args=(first.url, k, model, received, stop)) for k in keys]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 240  # a wait for an event, generous for a loaded machine
        while len(received) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        first.process.send_signal(signal.SIGKILL)  # mid-way: requests are in flight on every thread
        first.process.wait()
        stop.set()
        for t in threads:
            t.join()
    assert len(received) >= 12
    with start_server(tiny_checkpoint, "--data-dir", str(data_dir)) as second:
        by_key = {}
        for key in keys:
            by_key[key_hash(second, key)] = key
        found = 0
        for generation_id in received:
            statuses = [
                httpx.get(f"{second.url}/api/v1/generation", params={"id": generation_id}, headers=bearer(k), timeout=30).status_code
                for k in keys
            ]
            assert statuses.count(200) == 1, f"{generation_id}: no ledger row for an answer the client received"
            found += 1
        assert found == len(received)

    async def usage_matches_rows() -> None:
        store = Store(database_url(data_dir=data_dir))
        try:
            for digest in by_key:
                key = await store.get_key(digest)
                rows = await store.generations_of(digest)
                assert key.usage_nanos == sum(r.cost_nanos for r in rows)
        finally:
            await store.close()

    asyncio.run(usage_matches_rows())
