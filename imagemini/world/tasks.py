"""Task generator: shapes-world scenes -> chats that train and evaluate the bundled model.

    import random
    from imagemini.world.tasks import generate, render_text, prompt_and_completion

    train = generate(random.Random(0), 10_000)                   # split="train"
    evals = generate(random.Random(1), 1_000, split="heldout")
    prompt, completion = prompt_and_completion(train[0])       # loss on `completion` only

Each :class:`Example` is one chat (optional system turn, optional earlier turn, a user turn, the
assistant turn trained on) plus its ground truth. Images are :class:`ImageRef` (a scene and its fixed
jitter); whoever consumes an example renders them at the model's resolution with
``render(ref.scene, size, offsets=ref.offsets)``.

Tasks and default weights (:func:`task_mixture`; weights need not sum to 1)::

    describe 0.12   count 0.06   color_of 0.05   where_is 0.05   is_there 0.05   bigger 0.04
    draw 0.20       edit_recolor / edit_remove / edit_add / edit_move 0.05 each
    describe_json 0.05   reason_count 0.06   reason_compare 0.05
    smalltalk_greet 0.02   smalltalk_capabilities 0.02   smalltalk_decline 0.03

Image generation gets the most weight (draw + edits = 0.40): it is the hardest output.

Canonical answers (exact-match scoring):
    describe        Scene.describe()
    describe_json   Scene.to_json_str() (compact separators); ``answer`` holds Scene.to_json()
    count           a digit and a period: "2." (also "0." for an absent kind)
    color_of        "Red."                    where_is   "At the top left."
    is_there        "Yes." / "No."            bigger     "The circle." (the question's own words)
    reason_count    as count; reason_compare as bigger, or "Yes."/"No." for "Are there more A than B?"
    draw / edit_*   the assistant turn is one image; ``answer`` is the target Scene
    smalltalk_*     one fixed sentence each (GREETING, CAPABILITIES, DECLINE)

Reasoning: reason_count and reason_compare have ``thinking=True`` with probability 0.75; then the
last assistant turn's ``parts[0]`` is a short, correct trace ("I see a small red circle at the top
left and a large blue square at the center. Red objects: the red circle at the top left. That
makes 1.") and ``parts[1]`` the canonical answer. With ``thinking=False`` the same questions are
answered directly (as count and bigger always are).

Questions are answerable: an object is named by a description that fits exactly one object in the
scene ("the circle" only if there is one circle, else "the red circle", "the large circle", "the red
object" or "the object at the top left"), never by the attribute the question asks about; "which is
bigger" only compares a small with a large object.

Held-out evaluation:
  * HELDOUT_COMBOS: 6 of the 32 (shape, colour) pairs never appear in a train example: not in any
    image, target scene, or text (questions about absent objects, new colours, added objects).
    Every heldout example with a scene contains at least one of them (forced into a random object
    of the first scene; the question then targets such an object 3 times out of 4 when it can).
  * HELDOUT_PHRASINGS: per template group, templates train never uses. A heldout example draws
    from them with probability 1/2 (all small talk heldout examples do) and records it in
    ``Example.heldout_phrasing``.

Variety beyond templates: 1 in 10 chats opens with a system prompt; 1 in 10 question chats first
asks for a description and then asks the question about the same image in a second user turn;
1 in 5 single-turn image questions puts the text before the image. A user turn's parts are joined
with "\\n" (as api/chat.py joins text parts) when rendered.

Everything is drawn from the ``rng`` argument only (no set iteration), so a seed gives the same
examples in any process.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from imagemini.models.chat_format import CHAT_TEMPLATE, SPECIAL_TOKENS

from .scene import (
    COLORS, MAX_JITTER, POSITIONS, SHAPES, SIZES, Scene, SceneObject, layout_is_clean, sample_offsets, sample_scene,
)

# --- Format ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """An image in a chat: ``render(scene, size, offsets=offsets)``."""

    scene: Scene
    offsets: tuple


@dataclass(frozen=True)
class Turn:
    role: str  # "system" | "user" | "assistant"
    parts: tuple  # of str and ImageRef, in order


@dataclass(frozen=True)
class Example:
    task: str
    turns: tuple[Turn, ...]  # ends with the assistant turn trained on
    thinking: bool  # last assistant turn: parts[0] is the thought, parts[1] the answer
    answer: Any  # expected text, target Scene (draw/edit_*) or JSON dict (describe_json)
    split: str  # "train" | "heldout"
    heldout_phrasing: bool = False  # the user's wording comes from HELDOUT_PHRASINGS


TASKS: tuple[str, ...] = (
    "describe", "count", "color_of", "where_is", "is_there", "bigger", "draw",
    "edit_recolor", "edit_remove", "edit_add", "edit_move", "describe_json",
    "reason_count", "reason_compare", "smalltalk_greet", "smalltalk_capabilities", "smalltalk_decline",
)
SPLITS: tuple[str, ...] = ("train", "heldout")

#: (shape, colour) pairs kept out of train; each colour once, each shape once or twice.
HELDOUT_COMBOS: tuple[tuple[str, str], ...] = (
    ("circle", "purple"),
    ("cross", "yellow"),
    ("square", "black"),
    ("square", "orange"),
    ("triangle", "blue"),
    ("triangle", "green"),
)

GREETING = "Hello! I can describe, draw and edit pictures of simple shapes. What would you like?"
CAPABILITIES = (
    "I am a small model for a world of simple shapes. I can describe, draw and edit pictures of circles, "
    "squares, triangles and crosses, and answer questions about them."
)
DECLINE = "Sorry, I can only describe, draw and edit pictures of simple shapes."

#: Rendered in place of an image by render_text (the tokenizer needs no image tokens).
IMAGE_MARKER = "<image_placeholder>"
PART_JOINER = "\n"

THINKING_RATE = 0.75  # reason_* examples with a thought
HELDOUT_PHRASING_RATE = 0.5
SYSTEM_RATE = 0.1
CONTEXT_RATE = 0.1  # question chats that first ask for a description
TEXT_FIRST_RATE = 0.2
HELDOUT_TARGET_RATE = 0.75
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are imagemini, an assistant for a world of simple shapes.",
    "Answer the user's requests about pictures of shapes.",
)

# --- Phrasings: group -> (train templates, held-out templates) ---------------------------
# Placeholders: {ref} a unique object description, {what} a plural kind, {thing} "a"/"an" + a
# kind, {a}/{b} two references, {color}, {pos}, {obj} "a small red circle", {d} a description
# without capital or period, {D} the canonical description sentence.

PHRASINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "describe": (
        ("Describe the image.", "What is in this picture?", "Describe this picture.", "What do you see?",
         "Tell me what is in the image.", "Give a description of the image.", "What does the image show?",
         "Describe what you see.", "What is shown here?", "Look at the picture and describe it.",
         "Write a caption for this image.", "Caption this picture.", "What's in the image?",
         "Describe the scene.", "Give me a short description of this picture."),
        ("Can you tell me what this image shows?", "Please explain what is drawn here."),
    ),
    "count": (
        ("How many {what} are there?", "How many {what} are in the image?", "Count the {what}.",
         "How many {what} do you see?", "How many {what} can you see in this picture?",
         "How many {what} does the picture have?", "Count the {what} in the picture.",
         "How many {what} are shown?", "How many {what} are visible?", "Count all the {what} you see.",
         "How many {what} are in this picture?"),
        ("What is the number of {what}?", "Tell me how many {what} there are."),
    ),
    "color_of": (
        ("What colour is the {ref}?", "What color is the {ref}?", "Which colour is the {ref}?",
         "Tell me the colour of the {ref}.", "What color does the {ref} have?",
         "Which color is the {ref}?", "Name the colour of the {ref}.", "What colour do you see on the {ref}?",
         "What colour has the {ref}?", "Say what colour the {ref} is."),
        ("What is the colour of the {ref}?",),
    ),
    "where_is": (
        ("Where is the {ref}?", "Where is the {ref} located?", "In which part of the image is the {ref}?",
         "Where can I find the {ref}?",
         "Where's the {ref}?", "Which part of the picture is the {ref} in?", "Tell me where the {ref} is.",
         "Where in the picture is the {ref}?", "Where is the {ref} placed?"),
        ("What is the position of the {ref}?",),
    ),
    "is_there": (
        ("Is there {thing} in the image?", "Is there {thing}?", "Do you see {thing}?",
         "Does the picture contain {thing}?",
         "Is there {thing} in the picture?", "Does the image contain {thing}?",
         "Is there {thing} anywhere in the image?", "Do you see {thing} in this picture?",
         "Does this picture show {thing}?"),
        ("Can you find {thing} here?",),
    ),
    "bigger": (
        ("Which is bigger, the {a} or the {b}?", "Which is larger, the {a} or the {b}?",
         "Which one is bigger: the {a} or the {b}?", "Is the {a} or the {b} bigger?",
         "Which is bigger: the {a} or the {b}?", "Which one is larger, the {a} or the {b}?",
         "Is the {a} bigger or the {b}?", "Between the {a} and the {b}, which is bigger?"),
        ("Which of the two is bigger, the {a} or the {b}?",),
    ),
    "smaller": (
        ("Which is smaller, the {a} or the {b}?", "Which one is smaller: the {a} or the {b}?",
         "Is the {a} or the {b} smaller?",
         "Which one is smaller, the {a} or the {b}?", "Which is smaller: the {a} or the {b}?",
         "Between the {a} and the {b}, which is smaller?"),
        ("Which of the two is smaller, the {a} or the {b}?",),
    ),
    "more": (
        ("Are there more {a} than {b}?", "Does the image have more {a} than {b}?",
         "Are there more {a} than {b} in the picture?",
         "Are there more {a} than {b} here?", "Does the picture have more {a} than {b}?",
         "Are there more {a} than {b} in this image?"),
        ("Do you see more {a} than {b}?",),
    ),
    "draw": (
        ("Draw {d}.", "Make a picture of {d}.", "Can you draw {d}?", "Please draw {d}.",
         "Generate an image of {d}.", "Create a picture showing {d}.", "Show me {d}.", "{D} Draw it.",
         "Draw me {d}.", "Draw a picture of {d}.", "Create an image of {d}.", "Sketch {d}.", "Render {d}.",
         "Produce an image of {d}.", "Please make an image of {d}.", "Can you make a picture of {d}?"),
        ("I would like an image of {d}.", "Could you paint {d}?"),
    ),
    "describe_json": (
        ("Describe the image as JSON.", "Give me the scene as JSON.", "Return the objects in the picture as JSON.",
         "Describe this picture in JSON format.", "Output a JSON description of the image.",
         "Give the scene in JSON.", "Describe the picture as a JSON object.", "Write the scene as JSON.",
         "Return a JSON description of this picture.", "Convert the image into JSON."),
        ("What is in the image? Answer in JSON.",),
    ),
    "edit_recolor": (
        ("Make the {ref} {color}.", "Change the colour of the {ref} to {color}.", "Paint the {ref} {color}.",
         "Recolour the {ref} {color}.", "Change the {ref} to {color}.",
         "Colour the {ref} {color}.", "Give the {ref} the colour {color}.",
         "Recolor the {ref} {color}.",
         "Please make the {ref} {color}."),
        ("Turn the {ref} {color}.",),
    ),
    "edit_remove": (
        ("Remove the {ref}.", "Delete the {ref}.", "Take away the {ref}.", "Get rid of the {ref}.",
         "Take the {ref} out.",
         "Remove the {ref} from the picture.", "Delete the {ref} from the image.", "Please remove the {ref}.",
         "Clear away the {ref}."),
        ("Erase the {ref}.",),
    ),
    "edit_add": (
        ("Add {obj} at the {pos}.", "Put {obj} at the {pos}.", "Draw {obj} at the {pos}.",
         "Place {obj} at the {pos}.",
         "Also add {obj} at the {pos}.", "Please add {obj} at the {pos}.", "Draw in {obj} at the {pos}.",
         "Now put {obj} at the {pos}."),
        ("Insert {obj} at the {pos}.",),
    ),
    "edit_move": (
        ("Move the {ref} to the {pos}.", "Put the {ref} at the {pos}.", "Shift the {ref} to the {pos}.",
         "Move the {ref} over to the {pos}.",
         "Please move the {ref} to the {pos}.", "Drag the {ref} to the {pos}.",
         "Place the {ref} at the {pos}.", "Now move the {ref} to the {pos}."),
        ("Relocate the {ref} to the {pos}.",),
    ),
    "smalltalk_greet": (
        ("Hello!", "Hi!", "Hi there.", "Good morning!", "Hey, how are you?", "Hello, who is this?", "Hey!",
         "Hello there!", "Good afternoon!", "Howdy!", "Hey there, how's it going?",
         "Hi! Who am I talking to?"),
        ("Greetings!", "Good evening, nice to meet you."),
    ),
    "smalltalk_capabilities": (
        ("What can you do?", "What are you able to do?", "Who are you?", "What can you help me with?",
         "Tell me about yourself.", "How can you help me?", "What kind of pictures can you make?",
         "What do you do?", "What can I ask you?", "What are you for?", "Introduce yourself.",
         "What is this assistant able to do?", "Which tasks can you handle?", "What are your abilities?",
         "Tell me what you can do.", "What are your capabilities?", "What sort of things can you do?",
         "What do you know how to do?", "Describe your abilities.", "What jobs can you do for me?",
         "What are you capable of?"),
        ("What are your skills?", "Explain what you are good at."),
    ),
    "smalltalk_decline": (
        ("What is the capital of France?", "Write me a poem about the sea.", "Can you help me with my taxes?",
         "What's the weather like today?", "Tell me a joke.", "Translate 'good night' into Spanish.",
         "Who won the football game yesterday?", "Can you write some Python code for me?",
         "What is 17 times 23?", "Draw a cat.", "Please draw a house with a garden.",
         "Give me a recipe for pancakes.", "Summarise the news for me.",
         "Who wrote Hamlet?", "Book me a flight to Rome.", "What time is it in Tokyo?", "Solve x^2 = 9.",
         "Write an email to my boss.", "What's the best phone to buy?", "Play some music.",
         "How tall is Mount Everest?", "Draw a tree.", "Draw a car for me.",
         "Tell me about the history of Rome.", "Explain quantum physics.", "What should I eat tonight?",
         "Sing me a song.", "How do I bake bread?", "What is the meaning of life?", "Can you do my homework?",
         "Draw a picture of the ocean.", "Write a story about a dragon.", "What is 2 plus 2?",
         "Give me stock tips.", "How far is the moon?", "Who is the president?",
         "Translate this sentence into French.", "Draw a horse."),
        ("Recommend a good book.", "Draw a portrait of my dog.", "How do I fix my bicycle?"),
    ),
}
HELDOUT_PHRASINGS: dict[str, tuple[str, ...]] = {group: held for group, (_, held) in PHRASINGS.items()}

PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}

# --- Weights -----------------------------------------------------------------------------


def task_mixture() -> dict[str, float]:
    """Default sampling weights by task (see the module docstring for why)."""
    return {
        "describe": 0.12, "count": 0.06, "color_of": 0.05, "where_is": 0.05, "is_there": 0.05,
        "bigger": 0.04, "draw": 0.20, "edit_recolor": 0.05, "edit_remove": 0.05, "edit_add": 0.05,
        "edit_move": 0.05, "describe_json": 0.05, "reason_count": 0.06, "reason_compare": 0.05,
        "smalltalk_greet": 0.02, "smalltalk_capabilities": 0.02, "smalltalk_decline": 0.03,
    }


# --- Small helpers -----------------------------------------------------------------------


def is_heldout_combo(shape: str, color: str) -> bool:
    return (shape, color) in HELDOUT_COMBOS


def has_heldout_combo(scene: Scene) -> bool:
    return any(is_heldout_combo(o.shape, o.color) for o in scene.objects)


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(items: list[str]) -> str:
    """'x', 'x and y', 'x, y and z' (the describe() grammar: no Oxford comma)."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _kind_noun(shape: str | None, color: str | None) -> str:
    """Plural noun for a kind of object: 'objects', 'circles', 'red objects', 'red circles'."""
    noun = PLURALS[shape] if shape else "objects"
    return f"{color} {noun}" if color else noun


