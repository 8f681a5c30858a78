"""`imagemini serve --replicas 2`: the server as two Ray Serve replicas on a local Ray cluster.

One cluster for the module (`--replicas 2 --max-pending 1` on the tiny checkpoint with a 32K
context, `long_checkpoint`), its keys and ledger in one store that both replicas share:
PostgreSQL when IMAGEMINI_TEST_POSTGRES_URL is set (.ci/run starts one with .ci/postgres), else
a SQLite file, which replicas on one machine share safely. Every response names its replica in
X-Imagemini-Replica, so the tests can show that both answered. Without Ray installed the cluster
tests are skipped; the command-line checks run either way.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from apitest import REPO, sse_data

from imagemini.cli import main
from imagemini.models.tokenizer import Tokenizer
from imagemini.store.store import Store, database_url

POSTGRES_ENV = "IMAGEMINI_TEST_POSTGRES_URL"
REPLICA = "x-imagemini-replica"
LONG = 20_000  # tokens: tens of seconds of decoding; an abort is visible well before


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def store_args(tmp_path_factory, postgres_database):
    """The shared store as `imagemini` options: a new PostgreSQL database, or a SQLite directory."""
    if not os.environ.get(POSTGRES_ENV):
        yield ["--data-dir", str(tmp_path_factory.mktemp("ray-store"))]
        return
    with postgres_database("imagemini_ray") as url:
        yield ["--database-url", url]


@pytest.fixture(scope="module")
def admin(store_args) -> str:
    """A management key, made with `imagemini keys create` before the server starts."""
    out = subprocess.run([sys.executable, "-m", "imagemini.cli", "keys", "create", "--name", "admin", "--management", *store_args],
                         cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["key"]


@pytest.fixture(scope="module")
def ray_serve():
    """Skips, before any other fixture of the cluster is made, where Ray Serve is not installed."""
    return pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'imagemini[ray]')")


@pytest.fixture(scope="module")
def server(ray_serve, start_server, long_checkpoint, store_args, admin):
    env = {
        # Ray's workers import imagemini from this checkout whatever their working directory.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    with start_server(long_checkpoint, "--replicas", "2", "--max-pending", "1", *store_args, env=env) as s:
        _wait_for_log(s, "ready: 2 replicas")  # /health answers once ONE replica is up
        yield s


def _wait_for_log(server, text: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log():
        assert server.process.poll() is None and time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.2)


@pytest.fixture(scope="module")
def user(server, admin) -> str:
    created = httpx.post(f"{server.url}/api/v1/keys", json={"name": "user"}, headers=bearer(admin), timeout=30)
    assert created.status_code == 201, created.text
    return created.json()["key"]


@pytest.fixture(scope="module")
def model(server, user) -> str:
    return httpx.get(f"{server.url}/v1/models", headers=bearer(user), timeout=30).json()["data"][0]["id"]


@pytest.fixture(scope="module")
def long_request(long_checkpoint, model) -> dict:
    eos = Tokenizer.from_dir(long_checkpoint).special.eos
    return {"model": model, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": LONG, "logit_bias": {str(eos): -100}}


def test_chat_and_stream_through_the_sdk(server, sdk, user, model):
    client = sdk(server, api_key=user)
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert answer.usage.completion_tokens == 4 and answer.system_fingerprint
    chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=4, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4


def test_a_seeded_request_gives_the_same_bytes_on_every_replica(server, sdk, user, model):
    client = sdk(server, api_key=user)
    request = dict(model=model, messages=[{"role": "user", "content": "Describe the scene."}],
                   max_tokens=12, temperature=1.0, seed=1234)
    answers = []
    for _ in range(12):
        raw = client.chat.completions.with_raw_response.create(**request)
        answer = raw.parse()
        answers.append((raw.headers[REPLICA], answer.choices[0].message.content, answer.system_fingerprint))
    assert len({replica for replica, _, _ in answers}) == 2, answers  # both replicas answered
    assert len({(content, fingerprint) for _, content, fingerprint in answers}) == 1, answers
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**request, stream=True) if c.choices)
    assert streamed == answers[0][1]


def test_a_key_made_on_one_replica_works_on_both_and_the_ledger_has_each_request_once(server, sdk, admin, model, store_args):
    created = httpx.post(f"{server.url}/api/v1/keys", json={"name": "shared"}, headers=bearer(admin), timeout=30)
    assert created.status_code == 201
    key, key_hash = created.json()["key"], created.json()["data"]["hash"]
    client = sdk(server, api_key=key)
    ids, replicas = [], set()
    for _ in range(8):
        raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        ids.append(raw.parse().id)
        replicas.add(raw.headers[REPLICA])
    assert len(replicas) == 2, "the key was accepted by both replicas"
    url = database_url(url=store_args[1]) if store_args[0] == "--database-url" else database_url(data_dir=Path(store_args[1]))

    async def ledger() -> tuple[list, int]:
        store = Store(url)
        try:
            deadline = time.monotonic() + 30  # each row is written as its answer ends, off the request path
            while len(rows := await store.generations_of(key_hash)) < len(ids) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            return rows, (await store.get_key(key_hash)).usage_nanos
        finally:
            await store.close()

    rows, usage = asyncio.run(ledger())
    assert sorted(r.id for r in rows) == sorted(ids)
    assert usage == sum(r.cost_nanos for r in rows)


def test_a_full_replica_answers_503_and_a_disconnect_frees_it(server, http, user, long_request):
    """Each replica admits one request (--max-pending 1): with long streams held open on them, a
    request is refused with the replica's own 503 + Retry-After; closing the streams aborts them."""
    url, auth = f"{server.url}/v1/chat/completions", bearer(user)
    started = time.monotonic()
    out = http.post(url, json={**long_request, "max_tokens": 500}, headers=auth)
    assert out.json()["usage"]["completion_tokens"] == 500
    full_run_s = (time.monotonic() - started) * LONG / 500  # what a whole long completion would take
    with httpx.Client(timeout=60) as streams:
        held, refused = [], None
        for _ in range(3):
            response = streams.send(streams.build_request("POST", url, json={**long_request, "stream": True}, headers=auth), stream=True)
            if response.status_code == 503:
                refused = response
                break
            assert response.status_code == 200
            lines = response.iter_lines()
            assert sse_data(next(lines) for _ in range(4))  # admitted and streaming
            held.append((response, lines))
        assert refused is not None, "three long streams were admitted on two replicas of one slot each"
        refused.read()
        assert int(refused.headers["retry-after"]) >= 1 and refused.json()["error"]["code"] == "overloaded"
        for response, _ in held:
            response.close()
    closed = time.monotonic()
    idle = set()
    while len(idle) < 2 and time.monotonic() - closed < full_run_s / 4:
        health = httpx.get(f"{server.url}/health", timeout=10)
        if health.json()["pending"] == 0 and health.json()["kv_cache"]["used_tokens"] == 0:
            idle.add(health.headers[REPLICA])
        time.sleep(0.05)
    assert len(idle) == 2, "both replicas freed by the abort, not by finishing"


