"""The prefix cache through a real server and the `openai` SDK: cached_tokens and the cost follow
it, answers that reuse a prefix are the answers computed without it, /health counts it, a small
bound evicts, and a picture hits by its content.

One server: a copy of the tiny random checkpoint whose card prices cached prompt tokens at a
tenth of the prompt price, in float32, with room for two blocks of 256 tokens (the default
prefill chunk): `--prefix-cache-tokens 512`.
"""

from __future__ import annotations

import json
import shutil

import pytest
from mediatest import image_part, pattern_png
from metricstest import moved, scrape

MODEL_ID = "imagemini/tiny-cached"
PRICES = {"prompt": 3.0, "completion": 15.0, "input_cache_read": 0.3}  # USD per million tokens
BLOCK = 256  # the server's prefill chunk (SchedulerConfig's default)
SENTENCE = "Describe the large red circle at the top left and the small blue square at the bottom right. "


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("cache-card") / "tiny-cached"
    shutil.copytree(tiny_checkpoint, path)
    (path / "model_card.json").write_text(json.dumps({"id": MODEL_ID, "pricing_usd_per_million_tokens": PRICES}))
    return path


@pytest.fixture(scope="module")
def server(start_server, checkpoint):
    with start_server(checkpoint, "--dtype", "float32", "--prefix-cache-tokens", str(2 * BLOCK)) as s:
        yield s


def ask(client, messages: list[dict], **extra):
    return client.chat.completions.create(
        model=MODEL_ID, messages=messages, max_completion_tokens=8, seed=7, logprobs=True, top_logprobs=2, **extra
    )


def answer(completion) -> list:
    return [(c.message.content, c.logprobs.model_dump(), c.finish_reason) for c in completion.choices]


def cost(usage) -> float:
    cached = usage.prompt_tokens_details.cached_tokens
    paid = (usage.prompt_tokens - cached) * PRICES["prompt"] + cached * PRICES["input_cache_read"]
    return (paid + usage.completion_tokens * PRICES["completion"]) / 1e6


def long_user(topic: str, sentences: int = 9) -> dict:
    """A user message of about 300 tokens (one whole block and some) that starts with `topic`."""
    return {"role": "user", "content": topic + " " + SENTENCE * sentences}


def prefix_stats(server) -> dict:
    return server.health()["prefix_cache"]


def test_the_card_prices_cache_reads(client):
    assert client.models.retrieve(MODEL_ID).pricing["input_cache_read"] == "0.0000003"


def test_a_repeated_prefix_is_read_from_the_cache_exactly_and_costs_less(server, client):
    before, scraped = prefix_stats(server), scrape(server)
    messages = [long_user("Shapes.")]
    first, second = ask(client, messages), ask(client, messages)
    assert answer(second) == answer(first)  # computed from the cache = computed in full
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == BLOCK < second.usage.prompt_tokens
    assert first.usage.cost == pytest.approx(cost(first.usage), rel=1e-12)
    assert second.usage.cost == pytest.approx(cost(second.usage), rel=1e-12) and second.usage.cost < first.usage.cost
    after = prefix_stats(server)
    assert (after["queries"] - before["queries"], after["hits"] - before["hits"]) == (2, 1)
    assert after["hit_tokens"] - before["hit_tokens"] == BLOCK
    assert after["block_tokens"] == BLOCK and after["capacity_tokens"] == 2 * BLOCK
    now = scrape(server)  # /metrics counts in tokens, as vLLM does
    assert moved(scraped, now, "imagemini:prefix_cache_hits_total") == BLOCK
    assert moved(scraped, now, "imagemini:prefix_cache_queries_total") == first.usage.prompt_tokens + second.usage.prompt_tokens

    # the next turn repeats the history: its first block comes from the cache, streamed alike
    turn = messages + [{"role": "assistant", "content": first.choices[0].message.content}, long_user("More.", 3)]
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=turn, max_completion_tokens=8, seed=7, stream=True, stream_options={"include_usage": True}
    )
    usage = [chunk.usage for chunk in stream if chunk.usage is not None][0]
    assert usage.prompt_tokens_details.cached_tokens >= BLOCK and usage.cost == pytest.approx(cost(usage), rel=1e-12)


def test_n_choices_share_the_prompt_and_match_a_single_choice(client):
    messages = [long_user("Choices.")]
    both = client.chat.completions.create(model=MODEL_ID, messages=messages, max_completion_tokens=8, seed=3, n=2,
                                          logprobs=True)
    # the second choice took the first block from the first; the request itself found nothing cached
    assert both.usage.prompt_tokens_details.cached_tokens == 0
    alone = client.chat.completions.create(model=MODEL_ID, messages=messages, max_completion_tokens=8, seed=3,
                                           logprobs=True)
    assert alone.usage.prompt_tokens_details.cached_tokens == BLOCK
    assert answer(alone)[0][:2] == answer(both)[0][:2]


def test_a_small_bound_evicts_the_oldest_and_answers_stay_right(server, client):
    topics = ["Alpha.", "Bravo.", "Charlie."]
    firsts = [ask(client, [long_user(t)]) for t in topics]  # the third pushes the first out
    assert prefix_stats(server)["blocks"] == 2
    again = ask(client, [long_user(topics[0])])
    assert again.usage.prompt_tokens_details.cached_tokens == 0 and answer(again) == answer(firsts[0])
    last = ask(client, [long_user(topics[2])])
    assert last.usage.prompt_tokens_details.cached_tokens == BLOCK and answer(last) == answer(firsts[2])
    assert prefix_stats(server)["tokens"] == 2 * BLOCK


def test_a_picture_sent_again_hits_by_content(client):
    def with_picture(seed: int) -> list[dict]:
        part = image_part(pattern_png(seed))
        return [{"role": "user", "content": [part, {"type": "text", "text": SENTENCE * 7}]}]

    first = ask(client, with_picture(1))
    again = ask(client, with_picture(1))
    other = ask(client, with_picture(2))  # another picture, the same prompt tokens
    assert first.usage.prompt_tokens == again.usage.prompt_tokens == other.usage.prompt_tokens > BLOCK
    cached = [r.usage.prompt_tokens_details.cached_tokens for r in (first, again, other)]
    assert cached == [0, BLOCK, 0]
    assert answer(again) == answer(first)