def _matches(obj: SceneObject, shape: str | None, color: str | None) -> bool:
    return (shape is None or obj.shape == shape) and (color is None or obj.color == color)


_REF_KEYS = (("shape",), ("color", "shape"), ("size", "shape"), ("color",), ("position",))


def _ref_text(obj: SceneObject, keys: tuple[str, ...]) -> str:
    if keys == ("position",):
        return f"object at the {obj.position}"
    if keys == ("color",):
        return f"{obj.color} object"
    return " ".join(getattr(obj, k) for k in keys)


def references(scene: Scene, obj: SceneObject, avoid: tuple[str, ...] = ()) -> list[str]:
    """Descriptions that pick out ``obj`` alone in ``scene`` and name none of the ``avoid`` attributes."""
    out = []
    for keys in _REF_KEYS:
        if any(k in avoid for k in keys):
            continue
        same = [o for o in scene.objects if all(getattr(o, k) == getattr(obj, k) for k in keys)]
        if len(same) == 1:
            out.append(_ref_text(obj, keys))
    return out


def _object_mention(obj: SceneObject) -> str:
    return f"the {obj.color} {obj.shape} at the {obj.position}"


def split_scene(rng: random.Random, split: str = "train") -> Scene:
    """A scene of `split` as the tasks draw them: train scenes never hold a held-out shape/colour
    pair, held-out scenes always hold one (used by training beyond the chats, e.g. the vision warm-up)."""
    return _Builder(rng, split).scene()


