"""GET /metrics through real servers: the counters move by exactly what was served, histograms
count each engine request once, gauges fall back to 0, who may read it, and the Grafana
dashboard (docs/grafana/imagemini.json) asks for nothing the server does not serve.

Two servers: an open one on the tiny checkpoint (text, a picture in twice, an image out, a 400),
and one with keys (an --api-key key and a store with a management key), whose clock is moved to
the start of a minute for the rate limit (IMAGEMINI_CLOCK_OFFSET_FILE, store/clock.py).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import httpx
import pytest
from apitest import REPO, chat_body, check_stream_framing, post_stream
from mediatest import image_part, pattern_png
from metricstest import moved, scrape, value
from prometheus_client.parser import text_string_to_metric_families
from test_api_keys import bearer, cli_key, make_key

CHAT = "/v1/chat/completions"
STATIC_KEY = "sk-static-operator-key"


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def server(start_server, checkpoint):
    with start_server(checkpoint) as s:
        yield s


@pytest.fixture(scope="module")
def model(server, http) -> str:
    return http.get(f"{server.url}/v1/models").json()["data"][0]["id"]


def served(http, server, model: str, eos: int) -> list[dict]:
    """Six completions of known kinds: (usage, finish_reason, images) of each."""
    endless = {str(eos): -100}
    picture = [{"role": "user", "content": [image_part(pattern_png(3)), {"type": "text", "text": "What is this?"}]}]
    bodies = [
        chat_body(model, "Hello", max_tokens=3, logit_bias=endless),
        chat_body(model, "Tell me more", max_tokens=5, logit_bias=endless),
        {"model": model, "messages": picture, "max_tokens": 4, "logit_bias": endless},
        {"model": model, "messages": picture, "max_tokens": 6, "logit_bias": endless},  # the encoder cache's hit
        chat_body(model, "Draw a circle", modalities=["image"], seed=1, logit_bias={str(eos): 100}),
    ]
    results = []
    for body in bodies:
        answer = http.post(server.url + CHAT, json=body).json()
        choice = answer["choices"][0]
        results.append({"usage": answer["usage"], "finish": choice["finish_reason"],
                        "images": len(choice["message"].get("images") or [])})
    events = post_stream(http, server.url, chat_body(model, "Stream", max_tokens=7, logit_bias=endless))
    results.append({"usage": check_stream_framing(events), "finish": "length", "images": 0})
    return results


def test_counters_move_by_exactly_what_was_served(server, http, model, tok):
    before = scrape(server)  # no key: the server has none
    results = served(http, server, model, tok.special.eos)
    assert http.post(server.url + CHAT, json={"model": model, "messages": "not a list"}).status_code == 400
    server.wait_idle()
    after = scrape(server)

    prompt = sum(r["usage"]["prompt_tokens"] for r in results)
    completion = sum(r["usage"]["completion_tokens"] for r in results)
    image_tokens = sum(r["usage"]["completion_tokens_details"]["image_tokens"] for r in results)
    assert image_tokens > 0 and sum(r["images"] for r in results) == 1
    assert moved(before, after, "imagemini:prompt_tokens_total") == prompt
    assert moved(before, after, "imagemini:generation_tokens_total") == completion
    assert moved(before, after, "imagemini:generation_image_tokens_total") == image_tokens
    assert moved(before, after, "imagemini:generated_images_total") == 1
    for reason, count in Counter(r["finish"] for r in results).items():
        assert moved(before, after, "imagemini:request_success_total", finished_reason=reason) == count
    assert moved(before, after, "imagemini:http_responses_total", handler=CHAT, code="200") == len(results)
    assert moved(before, after, "imagemini:http_responses_total", handler=CHAT, code="400") == 1
    assert moved(before, after, "imagemini:mm_cache_queries_total") == 2
    assert moved(before, after, "imagemini:mm_cache_hits_total") == 1

    for histogram in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds",
                      "request_prompt_tokens", "request_generation_tokens"):
        assert moved(before, after, f"imagemini:{histogram}_count") == len(results), histogram
    assert moved(before, after, "imagemini:request_prompt_tokens_sum") == prompt
    assert moved(before, after, "imagemini:request_generation_tokens_sum") == completion
    # One interval per delta after the first; every completion here had several tokens.
    assert moved(before, after, "imagemini:inter_token_latency_seconds_count") >= len(results)
    for gauge in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        assert value(after, f"imagemini:{gauge}") == 0, gauge


# --- a server with keys -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed(start_server, tiny_checkpoint, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("metrics-store")
    admin = cli_key(data_dir, "--name", "admin", "--management")
    clock_file = tmp_path_factory.mktemp("metrics-clock") / "offset"
    clock_file.write_text(str(60 - time.time() % 60 + 1))  # the start of a minute: the rate window is not crossed
    env = {"IMAGEMINI_CLOCK_OFFSET_FILE": str(clock_file)}
    with start_server(tiny_checkpoint, "--data-dir", str(data_dir), "--api-key", STATIC_KEY, env=env) as s:
        yield s, admin


def test_metrics_need_an_operator_key_when_keys_are_required(keyed):
    server, admin = keyed
    url = f"{server.url}/metrics"
    refused = httpx.get(url, timeout=30)
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    plain = make_key(server, admin, "app")
    assert httpx.get(url, headers=bearer(plain), timeout=30).status_code == 403
    assert value(scrape(server, bearer(admin)), "imagemini:num_requests_running") == 0
    assert value(scrape(server, bearer(STATIC_KEY)), "imagemini:num_requests_waiting") == 0


def test_limit_rejections_are_counted_by_reason(keyed):
    server, admin = keyed
    before = scrape(server, bearer(admin))
    model = httpx.get(f"{server.url}/v1/models", headers=bearer(STATIC_KEY), timeout=30).json()["data"][0]["id"]
    body = chat_body(model, "hi", max_tokens=2)
    broke = make_key(server, admin, "broke", limit=0)
    one_a_minute = make_key(server, admin, "rpm", requests_per_minute=1)
    statuses = [httpx.post(server.url + CHAT, json=body, headers=bearer(key), timeout=120).status_code
                for key in (broke, one_a_minute, one_a_minute)]
    assert statuses == [402, 200, 429]
    after = scrape(server, bearer(admin))
    assert moved(before, after, "imagemini:limit_rejections_total", reason="credit_limit") == 1
    assert moved(before, after, "imagemini:limit_rejections_total", reason="requests_per_minute") == 1
    assert moved(before, after, "imagemini:http_responses_total", handler=CHAT, code="402") == 1
    assert moved(before, after, "imagemini:http_responses_total", handler=CHAT, code="429") == 1


def test_the_grafana_dashboard_asks_only_for_served_metrics(server):
    dashboard = json.loads((REPO / "docs" / "grafana" / "imagemini.json").read_text())
    asked = {re.sub(r"_(bucket|total)$", "", name) for panel in dashboard["panels"] for target in panel["targets"]
             for name in re.findall(r"imagemini:\w+", target["expr"])}
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    served = {family.name for family in text_string_to_metric_families(text)}
    assert asked and asked <= served, asked - served
