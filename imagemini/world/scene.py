"""Scene model of the "shapes world" (spec v1): constants, validation, sampling, text/JSON.

A scene is a square canvas with a background colour and 1-4 solid shapes, each
in its own cell of a 3x3 grid. Its *truth* is the background plus the list of
``(shape, color, size, position)`` objects; everything else (the exact pixel
centre of each object) is rendering detail and lives in :func:`sample_offsets`.

Typical use::

    import random
    from imagemini.world import Scene, sample_scene, render, parse_description

    rng = random.Random(0)
    scene = sample_scene(rng)           # truth
    image = render(scene, 64, rng)      # jitter drawn from the same rng
    text = scene.describe()             # canonical English
    assert parse_description(text) == scene
    assert Scene.from_json(scene.to_json()) == scene

Canonical English grammar (one form only; ``parse_description`` inverts it)::

    description := OBJECTS " on " ARTICLE " " BACKGROUND " background."
    OBJECTS     := O1                                  (1 object)
                 | O1 " and " O2                       (2 objects)
                 | O1 ", " O2 " and " O3               (3 objects, no Oxford comma)
                 | O1 ", " O2 ", " O3 " and " O4       (4 objects)
    O           := "a " SIZE " " COLOR " " SHAPE " at the " POSITION
    ARTICLE     := "an" before a vowel-initial colour (orange), else "a"

Objects are listed in reading order (row-major grid order) and the first letter
of the sentence is capitalised, e.g.
"A large red circle at the top left and a small blue square at the center on a white background."
Every position uses "at the" (also "at the left", "at the center") so the
grammar has no special cases.

Canonical JSON: ``{"background": B, "objects": [{"shape", "color", "size",
"position"}, ...]}`` with objects in reading order and keys in that order
(:meth:`Scene.to_json`, :meth:`Scene.to_json_str`, :meth:`Scene.from_json`).

Layout (not part of the truth): each object's centre is its cell centre plus
an offset drawn uniformly from the disk of radius 0.05*S, conditioned on all
objects lying on the canvas and their extent boxes being >= MIN_GAP (0.04*S)
apart. Without that condition two large neighbours could overlap, and a large
corner object could leave the canvas. See :func:`sample_offsets`.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

# --- Spec v1 constants -------------------------------------------------------

#: Object colours (name -> RGB). Backgrounds may also be "gray" (see PALETTE).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}

#: Every colour that can appear in an image (object colours + the gray background).
PALETTE: dict[str, tuple[int, int, int]] = {**COLORS, "gray": (128, 128, 128)}

#: Allowed backgrounds: white, gray, black, or any object colour.
BACKGROUNDS: tuple[str, ...] = ("white", "gray", "black", "red", "green", "blue", "yellow", "purple", "orange")

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

#: Size name -> extent (bounding-box side / diameter) as a fraction of the canvas side S.
SIZES: dict[str, float] = {"small": 0.16, "large": 0.28}

#: Position name -> (row, col) grid cell, in reading order (row-major).
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (0, 1),
    "top right": (0, 2),
    "left": (1, 0),
    "center": (1, 1),
    "right": (1, 2),
    "bottom left": (2, 0),
    "bottom": (2, 1),
    "bottom right": (2, 2),
}

#: Cell centre coordinates (fractions of S) indexed by row or column.
CELL_CENTERS: tuple[float, float, float] = (1 / 6, 3 / 6, 5 / 6)

#: An object's centre lies within this distance (fraction of S) of its cell centre.
MAX_JITTER: float = 0.05

#: Minimum gap (fraction of S) between the bounding boxes of two objects after
#: jitter. Not part of the truth: it keeps objects from touching or overlapping
#: (two large neighbours jittered towards each other would otherwise overlap by
#: up to 0.047*S), so every object stays readable. ~2.5 px at S=64.
MIN_GAP: float = 0.04

MIN_OBJECTS: int = 1
MAX_OBJECTS: int = 4

_POSITION_INDEX = {name: i for i, name in enumerate(POSITIONS)}


# --- Data model --------------------------------------------------------------


def join_phrases(phrases: list[str]) -> str:
    """'a', 'a and b', 'a, b and c': how descriptions list objects."""
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


@dataclass(frozen=True)
class SceneObject:
    """One solid shape. All fields are spec names (validated on construction)."""

    shape: str
    color: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("shape", self.shape, SHAPES),
            ("color", self.color, COLORS),
            ("size", self.size, SIZES),
            ("position", self.position, POSITIONS),
        ):
            if not isinstance(value, str) or value not in allowed:
                raise ValueError(f"unknown {field} {value!r}; expected one of {sorted(allowed)}")

    @property
    def cell(self) -> tuple[int, int]:
        """(row, col) of the grid cell."""
        return POSITIONS[self.position]

    @property
    def center(self) -> tuple[float, float]:
        """Un-jittered centre (x, y) as fractions of S."""
        row, col = self.cell
        return CELL_CENTERS[col], CELL_CENTERS[row]

    @property
    def extent(self) -> float:
        """Bounding-box side / diameter as a fraction of S."""
        return SIZES[self.size]

    def phrase(self) -> str:
        """Canonical noun phrase, e.g. 'a small red circle at the top left'."""
        return f"a {self.size} {self.color} {self.shape} at the {self.position}"

    def to_json(self) -> dict[str, str]:
        return {"shape": self.shape, "color": self.color, "size": self.size, "position": self.position}


@dataclass(frozen=True)
class Scene:
    """Background plus 1-4 objects; ``objects`` is always a tuple in reading order.

    Construction validates the spec and raises ValueError on: unknown names,
    0 or more than 4 objects, two objects in one cell, an object whose colour
    equals the background.
    """

    background: str
    objects: tuple[SceneObject, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.background, str) or self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; expected one of {list(BACKGROUNDS)}")
        objs = tuple(self.objects)
        for obj in objs:
            if not isinstance(obj, SceneObject):
                raise ValueError(f"objects must be SceneObject instances, got {type(obj).__name__}")
        if not MIN_OBJECTS <= len(objs) <= MAX_OBJECTS:
            raise ValueError(f"a scene has {MIN_OBJECTS}-{MAX_OBJECTS} objects, got {len(objs)}")
        positions = [o.position for o in objs]
        if len(set(positions)) != len(positions):
            dup = sorted({p for p in positions if positions.count(p) > 1})
            raise ValueError(f"more than one object in cell(s) {dup}")
        for obj in objs:
            if obj.color == self.background:
                raise ValueError(f"object colour {obj.color!r} equals the background")
        # Canonical order: reading order of the grid cells (cells are unique).
        object.__setattr__(self, "objects", tuple(sorted(objs, key=lambda o: _POSITION_INDEX[o.position])))

    # -- text ---------------------------------------------------------------

    def describe(self) -> str:
        """The one canonical English description (grammar in the module docstring)."""
        body = join_phrases([o.phrase() for o in self.objects])
        text = f"{body} on {article(self.background)} {self.background} background."
        return text[0].upper() + text[1:]

    # -- JSON ---------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Canonical JSON-able dict: {"background": ..., "objects": [{shape, color, size, position}, ...]}."""
        return {"background": self.background, "objects": [o.to_json() for o in self.objects]}

    def to_json_str(self) -> str:
        """Canonical JSON text (key order as in to_json, compact separators)."""
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> "Scene":
        """Build a validated Scene from the canonical dict (or its JSON text).

        Raises ValueError on missing/extra keys, wrong types or spec violations.
        Object order in the input does not matter (it is canonicalised).
        """
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise ValueError(f"invalid JSON: {exc}") from exc
        if not isinstance(data, Mapping):
            raise ValueError("scene JSON must be an object")
        if set(data) != {"background", "objects"}:
            raise ValueError(f"scene keys must be exactly background, objects; got {sorted(data)}")
        raw_objects = data["objects"]
        if not isinstance(raw_objects, (list, tuple)):
            raise ValueError("'objects' must be a list")
        objects = []
        keys = {"shape", "color", "size", "position"}
        for raw in raw_objects:
            if not isinstance(raw, Mapping) or set(raw) != keys:
                raise ValueError(f"each object must have exactly the keys {sorted(keys)}; got {raw!r}")
            objects.append(SceneObject(raw["shape"], raw["color"], raw["size"], raw["position"]))
        return cls(data["background"], tuple(objects))


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# --- Sampling ----------------------------------------------------------------