# --- The builder: one rng, one split, the per-example phrasing flag -----------------------


class _Retry(Exception):
    """The sampled scene does not suit the task; sample another."""


class _Builder:
    def __init__(self, rng: random.Random, split: str) -> None:
        self.rng = rng
        self.split = split
        self.heldout_phrasing = False

    def allowed(self, shape: str, color: str) -> bool:
        return self.split == "heldout" or not is_heldout_combo(shape, color)

    def template(self, group: str, heldout_rate: float = HELDOUT_PHRASING_RATE) -> str:
        """A template of ``group``; in heldout, a held-out one with probability ``heldout_rate``."""
        train, held = PHRASINGS[group]
        if self.split == "heldout" and self.rng.random() < heldout_rate:
            self.heldout_phrasing = True
            return self.rng.choice(held)
        return self.rng.choice(train)

    def scene(self, min_n: int = 1, max_n: int = 4) -> Scene:
        n = self.rng.randint(min_n, max_n)
        if self.split == "train":
            while True:  # conditioning on n keeps the object count uniform
                scene = sample_scene(self.rng, n)
                if not has_heldout_combo(scene):
                    return scene
        scene = sample_scene(self.rng, n)
        if has_heldout_combo(scene):
            return scene
        i = self.rng.randrange(n)
        old = scene.objects[i]
        shape, color = self.rng.choice([c for c in HELDOUT_COMBOS if c[1] != scene.background])
        objects = list(scene.objects)
        objects[i] = SceneObject(shape, color, old.size, old.position)
        return Scene(scene.background, tuple(objects))

    def image(self, scene: Scene) -> ImageRef:
        return ImageRef(scene, sample_offsets(scene, self.rng))

    def pick(self, objects: list[SceneObject]) -> SceneObject:
        """A random object; in heldout, preferably one with a held-out combo."""
        if not objects:
            raise _Retry
        held = [o for o in objects if is_heldout_combo(o.shape, o.color)]
        if self.split == "heldout" and held and self.rng.random() < HELDOUT_TARGET_RATE:
            return self.rng.choice(held)
        return self.rng.choice(objects)

    def choice(self, options: list) -> Any:
        if not options:
            raise _Retry
        return self.rng.choice(options)

    def fresh_offset(self, scene: Scene, offsets: dict[str, tuple[float, float]], position: str) -> tuple:
        """Offsets for ``scene``: ``offsets`` (by position) kept, a new clean jitter at ``position``."""
        for _ in range(200):
            r = MAX_JITTER * math.sqrt(self.rng.random())
            theta = 2 * math.pi * self.rng.random()
            trial = {**offsets, position: (r * math.cos(theta), r * math.sin(theta))}
            result = tuple(trial[o.position] for o in scene.objects)
            if layout_is_clean(scene, result):
                return result
        raise _Retry


