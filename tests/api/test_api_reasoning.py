"""Reasoning end to end: OpenRouter's request forms, thought budgets, exclusion, streaming, the card.

Two servers: the tiny checkpoint (its template opens a thought with `<think>`), and a copy whose
template cannot (no reasoning on its card; reasoning requests are 400). The random model almost
never closes a thought by itself; most tests ban the end-of-thinking token with logit_bias, so
every thought runs exactly to its budget, where the engine closes it.
"""

from __future__ import annotations

import json
import shutil

import pytest
from apitest import check_stream_framing, post_stream

from imagemini.api.reasoning import EFFORT_PERCENT

MODEL = "imagemini/tiny-thinker"
PLAIN = "imagemini/tiny-nothink"
USER = [{"role": "user", "content": "How many circles are there?"}]
M = 40  # max_completion_tokens of most tests


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("thinker") / MODEL.split("/")[1]
    shutil.copytree(tiny_checkpoint, path)
    return path


@pytest.fixture(scope="module")
def server(start_server, checkpoint):
    with start_server(checkpoint) as s:
        yield s




@pytest.fixture(scope="module")
def closed_late(tok) -> dict:
    """logit_bias that bans the end of thinking: thoughts run to their budget."""
    return {str(tok.special.think_end): -100}


def create(client, **fields) -> dict:
    body = {"model": MODEL, "messages": USER, "max_completion_tokens": M, "seed": 7, **fields}
    extra = {k: body.pop(k) for k in ("reasoning", "reasoning_effort", "include_reasoning") if k in body}
    return client.chat.completions.create(**body, extra_body=extra or None).model_dump()


def reasoning_tokens(out: dict) -> int:
    return out["usage"]["completion_tokens_details"]["reasoning_tokens"]


def test_card_says_what_the_checkpoint_can_do(http, server):
    card = http.get(f"{server.url}/v1/models/{MODEL}").json()
    assert {"reasoning", "include_reasoning"} <= set(card["supported_parameters"])
    assert card["reasoning"] == {
        "supported_efforts": ["none", "minimal", "low", "medium", "high", "xhigh", "max"],
        "default_effort": "medium", "supports_max_tokens": True,
    }


@pytest.mark.parametrize("effort", list(EFFORT_PERCENT))
def test_each_effort_bounds_the_thought(client, closed_late, effort):
    out = create(client, reasoning={"effort": effort}, logit_bias=closed_late)
    expected = {"none": 0, "minimal": 4, "low": 8, "medium": 20, "high": 32, "xhigh": 38, "max": 38}[effort]  # M = 40
    assert reasoning_tokens(out) == expected
    message = out["choices"][0]["message"]
    if expected:
        assert isinstance(message["reasoning"], str)
        assert message["reasoning_details"] == [{"type": "reasoning.text", "text": message["reasoning"], "signature": None,
                                                 "id": None, "format": "unknown", "index": 0}]
    else:
        assert "reasoning" not in message and "reasoning_details" not in message
    assert 1 <= out["usage"]["completion_tokens"] - expected <= M - expected  # the answer kept its share


def test_without_the_ban_a_thought_stays_within_its_budget(client):
    for seed in range(3):
        out = create(client, reasoning={"effort": "high"}, seed=seed)
        assert 1 <= reasoning_tokens(out) <= M * 80 // 100


def test_max_tokens_is_the_exact_budget(client, closed_late):
    assert reasoning_tokens(create(client, reasoning={"max_tokens": 7}, logit_bias=closed_late)) == 7
    assert reasoning_tokens(create(client, reasoning={"max_tokens": 0}, logit_bias=closed_late)) == 0
    # Without max_completion_tokens the thought comes on top of the default answer budget.
    out = create(client, reasoning={"max_tokens": 30}, logit_bias=closed_late, max_completion_tokens=None)
    assert reasoning_tokens(out) == 30


def test_request_forms(client, closed_late):
    medium = M // 2
    assert reasoning_tokens(create(client, reasoning={"enabled": True}, logit_bias=closed_late)) == medium
    assert reasoning_tokens(create(client, reasoning={}, logit_bias=closed_late)) == medium
    assert reasoning_tokens(create(client, reasoning_effort="low", logit_bias=closed_late)) == M * 20 // 100
    assert reasoning_tokens(create(client, reasoning={"effort": "low"}, reasoning_effort="low", logit_bias=closed_late)) == M * 20 // 100
    assert reasoning_tokens(create(client, include_reasoning=True, logit_bias=closed_late)) == medium
    off = create(client, reasoning={"enabled": False}, logit_bias=closed_late)
    assert reasoning_tokens(off) == 0 and "reasoning" not in off["choices"][0]["message"]
    assert reasoning_tokens(create(client, logit_bias=closed_late)) == 0  # no field: no thought


def test_exclude_hides_the_thought_but_counts_it(client, closed_late):
    shown = create(client, reasoning={"effort": "high"}, logit_bias=closed_late)
    for hidden in (create(client, reasoning={"effort": "high", "exclude": True}, logit_bias=closed_late),
                   create(client, reasoning={"effort": "high"}, include_reasoning=False, logit_bias=closed_late)):
        message = hidden["choices"][0]["message"]
        assert "reasoning" not in message and "reasoning_details" not in message
        assert message["content"] == shown["choices"][0]["message"]["content"]
        assert hidden["usage"] == shown["usage"] and reasoning_tokens(hidden) == M * 80 // 100
    legacy = create(client, include_reasoning=False, logit_bias=closed_late)  # == reasoning {"exclude": true}
    assert "reasoning" not in legacy["choices"][0]["message"] and reasoning_tokens(legacy) == M // 2


