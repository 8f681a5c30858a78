"""`imagemini serve --device D` for each device under test (conftest.devices_under_test: the CPU
always, CUDA where there is a GPU), through the official SDK: a seeded answer with logprobs is
the same bits alone and beside other requests, a picture comes out and goes back in, and
/health names where the model runs."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import pytest
from apitest import devices_under_test
from test_api_image_output import images_of

@pytest.fixture(scope="module", params=devices_under_test())
def server(request, start_server, tiny_checkpoint):
    with start_server(tiny_checkpoint, "--device", request.param) as s:
        s.device = request.param
        yield s


@pytest.fixture(scope="module")
def client(sdk, server):
    return sdk(server)


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


def answer(client, model: str, seed: int, text: str = "Describe the picture.") -> tuple:
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], seed=seed, max_tokens=16, temperature=1.0,
        logprobs=True, top_logprobs=2,
    )
    choice = completion.choices[0]
    return choice.message.content, [(t.token, t.logprob) for t in choice.logprobs.content]


def test_health_names_the_device(server, http):
    assert http.get(server.url + "/health").json()["engine"]["device"] == server.device


def test_a_seeded_answer_is_the_same_beside_other_requests(client, model):
    alone = answer(client, model, seed=11)
    others = ["How many circles are there?", "Is there a blue triangle?", "Hello! What can you do?"] * 3
    with ThreadPoolExecutor(len(others) + 1) as pool:
        crowd = [pool.submit(answer, client, model, 100 + i, text) for i, text in enumerate(others)]
        together = pool.submit(answer, client, model, 11)
        assert together.result() == alone
        assert len({c.result()[0] for c in crowd}) > 1


def test_a_picture_drawn_and_shown_back(client, model):
    drawn = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Draw a red circle."}], modalities=["image"], seed=5,
    )
    (png,) = images_of(drawn.choices[0].message)
    assert png.startswith(b"\x89PNG")
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    seen = client.chat.completions.create(
        model=model, max_tokens=8, seed=1,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                               {"type": "text", "text": "What is in the picture?"}]}],
    )
    assert seen.usage.prompt_tokens > 64 and seen.choices[0].message.content is not None