@dataclass
class _Core:
    """What a task function produces: the user turn's parts and the assistant's."""

    user: tuple
    assistant: tuple
    answer: Any
    thinking: bool = False
    question: bool = False  # an image question: its text may come before the image
    followup: bool = True  # a question may instead follow a describe turn about the same image


# --- Understanding tasks ------------------------------------------------------------------


def _describe(b: _Builder) -> _Core:
    scene = b.scene()
    text = scene.describe()
    return _Core((b.image(scene), b.template("describe")), (text,), text, question=True, followup=False)


def _describe_json(b: _Builder) -> _Core:
    scene = b.scene()
    return _Core((b.image(scene), b.template("describe_json")), (scene.to_json_str(),), scene.to_json(), question=True)


def _count_kind(b: _Builder, scene: Scene) -> tuple[str | None, str | None]:
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


def _absent_combos(b: _Builder, scene: Scene, colors: list[str]) -> list[tuple[str, str]]:
    """(shape, colour) pairs the split allows and no object in ``scene`` has."""
    return [(s, c) for s in SHAPES for c in colors if b.allowed(s, c) and not any(_matches(o, s, c) for o in scene.objects)]


def _count_thought(scene: Scene, shape: str | None, color: str | None, n: int) -> str:
    seen = "I see " + _join([o.phrase() for o in scene.objects]) + "."
    if shape is None and color is None:
        return f"{seen} That makes {n}."
    found = [_object_mention(o) for o in scene.objects if _matches(o, shape, color)]
    listing = _join(found) if found else "none"
    return f"{seen} {_kind_noun(shape, color).capitalize()}: {listing}. That makes {n}."


