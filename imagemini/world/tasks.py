"""Task generator: shapes-world scenes -> chats that train and evaluate the bundled model.

    import random
    from imagemini.world.chat import prompt_and_completion
    from imagemini.world.tasks import generate

    train = generate(random.Random(0), 10_000)                   # split="train"
    evals = generate(random.Random(1), 1_000, split="heldout")
    prompt, completion = prompt_and_completion(train[0])       # loss on `completion` only

Each :class:`Example` (chat.py) is one chat (optional system turn, optional earlier turn, a user
turn, the assistant turn trained on) plus its ground truth. Where the rest lives: the chat format and
its text in chat.py, the wordings in phrasings.py, the held-out split and the Builder every task
draws through in task_builder.py.

Tasks and default weights (:func:`task_mixture`; weights need not sum to 1)::

    describe 0.12   count 0.06   color_of 0.05   where_is 0.05   is_there 0.05   bigger 0.04
    draw 0.20       edit_recolor / edit_remove / edit_add / edit_move 0.05 each
    describe_json 0.05   reason_count 0.06   reason_compare 0.05   background 0.03
    smalltalk_greet 0.02   smalltalk_capabilities 0.02   smalltalk_decline 0.03

Image generation gets the most weight (draw + edits = 0.40): it is the hardest output.

Canonical answers (exact-match scoring):
    describe        Scene.describe()
    describe_json   Scene.to_json_str() (compact separators); ``answer`` holds Scene.to_json()
    count           a digit and a period: "2." (also "0." for an absent kind)
    color_of        "Red."                    where_is   "At the top left."
    is_there        "Yes." / "No."            bigger     "The circle." (the question's own words)
    background      "Gray."
    absent object   "There is no red circle." (grammar-worded colour/place questions, ABSENT_RATE)
    reason_count    as count; reason_compare as bigger, or "Yes."/"No." for "Are there more A than B?"
    draw / edit_*   the assistant turn is one image; ``answer`` is the target Scene
    smalltalk_*     one fixed sentence each (GREETING, CAPABILITIES, DECLINE)

Reasoning: reason_count and reason_compare have ``thinking=True`` with probability 0.75; then the
last assistant turn's ``parts[0]`` is a short, correct trace ("I see a small red circle at the top
left and a large blue square at the center. Red objects: the red circle at the top left. That
makes 1.") and ``parts[1]`` the canonical answer. With ``thinking=False`` the same questions are
answered directly (as count and bigger always are).

Questions are answerable (phrasings.references: a unique description that never names the asked
attribute); "which is bigger" only compares a small with a large object.

Wording: in the train split half the chats are worded by the grammar (language.py: frames,
synonyms, partial drawing requests whose open attributes the rng picks, ``Example.request``), half
by the templates (phrasings.py); the heldout split uses the templates, the wording split the
grammar's held-out frames and synonyms (task_builder.py).

Variety beyond templates: 1 in 10 chats opens with a system prompt; 1 in 10 question chats first
asks for a description and then asks the question about the same image in a second user turn;
1 in 5 single-turn image questions puts the text before the image.

Everything is drawn from the ``rng`` argument only (no set iteration), so a seed gives the same
examples in any process.
"""

from __future__ import annotations

import random
from typing import Callable

from .chat import Example, ImageRef, Turn
from .language import ObjectSpec, complete, object_text, request_text, sample_request
from .phrasings import CAPABILITIES, DECLINE, GREETING, PHRASINGS, SYSTEM_PROMPTS, kind_noun, object_mention
from .scene import COLORS, POSITIONS, SHAPES, SIZES, Scene, SceneObject, article, join_phrases
from .task_builder import GRAMMAR_RATE, SPLITS, Builder, Core, Retry, is_heldout_combo

TASKS: tuple[str, ...] = (
    "describe", "count", "color_of", "where_is", "is_there", "bigger", "draw",
    "edit_recolor", "edit_remove", "edit_add", "edit_move", "describe_json",
    "reason_count", "reason_compare", "background", "smalltalk_greet", "smalltalk_capabilities", "smalltalk_decline",
)

