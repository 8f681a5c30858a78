"""/openapi.json is the whole contract: every route, body and status is documented, and a
fuzzer (schemathesis) driving the real server from that document finds no server error, no
undocumented status and no response off its schema; errors are OpenAI-shaped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import schemathesis
from apitest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, checks

from imagemini.api.openapi import OPERATIONS

# Fuzzing is bounded: a few examples per route, in both modes (valid and invalid bodies).
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,  # an invalid request is a 4xx
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-store")


@pytest.fixture(scope="module")
def admin(data_dir) -> str:
    """A management key in the server's store: the key routes are then reached, not refused."""
    out = subprocess.run(
        [sys.executable, "-m", "imagemini.cli", "keys", "create", "--data-dir", str(data_dir), "--name", "admin",
         "--management"], cwd=REPO, capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout)["key"]


@pytest.fixture(scope="module")
def server(start_server, tiny_checkpoint, data_dir, admin):
    # Short default answers keep each fuzzed completion quick; a fuzzed max_tokens still applies.
    with start_server(tiny_checkpoint, "--data-dir", str(data_dir), env={"IMAGEMINI_DEFAULT_MAX_TOKENS": "8"}) as s:
        yield s


@pytest.fixture(scope="module")
def user_key(server, admin) -> str:
    made = httpx.post(f"{server.url}/api/v1/keys", json={"name": "fuzz"}, headers=bearer(admin), timeout=60)
    assert made.status_code == 201, made.text
    return made.json()["key"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def document(server, http) -> dict:
    return http.get(f"{server.url}/openapi.json").json()


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def test_every_route_is_documented_with_its_statuses(document):
    documented = {(m, p) for p, methods in document["paths"].items() for m in methods}
    aliases = {(m, "/api" + p) for m, p in OPERATIONS if p.startswith("/v1/")}
    assert documented == set(OPERATIONS) | aliases
    for method, path in documented:
        operation = document["paths"][path][method]
        assert "422" not in operation["responses"], (method, path)
        errors = [s for s in operation["responses"] if int(s) >= 400 and path != "/health"]
        for status in errors:
            schema = operation["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
    chat = document["paths"]["/api/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")
    request = document["components"]["schemas"]["ChatCompletionRequest"]
    assert {"model", "messages"} <= set(request["required"]) and "seed" in request["properties"]
    assert "schema" in document["components"]["schemas"]["JsonSchemaFormat"]["properties"]  # the alias, not schema_


ROUTES = sorted(set(OPERATIONS) | {(m, "/api" + p) for m, p in OPERATIONS if p.startswith("/v1/")})
# Valid requests on every route; invalid ones where there is a body to get wrong.
CASES = [(m, p, GenerationMode.POSITIVE) for m, p in ROUTES] + [
    (m, p, GenerationMode.NEGATIVE) for m, p in ROUTES if (OPERATIONS.get((m, p)) or OPERATIONS[(m, p.removeprefix("/api"))]).body
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{mode.value} {m} {p}" for m, p, mode in CASES])
def test_fuzzed_requests_get_documented_answers(api_schema, document, admin, user_key, method, path, mode):
    model_id = document["components"]["schemas"]["ChatCompletionRequest"]["properties"]["model"]["examples"][0]
    operation = api_schema[path][method.upper()]
    statuses: list[int] = []

    def served_model(case):
        # Valid bodies name the served model and give each message a content (which the schema
        # cannot require by role), so that they get past those checks to the engine.
        if mode is GenerationMode.POSITIVE and path.endswith("/chat/completions") and isinstance(case.body, dict):
            case.body["model"] = model_id
            for message in case.body["messages"]:
                message.setdefault("content", None)
                message["content"] = message["content"] or "Draw a red circle."
        return case

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode).map(served_model))
    def fuzz(case) -> None:
        response = case.call(timeout=120, headers=bearer(admin if "/keys" in path else user_key))
        statuses.append(response.status_code)
        case.validate_response(response, checks=CHECKS)
        if response.status_code >= 400:
            error = response.json()["error"]
            assert {"message", "type", "param", "code"} <= set(error) and isinstance(error["message"], str)

    fuzz()
    if mode is GenerationMode.POSITIVE and path.endswith("/chat/completions"):
        assert 200 in statuses, statuses  # some fuzzed bodies reached the engine and were answered


# --- bodies beyond the schema: raw JSON text no schema describes --------------------------------------
@st.composite
def odd_bodies(draw) -> bytes:
    """A chat body as raw bytes with one oddity: deep nesting, huge or non-finite numbers, odd
    Unicode (lone surrogates, NUL, bidi controls, invalid UTF-8), or duplicate keys."""
    model = draw(st.sampled_from(['"' + MODEL_PLACEHOLDER + '"', '"nope"']))
    content = draw(st.one_of(
        st.text(max_size=40).map(json.dumps),
        st.sampled_from(['"\\ud800"', '"a\\udfffb"', '"\\u0000"', '"\\u202e\\u2066x"', '"\\ufeff"', '"\U0010ffff"']),
    ))
    number = draw(st.sampled_from([
        "1e400", "-1e400", "1e-400", "NaN", "Infinity", "-Infinity", "9" * 5000, "-0", "1.0", "4.5", "2e0",
        str(2**64), str(-(2**63) - 1),
    ]))
    field = draw(st.sampled_from(["max_tokens", "temperature", "top_p", "seed", "n", "top_logprobs", "logit_bias"]))
    depth = draw(st.integers(1, 3000))
    nested = "[" * depth + "]" * depth
    oddity = draw(st.sampled_from(["number", "nested", "duplicate", "content"]))
    fields = [f'"model": {model}', f'"messages": [{{"role": "user", "content": {content}}}]', '"max_tokens": 4']
    if oddity == "number":
        fields.append(f'"{field}": {number}' if field != "logit_bias" else f'"logit_bias": {{"5": {number}}}')
    elif oddity == "nested":
        fields.append(f'"{draw(st.sampled_from(["metadata", "unknown", "messages"]))}": {nested}')
    elif oddity == "duplicate":
        fields += ['"model": "other"', f'"model": {model}', '"max_tokens": 3']
    body = ("{" + ", ".join(fields) + "}").encode("utf-8", "surrogatepass")
    if draw(st.booleans()) and oddity == "content":
        body = body.replace(b'"role"', b'"r\xffole"')  # invalid UTF-8
    return body


MODEL_PLACEHOLDER = "{model}"


def test_bodies_beyond_the_schema_are_answered_or_refused_never_a_server_error(server, document, user_key):
    model_id = document["components"]["schemas"]["ChatCompletionRequest"]["properties"]["model"]["examples"][0]
    seen: set[int] = set()

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(body=odd_bodies())
    def send(body: bytes) -> None:
        body = body.replace(MODEL_PLACEHOLDER.encode(), model_id.encode())
        headers = {"content-type": "application/json"} | bearer(user_key)
        response = httpx.post(f"{server.url}/v1/chat/completions", content=body, headers=headers, timeout=120)
        seen.add(response.status_code)
        assert response.status_code in (200, 400, 404), (response.status_code, response.text[:300])
        if response.status_code != 200:
            error = response.json()["error"]
            assert set(error) >= {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"

    send()
    assert {200, 400} <= seen, seen  # both outcomes were exercised