def _count(b: _Builder, thinking: bool = False) -> _Core:
    scene = b.scene()
    shape, color = _count_kind(b, scene)
    n = sum(_matches(o, shape, color) for o in scene.objects)
    question = b.template("count").format(what=_kind_noun(shape, color))
    answer = f"{n}."
    parts = (_count_thought(scene, shape, color, n), answer) if thinking else (answer,)
    return _Core((b.image(scene), question), parts, answer, thinking, question=True)


def _reason_count(b: _Builder) -> _Core:
    return _count(b, thinking=b.rng.random() < THINKING_RATE)


def _color_of(b: _Builder) -> _Core:
    scene = b.scene()
    obj = b.pick(list(scene.objects))
    ref = b.choice(references(scene, obj, avoid=("color",)))
    answer = f"{obj.color.capitalize()}."
    return _Core((b.image(scene), b.template("color_of").format(ref=ref)), (answer,), answer, question=True)


def _where_is(b: _Builder) -> _Core:
    scene = b.scene()
    obj = b.pick(list(scene.objects))
    ref = b.choice(references(scene, obj, avoid=("position",)))
    answer = f"At the {obj.position}."
    return _Core((b.image(scene), b.template("where_is").format(ref=ref)), (answer,), answer, question=True)


def _is_there(b: _Builder) -> _Core:
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
    question = b.template("is_there").format(thing=f"{_a(what)} {what}")
    answer = "Yes." if yes else "No."
    return _Core((b.image(scene), question), (answer,), answer, question=True)


