"""Malformed requests: each gets its intended status, `param` and code, in OpenAI's error shape.

One server for the module (the tiny checkpoint as it is, so default model id and prices; body
limit lowered to 64 KiB with IMAGEMINI_MAX_BODY_BYTES). Raw requests go through httpx; the
`openai` SDK is checked to raise the matching exception class. Every error body is validated
against OpenAI's `ErrorResponse` schema by the clients' transport.
"""

from __future__ import annotations

import shutil

import openai
import pytest

MODEL = "imagemini/tiny-plain"  # the default id: imagemini/<checkpoint dir name>
BODY_LIMIT = 64 * 1024
JSON = {"content-type": "application/json"}
USER = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def server(start_server, tiny_checkpoint, tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("plain") / MODEL.split("/")[1]  # no model_card.json: defaults
    shutil.copytree(tiny_checkpoint, checkpoint)
    with start_server(checkpoint, env={"IMAGEMINI_MAX_BODY_BYTES": str(BODY_LIMIT)}) as s:
        yield s


def req(**fields) -> dict:
    """A valid request with `fields` changed (None removes a field)."""
    body = {"model": MODEL, "messages": USER, "max_tokens": 2, **fields}
    return {k: v for k, v in body.items() if v is not None}


def msgs(*messages: dict) -> dict:
    return req(messages=list(messages))


# (name, body: dict | bytes, headers, status, param, code); code None = not checked
CASES = [
    # transport: JSON, content type, size
    ("invalid json", b'{"model": ', JSON, 400, None, "invalid_json"),
    ("json array", b"[1, 2]", JSON, 400, None, "invalid_json"),
    ("NaN literal", b'{"model": "m", "temperature": NaN}', JSON, 400, None, "invalid_json"),
    ("not utf-8", b'{"model": "\xff"}', JSON, 400, None, "invalid_json"),
    ("text/plain", b'{"model": "m"}', {"content-type": "text/plain"}, 400, None, "invalid_content_type"),
    ("form encoded", b"model=m", {"content-type": "application/x-www-form-urlencoded"}, 400, None, "invalid_content_type"),
    ("body over the limit", msgs({"role": "user", "content": "x" * BODY_LIMIT}), JSON, 413, None, "request_too_large"),
    # model
    ("missing model", req(model=None), JSON, 400, "model", "missing"),
    ("model not a string", req(model=7), JSON, 400, "model", "string_type"),
    ("unknown model", req(model="imagemini/nope"), JSON, 404, "model", "model_not_found"),
    # messages
    ("missing messages", req(messages=None), JSON, 400, "messages", "missing"),
    ("empty messages", req(messages=[]), JSON, 400, "messages", "too_short"),
    ("messages not a list", req(messages="Hi"), JSON, 400, "messages", "list_type"),
    ("unknown role", msgs({"role": "bot", "content": "x"}), JSON, 400, "messages[0].role", "literal_error"),
    ("tool role", msgs({"role": "tool", "content": "x", "tool_call_id": "1"}), JSON, 400, "messages[0].role", "unsupported_parameter"),
    ("function role", msgs(USER[0], {"role": "function", "content": "x", "name": "f"}), JSON, 400, "messages[1].role", "unsupported_parameter"),
    ("content a number", msgs({"role": "user", "content": 5}), JSON, 400, "messages[0].content", None),
    ("content empty parts", msgs({"role": "user", "content": []}), JSON, 400, "messages[0].content", "too_short"),
    ("user content null", msgs({"role": "user", "content": None}), JSON, 400, "messages[0].content", None),
    ("text part without text", msgs({"role": "user", "content": [{"type": "text"}]}), JSON, 400, "messages[0].content[0].text", "missing"),
    ("unknown part type", msgs({"role": "user", "content": [{"type": "video"}]}), JSON, 400, "messages[0].content[0].type", None),
    ("image part not an image", msgs({"role": "user", "content": [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}), JSON, 400, "messages[0].content[1].image_url.url", "invalid_image"),
    ("image URL while fetching is off", msgs({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}), JSON, 400, "messages[0].content[0].image_url.url", "url_fetch_disabled"),
    ("file part bad base64", msgs({"role": "user", "content": [{"type": "file", "file": {"filename": "a.pdf", "file_data": "x"}}]}), JSON, 400, "messages[0].content[0].file.file_data", "invalid_base64"),
    ("audio part", msgs({"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}), JSON, 400, "messages[0].content[0]", "unsupported_parameter"),
    ("assistant tool_calls", msgs(USER[0], {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}), JSON, 400, "messages[1].tool_calls", "unsupported_parameter"),
    # sampling ranges and types
    ("temperature 3", req(temperature=3), JSON, 400, "temperature", "less_than_equal"),
    ("temperature negative", req(temperature=-0.1), JSON, 400, "temperature", "greater_than_equal"),
    ("temperature a string", req(temperature="1"), JSON, 400, "temperature", "float_type"),
    ("top_p 0", req(top_p=0), JSON, 400, "top_p", "greater_than"),
    ("top_p 1.5", req(top_p=1.5), JSON, 400, "top_p", "less_than_equal"),
    ("frequency_penalty 2.5", req(frequency_penalty=2.5), JSON, 400, "frequency_penalty", "less_than_equal"),
    ("presence_penalty -3", req(presence_penalty=-3), JSON, 400, "presence_penalty", "greater_than_equal"),
    ("n 0", req(n=0), JSON, 400, "n", "greater_than_equal"),
    ("n 17", req(n=17), JSON, 400, "n", "less_than_equal"),
    ("n 1.5", req(n=1.5), JSON, 400, "n", "int_type"),
    ("max_tokens 0", req(max_tokens=0), JSON, 400, "max_tokens", "greater_than_equal"),
    ("max_completion_tokens -1", req(max_tokens=None, max_completion_tokens=-1), JSON, 400, "max_completion_tokens", None),
    ("max_tokens and max_completion_tokens differ", req(max_completion_tokens=3), JSON, 400, "max_tokens", None),
    ("completion over the context", req(max_tokens=None, max_completion_tokens=5000), JSON, 400, "messages", "context_length_exceeded"),
    ("prompt over the context", msgs({"role": "user", "content": "circle " * 1500}), JSON, 400, "messages", "context_length_exceeded"),
    ("top_logprobs without logprobs", req(top_logprobs=2), JSON, 400, "top_logprobs", None),
    ("top_logprobs 21", req(logprobs=True, top_logprobs=21), JSON, 400, "top_logprobs", "less_than_equal"),
    ("logprobs a string", req(logprobs="yes"), JSON, 400, "logprobs", "bool_type"),
    ("five stop strings", req(stop=["a", "b", "c", "d", "e"]), JSON, 400, "stop", "too_long"),
    ("empty stop string", req(stop=""), JSON, 400, "stop", None),
    ("stop a number", req(stop=5), JSON, 400, "stop", None),
    ("logit_bias word key", req(logit_bias={"abc": 1}), JSON, 400, "logit_bias", None),
    ("logit_bias key beyond vocab", req(logit_bias={"99999": 1}), JSON, 400, "logit_bias", None),
    ("logit_bias negative key", req(logit_bias={"-1": 1}), JSON, 400, "logit_bias", None),
    ("logit_bias value 150", req(logit_bias={"5": 150}), JSON, 400, "logit_bias.5", "less_than_equal"),
    ("seed a string", req(seed="abc"), JSON, 400, "seed", "int_type"),
    ("seed beyond int64", req(seed=2**64), JSON, 400, "seed", None),
    ("stream a string", req(stream="yes"), JSON, 400, "stream", "bool_type"),
    ("stream_options without stream", req(stream_options={"include_usage": True}), JSON, 400, "stream_options", None),
    # recognised but not supported yet
    ("tools", req(tools=[{"type": "function", "function": {"name": "f"}}]), JSON, 400, "tools", "unsupported_parameter"),
    ("tool_choice", req(tool_choice="required"), JSON, 400, "tool_choice", "unsupported_parameter"),
    ("json_schema name with a space", req(response_format={"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}),
     JSON, 400, "response_format.json_schema.name", "invalid_value"),
    ("json_schema feature not enforceable", req(response_format={"type": "json_schema", "json_schema": {
        "name": "a", "strict": True, "schema": {"type": "array", "uniqueItems": True}}}),
     JSON, 400, "response_format.json_schema.schema", "unsupported_schema_feature"),
    ("json_schema format malformed", req(response_format={"type": "json_schema"}), JSON, 400, "response_format.json_schema", "missing"),
    ("image-only with too few tokens", req(modalities=["image"]), JSON, 400, "max_completion_tokens", "max_tokens_too_small"),
    ("audio modality", req(modalities=["audio"]), JSON, 400, "modalities[0]", "literal_error"),
    ("image_config aspect ratio", req(image_config={"aspect_ratio": "16:9"}), JSON, 400, "image_config.aspect_ratio", "unsupported_value"),
    ("image_config size", req(image_config={"image_size": "4K"}), JSON, 400, "image_config.image_size", "unsupported_value"),
    ("reasoning effort and max_tokens", req(reasoning={"effort": "high", "max_tokens": 1}), JSON, 400, "reasoning", "invalid_value"),
    ("reasoning effort invalid", req(reasoning={"effort": "huge"}), JSON, 400, "reasoning.effort", "literal_error"),
    ("reasoning budget without room for an answer", req(reasoning={"max_tokens": 2}), JSON, 400, "reasoning.max_tokens", "invalid_value"),
    ("audio output", req(audio={"voice": "alloy", "format": "wav"}), JSON, 400, "audio", "unsupported_parameter"),
    ("top_k", req(top_k=40), JSON, 400, "top_k", "unsupported_parameter"),
    ("store true", req(store=True), JSON, 400, "store", "unsupported_parameter"),
]


@pytest.mark.parametrize("name, body, headers, status, param, code", CASES, ids=[c[0] for c in CASES])
def test_malformed_request(server, http, name, body, headers, status, param, code):
    content = body if isinstance(body, bytes) else None
    r = http.post(f"{server.url}/v1/chat/completions", content=content, json=None if content else body, headers=headers)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code


def test_enough_cases_and_server_still_healthy(server, http, openapi):
    assert len(CASES) >= 30 and openapi.checked["ErrorResponse"] >= len(CASES)
    health = server.wait_idle()
    assert health["status"] == "ok" and health["pending"] == 0 and health["kv_cache"]["used_tokens"] == 0
    r = http.post(f"{server.url}/v1/chat/completions", json=req())
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_neutral_values_of_refused_features_pass(server, http):
    """Refusal is for features in use; their off values are honoured trivially."""
    body = req(
        tool_choice="none", tools=[], modalities=["text"], response_format={"type": "text"}, include_reasoning=False,
        store=False, top_k=0, repetition_penalty=1.0, service_tier="auto", metadata={"k": "v"}, parallel_tool_calls=False,
    )
    r = http.post(f"{server.url}/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text


def test_other_routes_answer_in_the_error_shape(server, http):
    r = http.get(f"{server.url}/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = http.get(f"{server.url}/v1/models/imagemini/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = http.delete(f"{server.url}/v1/models")
    assert r.status_code == 405 and "error" in r.json()


def test_default_card(server, http):
    card = http.get(f"{server.url}/v1/models/tiny-plain").json()
    assert card["id"] == MODEL and card["owned_by"] == "imagemini"
    assert (card["pricing"]["prompt"], card["pricing"]["completion"]) == ("0.0000025", "0.000002")


def test_sdk_raises_the_matching_exception(server, sdk):
    client = sdk(server)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=USER, temperature=3)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as overflow:
        client.chat.completions.create(model=MODEL, messages=USER, max_completion_tokens=4096)
    assert overflow.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-5-image-mini", messages=USER)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.APIStatusError) as too_large:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * BODY_LIMIT}])
    assert too_large.value.status_code == 413
    with pytest.raises(openai.BadRequestError):  # also mid-way through a stream request
        client.chat.completions.create(model=MODEL, messages=[], stream=True)


def test_chunked_body_over_the_limit(server, http):
    """Without a Content-Length the limit is enforced while reading."""
    pieces = [b'{"model": "m", "messages": [{"role": "user", "content": "'] + [b"x" * 8192] * 9 + [b'"}]}']
    r = http.post(f"{server.url}/v1/chat/completions", content=iter(pieces), headers=JSON)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
