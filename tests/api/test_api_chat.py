"""Chat completions end to end through the official `openai` SDK (sync, async, streaming) and raw HTTP.

One server for the module: a copy of the tiny random checkpoint with a `model_card.json`
(custom id and prices) and IMAGEMINI_DEFAULT_MAX_TOKENS=8. Every response and every chunk is
validated against OpenAI's published schemas by the clients' transport (conftest `http`, `sdk`).
The checkpoint is random: texts are noise, so the tests compare outputs with each other and
with the tokenizer, never with expected words.
The module runs twice: in float32 and in bfloat16, the default dtype (conftest `dtype`).
"""

from __future__ import annotations

import asyncio
import json
import shutil

import openai
import pytest
from apitest import check_stream_framing, post_stream, stream_choices

from imagemini.models.tokenizer import Tokenizer

MODEL_ID = "imagemini/tiny-test"
PRICES = {"prompt": 3.0, "completion": 15.0}  # USD per million tokens
DEFAULT_MAX = 8


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("carded") / "tiny-test"
    shutil.copytree(tiny_checkpoint, path)
    card = {"id": MODEL_ID, "name": "Tiny test", "pricing_usd_per_million_tokens": PRICES}
    (path / "model_card.json").write_text(json.dumps(card))
    return path


@pytest.fixture(scope="module")
def server(start_server, checkpoint, dtype):
    with start_server(checkpoint, "--dtype", dtype, env={"IMAGEMINI_DEFAULT_MAX_TOKENS": str(DEFAULT_MAX)}) as s:
        yield s




@pytest.fixture(scope="module")
def no_eos(tok) -> dict:
    """logit_bias that bans EOS, so a completion runs exactly max_tokens (finish_reason 'length')."""
    return {str(tok.special.eos): -100}


def prompt_tokens(tok: Tokenizer, messages: list[dict]) -> int:
    return len(tok.encode(tok.render_chat(messages, add_generation_prompt=True)))


def expected_cost(prompt: int, completion: int) -> float:
    return (prompt * PRICES["prompt"] + completion * PRICES["completion"]) / 1e6


def check_completion(body: dict) -> dict:
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == MODEL_ID
    for choice in body["choices"]:
        assert choice["message"]["role"] == "assistant" and choice["message"]["refusal"] is None
    return body


# --- models ------------------------------------------------------------------------------------------
def test_model_list_and_card(server, client, http, openapi):
    for prefix in ("/v1", "/api/v1"):
        listing = http.get(f"{server.url}{prefix}/models").json()
        (card,) = listing["data"]
        openapi.validate("Model", card)  # each card of the list is an OpenAI Model too
        assert card["id"] == MODEL_ID and card["object"] == "model" and card["name"] == "Tiny test"
        assert card["context_length"] == 1024
        assert card["architecture"]["input_modalities"] == ["text", "image", "file"]
        assert card["architecture"]["output_modalities"] == ["text", "image"]
        assert card["architecture"]["modality"] == "text+image+file->text+image"
        assert card["pricing"]["prompt"] == "0.000003" and card["pricing"]["completion"] == "0.000015"
        assert card["top_provider"] == {"context_length": 1024, "max_completion_tokens": 1023, "is_moderated": False}
    assert [m.id for m in client.models.list()] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    assert client.models.retrieve("tiny-test").id == MODEL_ID  # the bare name is accepted too
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("imagemini/other")


# --- non-stream ----------------------------------------------------------------------------------------
def test_sync_completion_usage_and_cost(server, client, tok, no_eos):
    messages = [{"role": "user", "content": "How many circles are there?"}]
    raw = client.chat.completions.with_raw_response.create(
        model="tiny-test", messages=messages, max_completion_tokens=6, seed=3, logit_bias=no_eos
    )
    body = check_completion(raw.http_response.json())
    completion = raw.parse()
    assert completion.choices[0].finish_reason == "length" and completion.choices[0].logprobs is None
    assert body["system_fingerprint"] == server.health()["system_fingerprint"]
    usage = body["usage"]
    assert usage["prompt_tokens"] == prompt_tokens(tok, messages)
    assert usage["completion_tokens"] == 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + 6
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 0, "image_tokens": 0}
    assert usage["cost"] == pytest.approx(expected_cost(usage["prompt_tokens"], 6), rel=1e-12)