THINKING_RATE = 0.75  # reason_* examples with a thought
SYSTEM_RATE = 0.1
CONTEXT_RATE = 0.1  # question chats that first ask for a description
TEXT_FIRST_RATE = 0.2
ABSENT_RATE = 0.15  # grammar-worded colour/place questions about an object that is not there


# --- Weights -----------------------------------------------------------------------------


def task_mixture() -> dict[str, float]:
    """Default sampling weights by task (see the module docstring for why)."""
    return {
        "describe": 0.12, "count": 0.06, "color_of": 0.05, "where_is": 0.05, "is_there": 0.05,
        "bigger": 0.04, "draw": 0.20, "edit_recolor": 0.05, "edit_remove": 0.05, "edit_add": 0.05,
        "edit_move": 0.05, "describe_json": 0.05, "reason_count": 0.06, "reason_compare": 0.05, "background": 0.03,
        "smalltalk_greet": 0.02, "smalltalk_capabilities": 0.02, "smalltalk_decline": 0.03,
    }


def _matches(obj: SceneObject, shape: str | None, color: str | None) -> bool:
    return (shape is None or obj.shape == shape) and (color is None or obj.color == color)


# --- Understanding tasks ------------------------------------------------------------------


def _describe(b: Builder) -> Core:
    scene = b.scene()
    text = scene.describe()
    return Core((b.image(scene), b.say("describe")), (text,), text, question=True, followup=False)


def _describe_json(b: Builder) -> Core:
    scene = b.scene()
    return Core((b.image(scene), b.say("describe_json")), (scene.to_json_str(),), scene.to_json(), question=True)


def _count_kind(b: Builder, scene: Scene) -> tuple[str | None, str | None]:
    """(shape, colour) to count, None = any; present in the scene 4 times out of 5."""
    kind = b.rng.choice(("all", "shape", "color", "color_shape"))
    if kind == "all":
        return None, None
    colors = [c for c in COLORS if c != scene.background]
    present = b.rng.random() < 0.8
    if present:
        obj = b.pick(list(scene.objects))
        return (obj.shape if "shape" in kind else None), (obj.color if "color" in kind else None)
    if kind == "shape":
        return b.choice([s for s in SHAPES if all(o.shape != s for o in scene.objects)]), None
    if kind == "color":
        return None, b.choice([c for c in colors if all(o.color != c for o in scene.objects)])
    return b.choice(_absent_combos(b, scene, colors))


def _absent_combos(b: Builder, scene: Scene, colors: list[str]) -> list[tuple[str, str]]:
    """(shape, colour) pairs the split allows and no object in ``scene`` has."""
    return [(s, c) for s in SHAPES for c in colors if b.allowed(s, c) and not any(_matches(o, s, c) for o in scene.objects)]


def _count_thought(scene: Scene, shape: str | None, color: str | None, n: int) -> str:
    seen = "I see " + join_phrases([o.phrase() for o in scene.objects]) + "."
    if shape is None and color is None:
        return f"{seen} That makes {n}."
    found = [object_mention(o) for o in scene.objects if _matches(o, shape, color)]
    listing = join_phrases(found) if found else "none"
    return f"{seen} {kind_noun(shape, color).capitalize()}: {listing}. That makes {n}."


def _count(b: Builder, thinking: bool = False) -> Core:
    scene = b.scene()
    shape, color = _count_kind(b, scene)
    n = sum(_matches(o, shape, color) for o in scene.objects)
    question = b.say("count", what=b.kind(shape, color))
    answer = f"{n}."
    parts = (_count_thought(scene, shape, color, n), answer) if thinking else (answer,)
    return Core((b.image(scene), question), parts, answer, thinking, question=True)


def _reason_count(b: Builder) -> Core:
    return _count(b, thinking=b.rng.random() < THINKING_RATE)


def _attribute_question(b: Builder, group: str, attribute: str, answer_of: Callable[[SceneObject], str]) -> Core:
    """A question about one object's `attribute`, the object named without it."""
    scene = b.scene()
    obj = b.pick(list(scene.objects))
    if b.words is not None and b.rng.random() < ABSENT_RATE:
        return _absent_question(b, group, scene)
    ref = b.ref(scene, obj, avoid=(attribute,))
    answer = answer_of(obj)
    return Core((b.image(scene), b.say(group, ref=ref)), (answer,), answer, question=True)