def _size_compare(b: _Builder, thinking: bool) -> _Core:
    scene = b.scene(min_n=2)
    first = b.pick(list(scene.objects))
    second = b.pick([o for o in scene.objects if o.size != first.size])
    ref1 = b.choice(references(scene, first, avoid=("size",)))
    ref2 = b.choice(references(scene, second, avoid=("size",)))
    (ra, a), (rb, bb) = b.rng.sample([(ref1, first), (ref2, second)], 2)
    group = b.rng.choice(("bigger", "smaller"))
    winner = ra if (a.size == "large") == (group == "bigger") else rb
    question = b.template(group).format(a=ra, b=rb)
    answer = f"The {winner}."
    thought = f"The {ra} is {a.size} and the {rb} is {bb.size}. So the {winner} is {group}."
    parts = (thought, answer) if thinking else (answer,)
    return _Core((b.image(scene), question), parts, answer, thinking, question=True)


def _bigger(b: _Builder) -> _Core:
    return _size_compare(b, thinking=False)


def _count_compare(b: _Builder, thinking: bool) -> _Core:
    scene = b.scene()
    colors = [c for c in COLORS if c != scene.background]
    first = b.pick(list(scene.objects))
    if b.rng.random() < 0.5:
        kinds = [(first.shape, None), (b.choice([s for s in SHAPES if s != first.shape]), None)]
    else:
        kinds = [(None, first.color), (None, b.choice([c for c in colors if c != first.color]))]
    b.rng.shuffle(kinds)
    counts = [sum(_matches(o, *k) for o in scene.objects) for k in kinds]
    nouns = [_kind_noun(*k) for k in kinds]
    question = b.template("more").format(a=nouns[0], b=nouns[1])
    yes = counts[0] > counts[1]
    answer = "Yes." if yes else "No."
    lines = ["I see " + _join([o.phrase() for o in scene.objects]) + "."]
    for noun, kind, n in zip(nouns, kinds, counts):
        found = [_object_mention(o) for o in scene.objects if _matches(o, *kind)]
        lines.append(f"{noun.capitalize()}: {_join(found) if found else 'none'}. That makes {n}.")
    lines.append(f"{counts[0]} is {'more' if yes else 'not more'} than {counts[1]}.")
    parts = (" ".join(lines), answer) if thinking else (answer,)
    return _Core((b.image(scene), question), parts, answer, thinking, question=True)


