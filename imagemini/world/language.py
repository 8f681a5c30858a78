"""The language of the shapes world as a generative grammar: how people word their requests.

    import random
    from imagemini.world.language import Wording, sample_request, request_text, complete

    words = Wording(random.Random(0), heldout=False)
    request = sample_request(rng, allowed)          # what is stated: shape, colour, size, place, count
    text = words.say("draw", d=request_text(request, words))   # "can you draw three red circles?"
    scene = complete(request, rng, allowed)          # the open attributes picked from rng

A request is built from a *frame* per intent (imperative, request, question, fragment, run-on),
a politeness prefix and suffix, and words from a lexicon of synonyms (big/large, middle/center,
"shape"/"object", digits and number words), then lowercased or capitalised, sometimes without its
final punctuation and, rarely, with a typo in a frame word (never in a word that names something).

Held-out wording (the ``wording`` split): the frames in ``FRAMES[intent][1]`` and the synonyms in
``SYNONYMS[concept][1]`` never appear in training; a held-out request always uses a held-out frame
and each concept that has held-out synonyms picks one of them with probability 1/2.

Partial drawing requests (:class:`DrawRequest`): any subset of shape, colour, size and position per
object, a count ("three red circles"), and the background, each stated or left open. A colour is
stated for the background only next to the word "background"; otherwise it is an object's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from .scene import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, Scene, SceneObject, article, join_phrases

# --- Lexicon ------------------------------------------------------------------------------
# concept -> (training synonyms, held-out synonyms). A concept without an entry is its own word.

SYNONYMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "size:large": (("large", "big"), ("huge",)),
    "size:small": (("small", "little"), ("tiny",)),
    "color:gray": (("gray",), ("grey",)),
    "noun": (("object", "shape"), ("thing",)),
    "nouns": (("objects", "shapes"), ("things",)),
    "colour": (("colour", "color"), ()),
    "pos:top left": (("top left", "top-left", "top left corner"), ("upper left",)),
    "pos:top right": (("top right", "top-right", "top right corner"), ("upper right",)),
    "pos:bottom left": (("bottom left", "bottom-left", "bottom left corner"), ("lower left",)),
    "pos:bottom right": (("bottom right", "bottom-right", "bottom right corner"), ("lower right",)),
    "pos:center": (("center", "middle"), ("centre",)),
    "pos:top": (("top", "top middle"), ()),
    "pos:bottom": (("bottom", "bottom middle"), ()),
    "pos:left": (("left", "left side"), ()),
    "pos:right": (("right", "right side"), ()),
}
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
NUMBERS: dict[int, tuple[str, ...]] = {1: ("one", "1"), 2: ("two", "2"), 3: ("three", "3"), 4: ("four", "4")}
HELDOUT_SYNONYM_RATE = 0.5

# --- Frames -------------------------------------------------------------------------------
# intent -> (training frames, held-out frames). A frame's first letter says how it is dressed:
# "v" an imperative (takes "please"/"can you" and a polite suffix), "q" a question, "n" a fragment.
# Slots: {d} what to draw, {ref} a unique object description, {what} a plural kind, {thing} "a" +
# a kind, {a}/{b} two references or kinds, {color}, {pos} a place phrase, {obj} an object to add,
# {colour} the word colour/color.

FRAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "draw": (
        ("v:draw {d}", "v:draw me {d}", "v:make {d}", "v:make a picture of {d}", "v:create an image with {d}",
         "v:show me {d}", "v:generate {d}", "n:i want {d}", "n:i need a picture of {d}", "n:picture of {d}",
         "n:an image of {d}", "n:{d}", "v:sketch {d}", "v:give me {d}", "q:can i get {d}", "v:draw a picture with {d}",
         "v:render {d} for me", "n:{d}, please draw that", "v:make me an image showing {d}"),
        ("n:i'd like to see {d}", "v:put {d} in a picture", "q:could i have an image of {d}", "v:depict {d}"),
    ),
    "describe": (
        ("v:describe the picture", "q:what's in the image", "q:what do you see", "v:describe it",
         "v:tell me what you see", "q:what is this", "n:caption please", "v:describe this image",
         "q:what's going on in this picture", "v:say what is in the image", "q:what does it show"),
        ("q:what does this picture contain", "v:give me a rundown of the image"),
    ),
    "describe_json": (
        ("n:json please", "v:describe the image in json", "v:give me json for this picture", "n:the scene as json",
         "v:output the objects as json", "v:write this picture as json", "q:can i have the json of this scene"),
        ("v:encode the scene in json format", "n:json of what you see"),
    ),
    "count": (
        ("q:how many {what} are there", "q:how many {what} do you see", "q:how many {what} are in the picture",
         "q:how many {what} are in this image", "v:count the {what}", "q:how many {what}", "q:count the {what}?",
         "n:number of {what}", "v:tell me the number of {what}", "q:how many {what} can you count",
         "q:how many {what} does it have"),
        ("q:what's the total number of {what}", "q:how many {what} can be seen"),
    ),
    "color_of": (
        ("q:what {colour} is the {ref}", "q:which {colour} is the {ref}", "q:the {ref} is what {colour}",
         "n:{colour} of the {ref}", "q:what's the {colour} of the {ref}", "v:tell me the {colour} of the {ref}",
         "q:what {colour} does the {ref} have"),
        ("q:what {colour} has the {ref} got", "q:which {colour} was used for the {ref}"),
    ),
    "background": (
        ("q:what {colour} is the background", "q:what's the background {colour}", "n:background {colour}",
         "q:which {colour} is the background", "v:tell me the background {colour}", "q:what {colour} is behind the shapes",
         "q:the background is what {colour}"),
        ("q:what {colour} fills the background", "v:say which {colour} the background has"),
    ),
    "where_is": (
        ("q:where is the {ref}", "q:where's the {ref}", "q:where is the {ref} located", "q:in which part is the {ref}",
         "v:find the {ref}", "q:where can i see the {ref}", "n:position of the {ref}", "v:tell me where the {ref} is"),
        ("q:where does the {ref} sit", "q:whereabouts is the {ref}"),
    ),
    "is_there": (
        ("q:is there {thing}", "q:is there {thing} in the picture", "q:do you see {thing}", "q:can you see {thing}",
         "q:does the image have {thing}", "q:is there {thing} anywhere", "q:{thing} in the picture"),
        ("q:does this picture include {thing}", "q:would i find {thing} here"),
    ),
    "bigger": (
        ("q:which is bigger, the {a} or the {b}", "q:which one is larger: the {a} or the {b}",
         "q:the {a} or the {b}, which is bigger", "q:which is the larger one, the {a} or the {b}"),
        ("q:which of the {a} and the {b} is larger",),
    ),
    "smaller": (
        ("q:which is smaller, the {a} or the {b}", "q:which one is smaller: the {a} or the {b}",
         "q:the {a} or the {b}, which is smaller"),
        ("q:which of the {a} and the {b} is smaller",),
    ),
    "more": (
        ("q:are there more {a} than {b}", "q:more {a} than {b}", "q:does the picture have more {a} than {b}",
         "q:are there more {a} than {b} here"),
        ("q:is the number of {a} greater than the number of {b}",),
    ),
    "edit_recolor": (
        ("v:make the {ref} {color}", "v:change the {ref} to {color}", "v:color the {ref} {color}",
         "v:change the {colour} of the {ref} to {color}", "n:the {ref} should be {color}"),
        ("v:switch the {ref} to {color}", "n:i want the {ref} in {color}"),
    ),
    "edit_remove": (
        ("v:remove the {ref}", "v:delete the {ref}", "v:get rid of the {ref}", "v:take out the {ref}",
         "n:no {ref} please", "v:take the {ref} away"),
        ("v:drop the {ref}", "n:i don't want the {ref}"),
    ),
    "edit_add": (
        ("v:add {obj} {pos}", "v:put {obj} {pos}", "v:draw {obj} {pos}", "v:also add {obj} {pos}",
         "n:{obj} {pos} too", "v:place {obj} {pos}"),
        ("v:include {obj} {pos}", "n:i want {obj} {pos} as well"),
    ),
    "edit_move": (
        ("v:move the {ref} {pos}", "v:put the {ref} {pos}", "v:shift the {ref} {pos}", "n:the {ref} goes {pos}",
         "v:place the {ref} {pos} instead"),
        ("v:slide the {ref} {pos}", "n:i want the {ref} {pos}"),
    ),
    "smalltalk_greet": (
        ("n:hi", "n:hello", "n:hey there", "n:good morning", "q:how are you", "n:hiya", "n:hello again",
         "q:hi, who are you talking to me"),
        ("n:yo", "n:hey, nice to meet you"),
    ),
    "smalltalk_capabilities": (
        ("q:what can you do", "q:what are you", "q:what can i ask you", "v:tell me what you can do",
         "q:what kind of pictures do you make", "q:can you help me", "q:what are you good at"),
        ("q:what are you useful for", "q:what tricks do you know"),
    ),
    "smalltalk_decline": (
        ("v:draw a dog", "q:what's the weather tomorrow", "v:write a poem", "q:who is the king of spain",
         "v:tell me a story", "q:what is 5 plus 7", "v:draw my house", "v:translate hello into german",
         "v:book a table for two", "q:can you code in java", "v:draw a sunset", "q:what year is it"),
        ("v:draw a cat sleeping", "q:how do i cook rice", "v:write a haiku"),
    ),
}

_QUESTION_PREFIXES = ("can you ", "could you ", "would you ")
_VERB_PREFIXES = ("", "", "please ", "hey, ", "now ", "ok, ") + _QUESTION_PREFIXES
_VERB_SUFFIXES = ("", "", " please", " for me", ", thanks", ", thank you")
_ASK_PREFIXES = ("", "", "", "hey, ", "ok so ", "quick question: ")
_ASK_SUFFIXES = ("", "", "", " please")
LOWERCASE_RATE = 0.35
NO_PUNCTUATION_RATE = 0.3
TYPO_RATE = 0.04


@dataclass(frozen=True)
class Said:
    """How a request was worded: its frame and the held-out synonyms it used."""

    intent: str
    frame: str
    heldout_words: tuple[str, ...] = ()


class Wording:
    """Words and frames drawn from one rng, from the training lexicon or (``heldout``) the held-out one.
    ``said`` records the last request's frame and held-out words."""

    def __init__(self, rng: random.Random, heldout: bool) -> None:
        self.rng = rng
        self.heldout = heldout
        self.said: Said | None = None
        self._heldout_words: list[str] = []

    def word(self, concept: str, plain: str) -> str:
        """A synonym of ``concept`` (``plain`` when it has none)."""
        train, held = SYNONYMS.get(concept, ((plain,), ()))
        if self.heldout and held and self.rng.random() < HELDOUT_SYNONYM_RATE:
            word = self.rng.choice(held)
            self._heldout_words.append(word)
            return word
        return self.rng.choice(train)

    def size(self, size: str) -> str:
        return self.word(f"size:{size}", size)

    def color(self, color: str) -> str:
        return self.word(f"color:{color}", color)

    def place(self, position: str) -> str:
        """'at the top left', 'in the upper left corner', 'in the middle', 'on the left side'."""
        words = self.word(f"pos:{position}", position)
        if words.endswith("side"):
            preps: tuple[str, ...] = ("on the",)
        elif position in ("left", "right"):
            preps = ("on the", "at the")
        else:
            preps = ("at the", "in the")
        return f"{self.rng.choice(preps)} {words}"

    def number(self, n: int) -> str:
        return self.rng.choice(NUMBERS[n])

    def say(self, intent: str, **slots: str) -> str:
        """A request of ``intent`` with its ``slots`` filled in, dressed as people type."""
        train, held = FRAMES[intent]
        chosen = self.rng.choice(held if self.heldout else train)
        mode, frame = chosen.split(":", 1)
        if self.rng.random() < TYPO_RATE:
            frame = _typo(self.rng, frame)
        text, end = self._dress(mode, frame.format(colour=self.word("colour", "colour"), **slots))
        self.said = Said(intent, chosen, tuple(dict.fromkeys(self._heldout_words)))
        self._heldout_words = []
        if self.rng.random() >= LOWERCASE_RATE:
            text = text[0].upper() + text[1:]
        return text if self.rng.random() < NO_PUNCTUATION_RATE else text + end

    def _dress(self, mode: str, text: str) -> tuple[str, str]:
        """(text with a prefix and suffix, its final punctuation)."""
        rng = self.rng
        if text.endswith("?"):
            return text[:-1], "?"
        if mode == "v":
            prefix = rng.choice(_VERB_PREFIXES)
            return prefix + text + rng.choice(_VERB_SUFFIXES), "?" if prefix in _QUESTION_PREFIXES else rng.choice(".!")
        if mode == "q":
            return rng.choice(_ASK_PREFIXES) + text + rng.choice(_ASK_SUFFIXES), "?"
        return text, "."


