"""The "shapes world" (spec v1): a tiny synthetic world of coloured shapes on a 3x3 grid.

Public API::

    sample_scene(rng, num_objects=None, ...) -> Scene      # random valid truth
    sample_offsets(scene, rng) -> offsets                   # reproducible jitter
    render(scene, size=64, rng=None, offsets=None) -> PIL.Image
    render_array(...) -> np.ndarray (S, S, 3) uint8
    Scene.describe() / parse_description(text, strict=True)  # canonical English
    Scene.to_json() / Scene.from_json(d)                      # canonical JSON
    parse_image(image) -> Scene   (raises SceneParseError)
    read_image(image) -> ImageReading (never raises on content; has .errors)

See scene.py for the description grammar, render.py for rasterisation,
parse.py for the image parser, tasks.py for the chats that train the bundled
model and language.py for the grammar of people's requests they are worded in.
"""

from .parse import Detection, ImageReading, SceneParseError, parse_image, read_image, snap_to_palette
from .render import inside_shape, render, render_array, shape_mask
from .scene import (
    BACKGROUNDS,
    CELL_CENTERS,
    COLORS,
    MAX_JITTER,
    MAX_OBJECTS,
    MIN_GAP,
    MIN_OBJECTS,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    DescriptionParseError,
    Scene,
    SceneObject,
    layout_is_clean,
    object_box,
    parse_description,
    sample_offsets,
    sample_scene,
)

__all__ = [
    "BACKGROUNDS",
    "CELL_CENTERS",
    "COLORS",
    "MAX_JITTER",
    "MAX_OBJECTS",
    "MIN_GAP",
    "MIN_OBJECTS",
    "PALETTE",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Detection",
    "DescriptionParseError",
    "ImageReading",
    "Scene",
    "SceneObject",
    "SceneParseError",
    "inside_shape",
    "layout_is_clean",
    "object_box",
    "parse_description",
    "parse_image",
    "read_image",
    "render",
    "render_array",
    "sample_offsets",
    "sample_scene",
    "shape_mask",
    "snap_to_palette",
]
