"""Renderer for the shapes world: Scene -> RGB image with exact palette colours.

Usage::

    image = render(scene, size=64, rng=random.Random(0))   # PIL.Image, mode RGB
    array = render_array(scene, size=64, offsets=offsets)  # uint8 (S, S, 3)

Jitter: the scene holds only the truth, so the per-object centre offsets come
from ``rng`` (via :func:`sample_offsets`) or are passed directly as
``offsets`` (fractions of S). ``rng=None`` and ``offsets=None`` draws every
object exactly at its cell centre. Offsets are fractions of S, so one rng state
gives the same layout at every canvas size.

Rasterisation is done with numpy: a pixel takes an object's colour iff its
centre lies inside the ideal shape. There is no anti-aliasing, so every pixel
is an exact palette colour (which keeps :mod:`parse` simple and exact).
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from .scene import PALETTE, Offsets, Scene, SceneObject, sample_offsets

MIN_SIZE = 64


def inside_shape(shape: str, dx: np.ndarray, dy: np.ndarray, extent: float) -> np.ndarray:
    """Boolean array: is the point (dx, dy) (offset from the shape centre, px) inside?

    Shapes fill their extent box: circle of diameter ``extent``; square of side
    ``extent``; isosceles triangle, apex up, base = bottom edge of the box;
    plus-shaped cross whose two arms span the box and are extent/3 wide.
    """
    h = extent / 2
    if shape == "circle":
        return dx * dx + dy * dy <= h * h
    if shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":
        # The half width at a row is half of its distance below the apex (dy = -h).
        below_apex = dy + h
        return (dy <= h) & (below_apex >= 0) & (np.abs(dx) <= below_apex / 2)
    if shape == "cross":
        arm = extent / 6  # half of the arm width extent/3
        horizontal = (np.abs(dx) <= h) & (np.abs(dy) <= arm)
        vertical = (np.abs(dy) <= h) & (np.abs(dx) <= arm)
        return horizontal | vertical
    raise ValueError(f"unknown shape {shape!r}")


def shape_mask(shape: str, cx: float, cy: float, extent: float, size: int) -> np.ndarray:
    """Boolean (size, size) mask of a shape centred at (cx, cy) px with the given extent px.

    A pixel is inside iff its centre is (see :func:`inside_shape`).
    """
    coords = np.arange(size, dtype=np.float64) + 0.5  # pixel centres
    return inside_shape(shape, coords[None, :] - cx, coords[:, None] - cy, extent)


def render_array(
    scene: Scene,
    size: int = 64,
    rng: random.Random | int | None = None,
    offsets: Offsets | None = None,
) -> np.ndarray:
    """Render to a uint8 array of shape (size, size, 3). See module docstring for jitter."""
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"canvas size must be an int >= {MIN_SIZE}, got {size!r}")
    if offsets is None:
        offsets = sample_offsets(scene, rng)
    elif rng is not None:
        raise ValueError("pass either rng or offsets, not both")
    if len(offsets) != len(scene.objects):
        raise ValueError("need one offset per object")
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[...] = PALETTE[scene.background]
    for obj, mask in zip(scene.objects, object_masks(scene, size, offsets)):
        canvas[mask] = PALETTE[obj.color]
    return canvas


def object_masks(scene: Scene, size: int, offsets: Offsets) -> list[np.ndarray]:
    """Boolean (size, size) pixel mask of each object as :func:`render_array` draws it."""
    return [_object_mask(obj, dx, dy, size) for obj, (dx, dy) in zip(scene.objects, offsets)]


def _object_mask(obj: SceneObject, dx: float, dy: float, size: int) -> np.ndarray:
    cx, cy = obj.center
    return shape_mask(obj.shape, (cx + dx) * size, (cy + dy) * size, obj.extent * size, size)


def render(
    scene: Scene,
    size: int = 64,
    rng: random.Random | int | None = None,
    offsets: Offsets | None = None,
) -> Image.Image:
    """Render ``scene`` on a ``size`` x ``size`` RGB canvas (size >= 64).

    Jitter comes from ``rng`` (random.Random, consumed; or an int seed) or from
    explicit ``offsets``; with neither, objects sit exactly at cell centres.
    """
    return Image.fromarray(render_array(scene, size, rng, offsets))