def test_stream_and_non_stream_agree(http, server, closed_late):
    body = {"model": MODEL, "messages": USER, "max_completion_tokens": M, "seed": 11, "n": 2,
            "reasoning": {"effort": "medium"}, "logit_bias": closed_late, "logprobs": True}
    whole = http.post(f"{server.url}/v1/chat/completions", json=body).json()
    events = post_stream(http, server.url, body)
    usage = check_stream_framing(events)
    assert usage == whole["usage"] and reasoning_tokens(whole) == 2 * M // 2
    for choice in whole["choices"]:
        index = choice["index"]
        deltas = [c["choices"][0] for c in events[:-2] if c["choices"] and c["choices"][0]["index"] == index]
        assert "".join(d["delta"].get("content") or "" for d in deltas) == choice["message"]["content"]
        assert "".join(d["delta"].get("reasoning") or "" for d in deltas) == choice["message"]["reasoning"]
        details = [x for d in deltas for x in d["delta"].get("reasoning_details") or []]
        assert "".join(x["text"] for x in details) == choice["message"]["reasoning"]
        assert all(x["type"] == "reasoning.text" and x["format"] == "unknown" and x["index"] == 0 for x in details)
        # logprobs cover the answer's tokens, never the thought's
        streamed = [lp for d in deltas for lp in (d.get("logprobs") or {}).get("content") or []]
        assert streamed == choice["logprobs"]["content"]


def test_answer_tokens_are_never_eaten_by_the_thought(client, closed_late, tok):
    eos = str(tok.special.eos)
    out = create(client, reasoning={"effort": "max"}, logit_bias={**closed_late, eos: -100})
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == M and reasoning_tokens(out) == M * 95 // 100


def test_grammar_and_stop_strings_apply_to_the_answer_only(client, closed_late):
    shown = create(client, reasoning={"max_tokens": 12}, logit_bias=closed_late)
    thought = shown["choices"][0]["message"]["reasoning"]
    stop = thought[1:3]
    out = create(client, reasoning={"max_tokens": 12}, logit_bias=closed_late, stop=[stop],
                 response_format={"type": "json_schema", "json_schema": {
                     "name": "n", "strict": True, "schema": {"type": "integer", "minimum": 0, "maximum": 9}}})
    message = out["choices"][0]["message"]
    assert message["reasoning"] == thought and reasoning_tokens(out) == 12
    assert out["choices"][0]["finish_reason"] == "stop" and 0 <= json.loads(message["content"]) <= 9


def test_earlier_thoughts_are_accepted_and_not_rendered(client):
    history = [*USER, {"role": "assistant", "content": "Two."}, {"role": "user", "content": "Sure?"}]
    with_thought = [*USER, {"role": "assistant", "content": "Two.", "reasoning": "I count two circles.",
                            "reasoning_details": [{"type": "reasoning.text", "text": "I count two circles.",
                                                   "signature": None, "id": None, "format": "unknown", "index": 0}]},
                    {"role": "user", "content": "Sure?"}]
    a = create(client, messages=history, reasoning={"effort": "low"})
    b = create(client, messages=with_thought, reasoning={"effort": "low"})
    assert a["usage"]["prompt_tokens"] == b["usage"]["prompt_tokens"]
    assert a["choices"][0]["message"] == b["choices"][0]["message"]


@pytest.mark.parametrize("fields, param", [
    ({"reasoning": {"effort": "high", "max_tokens": 5}}, "reasoning"),
    ({"reasoning": {"max_tokens": 5}, "reasoning_effort": "low"}, "reasoning_effort"),
    ({"reasoning": {"effort": "high"}, "reasoning_effort": "low"}, "reasoning_effort"),
    ({"reasoning": {"max_tokens": M}}, "reasoning.max_tokens"),
    ({"reasoning": {"effort": "low"}, "max_completion_tokens": 1}, "max_completion_tokens"),
    ({"reasoning": {"effort": "bogus"}}, "reasoning.effort"),
    ({"reasoning": {"max_tokens": -1}}, "reasoning.max_tokens"),
])
def test_bad_reasoning_requests(http, server, fields, param):
    body = {"model": MODEL, "messages": USER, "max_completion_tokens": M, **fields}
    r = http.post(f"{server.url}/v1/chat/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


# --- a checkpoint that cannot think ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain_server(start_server, tiny_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("nothink") / PLAIN.split("/")[1]
    shutil.copytree(tiny_checkpoint, path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    opener = "{% if thinking %}{{ ' <think>' }}{% endif %}"
    assert opener in config["chat_template"]
    config["chat_template"] = config["chat_template"].replace(opener, "")
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    with start_server(path) as s:
        yield s


def test_a_checkpoint_without_thinking(http, plain_server):
    card = http.get(f"{plain_server.url}/v1/models/{PLAIN}").json()
    assert "reasoning" not in card and not {"reasoning", "include_reasoning"} & set(card["supported_parameters"])
    url = f"{plain_server.url}/v1/chat/completions"
    for fields, param in [({"reasoning": {"effort": "low"}}, "reasoning"), ({"reasoning": {}}, "reasoning"),
                          ({"reasoning_effort": "high"}, "reasoning_effort"), ({"include_reasoning": True}, "include_reasoning")]:
        r = http.post(url, json={"model": PLAIN, "messages": USER, "max_tokens": 4, **fields})
        assert r.status_code == 400 and r.json()["error"]["param"] == param and r.json()["error"]["code"] == "unsupported_parameter"
    for fields in ({"include_reasoning": False}, {"reasoning": {"effort": "none"}}, {"reasoning": {"enabled": False}}):
        r = http.post(url, json={"model": PLAIN, "messages": USER, "max_tokens": 4, **fields})
        assert r.status_code == 200 and reasoning_tokens(r.json()) == 0