def sample_scene(
    rng: random.Random,
    num_objects: int | None = None,
    *,
    shapes: Sequence[str] = SHAPES,
    colors: Sequence[str] = tuple(COLORS),
    sizes: Sequence[str] = tuple(SIZES),
    backgrounds: Sequence[str] = BACKGROUNDS,
) -> Scene:
    """Sample a valid scene using only ``rng`` (so it is reproducible).

    The number of objects is uniform in 1..4 unless given. The background is
    uniform over ``backgrounds``; each object's colour is uniform over
    ``colors`` minus the background; cells are distinct and uniform; shape and
    size are uniform. The restriction arguments let callers build held-out
    splits (e.g. no purple triangles) by sampling from subsets.
    """
    if num_objects is None:
        num_objects = rng.randint(MIN_OBJECTS, MAX_OBJECTS)
    if not MIN_OBJECTS <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"num_objects must be in {MIN_OBJECTS}..{MAX_OBJECTS}, got {num_objects}")
    background = rng.choice(list(backgrounds))
    object_colors = [c for c in colors if c != background]
    if not object_colors:
        raise ValueError(f"no object colour differs from background {background!r}")
    cells = rng.sample(list(POSITIONS), num_objects)
    objects = [
        SceneObject(rng.choice(list(shapes)), rng.choice(object_colors), rng.choice(list(sizes)), cell)
        for cell in cells
    ]
    return Scene(background, tuple(objects))


Offsets = tuple[tuple[float, float], ...]