def _typo(rng: random.Random, frame: str) -> str:
    """Two neighbouring letters of one long frame word swapped (never a slot's word)."""
    words = frame.split(" ")
    candidates = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 5]
    if not candidates:
        return frame
    i = rng.choice(candidates)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return " ".join(words)


# --- Partial drawing requests ---------------------------------------------------------------


@dataclass(frozen=True)
class ObjectSpec:
    """What a request states about one object; None: left open."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None
    position: str | None = None

    def fits(self, obj: SceneObject) -> bool:
        return all(v is None or getattr(obj, k) == v for k, v in self.stated().items())

    def stated(self) -> dict[str, str]:
        return {k: v for k, v in (("shape", self.shape), ("color", self.color), ("size", self.size),
                                  ("position", self.position)) if v is not None}


@dataclass(frozen=True)
class DrawRequest:
    """A drawing request: groups of (object spec, how many) and the background (None: open)."""

    groups: tuple[tuple[ObjectSpec, int], ...]
    background: str | None = None

    @property
    def objects(self) -> tuple[ObjectSpec, ...]:
        return tuple(spec for spec, n in self.groups for _ in range(n))

    def fits(self, scene: Scene | None) -> bool:
        """Every stated attribute drawn, nothing extra: as many objects as asked, matched one to one."""
        if scene is None or len(scene.objects) != len(self.objects):
            return False
        if self.background is not None and scene.background != self.background:
            return False
        return _matching(list(self.objects), list(scene.objects))


def _matching(specs: list[ObjectSpec], objects: list[SceneObject]) -> bool:
    if not specs:
        return True
    first, rest = specs[0], specs[1:]
    return any(first.fits(o) and _matching(rest, objects[:i] + objects[i + 1:]) for i, o in enumerate(objects))


Allowed = Callable[[str, str], bool]


def sample_request(rng: random.Random, allowed: Allowed) -> DrawRequest:
    """A request stating a random subset: one kind with a count, or one to three single objects."""
    background = rng.choice(BACKGROUNDS) if rng.random() < 0.45 else None
    colors = [c for c in COLORS if c != background]
    if rng.random() < 0.3:
        spec = _spec(rng, colors, allowed, (0.85, 0.6, 0.3, 0.0), [])
        groups = ((spec, rng.choice((2, 2, 3, 3, 4))),)
    else:
        specs: list[ObjectSpec] = []
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
            specs.append(_spec(rng, colors, allowed, (0.75, 0.6, 0.35, 0.35), [s.position for s in specs]))
        groups = tuple((s, 1) for s in specs)
    return DrawRequest(groups, background)


def _spec(rng: random.Random, colors: list[str], allowed: Allowed, rates: tuple[float, ...],
          taken: list[str | None]) -> ObjectSpec:
    shape = rng.choice(SHAPES) if rng.random() < rates[0] else None
    options = [c for c in colors if shape is None or allowed(shape, c)]
    color = rng.choice(options) if rng.random() < rates[1] else None
    size = rng.choice(list(SIZES)) if rng.random() < rates[2] else None
    free = [p for p in POSITIONS if p not in taken]
    position = rng.choice(free) if rng.random() < rates[3] else None
    return ObjectSpec(shape, color, size, position)


def complete(request: DrawRequest, rng: random.Random, allowed: Allowed) -> Scene:
    """A scene that fits ``request``: every open attribute drawn from ``rng``."""
    stated_colors = {s.color for s in request.objects if s.color}
    background = request.background or rng.choice([b for b in BACKGROUNDS if b not in stated_colors])
    free = [p for p in POSITIONS if p not in {s.position for s in request.objects}]
    rng.shuffle(free)
    objects = []
    for spec in request.objects:
        shape = spec.shape or rng.choice([s for s in SHAPES if spec.color is None or allowed(s, spec.color)])
        color = spec.color or rng.choice([c for c in COLORS if c != background and allowed(shape, c)])
        size = spec.size or rng.choice(list(SIZES))
        objects.append(SceneObject(shape, color, size, spec.position or free.pop()))
    return Scene(background, tuple(objects))


def object_text(spec: ObjectSpec, n: int, words: Wording) -> str:
    """'a big red circle at the top left', 'three red circles', 'a shape', '2 little things'."""
    parts = ([words.size(spec.size)] if spec.size else []) + ([words.color(spec.color)] if spec.color else [])
    if n == 1:
        noun = spec.shape or words.word("noun", "object")
    else:
        noun = PLURAL[spec.shape] if spec.shape else words.word("nouns", "objects")
    body = " ".join(parts + [noun])
    det = (words.number(n) if n > 1 else article(body) if words.rng.random() < 0.85 else "one")
    place = f" {words.place(spec.position)}" if spec.position else ""
    return f"{det} {body}{place}"


def request_text(request: DrawRequest, words: Wording) -> str:
    """What to draw, the background (if stated) before, after or run on."""
    rng = words.rng
    objects = join_phrases([object_text(spec, n, words) for spec, n in request.groups])
    if request.background is None:
        return objects
    bg = words.color(request.background)
    styles = (f"{objects} on {article(bg)} {bg} background", f"{objects} with {article(bg)} {bg} background",
              f"{objects}, {bg} background", f"{article(bg)} {bg} background with {objects}",
              f"{objects} and make the background {bg}")
    return rng.choice(styles)


# --- Questions and edits ----------------------------------------------------------------------

#: Attribute sets that may name an object, in the order references are tried.
REFERENCE_KEYS = (("shape",), ("color", "shape"), ("size", "shape"), ("color",), ("position",), ("size", "color", "shape"))


def reference_keys(scene: Scene, obj: SceneObject, avoid: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The attribute sets that pick out ``obj`` alone in ``scene`` and name none of ``avoid``."""
    out = []
    for keys in REFERENCE_KEYS:
        if any(k in avoid for k in keys):
            continue
        if sum(all(getattr(o, k) == getattr(obj, k) for k in keys) for o in scene.objects) == 1:
            out.append(keys)
    return out


def reference_text(obj: SceneObject, keys: tuple[str, ...], words: Wording) -> str:
    """'circle', 'big red circle', 'red one', 'thing in the middle' (without "the")."""
    if keys == ("position",):
        return f"{words.rng.choice((words.word('noun', 'object'), 'one'))} {words.place(obj.position)}"
    parts = ([words.size(obj.size)] if "size" in keys else []) + ([words.color(obj.color)] if "color" in keys else [])
    noun = obj.shape if "shape" in keys else words.rng.choice((words.word("noun", "object"), "one"))
    return " ".join(parts + [noun])


def kind_text(shape: str | None, color: str | None, words: Wording) -> str:
    """A plural kind: 'shapes', 'red things', 'crosses', 'blue squares'."""
    noun = PLURAL[shape] if shape else words.word("nouns", "objects")
    return f"{words.color(color)} {noun}" if color else noun