def test_the_serve_config_file_builds_the_application(ray_serve):
    import yaml

    from imagemini.api import ray_app

    config = yaml.safe_load((REPO / "docs" / "ray" / "serve.yaml").read_text())
    (app,) = config["applications"]
    module, _, builder = app["import_path"].partition(":")
    assert module == ray_app.__name__ and getattr(ray_app, builder) is ray_app.build
    args = ray_app.ImageminiArgs.model_validate(app["args"])
    assert isinstance(ray_app.build(args), ray_serve.Application)


def test_replicas_without_ray_name_the_extra(monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGEMINI_DATA_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    with pytest.raises(SystemExit) as stopped:
        main(["serve", "--replicas", "2"])
    assert "pip install 'imagemini[ray]'" in str(stopped.value.code)


@pytest.mark.parametrize("argv, message", [
    (["--max-replicas", "4"], "--max-replicas need --replicas N"),
    (["--replicas", "0"], "--replicas must be >= 1"),
    (["--replicas", "2", "--ray-address", "10.0.0.1:6379", "--data-dir", "{tmp}"], "--database-url postgresql://"),
])
def test_replica_options_that_cannot_work_are_refused(argv, message, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("IMAGEMINI_DATA_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as stopped:
        main(["serve", *[a.replace("{tmp}", str(tmp_path)) for a in argv]])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_serve_without_replicas_never_imports_ray():
    code = (
        "import sys\n"
        "from imagemini.cli import main\n"
        "import imagemini.api.server\n"
        "from imagemini.api.replicas import check_replica_arguments\n"
        "import argparse\n"
        "check_replica_arguments(argparse.Namespace(replicas=None, min_replicas=None, max_replicas=None,"
        " target_ongoing_requests=None, ray_address=None), None)\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
