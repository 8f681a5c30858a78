"""Pictures of the history: an assistant message's `images` (as the API returned them) are read as
that turn's pictures, placed at the start of the next user message (api/chat.py). Units on the
parser, then the bundled model through the `openai` SDK: "Draw ..." then "Change the circle to
blue." with the drawn picture kept on the assistant message, and the same picture sent back as a
user image_url; both are edits, judged by the scene parser.
"""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
from mediatest import data_url, png_bytes
from PIL import Image

from imagemini.api.chat import PART_JOINER, parse_messages
from imagemini.api.errors import APIError
from imagemini.api.media import ImageRef
from imagemini.api.schemas import ChatCompletionRequest
from imagemini.cli import BUNDLED_MODEL
from imagemini.world import SceneParseError, parse_image

DRAW = "Draw a large red circle at the top left on a white background."
EDIT = "Change the circle to blue."
EDIT_SEEDS = 8
MIN_EDITS = 3  # of 8, either way (5 on the machine that measured it; a single-turn edit does 8)


def picture(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def parsed(messages: list[dict], accept_images: bool = True):
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": messages})
    return parse_messages(request.messages, accept_images=accept_images)


# --- the parser -----------------------------------------------------------------------------------
def test_an_assistant_picture_opens_the_next_user_message():
    url = data_url(png_bytes("red"))
    messages = parsed([
        {"role": "user", "content": DRAW},
        {"role": "assistant", "content": "", "images": [picture(url)]},
        {"role": "user", "content": EDIT},
    ])
    assert messages[1].parts == [""]
    ref, joiner, text = messages[2].parts
    assert isinstance(ref, ImageRef) and ref.url == url and ref.param == "messages[1].images[0]"
    assert (joiner, text) == (PART_JOINER, EDIT)


def test_the_same_prompt_as_the_picture_sent_back_as_a_user_image_url():
    url = data_url(png_bytes("blue"))
    kept = parsed([
        {"role": "user", "content": DRAW},
        {"role": "assistant", "content": " ", "images": [picture(url)]},
        {"role": "user", "content": EDIT},
    ])
    sent_back = parsed([
        {"role": "user", "content": DRAW},
        {"role": "assistant", "content": " "},
        {"role": "user", "content": [picture(url), {"type": "text", "text": EDIT}]},
    ])
    as_sent = [[p.url if isinstance(p, ImageRef) else p for p in m.parts] for m in sent_back]
    assert [[p.url if isinstance(p, ImageRef) else p for p in m.parts] for m in kept] == as_sent


def test_pictures_of_several_answers_keep_their_order_and_a_last_answer_keeps_its_own():
    urls = [data_url(png_bytes(c)) for c in ("red", "green", "blue")]
    messages = parsed([
        {"role": "user", "content": DRAW},
        {"role": "assistant", "content": "a", "images": [picture(urls[0])]},
        {"role": "assistant", "content": "b", "images": [picture(urls[1])]},
        {"role": "user", "content": EDIT},
        {"role": "assistant", "content": "c", "images": [picture(urls[2])]},
    ])
    assert [p.url for p in messages[3].parts if isinstance(p, ImageRef)] == urls[:2]
    assert [p.url for p in messages[4].parts if isinstance(p, ImageRef)] == urls[2:]
    assert messages[1].parts == ["a"] and messages[2].parts == ["b"]


def test_images_on_a_user_message_are_refused_not_dropped():
    with pytest.raises(APIError) as err:
        parsed([{"role": "user", "content": EDIT, "images": [picture(data_url(png_bytes()))]}])
    assert err.value.status == 400 and err.value.param == "messages[0].images"


def test_a_model_without_image_input_refuses_history_pictures():
    with pytest.raises(APIError) as err:
        parsed([{"role": "user", "content": DRAW}, {"role": "assistant", "content": "", "images": [picture(data_url(png_bytes()))]},
                {"role": "user", "content": EDIT}], accept_images=False)
    assert err.value.status == 400 and err.value.param == "messages[1].images"


# --- the bundled model ------------------------------------------------------------------------------
bundled = pytest.mark.skipif(not (BUNDLED_MODEL / "model.safetensors").exists(), reason="no bundled checkpoint in this checkout")


@pytest.fixture(scope="module")
def server(start_server):
    with start_server(BUNDLED_MODEL) as s:
        yield s


def circle_colour(url: str) -> str | None:
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
    try:
        scene = parse_image(pixels)
    except SceneParseError:
        return None
    return next((o.color for o in scene.objects if o.shape == "circle"), None)


async def draw_then_edit(client, seed: int) -> tuple[str | None, str | None, str | None]:
    """Circle colours of the first picture, the edit with the picture kept on the assistant
    message, and the edit with it sent back as a user image_url."""
    draw = dict(model="imagemini/bundled", modalities=["image", "text"], seed=seed, max_tokens=300)
    first = (await client.chat.completions.create(**draw, messages=[{"role": "user", "content": DRAW}])).choices[0].message
    url = first.images[0]["image_url"]["url"]  # an extra field: attribute access works on the SDK's message
    kept = [{"role": "user", "content": DRAW}, {"role": "assistant", "content": first.content, "images": first.images},
            {"role": "user", "content": EDIT}]
    sent = [{"role": "user", "content": DRAW}, {"role": "assistant", "content": first.content},
            {"role": "user", "content": [picture(url), {"type": "text", "text": EDIT}]}]
    answers = await asyncio.gather(*(client.chat.completions.create(**draw, messages=m) for m in (kept, sent)))
    edited = [a.choices[0].message for a in answers]
    return circle_colour(url), *(circle_colour(a.images[0]["image_url"]["url"]) if getattr(a, "images", None) else None
                                 for a in edited)


@bundled
def test_a_drawn_picture_is_edited_in_the_next_turn_either_way(server, async_sdk):
    """All seeds at once: the engine batches them, and each answer is what it would be alone (the
    seed guarantee), so this is the same test as one request after another, in less time."""
    async def all_seeds():
        async with async_sdk(server) as client:
            client = client.with_options(timeout=900)  # 24 pictures in flight: slow on a busy machine, never stuck
            return await asyncio.gather(*(draw_then_edit(client, seed) for seed in range(EDIT_SEEDS)))

    results = asyncio.run(all_seeds())
    assert [first for first, _, _ in results] == ["red"] * EDIT_SEEDS
    kept_edits = sum(kept == "blue" for _, kept, _ in results)
    sent_edits = sum(sent == "blue" for _, _, sent in results)
    print(f"edits in the second turn: picture on the assistant message {kept_edits} of {EDIT_SEEDS}, "
          f"as a user image_url {sent_edits} of {EDIT_SEEDS}")
    assert kept_edits >= MIN_EDITS
    assert sent_edits >= MIN_EDITS
