"""The grammar of requests (world/language.py): what a request states can be read back from its
words, its completion fits it, held-out frames and synonyms never reach training, the surface forms
number in the thousands, and a colour not next to "background" is an object's."""

from __future__ import annotations

import random
import re
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from imagemini.world import BACKGROUNDS, COLORS, POSITIONS, SHAPES, Scene
from imagemini.world.language import (
    FRAMES,
    SYNONYMS,
    DrawRequest,
    ObjectSpec,
    Wording,
    complete,
    request_text,
    sample_request,
)
from imagemini.world.task_builder import is_heldout_combo
from imagemini.world.tasks import generate


def train_allowed(shape: str, color: str) -> bool:
    return not is_heldout_combo(shape, color)


# --- An independent reader of the grammar's words -----------------------------------------

WORD_TO = {w: concept for concept, (train, held) in SYNONYMS.items() for w in train + held}
SIZE_WORDS = {w: c.split(":")[1] for w, c in WORD_TO.items() if c.startswith("size:")}
PLACE_WORDS = {w: c.split(":")[1] for w, c in WORD_TO.items() if c.startswith("pos:")}
COLOR_WORDS = {**{c: c for c in BACKGROUNDS}, "grey": "gray"}
SHAPE_WORDS = {**{s: s for s in SHAPES}, "circles": "circle", "squares": "square", "triangles": "triangle",
               "crosses": "cross"}
NUMBER_WORDS = {"two": 2, "three": 3, "four": 4, "2": 2, "3": 3, "4": 4}


def read_stated(text: str) -> dict:
    """What a drawing request states, from its words alone: the background (a colour next to the
    word "background"), and the sets of object colours, shapes, sizes, places and the count."""
    text = text.lower()
    background = re.search(rf"\b({'|'.join(COLOR_WORDS)}) background\b|\bbackground ({'|'.join(COLOR_WORDS)})\b", text)
    bg_word = background and (background[1] or background[2])
    rest = text.replace(background[0], " ") if background else text
    words = re.findall(r"[a-z0-9]+", rest)
    place_alt = "|".join(map(re.escape, sorted(PLACE_WORDS, key=len, reverse=True)))  # longest first
    places = {PLACE_WORDS[m[1]] for m in re.finditer(rf"\b(?:at|in|on) the ({place_alt})\b", rest)}
    counts = [NUMBER_WORDS[w] for w in words if w in NUMBER_WORDS]
    return {
        "background": COLOR_WORDS[bg_word] if bg_word else None,
        "colors": {COLOR_WORDS[w] for w in words if w in COLOR_WORDS},
        "shapes": {SHAPE_WORDS[w] for w in words if w in SHAPE_WORDS},
        "sizes": {SIZE_WORDS[w] for w in words if w in SIZE_WORDS},
        "places": places,
        "count": counts[0] if counts else None,
    }


def stated_by(request: DrawRequest) -> dict:
    objects = request.objects
    counts = [n for _, n in request.groups if n > 1]
    return {
        "background": request.background,
        "colors": {o.color for o in objects if o.color},
        "shapes": {o.shape for o in objects if o.shape},
        "sizes": {o.size for o in objects if o.size},
        "places": {o.position for o in objects if o.position},
        "count": counts[0] if counts else None,
    }


seeds = st.integers(min_value=0, max_value=2**32 - 1)


@settings(max_examples=300, deadline=None)
@given(seeds, st.booleans())
def test_every_stated_attribute_can_be_read_back(seed, heldout):
    rng = random.Random(seed)
    request = sample_request(rng, train_allowed)
    text = request_text(request, Wording(rng, heldout))
    assert read_stated(text) == stated_by(request), text


@settings(max_examples=300, deadline=None)
@given(seeds)
def test_a_completion_fits_its_request_and_the_seed_picks_what_is_open(seed):
    rng = random.Random(seed)
    request = sample_request(rng, train_allowed)
    scenes = {complete(request, random.Random(seed * 7 + k), train_allowed) for k in range(8)}
    for scene in scenes:
        assert request.fits(scene) and len(scene.objects) == len(request.objects)
        assert not any(is_heldout_combo(o.shape, o.color) for o in scene.objects)
    fully_stated = request.background and all(len(o.stated()) == 4 for o in request.objects)
    if not fully_stated:
        assert len(scenes) > 1  # two seeds, two pictures