def _reason_compare(b: _Builder) -> _Core:
    thinking = b.rng.random() < THINKING_RATE
    if b.rng.random() < 0.5:
        return _size_compare(b, thinking)
    return _count_compare(b, thinking)


# --- Generation and editing ---------------------------------------------------------------


def _draw_text(b: _Builder, scene: Scene) -> str:
    """A request to draw ``scene``: canonical wording, shuffled objects, or background first."""
    phrases = [o.phrase() for o in scene.objects]
    style = b.rng.random()
    if style < 0.25:
        b.rng.shuffle(phrases)
    background = f"{_a(scene.background)} {scene.background} background"
    if style < 0.75:
        d = f"{_join(phrases)} on {background}"
    else:
        d = f"{background} with {_join(phrases)}"
    return b.template("draw").format(d=d, D=scene.describe())


def _draw(b: _Builder) -> _Core:
    scene = b.scene()
    return _Core((_draw_text(b, scene),), (b.image(scene),), scene)


def _edit(b: _Builder, before: ImageRef, after: ImageRef, instruction: str) -> _Core:
    return _Core((before, instruction), (after,), after.scene)


def _edit_recolor(b: _Builder) -> _Core:
    scene = b.scene()
    obj = b.pick(list(scene.objects))
    ref = b.choice(references(scene, obj))
    color = b.choice([c for c in COLORS if c not in (obj.color, scene.background) and b.allowed(obj.shape, c)])
    new = SceneObject(obj.shape, color, obj.size, obj.position)
    edited = Scene(scene.background, tuple(new if o is obj else o for o in scene.objects))
    before = b.image(scene)
    instruction = b.template("edit_recolor").format(ref=ref, color=color)
    return _edit(b, before, ImageRef(edited, before.offsets), instruction)


def _edit_remove(b: _Builder) -> _Core:
    scene = b.scene(min_n=2)
    obj = b.pick(list(scene.objects))
    ref = b.choice(references(scene, obj))
    before = b.image(scene)
    keep = [i for i, o in enumerate(scene.objects) if o is not obj]
    edited = Scene(scene.background, tuple(scene.objects[i] for i in keep))
    after = ImageRef(edited, tuple(before.offsets[i] for i in keep))
    return _edit(b, before, after, b.template("edit_remove").format(ref=ref))


def _edit_add(b: _Builder) -> _Core:
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
    obj_text = f"{_a(new.size)} {new.size} {new.color} {new.shape}"
    instruction = b.template("edit_add").format(obj=obj_text, pos=position)
    return _edit(b, before, ImageRef(edited, offsets), instruction)


def _edit_move(b: _Builder) -> _Core:
    scene = b.scene(max_n=4)
    obj = b.pick(list(scene.objects))
    ref = b.choice(references(scene, obj))
    position = b.choice([p for p in POSITIONS if all(o.position != p for o in scene.objects)])
    before = b.image(scene)
    moved = SceneObject(obj.shape, obj.color, obj.size, position)
    edited = Scene(scene.background, tuple(moved if o is obj else o for o in scene.objects))
    kept = {o.position: off for o, off in zip(scene.objects, before.offsets) if o is not obj}
    offsets = b.fresh_offset(edited, kept, position)
    instruction = b.template("edit_move").format(ref=ref, pos=position)
    return _edit(b, before, ImageRef(edited, offsets), instruction)


# --- Small talk ---------------------------------------------------------------------------