def _absent_question(b: Builder, group: str, scene: Scene) -> Core:
    """A question about an object the picture does not have: the answer says so."""
    colors = [c for c in COLORS if c != scene.background]
    shape, color = b.choice(_absent_combos(b, scene, colors))
    ref = f"{b.words.color(color)} {shape}"
    answer = f"There is no {color} {shape}."
    return Core((b.image(scene), b.say(group, ref=ref)), (answer,), answer, question=True)


def _background(b: Builder) -> Core:
    scene = b.scene()
    answer = f"{scene.background.capitalize()}."
    return Core((b.image(scene), b.say("background")), (answer,), answer, question=True)


def _color_of(b: Builder) -> Core:
    return _attribute_question(b, "color_of", "color", lambda obj: f"{obj.color.capitalize()}.")


def _where_is(b: Builder) -> Core:
    return _attribute_question(b, "where_is", "position", lambda obj: f"At the {obj.position}.")


def _is_there(b: Builder) -> Core:
    scene = b.scene()
    kind = b.rng.choice(("shape", "color_shape", "color", "shape_position"))
    colors = [c for c in COLORS if c != scene.background]
    yes = b.rng.random() < 0.5
    if yes:
        obj = b.pick(list(scene.objects))
        shape, color, position = obj.shape, obj.color, obj.position
    else:
        shape = b.rng.choice(SHAPES)
        color = b.rng.choice(colors)
        position = b.rng.choice(list(POSITIONS))
        if kind == "shape":
            shape = b.choice([s for s in SHAPES if all(o.shape != s for o in scene.objects)])
        elif kind == "color":
            color = b.choice([c for c in colors if all(o.color != c for o in scene.objects)])
        elif kind == "color_shape":
            shape, color = b.choice(_absent_combos(b, scene, colors))
        else:
            taken = [(o.shape, o.position) for o in scene.objects]
            shape, position = b.choice([(s, p) for s in SHAPES for p in POSITIONS if (s, p) not in taken])
    what = {
        "shape": shape,
        "color_shape": f"{color} {shape}",
        "color": f"{color} object",
        "shape_position": f"{shape} at the {position}",
    }[kind]
    question = b.say("is_there", thing=f"{article(what)} {what}")
    answer = "Yes." if yes else "No."
    return Core((b.image(scene), question), (answer,), answer, question=True)


def _size_compare(b: Builder, thinking: bool) -> Core:
    scene = b.scene(min_n=2)
    first = b.pick(list(scene.objects))
    second = b.pick([o for o in scene.objects if o.size != first.size])
    ref1 = b.ref(scene, first, avoid=("size",))
    ref2 = b.ref(scene, second, avoid=("size",))
    (ra, a), (rb, bb) = b.rng.sample([(ref1, first), (ref2, second)], 2)
    group = b.rng.choice(("bigger", "smaller"))
    winner = ra if (a.size == "large") == (group == "bigger") else rb
    question = b.say(group, a=ra, b=rb)
    answer = f"The {winner}."
    thought = f"The {ra} is {a.size} and the {rb} is {bb.size}. So the {winner} is {group}."
    parts = (thought, answer) if thinking else (answer,)
    return Core((b.image(scene), question), parts, answer, thinking, question=True)


def _bigger(b: Builder) -> Core:
    return _size_compare(b, thinking=False)


def _count_compare(b: Builder, thinking: bool) -> Core:
    scene = b.scene()
    colors = [c for c in COLORS if c != scene.background]
    first = b.pick(list(scene.objects))
    if b.rng.random() < 0.5:
        kinds = [(first.shape, None), (b.choice([s for s in SHAPES if s != first.shape]), None)]
    else:
        kinds = [(None, first.color), (None, b.choice([c for c in colors if c != first.color]))]
    b.rng.shuffle(kinds)
    counts = [sum(_matches(o, *k) for o in scene.objects) for k in kinds]
    nouns = [kind_noun(*k) for k in kinds]
    asked = [b.kind(*k) for k in kinds]
    question = b.say("more", a=asked[0], b=asked[1])
    yes = counts[0] > counts[1]
    answer = "Yes." if yes else "No."
    lines = ["I see " + join_phrases([o.phrase() for o in scene.objects]) + "."]
    for noun, kind, n in zip(nouns, kinds, counts):
        found = [object_mention(o) for o in scene.objects if _matches(o, *kind)]
        lines.append(f"{noun.capitalize()}: {join_phrases(found) if found else 'none'}. That makes {n}.")
    lines.append(f"{counts[0]} is {'more' if yes else 'not more'} than {counts[1]}.")
    parts = (" ".join(lines), answer) if thinking else (answer,)
    return Core((b.image(scene), question), parts, answer, thinking, question=True)


