"""Structured outputs end to end: `response_format` through the real server and the `openai` SDK.

The tiny checkpoint is random: it wants noise, so every valid answer here is the grammar's doing.
The corpus test sends 200 schemas (schema_corpus.py: 12 hand-written, the rest generated with a
seed) at temperature 1 with random seeds, half of them streamed, 16 at a time; every answer must
parse and validate, also those the token budget ended (finish_reason "length": the engine steers
an answer onto a short closing as its budget runs out). A subset goes again at small budgets,
where a schema whose shortest answer does not fit is refused up front (400 max_tokens_too_small).
"""

from __future__ import annotations

import json
import random
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, Optional

import openai
import pytest
from pydantic import BaseModel, Field
from schema_corpus import UNENFORCEABLE, corpus, validator

MODEL = "imagemini/tiny-structured"
USER = [{"role": "user", "content": "Describe the picture as JSON."}]
CORPUS_MAX_TOKENS = 400


@pytest.fixture(scope="module")
def server(start_server, tiny_checkpoint, tmp_path_factory):
    import shutil

    path = tmp_path_factory.mktemp("structured") / MODEL.split("/")[1]
    shutil.copytree(tiny_checkpoint, path)
    with start_server(path) as s:
        yield s



def json_schema(schema: dict, name: str = "answer", strict: bool | None = True) -> dict:
    spec = {"name": name, "schema": schema}
    if strict is not None:
        spec["strict"] = strict
    return {"type": "json_schema", "json_schema": spec}


def ask(client: openai.OpenAI, response_format: dict, stream: bool = False, **fields) -> tuple[str, str]:
    """(content, finish_reason) of one choice, streamed or not."""
    fields = {"model": MODEL, "messages": USER, "response_format": response_format, **fields}
    if not stream:
        out = client.chat.completions.create(**fields)
        return out.choices[0].message.content, out.choices[0].finish_reason
    content, finish = "", None
    for chunk in client.chat.completions.create(stream=True, **fields):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return content, finish


def test_card_offers_structured_outputs(http, server):
    card = http.get(f"{server.url}/v1/models/{MODEL}").json()
    assert {"response_format", "structured_outputs"} <= set(card["supported_parameters"])


def test_schema_corpus_always_parses(client, capsys):
    schemas = corpus(200, seed=8)
    rng = random.Random(20261126)
    jobs = [(name, schema, rng.randrange(2**31), i % 2 == 1) for i, (name, schema) in enumerate(schemas)]

    def run(job):
        name, schema, seed, stream = job
        content, finish = ask(client, json_schema(schema, name), stream, temperature=1.0, seed=seed,
                              max_completion_tokens=CORPUS_MAX_TOKENS)
        return name, schema, seed, stream, content, finish

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(run, jobs))
    invalid, lengths = [], []
    for name, schema, seed, stream, content, finish in results:
        assert finish in ("stop", "length"), (name, finish)
        if finish == "length":
            lengths.append(name)
        errors = answer_errors(schema, content)
        if errors:
            invalid.append((name, seed, stream, finish, content[:200], errors[:2]))
    with capsys.disabled():
        print(f"\nschema corpus: {len(results)} answers, all valid: {len(results) - len(lengths)} stop, "
              f"{len(lengths)} closed by the budget of {CORPUS_MAX_TOKENS} tokens")
    assert not invalid, invalid


def answer_errors(schema: dict, content: str) -> list[str]:
    try:
        return [e.message for e in validator(schema).iter_errors(json.loads(content))]
    except json.JSONDecodeError as exc:
        return [f"not JSON: {exc}"]


@pytest.mark.parametrize("budget", [16, 32, 64])
def test_small_budgets_parse_or_are_refused_up_front(client, budget):
    formats = [json_schema(schema, name) for name, schema in corpus(200, seed=8)[:24]] + [{"type": "json_object"}]
    jobs = [(fmt, seed) for fmt in formats for seed in range(3)]

    def run(job):
        fmt, seed = job
        try:
            return fmt, ask(client, fmt, seed % 2 == 1, temperature=1.0, seed=seed, max_completion_tokens=budget)
        except openai.BadRequestError as exc:
            return fmt, exc

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(run, jobs))
    answered = 0
    for fmt, result in results:
        schema = fmt["json_schema"]["schema"] if fmt["type"] == "json_schema" else {"type": "object"}
        if isinstance(result, openai.BadRequestError):
            error = result.body
            assert (error["code"], error["param"]) == ("max_tokens_too_small", "max_completion_tokens"), error
            assert re.search(r"shortest answer valid under the schema takes \d+ tokens", error["message"]), error
            continue
        content, finish = result
        assert finish in ("stop", "length") and not answer_errors(schema, content), (fmt, content, finish)
        answered += 1
    assert answered >= len(jobs) // 3