def sample_offsets(scene: Scene, rng: random.Random | int | None, max_tries: int = 1000) -> Offsets:
    """Per-object centre offsets (dx, dy), fractions of S, aligned with ``scene.objects``.

    Each offset is uniform in the disk of radius MAX_JITTER (0.05*S), conditioned
    on the layout being clean: every object lies fully on the canvas and the
    bounding boxes of any two objects are at least MIN_GAP apart. This is done by
    rejection sampling of the whole layout (about 68% of draws pass for a typical
    scene, 4% for the worst, four large objects in a 2x2 block); after
    ``max_tries`` failures (practically never) it falls back to zero offsets,
    which always satisfy the conditions. The conditioning slightly favours
    smaller offsets (mean radius 0.032 S vs 0.033 S unconditioned).

    ``rng`` may be a random.Random (consumed), an int seed, or None (no jitter).
    Offsets are fractions of S, so the same rng gives the same layout at any S.
    """
    n = len(scene.objects)
    if rng is None:
        return tuple((0.0, 0.0) for _ in range(n))
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    for _ in range(max_tries):
        offsets = tuple(_disk_point(rng, MAX_JITTER) for _ in range(n))
        if layout_is_clean(scene, offsets):
            return offsets
    return tuple((0.0, 0.0) for _ in range(n))


def _disk_point(rng: random.Random, radius: float) -> tuple[float, float]:
    # Uniform in a disk: sqrt of a uniform radius fraction.
    r = radius * math.sqrt(rng.random())
    theta = 2 * math.pi * rng.random()
    return r * math.cos(theta), r * math.sin(theta)


def object_box(obj: SceneObject, offset: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the object's extent box, fractions of S."""
    cx, cy = obj.center
    half = obj.extent / 2
    return cx + offset[0] - half, cy + offset[1] - half, cx + offset[0] + half, cy + offset[1] + half


def layout_is_clean(scene: Scene, offsets: Iterable[tuple[float, float]]) -> bool:
    """True if the jittered layout respects MAX_JITTER, the canvas and MIN_GAP."""
    offsets = tuple(offsets)
    if len(offsets) != len(scene.objects):
        return False
    eps = 1e-9
    boxes = []
    for obj, (dx, dy) in zip(scene.objects, offsets):
        if math.hypot(dx, dy) > MAX_JITTER + eps:
            return False
        box = object_box(obj, (dx, dy))
        if box[0] < -eps or box[1] < -eps or box[2] > 1 + eps or box[3] > 1 + eps:
            return False
        boxes.append(box)
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            gap_x = max(b[0] - a[2], a[0] - b[2])
            gap_y = max(b[1] - a[3], a[1] - b[3])
            # Separated if either axis has a gap (axis-aligned boxes).
            if max(gap_x, gap_y) < MIN_GAP - eps:
                return False
    return True


# --- Parsing the canonical description ----------------------------------------


class DescriptionParseError(ValueError):
    """The text is not a (valid) canonical scene description."""


def _alt(names: Iterable[str]) -> str:
    # Regex alternation, longest first so "top left" wins over "top".
    return "|".join(sorted((re.escape(n) for n in names), key=len, reverse=True))


_OBJECT_RE = re.compile(
    rf"an? (?P<size>{_alt(SIZES)}) (?P<color>{_alt(COLORS)}) (?P<shape>{_alt(SHAPES)})"
    rf" at the (?P<position>{_alt(POSITIONS)})"
)
_SENTENCE_RE = re.compile(rf"(?P<objects>.+) on an? (?P<background>{_alt(BACKGROUNDS)}) background\.?")


def parse_description(text: str, strict: bool = True) -> Scene:
    """Invert :meth:`Scene.describe`.

    strict=True (default): the text must be exactly the canonical description
    (only surrounding whitespace is ignored); anything else raises
    DescriptionParseError. Thus ``parse_description(s.describe()) == s`` and a
    text parses iff it is the describe() of the scene it parses to.

    strict=False: for scoring free-running model captions; case, runs of
    whitespace, "a"/"an", an Oxford comma, a missing final period and object order
    are tolerated. The result is still a validated Scene (spec violations such as
    two objects in one cell raise DescriptionParseError).
    """
    if not isinstance(text, str):
        raise DescriptionParseError(f"expected str, got {type(text).__name__}")
    original = text.strip()
    if strict:
        # The regexes are lower case; the final canonical check restores strictness.
        work = original[:1].lower() + original[1:]
    else:
        work = re.sub(r"\s+", " ", original).lower()
    m = _SENTENCE_RE.fullmatch(work)
    if m is None:
        raise DescriptionParseError(f"not a scene description: {original!r}")
    body = m.group("objects")
    if not strict:
        body = body.replace(", and ", " and ")
    head, sep, last = body.rpartition(" and ")
    parts = (head.split(", ") if sep else []) + [last]
    objects = []
    for part in parts:
        om = _OBJECT_RE.fullmatch(part)
        if om is None:
            raise DescriptionParseError(f"cannot parse object phrase {part!r} in {original!r}")
        objects.append(SceneObject(om["shape"], om["color"], om["size"], om["position"]))
    try:
        scene = Scene(m["background"], tuple(objects))
    except ValueError as exc:
        raise DescriptionParseError(f"{exc} in {original!r}") from exc
    if strict and scene.describe() != original:
        raise DescriptionParseError(f"not the canonical description (expected {scene.describe()!r}): {original!r}")
    return scene
