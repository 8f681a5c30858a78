"""Previews of pictures being drawn (`image_config.partial_images`), through the `openai` SDK
against a real server on the tiny random checkpoint (8x8 codes, 64x64 PNGs), in float32 so that
the test can redraw the same codes in-process and check each preview exactly: preview k is
`ImageWriter.preview_png` of the finished picture's first 64·(k+1) // (P+1) codes, decoded as
the server decodes previews (api/previews.py: one thread, whose float32 bits differ from a
team of several threads')."""

from __future__ import annotations

import asyncio
import base64
import io
from types import SimpleNamespace

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
import torch
from PIL import Image

from imagemini.api.plan import plan_completion
from imagemini.api.previews import picture_png, preview_png
from imagemini.api.schemas import ChatCompletionRequest
from imagemini.api.settings import ServerSettings
from imagemini.api.state import ServerState
from imagemini.engine.engine import Engine, EngineConfig
from imagemini.models.image_output import PREVIEW_GREY, ImageWriter

CODES, SIDE, GRID = 64, 64, 8  # codes per picture, pixels per side, codes per side
DRAW = [{"role": "user", "content": "Draw a red circle."}]


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def server(start_server, checkpoint):
    with start_server(checkpoint, "--dtype", "float32") as s:
        yield s


@pytest.fixture(scope="module")
def local(tiny_checkpoint):
    """The server's planning and engine in this process: the codes a request draws."""
    engine = Engine.from_checkpoint(tiny_checkpoint, EngineConfig(dtype="float32"))
    frontend = SimpleNamespace(tokenizer=engine.tokenizer, model=engine.model, grammars=engine.grammars)
    stand_in = SimpleNamespace(frontend=frontend, tokenizer=engine.tokenizer, limits=engine.limits)
    state = ServerState.build(tiny_checkpoint, stand_in, ServerSettings(), None)

    def codes_of(body: dict) -> list[list[int]]:
        request = ChatCompletionRequest.model_validate({"model": state.card.id, **body})
        plan = asyncio.run(plan_completion(state, request))
        return engine.generate([plan.prompt_ids], plan.params[0])[0]["images"]

    return SimpleNamespace(codes_of=codes_of, writer=ImageWriter(engine.model), model_id=state.card.id)


@pytest.fixture(scope="module")
def eos_bias(tok) -> dict:
    return {str(tok.special.eos): 100}  # the answer ends right after its picture


def body(local, eos_bias, partial_images: int | float | None = None) -> dict:
    config = {"image_config": {"partial_images": partial_images}} if partial_images is not None else {}
    return {"model": local.model_id, "messages": DRAW, "modalities": ["image"], "seed": 7, "logit_bias": eos_bias,
            **config}


def create(client, request: dict, stream: bool):
    """The SDK's create() with the fields it does not know (image_config) in extra_body."""
    known = {k: v for k, v in request.items() if k in ("model", "messages", "modalities", "seed", "logit_bias", "max_tokens")}
    extra = {k: v for k, v in request.items() if k not in known}
    return client.chat.completions.create(stream=stream, extra_body=extra or None, **known)


def streamed(client, request: dict) -> list[tuple]:
    """The stream's pictures and previews in order: ("image", png) and ("preview", index, k, png)."""
    events = []
    for chunk in create(client, request, stream=True):
        for choice in chunk.choices:
            delta = choice.delta.model_extra or {}
            for item in delta.get("image_previews") or []:
                assert item["type"] == "image_url" and set(item) == {"type", "image_url", "index", "preview_index"}
                events.append(("preview", item["index"], item["preview_index"], png_of(item)))
            for item in delta.get("images") or []:
                assert set(item) == {"type", "image_url"}
                events.append(("image", png_of(item)))
    return events


def order(events: list[tuple]) -> list[tuple]:
    """The events without their PNGs."""
    return [e[:3] if e[0] == "preview" else e[:1] for e in events]


def png_of(item: dict) -> bytes:
    head, _, payload = item["image_url"]["url"].partition(",")
    assert head == "data:image/png;base64"
    return base64.b64decode(payload)


def pixels(png: bytes) -> np.ndarray:
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG" and picture.size == (SIDE, SIDE) and picture.mode == "RGB"
    return np.asarray(picture)


def test_previews_are_decoded_by_a_one_thread_team():
    from imagemini.api import previews

    assert previews._decoder.submit(torch.get_num_threads).result() == 1
    with ThreadPoolExecutor(1) as other:  # threads started later keep torch's own team size
        assert other.submit(torch.get_num_threads).result() == torch.get_num_threads()


@pytest.mark.parametrize("partial_images", [1, 3])
def test_previews_come_in_order_before_the_picture(client, local, eos_bias, partial_images):
    events = streamed(client, body(local, eos_bias, partial_images))
    assert order(events) == [("preview", 0, k) for k in range(partial_images)] + [("image",)]
    for event in events[:-1]:
        pixels(event[3])


def test_a_client_reading_only_images_gets_one_picture_the_same_with_and_without_previews(client, local, eos_bias):
    with_previews = [e[1] for e in streamed(client, body(local, eos_bias, 3)) if e[0] == "image"]
    without = [e[1] for e in streamed(client, body(local, eos_bias)) if e[0] == "image"]
    whole = create(client, body(local, eos_bias), stream=False)
    assert len(with_previews) == 1 and with_previews == without
    assert [png_of(item) for item in whole.choices[0].message.model_extra["images"]] == without


def test_each_preview_is_the_pictures_first_codes_decoded_the_rest_grey(client, local, eos_bias):
    request = body(local, eos_bias, 3)
    events = streamed(client, request)
    (codes,) = local.codes_of({**request, "stream": True})
    assert events[-1] == ("image", picture_png(local.writer, codes)), "the same codes in-process, decoded as the server decodes"
    patch = SIDE // GRID
    for _, _, k, png in events[:-1]:
        drawn = CODES * (k + 1) // 4
        assert png == preview_png(local.writer, codes[:drawn])
        grid = pixels(png).reshape(GRID, patch, GRID, patch, 3).transpose(0, 2, 1, 3, 4).reshape(CODES, -1)
        assert (grid[drawn:] == PREVIEW_GREY).all() and not (grid[:drawn] == PREVIEW_GREY).all(axis=1).all()


def test_previews_of_a_second_picture_come_after_the_first(client, local, tok):
    request = {"model": local.model_id, "messages": DRAW, "modalities": ["image", "text"], "seed": 3,
               "max_tokens": 2 * (CODES + 2), "logit_bias": {str(tok.special.boi): 100},
               "image_config": {"partial_images": 2}}
    assert order(streamed(client, request)) == [("preview", 0, 0), ("preview", 0, 1), ("image",), ("preview", 1, 0), ("preview", 1, 1), ("image",)]


def test_partial_images_needs_a_stream(client, local, eos_bias):
    with pytest.raises(openai.BadRequestError) as e:
        create(client, body(local, eos_bias, 2), stream=False)
    assert e.value.param == "image_config.partial_images" and "stream" in e.value.message
    zero = create(client, body(local, eos_bias, 0), stream=False)
    assert len(zero.choices[0].message.model_extra["images"]) == 1


@pytest.mark.parametrize("value", [4, -1, 1.5])
def test_partial_images_out_of_range(client, local, eos_bias, value):
    with pytest.raises(openai.BadRequestError) as e:
        streamed(client, body(local, eos_bias, value))
    assert e.value.param == "image_config.partial_images"
