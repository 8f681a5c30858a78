"""What a published-size checkpoint brings to the API, on the tiny network: a padded vocabulary
(ids with no token are refused in logit_bias and never come back) and a context longer than the
server's KV budget (served up to the budget; past it, context_length_exceeded names both).

One server for the module: the padded-vocabulary checkpoint (tests/conftest.py) with
`--kv-budget-tokens 600`, below the network's 1,024 positions.
"""

from __future__ import annotations

import pytest

from imagemini.models.tokenizer import Tokenizer

KV_BUDGET = 600
CONTEXT = 1024


@pytest.fixture(scope="module")
def server(start_server, padded_checkpoint):
    with start_server(padded_checkpoint, "--kv-budget-tokens", str(KV_BUDGET)) as s:
        yield s


@pytest.fixture(scope="module")
def request_body(padded_checkpoint):
    def body(**fields) -> dict:
        return {"model": f"imagemini/{padded_checkpoint.name}", "messages": [{"role": "user", "content": "Hi"}], **fields}

    return body


@pytest.fixture(scope="module")
def tok(padded_checkpoint) -> Tokenizer:
    return Tokenizer.from_dir(padded_checkpoint)


def test_a_bias_on_an_id_without_a_token_is_a_400(server, http, request_body, tok):
    r = http.post(f"{server.url}/v1/chat/completions", json=request_body(logit_bias={str(tok.vocab_size + 10): 100}))
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "logit_bias" and str(tok.vocab_size + 10) in error["message"]
    last = http.post(f"{server.url}/v1/chat/completions", json=request_body(logit_bias={str(tok.vocab_size - 1): 1}, max_tokens=2))
    assert last.status_code == 200


def test_hot_sampling_returns_only_tokens(server, http, request_body, tok):
    body = request_body(max_tokens=80, temperature=2.0, n=3, seed=7, logprobs=True, top_logprobs=5)
    r = http.post(f"{server.url}/v1/chat/completions", json=body)
    assert r.status_code == 200
    texts = {tok.token_text(i) for i in range(tok.vocab_size)}
    for choice in r.json()["choices"]:
        for entry in choice["logprobs"]["content"]:
            assert entry["token"] in texts and all(t["token"] in texts for t in entry["top_logprobs"])


def test_a_long_prompt_is_served_up_to_the_kv_budget(server, http, request_body):
    long = [{"role": "user", "content": "circle " * 200}]
    first = http.post(f"{server.url}/v1/chat/completions", json=request_body(messages=long, max_tokens=1))
    prompt = first.json()["usage"]["prompt_tokens"]
    assert 200 <= prompt < KV_BUDGET
    fits = http.post(f"{server.url}/v1/chat/completions", json=request_body(messages=long, max_tokens=KV_BUDGET - prompt))
    assert fits.status_code == 200
    over = http.post(f"{server.url}/v1/chat/completions", json=request_body(messages=long, max_tokens=KV_BUDGET - prompt + 1))
    assert over.status_code == 400
    error = over.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert f"maximum context length is {KV_BUDGET} tokens" in error["message"]
    assert f"the model's context is {CONTEXT} tokens" in error["message"]
    assert f"you requested {KV_BUDGET + 1} tokens" in error["message"]
