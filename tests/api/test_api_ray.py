"""`imagemini serve --replicas 2`: the server as two Ray Serve replicas on a local Ray cluster.

One cluster for the module (`--replicas 2 --max-pending 1` on the tiny checkpoint with a 32K
context, `long_checkpoint`), its keys and ledger in one store that both replicas share:
PostgreSQL when IMAGEMINI_TEST_POSTGRES_URL is set (.ci/run starts one with .ci/postgres), else
a SQLite file, which replicas on one machine share safely. Every response names its replica in
X-Imagemini-Replica, so the tests can show that both answered; the server logs JSON lines
(`--log-format json`), which the replicas follow. The last cluster test kills one replica's
engine process under load and waits for Ray to replace the replica. Without Ray installed the
cluster tests are skipped; the command-line checks run either way.
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
from pathlib import Path

import httpx
import pytest
from apitest import REPO, sse_data
from metricstest import samples_of, value

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
    started = time.monotonic()
    with start_server(long_checkpoint, "--replicas", "2", "--max-pending", "1", "--log-format", "json",
                      *store_args, env=env) as s:
        _wait_for_log(s, "ready: 2 replicas")  # /health answers once ONE replica is up
        s.start_s = time.monotonic() - started  # Ray and both replicas: a yardstick for a replica's restart
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


def _replicas_answering(server, path: str, headers: dict[str, str], want: int = 2, tries: int = 40) -> dict[str, httpx.Response]:
    """GET `path` until `want` replicas have answered (Ray spreads requests at random): replica -> response."""
    answers: dict[str, httpx.Response] = {}
    for _ in range(tries):
        response = httpx.get(server.url + path, headers=headers, timeout=30)
        answers[response.headers[REPLICA]] = response
        if len(answers) == want:
            break
    return answers


def test_metrics_and_access_log_lines_name_the_replica_that_answered(server, user, admin, model):
    answers = _replicas_answering(server, "/metrics", bearer(admin))
    assert len(answers) == 2
    for replica, response in answers.items():
        assert response.status_code == 200
        samples = samples_of(response.text, replica)  # every series labelled with the replica that answered
        assert value(samples, "imagemini:http_responses_total", handler="/metrics", code="200") >= 0
    chat = httpx.post(f"{server.url}/v1/chat/completions", headers=bearer(user) | {"X-Request-Id": "ray-log-line"},
                      json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}, timeout=30)
    assert chat.status_code == 200
    deadline = time.monotonic() + 30  # the replica's line reaches this log through Ray's log monitor
    while not (lines := _access_lines(server, "ray-log-line")) and time.monotonic() < deadline:
        time.sleep(0.2)
    (line,) = lines  # a plain JSON line: no Ray prefix, not folded with other replicas' lines
    assert line["replica"] == chat.headers[REPLICA] and line["completion_id"] == chat.json()["id"]


def _access_lines(server, request_id: str) -> list[dict]:
    records = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    return [r for r in records if r.get("logger") == "imagemini.access" and r.get("request_id") == request_id]


def _engine_pids(root: int) -> list[int]:
    """The engine processes under the server's process tree (multiprocessing's spawned children
    of the replicas), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1]) if entry.name.isdigit() else None
        except OSError:
            continue
        if ppid is not None:
            children.setdefault(ppid, []).append(int(entry.name))
    engines, todo = [], [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                engines.append(pid)
        except OSError:
            continue
    return engines


class Load:
    """`workers` threads sending `body` until stopped; each answer kept as (status, JSON body),
    or the exception when none came (a hang ends at the client's timeout)."""

    def __init__(self, url: str, body: dict, headers: dict[str, str], workers: int) -> None:
        self.url, self.body, self.headers = url, body, headers
        self.answers: list[tuple[int, dict] | Exception] = []
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True) for _ in range(workers)]
        for thread in self.threads:
            thread.start()

    def _send(self) -> None:
        with httpx.Client(timeout=120) as client:
            while not self.stopped.is_set():
                try:
                    response = client.post(self.url, json=self.body, headers=self.headers)
                    self.answers.append((response.status_code, response.json()))
                    if response.status_code == 503:
                        time.sleep(0.1)
                except Exception as exc:  # noqa: BLE001 - kept for the test to report
                    self.answers.append(exc)

    def statuses(self) -> list[int | str]:
        return [a[0] if isinstance(a, tuple) else type(a).__name__ for a in self.answers]

    def stop(self) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join()


def test_a_replica_whose_engine_dies_mid_load_loses_no_ledger_row(server, admin, long_request, store_args):
    created = httpx.post(f"{server.url}/api/v1/keys", json={"name": "load"}, headers=bearer(admin), timeout=30)
    key, key_hash = created.json()["key"], created.json()["data"]["hash"]
    engines = _engine_pids(server.process.pid)
    assert len(engines) == 2, engines
    before = set(_replicas_answering(server, "/health", {}))
    load = Load(f"{server.url}/v1/chat/completions", {**long_request, "max_tokens": 1000}, bearer(key), workers=4)
    try:
        busy: set[str] = set()  # both replicas running a request (each admits one)
        loaded = time.monotonic()
        while len(busy) < 2 and time.monotonic() - loaded < server.start_s:
            health = httpx.get(f"{server.url}/health", timeout=30)
            if health.json()["pending"] == 1:
                busy.add(health.headers[REPLICA])
            time.sleep(0.05)
        assert len(busy) == 2, load.statuses()
        os.kill(engines[0], signal.SIGKILL)
        killed = time.monotonic()
        while 500 not in load.statuses() and time.monotonic() - killed < server.start_s:
            time.sleep(0.1)
        time.sleep(1.0)  # the dead replica refuses what Ray still routes to it
    finally:
        load.stop()
    deadline = time.monotonic() + 2 * server.start_s + 30  # a new replica starts in less than the whole cluster
    serving: dict[str, httpx.Response] = {}
    while not (len(serving) == 2 and set(serving) != before) and time.monotonic() < deadline:
        serving = {r: h for r, h in _replicas_answering(server, "/health", {}, tries=10).items() if h.status_code == 200}
        time.sleep(0.5)
    assert len(serving) == 2 and set(serving) != before, f"not replaced: {before} -> {set(serving)}"

    statuses = load.statuses()
    assert 500 in statuses and set(statuses) <= {200, 500, 503}, statuses  # the kill ended a running request
    for status, body in (a for a in load.answers if a[0] != 200):
        assert set(body["error"]) >= {"message", "type", "code"}, body  # OpenAI's error shape
    answered = [body["id"] for status, body in load.answers if status == 200]
    assert answered, "some requests were answered around the kill"
    url = database_url(url=store_args[1]) if store_args[0] == "--database-url" else database_url(data_dir=Path(store_args[1]))

    async def ledger() -> list:
        store = Store(url)
        try:
            return await store.generations_of(key_hash)
        finally:
            await store.close()

    rows = asyncio.run(ledger())  # no waiting: a row is committed before its response is sent
    completed = [row.id for row in rows if row.status == "completed"]
    assert sorted(completed) == sorted(answered) and len({row.id for row in rows}) == len(rows)
    assert any(row.status == "error" for row in rows), "the request the kill ended is in the ledger as an error"


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
