"""The train/held-out split of the task chats, and the Builder every task draws through.

Held-out evaluation:
  * HELDOUT_COMBOS: 6 of the 32 (shape, colour) pairs never appear in a train example: not in any
    image, target scene, or text (questions about absent objects, new colours, added objects).
    Every heldout example with a scene contains at least one of them (forced into a random object
    of the first scene; the question then targets such an object 3 times out of 4 when it can).
  * Held-out phrasings (phrasings.py): a heldout example words its request with one of them with
    probability 1/2 and records it in ``Example.heldout_phrasing``.

Held-out wording (split "wording"): trained shape/colour pairs, every request worded by the grammar
(language.py) with a held-out frame and, half the time per concept, held-out synonyms. In the train
split a chat is worded by the grammar's training frames with probability GRAMMAR_RATE, else by the
templates; the heldout split keeps the templates.

A task function (tasks.py) takes a :class:`Builder` (one rng, one split, the per-example phrasing
flag), draws its scene, objects and wording through it, and returns a :class:`Core`; when the drawn
scene does not suit the task it raises :class:`Retry` and is called again.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from .chat import ImageRef
from .language import Wording, kind_text, reference_keys, reference_text
from .phrasings import PHRASINGS, kind_noun, references
from .scene import MAX_JITTER, Scene, SceneObject, layout_is_clean, sample_offsets, sample_scene

SPLITS: tuple[str, ...] = ("train", "heldout", "wording")

#: (shape, colour) pairs kept out of train; each colour once, each shape once or twice.
HELDOUT_COMBOS: tuple[tuple[str, str], ...] = (
    ("circle", "purple"),
    ("cross", "yellow"),
    ("square", "black"),
    ("square", "orange"),
    ("triangle", "blue"),
    ("triangle", "green"),
)

HELDOUT_PHRASING_RATE = 0.5
HELDOUT_TARGET_RATE = 0.75
GRAMMAR_RATE = 0.5  # train chats worded by the grammar rather than the templates


def is_heldout_combo(shape: str, color: str) -> bool:
    return (shape, color) in HELDOUT_COMBOS


def has_heldout_combo(scene: Scene) -> bool:
    return any(is_heldout_combo(o.shape, o.color) for o in scene.objects)


class Retry(Exception):
    """The sampled scene does not suit the task; sample another."""


class Builder:
    """What a task draws through: scenes, objects, options and wordings, all from one rng and
    within one split (a train draw never shows a held-out pair)."""

    def __init__(self, rng: random.Random, split: str, grammar_rate: float = GRAMMAR_RATE) -> None:
        self.rng = rng
        self.split = split
        self.grammar_rate = grammar_rate  # train split: the share of chats the grammar words
        self.heldout_phrasing = False
        self.words: Wording | None = None  # the grammar's words for this chat; None: the templates

    def start_chat(self) -> None:
        """Decides how the next chat is worded."""
        self.heldout_phrasing = self.split == "wording"
        grammar = self.split == "wording" or (
            self.split == "train" and self.grammar_rate > 0 and self.rng.random() < self.grammar_rate)
        self.words = Wording(self.rng, heldout=self.split == "wording") if grammar else None

    def allowed(self, shape: str, color: str) -> bool:
        return self.split == "heldout" or not is_heldout_combo(shape, color)

    def template(self, group: str, heldout_rate: float = HELDOUT_PHRASING_RATE) -> str:
        """A template of ``group``; in heldout, a held-out one with probability ``heldout_rate``."""
        train, held = PHRASINGS[group]
        if self.split == "heldout" and self.rng.random() < heldout_rate:
            self.heldout_phrasing = True
            return self.rng.choice(held)
        return self.rng.choice(train)

    def say(self, group: str, heldout_rate: float = HELDOUT_PHRASING_RATE, **slots: str) -> str:
        """The request of ``group`` with ``slots`` filled in: by the grammar or a template."""
        if self.words is not None:
            return self.words.say(group, **slots)
        return self.template(group, heldout_rate).format(**slots)

    def ref(self, scene: Scene, obj: SceneObject, avoid: tuple[str, ...] = ()) -> str:
        """A description that picks out ``obj`` alone, naming none of ``avoid``."""
        if self.words is None:
            return self.choice(references(scene, obj, avoid))
        return reference_text(obj, self.choice(reference_keys(scene, obj, avoid)), self.words)

    def kind(self, shape: str | None, color: str | None) -> str:
        """A plural kind of object: 'red circles', 'objects'."""
        if self.words is None:
            return kind_noun(shape, color)
        return kind_text(shape, color, self.words)

    def place(self, position: str) -> str:
        """A place for the {pos} slot: the bare name (templates say "at the {pos}"), or as the
        grammar words it ("in the upper left corner")."""
        return position if self.words is None else self.words.place(position)

    def scene(self, min_n: int = 1, max_n: int = 4) -> Scene:
        n = self.rng.randint(min_n, max_n)
        if self.split != "heldout":
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
            raise Retry
        held = [o for o in objects if is_heldout_combo(o.shape, o.color)]
        if self.split == "heldout" and held and self.rng.random() < HELDOUT_TARGET_RATE:
            return self.rng.choice(held)
        return self.rng.choice(objects)

    def choice(self, options: list) -> Any:
        if not options:
            raise Retry
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
        raise Retry


@dataclass
class Core:
    """What a task function produces: the user turn's parts and the assistant's."""

    user: tuple
    assistant: tuple
    answer: Any
    thinking: bool = False
    question: bool = False  # an image question: its text may come before the image
    followup: bool = True  # a question may instead follow a describe turn about the same image
    request: Any = None  # a drawing worded by the grammar: the DrawRequest it states


def split_scene(rng: random.Random, split: str = "train") -> Scene:
    """A scene of `split` as the tasks draw them: train scenes never hold a held-out shape/colour
    pair, held-out scenes always hold one (used by training beyond the chats, e.g. the vision warm-up)."""
    return Builder(rng, split).scene()
