"""Images out, end to end through the `openai` SDK and raw HTTP against a real server.

One server for the module: a copy of the tiny random checkpoint (a 64-code VQ grid, 64x64 PNGs)
with a model card that prices image codes apart. Its images are noise, but every path is real:
guided sampling, the VQ decoder, PNG encoding, streaming. To make the model open an image in
`["image", "text"]` mode the tests bias begin-of-image (+100); `["image"]` alone starts drawing
at once. Every response and chunk is validated against OpenAI's schemas by the transport.
The module runs twice: in float32 and in bfloat16, the default dtype (conftest `dtype`).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import subprocess
import sys

import openai
import pytest
from apitest import REPO, carded_copy, check_stream_framing, post_stream
from mediatest import image_part, pattern_png
from PIL import Image


MODEL_ID = "imagemini/tiny-painter"
CODES = 64  # image tokens per generated image
SIDE = 64  # pixels
PRICES = {"prompt": 1.0, "completion": 2.0, "image_output": 30.0}  # USD per million tokens


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint, tmp_path_factory):
    card = {"id": MODEL_ID, "pricing_usd_per_million_tokens": PRICES}
    return carded_copy(tiny_checkpoint, tmp_path_factory.mktemp("painter") / "tiny-painter", card)


@pytest.fixture(scope="module")
def server(start_server, checkpoint, dtype):
    with start_server(checkpoint, "--dtype", dtype) as s:
        yield s




@pytest.fixture(scope="module")
def bias(tok) -> dict:
    """begin-of-image +100 (the model opens an image at once) and EOS +100 (text ends right after)."""
    return {"boi": {str(tok.special.boi): 100}, "eos": {str(tok.special.eos): 100}}


DRAW = [{"role": "user", "content": "Draw a red circle."}]


def draw(client, bias, seed=7, messages=DRAW, **kw):
    kw.setdefault("logit_bias", bias["eos"])
    return client.chat.completions.create(model=MODEL_ID, messages=messages, modalities=["image"], seed=seed, **kw)


def images_of(message) -> list[bytes]:
    """The PNG bytes of `message.images` (an OpenRouter field: extra on the SDK's models)."""
    found = (message.get("images") if isinstance(message, dict) else (message.model_extra or {}).get("images")) or []
    out = []
    for item in found:
        item = item if isinstance(item, dict) else item.model_dump()
        assert item["type"] == "image_url"
        head, _, payload = item["image_url"]["url"].partition(",")
        assert head == "data:image/png;base64"
        out.append(base64.b64decode(payload))
    return out


def test_model_card_lists_image_output(client):
    card = client.models.retrieve(MODEL_ID)
    assert card.architecture["output_modalities"] == ["text", "image"]
    assert {"modalities", "image_config"} <= set(card.supported_parameters)
    assert card.pricing["image_output"] == "0.00003"


def test_image_only_returns_a_png_of_the_native_size(client, bias):
    c = draw(client, bias)
    (png,) = images_of(c.choices[0].message)
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG" and picture.size == (SIDE, SIDE) and picture.mode == "RGB"
    picture.load()
    usage = c.usage
    details = usage.model_dump()["completion_tokens_details"]
    assert details["image_tokens"] == CODES
    assert usage.completion_tokens == CODES + 2  # codes, end-of-image, EOS (begin-of-image is in the prompt)
    cost = (usage.prompt_tokens * PRICES["prompt"] + 2 * PRICES["completion"] + CODES * PRICES["image_output"]) / 1e6
    assert usage.cost == pytest.approx(cost)
    assert c.choices[0].finish_reason == "stop"


def test_same_seed_same_png_alone_and_under_concurrency(server, client, bias, async_sdk):
    alone = images_of(draw(client, bias, seed=11).choices[0].message)

    async def many():
        async with async_sdk(server) as aclient:
            seeds = [11, 12, 11, 13, 11, 14, 15, 11]
            results = await asyncio.gather(*[
                aclient.chat.completions.create(model=MODEL_ID, messages=DRAW, modalities=["image"], seed=s, logit_bias=bias["eos"])
                for s in seeds
            ])
            return [(s, images_of(r.choices[0].message)) for s, r in zip(seeds, results)]

    together = asyncio.run(many())
    for seed, pngs in together:
        assert len(pngs) == 1
        if seed == 11:
            assert pngs == alone, "same seed: byte-identical PNG, batched or not"
        else:
            assert pngs != alone


def test_guidance_changes_the_image(client, bias):
    plain = images_of(draw(client, bias, extra_body={"image_config": {"guidance_scale": 1}}).choices[0].message)
    guided = images_of(draw(client, bias, extra_body={"image_config": {"guidance_scale": 5}}).choices[0].message)
    default = images_of(draw(client, bias).choices[0].message)  # generation_config.json: 5.0
    assert plain != guided and guided == default


def test_stream_delivers_the_image_in_delta_images(server, http, client, bias):
    body = {"model": MODEL_ID, "messages": DRAW, "modalities": ["image"], "seed": 7, "logit_bias": bias["eos"]}
    events = post_stream(http, server.url, body)
    usage = check_stream_framing(events)
    with_images = [c for c in events[:-1] if c["choices"] and c["choices"][0]["delta"].get("images")]
    assert len(with_images) == 1
    streamed = images_of(with_images[0]["choices"][0]["delta"])
    assert streamed == images_of(draw(client, bias, seed=7).choices[0].message)
    assert usage["completion_tokens_details"]["image_tokens"] == CODES


def test_the_model_opens_images_itself_in_image_and_text_mode(client, bias):
    c = client.chat.completions.create(
        model=MODEL_ID, messages=DRAW, modalities=["image", "text"], seed=3, max_tokens=CODES + 2, logit_bias=bias["boi"]
    )
    assert len(images_of(c.choices[0].message)) == 1
    assert c.usage.completion_tokens == CODES + 2 and c.choices[0].finish_reason == "length"


def test_text_modality_never_draws(server, http, client, bias):
    for modalities in (["text"], None):
        extra = {"modalities": modalities} if modalities else {}
        c = client.chat.completions.create(model=MODEL_ID, messages=DRAW, max_tokens=CODES + 4, logit_bias=bias["boi"], seed=1, **extra)
        assert images_of(c.choices[0].message) == [] and "images" not in c.choices[0].message.model_dump(exclude_none=True)
        assert c.usage.model_dump()["completion_tokens_details"]["image_tokens"] == 0
    events = post_stream(http, server.url, {"model": MODEL_ID, "messages": DRAW, "max_tokens": 8, "logit_bias": bias["boi"]})
    assert not any(c["choices"] and c["choices"][0]["delta"].get("images") for c in events[:-1])


def test_too_few_tokens_for_an_image(client, bias, http, server):
    c = client.chat.completions.create(
        model=MODEL_ID, messages=DRAW, modalities=["image", "text"], max_completion_tokens=10, logit_bias=bias["boi"]
    )
    assert c.choices[0].finish_reason == "length" and images_of(c.choices[0].message) == []
    assert c.usage.model_dump()["completion_tokens_details"]["image_tokens"] == 0
    with pytest.raises(openai.BadRequestError) as e:  # ["image"] starts with an image: it must fit
        draw(client, bias, max_completion_tokens=10)
    assert e.value.param == "max_completion_tokens" and str(CODES + 1) in e.value.message


def test_n_gives_independent_images(client, bias):
    c = draw(client, bias, n=2)
    (a,), (b,) = (images_of(choice.message) for choice in c.choices)
    assert a != b and c.usage.model_dump()["completion_tokens_details"]["image_tokens"] == 2 * CODES


def test_editing_takes_an_image_and_returns_one(client, bias):
    def edit(picture: bytes) -> list[bytes]:
        messages = [{"role": "user", "content": [image_part(picture), {"type": "text", "text": "Make the circle blue."}]}]
        return images_of(draw(client, bias, seed=5, messages=messages).choices[0].message)

    one, two = edit(pattern_png(1)), edit(pattern_png(2))
    assert len(one) == 1 and len(two) == 1 and one != two, "the input image conditions the output image"


@pytest.mark.parametrize("config, param", [
    ({"aspect_ratio": "16:9"}, "image_config.aspect_ratio"),
    ({"image_size": "2K"}, "image_config.image_size"),
    ({"guidance_scale": 25}, "image_config.guidance_scale"),
    ({"guidance_scale": 0.5}, "image_config.guidance_scale"),
])
def test_image_config_values_this_model_cannot_honour(client, bias, config, param):
    with pytest.raises(openai.BadRequestError) as e:
        draw(client, bias, extra_body={"image_config": config})
    assert e.value.param == param
    if "aspect_ratio" in config or "image_size" in config:
        assert "supported: " in e.value.message and ("1:1" in e.value.message or "1K" in e.value.message)


def test_supported_image_config_and_modalities_validation(client, bias, http, server):
    c = draw(client, bias, extra_body={"image_config": {"aspect_ratio": "1:1", "image_size": "1K"}})
    assert len(images_of(c.choices[0].message)) == 1
    for modalities, param in ((["audio"], "modalities[0]"), ([], "modalities")):
        r = http.post(f"{server.url}/v1/chat/completions", json={"model": MODEL_ID, "messages": DRAW, "modalities": modalities})
        assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_image_start_after_prompt_checkpoint(start_server, checkpoint, tmp_path_factory, sdk, bias):
    """generation_config.json image_start_after_prompt: every image request starts with an image."""
    path = tmp_path_factory.mktemp("eager") / "tiny-painter"
    shutil.copytree(checkpoint, path)
    gen = json.loads((path / "generation_config.json").read_text())
    (path / "generation_config.json").write_text(json.dumps({**gen, "image_start_after_prompt": True, "guidance_scale": 3.0}))
    with start_server(path) as eager:
        c = sdk(eager).chat.completions.create(
            model=MODEL_ID, messages=DRAW, modalities=["image", "text"], seed=7, logit_bias=bias["eos"]
        )
        assert len(images_of(c.choices[0].message)) == 1
        assert c.usage.completion_tokens == CODES + 2


def test_cli_generate_out(checkpoint, tmp_path):
    out = tmp_path / "picture.png"
    cmd = [sys.executable, "-m", "imagemini.cli", "generate", "Draw a red circle.", "--model", str(checkpoint),
           "--dtype", "float32", "--out", str(out), "--seed", "1", "--max-tokens", str(CODES + 1)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (SIDE, SIDE) and f"saved {out}" in done.stderr
