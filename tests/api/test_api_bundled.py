"""The bundled shapes-world model behind the real server, through the `openai` SDK: what it reads
from a rendered picture and what it draws and keeps when editing, judged by the scene parser.
Greedy text and fixed seeds, so outcomes are fixed on a given machine; the bars are what this
checkpoint does with some margin for other CPUs' kernels (its own counts are in the comments).
The tests print the rates; the model card reports the held-out ones. A random checkpoint fails
every assertion here.
"""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from mediatest import image_part
from PIL import Image

from imagemini.cli import BUNDLED_MODEL
from imagemini.world import SceneParseError, parse_image, render
from imagemini.world.scene import Scene, SceneObject

pytestmark = pytest.mark.skipif(
    not (BUNDLED_MODEL / "model.safetensors").exists(), reason="no bundled checkpoint in this checkout"
)

# One large object per shape, in (shape, colour) pairs the model was trained on.
SCENES = [
    Scene("white", (SceneObject("circle", "red", "large", "center"),)),
    Scene("yellow", (SceneObject("square", "blue", "large", "top left"),)),
    Scene("black", (SceneObject("triangle", "red", "large", "bottom right"),)),
    Scene("white", (SceneObject("cross", "green", "large", "top"),)),
    Scene("blue", (SceneObject("circle", "yellow", "large", "left"),)),
    Scene("white", (SceneObject("square", "green", "large", "bottom"),)),
    Scene("purple", (SceneObject("triangle", "white", "large", "center"),)),
    Scene("gray", (SceneObject("cross", "red", "large", "right"),)),
]


DRAW_SEEDS = 16
MIN_SHAPES = 7  # of 8 (8 on the machine that trained it)
MIN_PLACED = 12  # of 16 (16 there)
MIN_EXACT_DRAWN = 11  # of 16 (15 there)
MIN_KEPT = 12  # of 16 (16 there)
MIN_EXACT_EDITED = 12  # of 16 (16 there)


@pytest.fixture(scope="module")
def server(start_server):
    with start_server(BUNDLED_MODEL) as s:
        yield s


@pytest.fixture(scope="module")
def client(server, sdk):
    return sdk(server)


@pytest.fixture(scope="module")
def model_id(client) -> str:
    return client.models.list().data[0].id


def png(scene: Scene) -> bytes:
    buffer = io.BytesIO()
    render(scene, 64).save(buffer, "PNG")
    return buffer.getvalue()


def read_scene(url: str) -> Scene | None:
    assert url.startswith("data:image/png;base64,")
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
    try:
        return parse_image(pixels)
    except SceneParseError:
        return None


def describe(client, model_id, scene: Scene) -> str:
    reply = client.chat.completions.create(
        model=model_id, temperature=0, max_tokens=40,
        messages=[{"role": "user", "content": [image_part(png(scene)), {"type": "text", "text": "Describe the picture."}]}],
    )
    return reply.choices[0].message.content


def test_describes_what_it_sees_in_rendered_scenes(client, model_id):
    """Shape, colour, size, place and background of the object, read from the pixels (the
    prompt says nothing about them)."""
    shapes = []
    for scene in SCENES:
        text = describe(client, model_id, scene)
        obj = scene.objects[0]
        for word in (obj.color, obj.size, f"at the {obj.position}", f"on {'an' if scene.background[0] in 'aeiou' else 'a'} {scene.background} background"):
            assert word in text, (scene, text)
        shapes.append(obj.shape in text)
    print(f"shape named in {sum(shapes)} of {len(shapes)}")
    assert sum(shapes) >= MIN_SHAPES


def test_different_pictures_get_different_descriptions(client, model_id):
    assert len({describe(client, model_id, scene) for scene in SCENES}) == len(SCENES)


def all_seeds(client, model_id, messages: list[dict]):
    """One picture per seed in 0..DRAW_SEEDS-1, all requests at once: the engine batches them and
    each answer is what it is alone (the seed guarantee), in a fraction of the time."""
    patient = client.with_options(timeout=900)  # 16 pictures in flight: slow on a busy machine, never stuck

    def one(seed: int):
        return patient.chat.completions.create(model=model_id, modalities=["image"], seed=seed, max_tokens=300, messages=messages)

    with ThreadPoolExecutor(DRAW_SEEDS) as pool:
        return list(pool.map(one, range(DRAW_SEEDS)))