def _reason_compare(b: Builder) -> Core:
    thinking = b.rng.random() < THINKING_RATE
    if b.rng.random() < 0.5:
        return _size_compare(b, thinking)
    return _count_compare(b, thinking)


# --- Generation and editing ---------------------------------------------------------------


def _draw_text(b: Builder, scene: Scene) -> str:
    """A request to draw ``scene``: canonical wording, shuffled objects, or background first."""
    phrases = [o.phrase() for o in scene.objects]
    style = b.rng.random()
    if style < 0.25:
        b.rng.shuffle(phrases)
    background = f"{article(scene.background)} {scene.background} background"
    if style < 0.75:
        d = f"{join_phrases(phrases)} on {background}"
    else:
        d = f"{background} with {join_phrases(phrases)}"
    return b.template("draw").format(d=d, D=scene.describe())


def _draw(b: Builder) -> Core:
    if b.words is not None:
        return _draw_partial(b)
    scene = b.scene()
    return Core((_draw_text(b, scene),), (b.image(scene),), scene)


def _draw_partial(b: Builder) -> Core:
    """A request that states what it states (language.py); the rest is picked from the rng."""
    request = sample_request(b.rng, b.allowed)
    scene = complete(request, b.rng, b.allowed)
    text = b.say("draw", d=request_text(request, b.words))
    return Core((text,), (b.image(scene),), scene, request=request)


def _edit(b: Builder, before: ImageRef, after: ImageRef, instruction: str) -> Core:
    return Core((before, instruction), (after,), after.scene)


def _edit_recolor(b: Builder) -> Core:
    scene = b.scene()
    obj = b.pick(list(scene.objects))
    ref = b.ref(scene, obj)
    color = b.choice([c for c in COLORS if c not in (obj.color, scene.background) and b.allowed(obj.shape, c)])
    new = SceneObject(obj.shape, color, obj.size, obj.position)
    edited = Scene(scene.background, tuple(new if o is obj else o for o in scene.objects))
    before = b.image(scene)
    instruction = b.say("edit_recolor", ref=ref, color=color)
    return _edit(b, before, ImageRef(edited, before.offsets), instruction)


def _edit_remove(b: Builder) -> Core:
    scene = b.scene(min_n=2)
    obj = b.pick(list(scene.objects))
    ref = b.ref(scene, obj)
    before = b.image(scene)
    keep = [i for i, o in enumerate(scene.objects) if o is not obj]
    edited = Scene(scene.background, tuple(scene.objects[i] for i in keep))
    after = ImageRef(edited, tuple(before.offsets[i] for i in keep))
    return _edit(b, before, after, b.say("edit_remove", ref=ref))


def _edit_add(b: Builder) -> Core:
    scene = b.scene(max_n=3)
    before = b.image(scene)
    position = b.choice([p for p in POSITIONS if all(o.position != p for o in scene.objects)])
    combos = [(s, c) for s in SHAPES for c in COLORS if c != scene.background and b.allowed(s, c)]
    held = [sc for sc in combos if is_heldout_combo(*sc)]
    if held and b.rng.random() < 0.5:
        combos = held  # only in heldout: b.allowed keeps them out of train
    shape, color = b.choice(combos)
    new = SceneObject(shape, color, b.rng.choice(list(SIZES)), position)
    edited = Scene(scene.background, scene.objects + (new,))
    offsets = b.fresh_offset(edited, dict(zip((o.position for o in scene.objects), before.offsets)), position)
    if b.words is None:
        obj_text = f"{article(new.size)} {new.size} {new.color} {new.shape}"
    else:
        obj_text = object_text(ObjectSpec(new.shape, new.color, new.size), 1, b.words)
    instruction = b.say("edit_add", obj=obj_text, pos=b.place(position))
    return _edit(b, before, ImageRef(edited, offsets), instruction)


