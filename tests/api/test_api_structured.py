"""Structured outputs end to end: `response_format` through the real server and the `openai` SDK.

The tiny checkpoint is random: it wants noise, so every valid answer here is the grammar's doing.
The corpus test sends 200 schemas (schema_corpus.py: 12 hand-written, the rest generated with a
seed) at temperature 1 with random seeds, half of them streamed, 16 at a time; every answer that
ends with finish_reason "stop" must parse and validate. Answers cut by the token budget
("length", not valid JSON by definition) are counted and reported: they must stay rare, and are
nearly all schemas with free keys (an object without `additionalProperties: false`, where the
noise model invents keys and values until the budget runs out).
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, Optional

import openai
import pytest
from pydantic import BaseModel, Field
from schema_corpus import UNENFORCEABLE, corpus, has_free_keys, validator

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
        if finish == "length":
            lengths.append(name)
            continue
        assert finish == "stop", (name, finish)
        try:
            errors = [e.message for e in validator(schema).iter_errors(json.loads(content))]
        except json.JSONDecodeError as exc:
            errors = [f"not JSON: {exc}"]
        if errors:
            invalid.append((name, seed, stream, content[:200], errors[:2]))
    closed = [name for name, schema in schemas if not has_free_keys(schema)]
    closed_lengths = [name for name in lengths if name in closed]
    with capsys.disabled():
        print(f"\nschema corpus: {len(results)} answers, {len(results) - len(lengths)} stop (all valid), "
              f"{len(lengths)} length at {CORPUS_MAX_TOKENS} tokens: {len(closed_lengths)} of the {len(closed)} "
              f"closed schemas {closed_lengths}, {len(lengths) - len(closed_lengths)} of the "
              f"{len(schemas) - len(closed)} with free keys")
    assert not invalid, invalid
    assert len(lengths) <= 0.15 * len(results), lengths
    assert len(closed_lengths) <= 0.03 * len(closed), closed_lengths


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
        content, finish = ask(client, {"type": "json_object"}, stream=seed % 2 == 1, seed=seed, max_completion_tokens=400)
        if finish == "stop":
            assert isinstance(json.loads(content), dict)
        else:
            assert finish == "length"


def test_structured_outputs_flag_and_text_format_accepted(client):
    out = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=3, response_format={"type": "text"}, extra_body={"structured_outputs": True},
    )
    assert out.choices[0].finish_reason in ("stop", "length")


def test_a_cut_answer_finishes_with_length(client):
    # A required key makes a two-token answer impossible to complete, whatever gets sampled.
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    content, finish = ask(client, json_schema(schema), max_completion_tokens=2, seed=3)
    assert finish == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)


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
    for seed in range(5):  # a noise model may run out of tokens; the first seed that finishes is checked
        try:
            out = client.chat.completions.parse(model=MODEL, messages=USER, response_format=Shape, seed=seed,
                                                max_completion_tokens=128)
        except openai.LengthFinishReasonError:
            continue
        parsed = out.choices[0].message.parsed
        assert isinstance(parsed, Shape) and 1 <= parsed.size <= 9 and len(parsed.label) <= 6
        return
    pytest.fail("no seed finished within the budget")