def test_parts_and_roles_render_through_the_template(client, tok):
    messages = [
        {"role": "system", "content": "You draw shapes."},
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Draw a"}, {"type": "text", "text": "red circle"}]},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "Again", "name": "ann"},
    ]
    rendered = [{"role": m["role"], "content": m["content"]} for m in messages]
    rendered[1]["content"] = "Be brief."
    rendered[2]["content"] = "Draw a\nred circle"  # text parts are joined with a newline
    rendered[3]["content"] = ""
    body = client.chat.completions.with_raw_response.create(model=MODEL_ID, messages=messages, max_tokens=2).http_response.json()
    check_completion(body)
    assert body["usage"]["prompt_tokens"] == prompt_tokens(tok, rendered)


def test_default_max_tokens_and_remaining_context(client, tok, no_eos):
    short = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], logit_bias=no_eos)
    assert short.usage.completion_tokens == DEFAULT_MAX and short.choices[0].finish_reason == "length"
    # A prompt that leaves 3 tokens of context: the default is what remains, below the cap.
    text = " ".join(["circle"] * 2000)
    ids = tok.encode(text)[: 1024 - 3 - prompt_tokens(tok, [{"role": "user", "content": ""}])]
    messages = [{"role": "user", "content": tok.decode(ids)}]
    n_prompt = prompt_tokens(tok, messages)
    assert 1 <= 1024 - n_prompt < DEFAULT_MAX
    long = client.chat.completions.create(model=MODEL_ID, messages=messages, logit_bias=no_eos)
    assert long.usage.prompt_tokens == n_prompt and long.usage.completion_tokens == 1024 - n_prompt


# --- stream ------------------------------------------------------------------------------------------------
def test_stream_equals_non_stream(server, http, tok, no_eos):
    request = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Describe the picture."}],
        "max_tokens": 24,
        "temperature": 1.0,
        "top_p": 0.9,
        "seed": 11,
        "logprobs": True,
        "top_logprobs": 3,
        "logit_bias": no_eos,
    }
    body = check_completion(http.post(f"{server.url}/v1/chat/completions", json=request).json())
    events = post_stream(http, server.url, request)
    usage = check_stream_framing(events)
    streamed = stream_choices(events)[0]
    choice = body["choices"][0]
    assert streamed["content"] == choice["message"]["content"]
    assert streamed["logprobs"] == choice["logprobs"]["content"]  # tokens, bytes, logprobs, top: exactly
    assert streamed["finish_reason"] == choice["finish_reason"] == "length"
    assert usage == body["usage"]
    entries = choice["logprobs"]["content"]
    assert len(entries) == 24 and all(len(e["top_logprobs"]) == 3 for e in entries)
    # Each entry's bytes are the token's: joined (specials are not text), they decode to the content.
    specials = {tok.token_text(i) for i in tok.special_ids}
    text_bytes = b"".join(bytes(e["bytes"]) for e in entries if e["token"] not in specials)
    assert text_bytes.decode("utf-8", errors="replace") == choice["message"]["content"]


def test_sdk_stream_sync_and_async_agree(client, server, async_sdk, no_eos):
    kwargs = dict(model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=10, seed=5, logit_bias=no_eos)
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    sync_text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    async def run_async() -> tuple[str, str]:
        async with async_sdk(server) as aclient:
            plain = await aclient.chat.completions.create(**kwargs)
            stream = await aclient.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return plain.choices[0].message.content, text

    plain_text, async_stream_text = asyncio.run(run_async())
    assert sync_text == plain_text == async_stream_text