def _smalltalk(group: str, answer: str) -> Callable[[_Builder], _Core]:
    def task(b: _Builder) -> _Core:
        # No scene to hold out: a heldout small-talk example always has a held-out wording.
        return _Core((b.template(group, heldout_rate=1.0),), (answer,), answer)

    return task


_TASK_FUNCTIONS: dict[str, Callable[[_Builder], _Core]] = {
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
    "reason_count": _reason_count,
    "reason_compare": _reason_compare,
    "smalltalk_greet": _smalltalk("smalltalk_greet", GREETING),
    "smalltalk_capabilities": _smalltalk("smalltalk_capabilities", CAPABILITIES),
    "smalltalk_decline": _smalltalk("smalltalk_decline", DECLINE),
}


# --- Assembly -----------------------------------------------------------------------------


def _turns(b: _Builder, core: _Core) -> tuple[Turn, ...]:
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


def _example(b: _Builder, task: str) -> Example:
    for _ in range(1000):
        b.heldout_phrasing = False
        try:
            core = _TASK_FUNCTIONS[task](b)
        except _Retry:
            continue
        turns = _turns(b, core)
        return Example(task, turns, core.thinking, core.answer, b.split, b.heldout_phrasing)
    raise RuntimeError(f"could not sample a {task!r} example")  # pragma: no cover


def generate(rng: random.Random, n: int, split: str = "train", tasks: dict[str, float] | None = None) -> list[Example]:
    """``n`` examples drawn from ``rng`` with task weights ``tasks`` (default :func:`task_mixture`)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    weights = task_mixture() if tasks is None else dict(tasks)
    unknown = [t for t in weights if t not in _TASK_FUNCTIONS]
    if unknown or not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"tasks must map names from {TASKS} to non-negative weights with a positive sum; got {tasks!r}")
    names = list(weights)
    builder = _Builder(rng, split)
    return [_example(builder, rng.choices(names, [weights[t] for t in names])[0]) for _ in range(n)]


# --- Rendering to chat text ---------------------------------------------------------------

ImageText = str | Callable[[ImageRef], str]


def chat_messages(example: Example, image: ImageText = IMAGE_MARKER) -> list[dict[str, str]]:
    """Template-ready messages: parts joined with "\\n", images replaced by ``image`` (a string or a
    function of the ImageRef); the last assistant turn of a thinking example carries ``reasoning``."""
    messages = []
    last = len(example.turns) - 1
    for i, turn in enumerate(example.turns):
        parts = [p if isinstance(p, str) else (image if isinstance(image, str) else image(p)) for p in turn.parts]
        if i == last and example.thinking:
            messages.append({"role": turn.role, "reasoning": parts[0], "content": PART_JOINER.join(parts[1:])})
        else:
            messages.append({"role": turn.role, "content": PART_JOINER.join(parts)})
    return messages


@lru_cache(maxsize=1)
def _template() -> tuple[Any, str, str]:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # as models/tokenizer.py
    return env.from_string(CHAT_TEMPLATE), SPECIAL_TOKENS[0], SPECIAL_TOKENS[1]


def render_messages(messages: list[dict[str, str]], add_generation_prompt: bool = False, **options: Any) -> str:
    """The chat template applied exactly as ``Tokenizer.render_chat`` applies it."""
    template, bos, eos = _template()
    return template.render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos, **options
    )


def render_text(example: Example, image: ImageText = IMAGE_MARKER) -> str:
    """The whole chat as text (tokenizer training): images replaced by ``image``."""
    return render_messages(chat_messages(example, image))


def prompt_and_completion(example: Example, image: ImageText = IMAGE_MARKER) -> tuple[str, str]:
    """(prompt, completion) with prompt + completion == render_text(example).

    The prompt is what a server renders for the chat so far (generation prompt with
    ``thinking=example.thinking``, so a thinking prompt ends with "<think>"); the completion is
    what the model must produce, the span the loss is computed on.
    """
    messages = chat_messages(example, image)
    full = render_messages(messages)
    prompt = render_messages(messages[:-1], add_generation_prompt=True, thinking=example.thinking)
    if not full.startswith(prompt):  # pragma: no cover - guarded by tests
        raise ValueError("chat template: the generation prompt is not a prefix of the rendered chat")
    return prompt, full[len(prompt):]