def test_draws_the_red_circle_scene(client, model_id):
    wanted = Scene("white", (SceneObject("circle", "red", "large", "top left"),))
    replies = all_seeds(client, model_id, [{"role": "user", "content": "Draw a large red circle at the top left on a white background."}])
    assert all(len(reply.choices[0].message.model_extra["images"]) == 1 for reply in replies)
    drawn = [read_scene(reply.choices[0].message.model_extra["images"][0]["image_url"]["url"]) for reply in replies]
    exact = sum(scene == wanted for scene in drawn)
    placed = sum(scene is not None and scene.background == "white" and any(o.position == "top left" for o in scene.objects)
                 for scene in drawn)
    print(f"red circle: exact {exact} of {DRAW_SEEDS}, white background with an object at the top left {placed}")
    assert placed >= MIN_PLACED
    assert exact >= MIN_EXACT_DRAWN


def test_edit_keeps_the_picture(client, model_id):
    before = Scene("white", (SceneObject("circle", "red", "large", "center"),))
    after = Scene("white", (SceneObject("circle", "blue", "large", "center"),))
    replies = all_seeds(client, model_id, [{"role": "user", "content": [image_part(png(before)), {"type": "text", "text": "Change the circle to blue."}]}])
    edited = [read_scene(reply.choices[0].message.model_extra["images"][0]["image_url"]["url"]) for reply in replies]
    exact = sum(scene == after for scene in edited)
    kept = sum(scene is not None and scene.background == "white" for scene in edited)
    print(f"edit: exact {exact} of {DRAW_SEEDS}, white background kept {kept}")
    assert kept >= MIN_KEPT
    assert exact >= MIN_EXACT_EDITED


# Questions in held-out wordings (world/language.py: frames training never uses),
# judged by content as `imagemini eval --split wording` judges them.
OTHER_SHAPE = {"circle": "cross", "square": "triangle", "triangle": "circle", "cross": "square"}
MIN_FREE_YES_NO = 13  # of 16 (15 on the machine that wrote this test)
MIN_FREE_WHERE = 6  # of 8 (8 there)
MIN_FREE_COLOUR = 6  # of 8 (8 there)
# Not asserted, as this checkpoint fails them (docs/eval/wording/README.md): free-worded drawings,
# "how many shapes can be seen" (a list of shapes instead of a number), the background's colour.


def ask(client, model_id, scene: Scene, question: str) -> str:
    reply = client.chat.completions.create(
        model=model_id, temperature=0, max_tokens=20,
        messages=[{"role": "user", "content": [image_part(png(scene)), {"type": "text", "text": question}]}],
    )
    return reply.choices[0].message.content


def test_answers_questions_worded_as_never_trained(client, model_id):
    from imagemini.train.scoring import colour_in, place_in

    yes_no, where, colour = [], [], []
    for scene in SCENES:
        obj = scene.objects[0]
        present = ask(client, model_id, scene, f"does this picture include a {obj.color} {obj.shape}?")
        absent = ask(client, model_id, scene, f"Would I find a {OTHER_SHAPE[obj.shape]} here")
        yes_no += [present.strip().lower().startswith("yes"), absent.strip().lower().startswith("no")]
        where.append(place_in(ask(client, model_id, scene, f"Whereabouts is the {obj.shape}?")) == obj.position)
        colour.append(colour_in(ask(client, model_id, scene, f"which colour was used for the {obj.shape}")) == obj.color)
    print(f"free-worded yes/no {sum(yes_no)} of {len(yes_no)}, where {sum(where)} of {len(where)}, "
          f"colour {sum(colour)} of {len(colour)}")
    assert sum(yes_no) >= MIN_FREE_YES_NO
    assert sum(where) >= MIN_FREE_WHERE
    assert sum(colour) >= MIN_FREE_COLOUR