@pytest.mark.parametrize("name", list(UNENFORCEABLE))
def test_unenforceable_features_are_refused_up_front(http, server, name):
    schema, feature = UNENFORCEABLE[name]
    body = {"model": MODEL, "messages": USER, "max_tokens": 4, "response_format": json_schema(schema)}
    r = http.post(f"{server.url}/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "response_format.json_schema.schema"
    assert error["code"] == "unsupported_schema_feature" and feature in error["message"], error


def test_without_strict_unenforceable_features_are_ignored(client):
    schema = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 3, "uniqueItems": True}
    content, finish = ask(client, json_schema(schema, strict=None), seed=5, max_completion_tokens=64)
    assert finish == "stop"
    value = json.loads(content)  # the rest of the schema still holds
    assert isinstance(value, list) and len(value) <= 3 and all(isinstance(v, int) and 0 <= v <= 9 for v in value)


@pytest.mark.parametrize("response_format, param, code", [
    (json_schema({"type": "array", "minItems": "two"}), "response_format.json_schema.schema", "invalid_json_schema"),
    (json_schema({"type": "object"}, name="has space"), "response_format.json_schema.name", "invalid_value"),
    (json_schema({"type": "object"}, name="n" * 65), "response_format.json_schema.name", "invalid_value"),
    (json_schema({"type": "object"}, name=""), "response_format.json_schema.name", "invalid_value"),
    (json_schema({"type": "object", "required": ["a"], "properties": {}, "additionalProperties": False}),
     "response_format.json_schema.schema", "unsupported_schema_feature"),  # unsatisfiable
    ({"type": "json_schema", "json_schema": {"schema": {}}}, "response_format.json_schema.name", "missing"),
])
def test_bad_formats_are_400(http, server, response_format, param, code):
    body = {"model": MODEL, "messages": USER, "max_tokens": 4, "response_format": response_format}
    r = http.post(f"{server.url}/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (param, code)


def test_name_rule_allows_64_characters(client):
    content, finish = ask(client, json_schema({"type": "boolean"}, name="a-B_9" + "x" * 59), max_completion_tokens=8)
    assert finish == "stop" and json.loads(content) in (True, False)


def test_json_object_gives_objects(client):
    for seed in range(4):
        content, finish = ask(client, {"type": "json_object"}, stream=seed % 2 == 1, seed=seed, max_completion_tokens=100)
        assert finish in ("stop", "length") and isinstance(json.loads(content), dict)


def test_structured_outputs_flag_and_text_format_accepted(client):
    out = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=3, response_format={"type": "text"}, extra_body={"structured_outputs": True},
    )
    assert out.choices[0].finish_reason in ("stop", "length")


def test_a_budget_below_the_shortest_answer_is_refused_and_one_that_holds_it_parses(http, server, client):
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    body = {"model": MODEL, "messages": USER, "max_tokens": 2, "response_format": json_schema(schema)}
    r = http.post(f"{server.url}/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("max_tokens_too_small", "max_tokens")
    shortest = int(re.search(r"takes (\d+) tokens", error["message"]).group(1))
    assert shortest > 2 and f"at least {shortest}" in error["message"]
    for seed in range(3):
        content, finish = ask(client, json_schema(schema), max_completion_tokens=shortest, seed=seed)
        assert finish in ("stop", "length") and isinstance(json.loads(content)["a"], str)


def test_every_choice_follows_the_schema(client):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["n"],
              "additionalProperties": False}
    out = client.chat.completions.create(model=MODEL, messages=USER, n=3, seed=1, max_completion_tokens=64,
                                         response_format=json_schema(schema))
    assert len(out.choices) == 3
    for choice in out.choices:
        assert choice.finish_reason == "stop" and 0 <= json.loads(choice.message.content)["n"] <= 9


def test_stream_and_non_stream_agree(client):
    schema = {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3}
    assert ask(client, json_schema(schema), seed=11, max_completion_tokens=64) == ask(
        client, json_schema(schema), stream=True, seed=11, max_completion_tokens=64)


class Shape(BaseModel):
    shape: Literal["circle", "square", "triangle", "cross"]
    size: int = Field(ge=1, le=9)
    label: str = Field(max_length=6)
    tags: list[Literal["red", "blue"]] = Field(max_length=3)
    note: Optional[str] = Field(max_length=4)


def test_sdk_parse_with_a_pydantic_model(client):
    """`client.chat.completions.parse(response_format=Model)` works unchanged (it sends a strict schema)."""
    # A noise model may run into the budget: that answer is valid too, but parse() refuses any
    # finish_reason "length"; the first seed that finishes by itself is checked.
    for seed in range(5):
        try:
            out = client.chat.completions.parse(model=MODEL, messages=USER, response_format=Shape, seed=seed,
                                                max_completion_tokens=128)
        except openai.LengthFinishReasonError:
            continue
        parsed = out.choices[0].message.parsed
        assert isinstance(parsed, Shape) and 1 <= parsed.size <= 9 and len(parsed.label) <= 6
        return
    pytest.fail("no seed finished within the budget")