def _edit_move(b: Builder) -> Core:
    scene = b.scene(max_n=4)
    obj = b.pick(list(scene.objects))
    ref = b.ref(scene, obj)
    position = b.choice([p for p in POSITIONS if all(o.position != p for o in scene.objects)])
    before = b.image(scene)
    moved = SceneObject(obj.shape, obj.color, obj.size, position)
    edited = Scene(scene.background, tuple(moved if o is obj else o for o in scene.objects))
    kept = {o.position: off for o, off in zip(scene.objects, before.offsets) if o is not obj}
    offsets = b.fresh_offset(edited, kept, position)
    instruction = b.say("edit_move", ref=ref, pos=b.place(position))
    return _edit(b, before, ImageRef(edited, offsets), instruction)


# --- Small talk ---------------------------------------------------------------------------


def _smalltalk(group: str, answer: str) -> Callable[[Builder], Core]:
    def task(b: Builder) -> Core:
        # No scene to hold out: a heldout small-talk example always has a held-out wording.
        return Core((b.say(group, heldout_rate=1.0),), (answer,), answer)

    return task


_TASK_FUNCTIONS: dict[str, Callable[[Builder], Core]] = {
    "describe": _describe,
    "count": _count,
    "color_of": _color_of,
    "where_is": _where_is,
    "is_there": _is_there,
    "bigger": _bigger,
    "draw": _draw,
    "edit_recolor": _edit_recolor,
    "edit_remove": _edit_remove,
    "edit_add": _edit_add,
    "edit_move": _edit_move,
    "describe_json": _describe_json,
    "background": _background,
    "reason_count": _reason_count,
    "reason_compare": _reason_compare,
    "smalltalk_greet": _smalltalk("smalltalk_greet", GREETING),
    "smalltalk_capabilities": _smalltalk("smalltalk_capabilities", CAPABILITIES),
    "smalltalk_decline": _smalltalk("smalltalk_decline", DECLINE),
}


# --- Assembly -----------------------------------------------------------------------------


def _turns(b: Builder, core: Core) -> tuple[Turn, ...]:
    turns = []
    if b.rng.random() < SYSTEM_RATE:
        turns.append(Turn("system", (b.rng.choice(SYSTEM_PROMPTS),)))
    user = core.user
    if core.question and core.followup and b.rng.random() < CONTEXT_RATE:
        image, question = user
        description = image.scene.describe()
        # The context turn always uses a train wording: only the final question is evaluated.
        turns += [Turn("user", (image, b.rng.choice(PHRASINGS["describe"][0]))), Turn("assistant", (description,))]
        user = (question,)
    elif core.question and b.rng.random() < TEXT_FIRST_RATE:
        user = user[::-1]
    turns += [Turn("user", tuple(user)), Turn("assistant", tuple(core.assistant))]
    return tuple(turns)


def _example(b: Builder, task: str) -> Example:
    for _ in range(1000):
        b.start_chat()
        try:
            core = _TASK_FUNCTIONS[task](b)
        except Retry:
            continue
        turns = _turns(b, core)
        said = b.words.said if b.words is not None else None
        return Example(task, turns, core.thinking, core.answer, b.split, b.heldout_phrasing, said, core.request)
    raise RuntimeError(f"could not sample a {task!r} example")  # pragma: no cover


def generate(rng: random.Random, n: int, split: str = "train", tasks: dict[str, float] | None = None,
             grammar_rate: float = GRAMMAR_RATE) -> list[Example]:
    """``n`` examples drawn from ``rng`` with task weights ``tasks`` (default :func:`task_mixture`);
    in the train split a share ``grammar_rate`` of them worded by the grammar (0: the templates only)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    weights = task_mixture() if tasks is None else dict(tasks)
    unknown = [t for t in weights if t not in _TASK_FUNCTIONS]
    if unknown or not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"tasks must map names from {TASKS} to non-negative weights with a positive sum; got {tasks!r}")
    names = list(weights)
    builder = Builder(rng, split, grammar_rate)
    return [_example(builder, rng.choices(names, [weights[t] for t in names])[0]) for _ in range(n)]