def test_fits_requires_every_stated_attribute_and_nothing_extra():
    from imagemini.world import SceneObject

    red_circle = ObjectSpec(shape="circle", color="red")
    request = DrawRequest(((red_circle, 2),), background=None)
    two = Scene("white", (SceneObject("circle", "red", "small", "top"), SceneObject("circle", "red", "large", "left")))
    assert request.fits(two)
    assert not request.fits(Scene("white", two.objects[:1]))  # too few
    three = Scene("white", (*two.objects, SceneObject("square", "blue", "small", "center")))
    assert not request.fits(three)  # something extra
    blue = Scene("white", (two.objects[0], SceneObject("circle", "blue", "large", "left")))
    assert not request.fits(blue)
    assert not DrawRequest(((red_circle, 2),), background="black").fits(two)


def test_a_colour_without_background_is_never_the_background():
    for ex in generate(random.Random(11), 3000):
        if ex.request is None:
            continue
        (text,) = [p for p in ex.turns[-2].parts if isinstance(p, str)]
        read = read_stated(text)
        if "background" not in text.lower():
            assert ex.request.background is None
        assert ex.answer.background not in read["colors"], text
        if read["background"]:
            assert ex.answer.background == read["background"]


def heldout_frame_patterns() -> list[re.Pattern]:
    out = []
    for _, held in FRAMES.values():
        for frame in held:
            core = re.escape(frame[2:]).replace(r"\{", "{").replace(r"\}", "}")
            out.append(re.compile(r"\b" + re.sub(r"\{\w+\}", ".+", core) + r"\b"))
    return out


HELDOUT_WORDS = [w for _, held in SYNONYMS.values() for w in held]


def user_texts(ex) -> list[str]:
    return [p.lower() for t in ex.turns if t.role == "user" for p in t.parts if isinstance(p, str)]


def test_heldout_frames_and_synonyms_never_in_train():
    train = generate(random.Random(2024), 6000)
    patterns = heldout_frame_patterns()
    assert sum(ex.grammar for ex in train) > 2000
    for ex in train:
        for text in user_texts(ex):
            assert not any(re.search(rf"\b{w}\b", text) for w in HELDOUT_WORDS), text
            assert not any(p.search(text) for p in patterns), text
    wording = generate(random.Random(2025), 1500, split="wording")
    assert all(ex.grammar and ex.heldout_phrasing for ex in wording)
    assert all(ex.said.frame in FRAMES[ex.said.intent][1] for ex in wording)
    used = Counter(w for ex in wording for w in ex.said.heldout_words)
    assert set(used) == set(HELDOUT_WORDS)
    for ex in wording:
        for shape, color in ((o.shape, o.color) for p in ex.turns[0].parts if hasattr(p, "scene") for o in p.scene.objects):
            assert not is_heldout_combo(shape, color)


def test_surface_forms_number_in_the_thousands():
    train = [ex for ex in generate(random.Random(7), 8000) if ex.grammar]
    texts = {t for ex in train for t in user_texts(ex)}
    assert len(texts) > 3000
    draw_chats = [ex for ex in train if ex.task == "draw"]
    draws = {t for ex in draw_chats for t in user_texts(ex)}
    assert len(draw_chats) > 500 and len(draws) > 0.95 * len(draw_chats)  # hardly a request twice
    counts = {t for ex in train if ex.task in ("count", "reason_count") for t in user_texts(ex)}
    assert len(counts) > 200
    assert len({ex.said.frame for ex in train}) > 120


def test_grammar_questions_have_answers_people_can_use():
    for ex in generate(random.Random(5), 4000, split="wording"):
        if ex.task not in ("count", "color_of", "where_is", "background", "reason_count") or ex.thinking:
            continue
        answer = ex.turns[-1].parts[-1]
        assert answer == answer.strip() and (answer[0].isupper() or answer[0].isdigit())
        scene = [p for t in ex.turns for p in t.parts if hasattr(p, "scene")][-1].scene
        if ex.task in ("count", "reason_count"):
            assert re.fullmatch(r"\d\.", answer)  # the number first
        elif ex.task == "background":
            assert answer == f"{scene.background.capitalize()}."
        elif answer.startswith("There is no "):
            color, shape = answer[len("There is no "):-1].split()
            assert not any(o.color == color and o.shape == shape for o in scene.objects)
        else:
            assert answer[:-1].lower() in COLORS or answer[len("At the "):-1] in POSITIONS


def test_grammar_rate_sets_the_share_of_grammar_worded_training_chats():
    assert not any(ex.grammar for ex in generate(random.Random(3), 400, grammar_rate=0.0))
    share = sum(ex.grammar for ex in generate(random.Random(3), 1000)) / 1000
    assert 0.4 < share < 0.6
    assert all(ex.grammar for ex in generate(random.Random(3), 200, grammar_rate=1.0))