def test_n_choices_are_independent_and_choice_0_matches_n_1(server, client, http, no_eos):
    request = dict(
        model=MODEL_ID, messages=[{"role": "user", "content": "Draw"}], max_tokens=12, temperature=1.0, seed=5,
        logprobs=True, logit_bias=no_eos,
    )
    two = check_completion(client.chat.completions.with_raw_response.create(n=2, **request).http_response.json())
    one = client.chat.completions.create(n=1, **request)
    a, b = two["choices"]
    assert [a["index"], b["index"]] == [0, 1]
    assert a["message"]["content"] != b["message"]["content"]
    assert a["message"]["content"] == one.choices[0].message.content
    assert a["logprobs"]["content"] == one.choices[0].logprobs.model_dump()["content"]
    usage = two["usage"]
    assert usage["prompt_tokens"] == one.usage.prompt_tokens  # the prompt counts once
    assert usage["completion_tokens"] == 24
    assert usage["cost"] == pytest.approx(expected_cost(usage["prompt_tokens"], 24), rel=1e-12)
    events = post_stream(http, server.url, {**request, "n": 2})
    check_stream_framing(events)
    streamed = stream_choices(events)
    assert [streamed[i]["content"] for i in (0, 1)] == [a["message"]["content"], b["message"]["content"]]


def test_stop_string_is_cut_and_never_streamed(server, client, http, no_eos):
    request = dict(model=MODEL_ID, messages=[{"role": "user", "content": "Hello"}], temperature=0, max_tokens=30, logit_bias=no_eos)
    free = client.chat.completions.create(**request).choices[0].message.content
    stop = free[6:9]
    cut = client.chat.completions.create(stop=[stop, "never-there"], **request).choices[0]
    assert cut.finish_reason == "stop" and cut.message.content == free[: free.index(stop)]
    events = post_stream(http, server.url, {**request, "stop": stop})
    check_stream_framing(events)
    assert stream_choices(events)[0]["content"] == cut.message.content


def test_logit_bias_forces_a_token(client, tok):
    forced = tok.encode(" circle")[0]
    out = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, logit_bias={str(forced): 100},
        logprobs=True,
    )
    assert [t.token for t in out.choices[0].logprobs.content] == [tok.token_text(forced)] * 5


def test_every_supported_parameter_is_accepted(server, http):
    """The card's supported_parameters is exact: each one listed is honoured without a 400."""
    values = {
        "frequency_penalty": 0.5, "logit_bias": {"10": 1}, "logprobs": True, "max_completion_tokens": 2,
        "max_tokens": 2, "n": 2, "presence_penalty": 0.5, "seed": 3, "stop": ["zz"], "temperature": 0.5,
        "top_logprobs": 2, "top_p": 0.5, "modalities": ["image", "text"],
        "image_config": {"aspect_ratio": "1:1", "image_size": "1K", "guidance_scale": 3.0},
        "response_format": {"type": "json_object"}, "structured_outputs": True,
        "reasoning": {"effort": "low"}, "include_reasoning": True,  # the tiny checkpoint has think delimiters
    }
    card = http.get(f"{server.url}/v1/models/{MODEL_ID}").json()
    assert sorted(values) == card["supported_parameters"]
    for name, value in values.items():
        body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, name: value}
        if name == "top_logprobs":
            body["logprobs"] = True
        r = http.post(f"{server.url}/v1/chat/completions", json=body)
        assert r.status_code == 200, (name, r.text)


def test_openrouter_prefix_and_ignored_fields(server, sdk):
    client = sdk(server, prefix="/api/v1")
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
        extra_body={"provider": {"order": ["x"]}, "transforms": [], "user": "u1", "stream_options": None},
    )
    check_completion(raw.http_response.json())
    assert raw.headers["x-imagemini-ignored-fields"] == "provider,transforms"


def test_responses_were_validated(openapi):
    """The transports did check what these tests received (a guard against a silent bypass)."""
    for name in ("CreateChatCompletionResponse", "CreateChatCompletionStreamResponse", "ListModelsResponse", "Model"):
        assert openapi.checked.get(name, 0) > 0, name
