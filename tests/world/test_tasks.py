"""Task generator tests: every example valid, answers re-derived from the scene by an independent
reader of the question, edits change only what was asked, held-out combos and phrasings never in
train, determinism (also across hash seeds)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter

import pytest

from imagemini.world import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, Scene, SceneObject, layout_is_clean, parse_description
from imagemini.world.chat import Example, ImageRef, Turn
from imagemini.world.phrasings import CAPABILITIES, DECLINE, GREETING, HELDOUT_PHRASINGS
from imagemini.world.task_builder import HELDOUT_COMBOS
from imagemini.world.tasks import TASKS, generate, task_mixture

N = 2000


@pytest.fixture(scope="module")
def train() -> list[Example]:
    return generate(random.Random(1234), N)


@pytest.fixture(scope="module")
def heldout() -> list[Example]:
    return generate(random.Random(99), 1000, split="heldout")


# --- An independent reader of the questions ------------------------------------------------


def alt(names) -> str:
    return "|".join(sorted(map(re.escape, names), key=len, reverse=True))


SHP, COL, SIZ, POS = alt(SHAPES), alt(COLORS), alt(SIZES), alt(POSITIONS)
PLURAL = {"circles": "circle", "squares": "square", "triangles": "triangle", "crosses": "cross", "objects": None}
REF = (
    rf"(?:object at the (?P<p>{POS})|(?P<c1>{COL}) object|(?P<c2>{COL}) (?P<s1>{SHP})"
    rf"|(?P<z>{SIZ}) (?P<s2>{SHP})|(?P<s3>{SHP}))"
)
KIND = rf"(?:(?P<color>{COL}) )?(?P<noun>objects|circles|squares|triangles|crosses)"
KIND_UNNAMED = rf"(?:({COL}) )?(objects|circles|squares|triangles|crosses)"
OBJ = rf"an? ({SIZ}) ({COL}) ({SHP}) at the ({POS})"


def ref_attrs(m: re.Match) -> dict:
    d = {
        "position": m["p"],
        "color": m["c1"] or m["c2"],
        "shape": m["s1"] or m["s2"] or m["s3"],
        "size": m["z"],
    }
    return {k: v for k, v in d.items() if v}


def resolve(scene: Scene, attrs: dict) -> SceneObject:
    found = [o for o in scene.objects if all(getattr(o, k) == v for k, v in attrs.items())]
    assert len(found) == 1, f"reference {attrs} is not unique in {scene.describe()}"
    return found[0]


def refs_in(text: str) -> list[tuple[str, dict]]:
    return [(m.group(0)[4:], ref_attrs(m)) for m in re.finditer(rf"the {REF}\b", text)]


def kind_in(text: str) -> tuple:
    m = re.search(KIND, text)
    return PLURAL[m["noun"]], m["color"]


def count(scene: Scene, shape, color) -> int:
    return sum((shape is None or o.shape == shape) and (color is None or o.color == color) for o in scene.objects)


def texts(turn: Turn) -> list[str]:
    return [p for p in turn.parts if isinstance(p, str)]


def images(example: Example) -> list[ImageRef]:
    return [p for t in example.turns for p in t.parts if isinstance(p, ImageRef)]


def last_user(example: Example) -> Turn:
    return [t for t in example.turns if t.role == "user"][-1]


def question_and_scene(example: Example) -> tuple[str, Scene]:
    (question,) = texts(last_user(example))
    (image,) = [p for t in example.turns if t.role == "user" for p in t.parts if isinstance(p, ImageRef)]
    return question, image.scene


def expected_text(example: Example) -> str:
    """The answer, derived from the scene and the question text alone."""
    q, scene = question_and_scene(example)
    task = example.task
    if task == "describe":
        return scene.describe()
    if task == "describe_json":
        return json.dumps(scene.to_json(), separators=(",", ":"))
    if task == "background":
        assert "background" in q
        return f"{scene.background.capitalize()}."
    if task == "is_there":
        thing = rf"(?P<c>{COL}) object|(?P<c2>{COL}) (?P<s2>{SHP})|(?P<s>{SHP}) at the (?P<p>{POS})|(?P<s3>{SHP})"
        m = re.search(rf"an? (?:{thing})\b", q)
        want = {"color": m["c"] or m["c2"], "shape": m["s"] or m["s2"] or m["s3"], "position": m["p"]}
        hit = any(all(getattr(o, k) == v for k, v in want.items() if v) for o in scene.objects)
        return "Yes." if hit else "No."
    if re.search(r"\bmore\b", q):
        (m,) = [re.search(rf"more {KIND_UNNAMED} than {KIND_UNNAMED}", q)]
        a = count(scene, PLURAL[m.group(2)], m.group(1))
        b = count(scene, PLURAL[m.group(4)], m.group(3))
        return "Yes." if a > b else "No."
    if task in ("count", "reason_count"):
        return f"{count(scene, *kind_in(q))}."
    if task == "color_of":
        ((_, attrs),) = refs_in(q)
        assert "color" not in attrs
        return resolve(scene, attrs).color.capitalize() + "."
    if task == "where_is":
        ((_, attrs),) = refs_in(q)
        assert "position" not in attrs
        return f"At the {resolve(scene, attrs).position}."
    if task in ("bigger", "reason_compare"):
        (ra, a), (rb, b) = refs_in(q)
        oa, ob = resolve(scene, a), resolve(scene, b)
        assert "size" not in a and "size" not in b and oa.size != ob.size
        want_big = bool(re.search(r"\b(bigger|larger)\b", q))
        assert want_big != bool(re.search(r"\bsmaller\b", q))
        return f"The {ra if (oa.size == 'large') == want_big else rb}."
    raise AssertionError(task)


def scene_from_request(text: str) -> Scene:
    objects = [SceneObject(sh, c, sz, p) for sz, c, sh, p in re.findall(rf"(?i:a)n? {OBJ[4:]}", text)]
    (background,) = re.findall(rf"an? ({alt(BACKGROUNDS)}) background", text)
    return Scene(background, tuple(objects))


def expected_edit(example: Example) -> tuple[Scene, dict]:
    """(edited scene, offsets that must be kept by position) from the source image and the instruction."""
    before, instruction = last_user(example).parts
    scene, offs = before.scene, dict(zip((o.position for o in before.scene.objects), before.offsets))
    objs = list(scene.objects)
    if example.task == "edit_add":
        ((sz, c, sh, p),) = re.findall(OBJ, instruction)
        assert instruction.endswith(f"{sz} {c} {sh} at the {p}.")
        return Scene(scene.background, tuple(objs + [SceneObject(sh, c, sz, p)])), offs
    if example.task == "edit_recolor":
        m = re.fullmatch(rf"(.*) ({COL})\.", instruction)
        ((_, attrs),) = refs_in(m[1])
        obj = resolve(scene, attrs)
        new = SceneObject(obj.shape, m[2], obj.size, obj.position)
        return Scene(scene.background, tuple(new if o == obj else o for o in objs)), offs
    if example.task == "edit_remove":
        ((_, attrs),) = refs_in(instruction)
        obj = resolve(scene, attrs)
        del offs[obj.position]
        return Scene(scene.background, tuple(o for o in objs if o != obj)), offs
    m = re.fullmatch(rf"(.*) (?:to|at) the ({POS})\.", instruction)
    ((_, attrs),) = refs_in(m[1])
    obj = resolve(scene, attrs)
    del offs[obj.position]
    moved = SceneObject(obj.shape, obj.color, obj.size, m[2])
    return Scene(scene.background, tuple(moved if o == obj else o for o in objs)), offs


# --- Invariants ---------------------------------------------------------------------------


def check_example(ex: Example) -> None:
    assert ex.task in TASKS and ex.split in ("train", "heldout", "wording")
    roles = [t.role for t in ex.turns]
    assert roles[-1] == "assistant" and roles[-2] == "user" and "system" not in roles[1:]
    for turn in ex.turns:
        assert turn.parts and all(isinstance(p, (str, ImageRef)) for p in turn.parts)
    for image in images(ex):
        assert layout_is_clean(image.scene, image.offsets)
    final = ex.turns[-1].parts
    if ex.task in ("draw", "edit_recolor", "edit_remove", "edit_add", "edit_move"):
        assert not ex.thinking and len(final) == 1 and isinstance(final[0], ImageRef)
        assert final[0].scene == ex.answer
        return
    assert all(isinstance(p, str) for p in final)
    assert len(final) == (2 if ex.thinking else 1)
    assert ex.thinking is False or ex.task in ("reason_count", "reason_compare")
    answer = final[-1]
    if ex.task == "describe_json":
        assert json.loads(answer) == ex.answer
        assert Scene.from_json(ex.answer) == question_and_scene(ex)[1]
    else:
        assert answer == ex.answer
    # Multi-turn context: the earlier assistant turn describes the same image.
    if len([r for r in roles if r == "assistant"]) == 2:
        first_user = [t for t in ex.turns if t.role == "user"][0]
        (ctx,) = [p for p in first_user.parts if isinstance(p, ImageRef)]
        assert [t for t in ex.turns if t.role == "assistant"][0].parts == (ctx.scene.describe(),)


def test_every_example_is_valid_and_correct(train, heldout):
    for ex in train + heldout:
        check_example(ex)
        if ex.grammar:
            continue  # the grammar's wordings are read in tests/world/test_language.py
        if ex.task.startswith("smalltalk"):
            assert ex.answer == {"smalltalk_greet": GREETING, "smalltalk_capabilities": CAPABILITIES,
                                 "smalltalk_decline": DECLINE}[ex.task]
            assert not images(ex)
        elif ex.task == "draw":
            (request,) = texts(last_user(ex))
            assert scene_from_request(request) == ex.answer
        elif ex.task.startswith("edit_"):
            want, kept = expected_edit(ex)
            after = ex.turns[-1].parts[0]
            assert after.scene == want
            assert after.scene != last_user(ex).parts[0].scene
            for obj, off in zip(after.scene.objects, after.offsets):
                if obj.position in kept:
                    assert off == kept[obj.position], "an unchanged object moved"
        else:
            assert ex.answer == (json.loads(expected_text(ex)) if ex.task == "describe_json" else expected_text(ex)), ex


def test_reasoning_traces_are_correct(train):
    reasoned = [ex for ex in train if ex.thinking and not ex.grammar]  # grammar wordings: test_language.py
    assert len(reasoned) > 50
    for ex in reasoned:
        thought, answer = ex.turns[-1].parts
        q, scene = question_and_scene(ex)
        counts = [int(n) for n in re.findall(r"That makes (\d+)\.", thought)]
        if thought.startswith("I see "):
            listed = thought[len("I see "):].split(". ")[0]
            assert parse_description(f"{listed} on a {scene.background} background.", strict=False) == scene
        if ex.task == "reason_count":
            assert counts[-1] == int(answer[:-1])
        elif "more" in q:
            m = re.search(rf"more {KIND_UNNAMED} than {KIND_UNNAMED}", q)
            assert counts == [count(scene, PLURAL[m.group(2)], m.group(1)), count(scene, PLURAL[m.group(4)], m.group(3))]
            assert thought.endswith(f"{counts[0]} is {'more' if counts[0] > counts[1] else 'not more'} than {counts[1]}.")
        else:
            (ra, a), (rb, b) = refs_in(q)
            assert f"the {ra} is {resolve(scene, a).size} and the {rb} is {resolve(scene, b).size}" in thought.lower()
            assert thought.endswith(f"So the {answer[4:-1]} is {'bigger' if 'bigger' in q or 'larger' in q else 'smaller'}.")


def test_mixture_covers_every_task_and_both_answer_styles(train):
    assert set(task_mixture()) == set(TASKS)
    seen = Counter(ex.task for ex in train)
    assert set(seen) == set(TASKS)
    for task in ("reason_count", "reason_compare"):
        styles = Counter(ex.thinking for ex in train if ex.task == task)
        assert styles[True] > styles[False] > 0
    answers = Counter(ex.answer for ex in train if ex.task == "is_there")
    assert 0.35 < answers["Yes."] / sum(answers.values()) < 0.65
    assert any(ex.answer == "0." for ex in train)
    assert any(len(ex.turns) >= 4 for ex in train) and any(t.role == "system" for ex in train for t in ex.turns)
    only = generate(random.Random(0), 50, tasks={"edit_move": 1.0, "draw": 0.0})
    assert {ex.task for ex in only} == {"edit_move"}


def test_bad_arguments_raise():
    for kwargs in ({"split": "test"}, {"tasks": {"paint": 1.0}}, {"tasks": {"draw": -1.0}}, {"tasks": {}}):
        with pytest.raises(ValueError):
            generate(random.Random(0), 3, **kwargs)


# --- Held-out ------------------------------------------------------------------------------


def held_strings() -> list[str]:
    out = []
    for shape, color in HELDOUT_COMBOS:
        out += [f"{color} {shape}", f'"shape":"{shape}","color":"{color}"']
    return out


def template_regex(template: str) -> re.Pattern:
    return re.compile(re.sub(r"\\\{\w+\\\}", ".+", re.escape(template)))


def test_heldout_combos_never_in_train(train):
    assert len(HELDOUT_COMBOS) == 6 and len(set(HELDOUT_COMBOS)) == 6
    banned = held_strings()
    for ex in train:
        scenes = [i.scene for i in images(ex)] + ([ex.answer] if isinstance(ex.answer, Scene) else [])
        for scene in scenes:
            assert not any((o.shape, o.color) in HELDOUT_COMBOS for o in scene.objects), ex
        for turn in ex.turns:
            for text in texts(turn):
                assert not any(b in text.lower() for b in banned), text
        assert not ex.heldout_phrasing


def test_heldout_phrasings_never_in_train(train, heldout):
    patterns = [template_regex(t) for ts in HELDOUT_PHRASINGS.values() for t in ts]
    assert len(patterns) >= 20
    for ex in train:
        for text in texts(last_user(ex)):
            assert not any(p.fullmatch(text) for p in patterns), text
    used = [ex for ex in heldout if ex.heldout_phrasing]
    assert 0.3 < len(used) / len(heldout) < 0.8
    for ex in used:
        assert any(p.fullmatch(t) for t in texts(last_user(ex)) for p in patterns)


def test_heldout_examples_use_a_heldout_combo(heldout):
    for ex in heldout:
        assert ex.split == "heldout"
        scenes = [i.scene for i in images(ex)]
        if scenes:
            assert any((o.shape, o.color) in HELDOUT_COMBOS for s in scenes for o in s.objects), ex
        else:
            assert ex.heldout_phrasing  # small talk: held-out wording


# --- Determinism and rendering -------------------------------------------------------------


def test_deterministic_for_a_seed():
    assert generate(random.Random(5), 300) == generate(random.Random(5), 300)
    assert generate(random.Random(5), 300) != generate(random.Random(6), 300)


DIGEST = (
    "import hashlib, random; from imagemini.world.tasks import generate;"
    "print(hashlib.sha256(repr(generate(random.Random(3), 300, split='{split}')).encode()).hexdigest())"
)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_deterministic_across_hash_seeds(split):
    digests = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        code = DIGEST.format(split=split)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    here = hashlib.sha256(repr(generate(random.Random(3), 300, split=split)).encode()).hexdigest()
    assert digests == {here}
