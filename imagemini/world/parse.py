"""Image parser for the shapes world: RGB image -> Scene, by plain image analysis.

Usage::

    scene = parse_image(image)      # raises SceneParseError if not a valid scene
    reading = read_image(image)     # never raises on content; carries .errors
    if reading.ok: reading.scene ...

Accepts a PIL image (any mode) or a numpy array (H, W, 3|4) / (H, W), integer
0-255 or float 0-1 (values outside are clipped), of any size; it also judges imperfect images (VQ
reconstructions, generated samples), so each step is chosen for robustness:

1. Resize to a square working size only when needed (non-square: bilinear to
   square; side < 64: integer nearest upsampling; side > 256: box
   downsampling to 128), so pixel thresholds stay sane.
2. Background = most common colour after snapping every pixel to the nearest
   palette colour (8 object colours + gray); objects cover < 1/3 of the canvas.
3. Unmix: explain each pixel as a blend ``a*c + (1-a)*background`` for each
   palette colour c; the pixel is "colour c" if a >= 0.5 and the blend fits
   (see :func:`unmix`). This, not nearest-colour snapping, is what makes soft
   edges work: a blurred red-on-yellow edge pixel is 50% red, though its
   nearest palette colour is orange. Each pixel gets the best-fitting colour.
4. Per object colour: morphological opening (3x3 square) of its pixels gives
   cores, free of speckle, 1-2 px fringes and thin bridges; 8-connected cores
   regrow 3 steps into the pixels that are >= 50% that colour (restoring the
   triangle tip and soft edges the opening shaved off) without merging; cores
   that then touch are merged if together they fit in one object's box (noise
   can cut a thin cross arm). Regions below ``min_area_frac`` are dropped.
5. Per region, analysis by synthesis: for each of the four shapes, place
   the ideal shape using the region's area (-> extent) and centroid (-> centre)
   and measure the soft IoU with the region's colour fractions; the best gives
   the shape, and its fitted extent and box centre give the size (threshold
   halfway between small 0.16 S and large 0.28 S) and position (grid cell
   containing the centre). Area and centroid are used rather than the bounding
   box because one stray pixel moves a bounding box but hardly moves them.
6. Assemble a Scene; spec violations become errors: no objects, > 4 objects,
   two objects in one cell, a gray object, a component too large to be one
   object (e.g. two same-coloured objects merged).

Errors: :func:`parse_image` raises :class:`SceneParseError` (a ValueError)
whose ``.reading`` holds the full :class:`ImageReading`; :func:`read_image`
returns the reading with ``errors`` filled and ``scene = None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np
from PIL import Image

from .render import inside_shape
from .scene import COLORS, PALETTE, POSITIONS, SHAPES, SIZES, Scene, SceneObject

ImageLike = Union[Image.Image, np.ndarray]

_PALETTE_NAMES: tuple[str, ...] = tuple(PALETTE)
_PALETTE_RGB = np.array([PALETTE[n] for n in _PALETTE_NAMES], dtype=np.float32)
_CELL_NAMES = {cell: name for name, cell in POSITIONS.items()}

#: Extent threshold between small and large (fraction of the canvas side).
SIZE_THRESHOLD: float = (SIZES["small"] + SIZES["large"]) / 2
#: A component whose extent exceeds this cannot be one object (large = 0.28).
MAX_EXTENT: float = 0.40
#: Components below this fraction of the canvas area are noise (small triangle ~0.0128).
MIN_AREA_FRAC: float = 0.004
#: Touching cores of one colour merge into one object if they fit in this box side.
_MERGE_EXTENT: float = 0.34
#: Side of the square structuring element of the opening that finds object
#: cores: removes speckle and 1-2 px fringes; a small cross's arm (>= 3 px at
#: S=64) survives.
_OPEN_SIZE = 3
#: Regrowth steps after opening: opening shaves <= 2 px (a triangle's tip) and
#: soft edges ~1 px more.
_REGROW_STEPS = 3
#: A pixel counts as a blend of background and colour c only if its RGB distance
#: from that blend line is <= _MAX_BLEND_RESIDUAL + _RESIDUAL_REL * |c - bg|
#: (noise, mild colour shifts and hue bleeding at edges pass; other colours fail).
_MAX_BLEND_RESIDUAL = 60.0
_RESIDUAL_REL = 0.25
#: When labelling, a partial blend pays this fraction of its missing colour distance.
_BLEND_PENALTY = 0.3
_MIN_WORK, _MAX_WORK, _DOWN_TO = 64, 256, 128


class SceneParseError(ValueError):
    """The image cannot be read as a valid scene; ``reading`` has the details."""

    def __init__(self, message: str, reading: "ImageReading | None" = None) -> None:
        super().__init__(message)
        self.reading = reading


@dataclass(frozen=True)
class Detection:
    """One detected object. Geometry is in fractions of the canvas side."""

    shape: str
    color: str
    size: str
    position: str
    center: tuple[float, float]  # centre (x, y) of the fitted shape's box
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 (x1, y1 exclusive)
    extent: float  # fitted extent of the chosen shape (from its area)
    bbox_extent: float  # max(bbox width, bbox height)
    area: float  # pixel area / canvas area
    iou: float  # overlap of the region with the fitted ideal shape (1 = perfect)


@dataclass(frozen=True)
class ImageReading:
    """Everything the parser saw; ``scene`` is set iff ``errors`` is empty."""

    background: str
    detections: tuple[Detection, ...]
    errors: tuple[str, ...] = ()
    scene: Scene | None = field(default=None)

    @property
    def ok(self) -> bool:
        return not self.errors


# --- public API ----------------------------------------------------------------


def parse_image(image: ImageLike, *, min_area_frac: float = MIN_AREA_FRAC) -> Scene:
    """Read a scene from an image; raise SceneParseError if it is not a valid scene."""
    reading = read_image(image, min_area_frac=min_area_frac)
    if reading.scene is None:
        raise SceneParseError("; ".join(reading.errors), reading)
    return reading.scene


def read_image(image: ImageLike, *, min_area_frac: float = MIN_AREA_FRAC) -> ImageReading:
    """Analyse an image; problems are reported in ``ImageReading.errors`` (no raise)."""
    rgb = _working_array(image)
    h, w = rgb.shape[:2]
    counts = np.bincount(snap_to_palette(rgb).ravel(), minlength=len(_PALETTE_NAMES))
    bg_index = int(counts.argmax())
    background = _PALETTE_NAMES[bg_index]
    min_area = min_area_frac * h * w
    labels, alphas = unmix(rgb, bg_index)

    detections: list[Detection] = []
    errors: list[str] = []
    for index, name in enumerate(_PALETTE_NAMES):
        if index == bg_index:
            continue
        opened = _open(labels == index, _OPEN_SIZE)
        if not opened.any():
            continue
        # Cores come from the opened mask (no speckle, fringes or thin bridges
        # between same-coloured neighbours); each regrows, without merging,
        # into the pixels that are >= 50% this colour, restoring what opening
        # shaved off (a small triangle's tip, soft cross arms).
        alpha = alphas[index]
        blend = alpha >= 0.5
        cores = _components(opened)
        grown = _regrow(np.where(blend, cores, 0), blend, _REGROW_STEPS)
        for comp in _regions(grown, _MERGE_EXTENT * h):
            area = int(comp.sum())
            if area < min_area:
                continue
            det = _describe_component(comp, alpha, name, area, h, w)
            if det.bbox_extent > MAX_EXTENT:
                errors.append(f"{name} region at {det.position} is too large for one object (extent {det.bbox_extent:.2f})")
            if name not in COLORS:
                errors.append(f"{name} is not an object colour (region at {det.position})")
            detections.append(det)

    detections.sort(key=lambda d: (list(POSITIONS).index(d.position), d.center[1], d.center[0]))
    if not detections:
        errors.append("no objects found")
    if len(detections) > 4:
        errors.append(f"{len(detections)} objects found (at most 4)")
    seen: dict[str, int] = {}
    for det in detections:
        seen[det.position] = seen.get(det.position, 0) + 1
    for position, n in seen.items():
        if n > 1:
            errors.append(f"{n} objects in cell {position!r}")

    scene = None
    if not errors:
        try:
            scene = Scene(
                background,
                tuple(SceneObject(d.shape, d.color, d.size, d.position) for d in detections),
            )
        except ValueError as exc:  # any remaining spec violation
            errors.append(str(exc))
    return ImageReading(background, tuple(detections), tuple(errors), scene)


def snap_to_palette(rgb: np.ndarray) -> np.ndarray:
    """Index (into PALETTE order) of the nearest palette colour for each pixel."""
    flat = rgb.reshape(-1, 3).astype(np.float32)
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2; |p|^2 is constant per pixel, so drop it.
    scores = flat @ _PALETTE_RGB.T * -2.0 + (_PALETTE_RGB**2).sum(axis=1)
    return scores.argmin(axis=1).reshape(rgb.shape[:2])


# --- image preparation -----------------------------------------------------------


def _working_array(image: ImageLike) -> np.ndarray:
    """Float32 (H, W, 3) in 0-255 at a working resolution."""
    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
    else:
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError(f"expected an (H, W, 3) image array, got shape {arr.shape}")
        arr = arr[..., :3]
        if arr.dtype.kind == "f":
            # Float images are taken as 0-1 unless they are clearly 0-255
            # (map a model's [-1, 1] output to [0, 1] before calling).
            arr = np.nan_to_num(arr)
            arr = arr * 255.0 if float(arr.max(initial=0.0)) <= 1.0 + 1e-6 else arr
        pil = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
    w, h = pil.size
    if w != h:
        # Scenes are square; a non-square input is treated as a stretched canvas.
        side = min(max(w, h), _MAX_WORK)
        pil = pil.resize((side, side), Image.Resampling.BILINEAR)
    side = pil.size[0]
    if side > _MAX_WORK:
        pil = pil.resize((_DOWN_TO, _DOWN_TO), Image.Resampling.BOX)
    elif side < _MIN_WORK:
        k = -(-_MIN_WORK // side)  # ceil: integer nearest upsampling keeps shapes exact
        pil = pil.resize((side * k, side * k), Image.Resampling.NEAREST)
    return np.asarray(pil, dtype=np.float32)


# --- morphology and components (numpy only) ---------------------------------------


def _shift_stack(mask: np.ndarray, fill: bool) -> list[np.ndarray]:
    h, w = mask.shape
    padded = np.pad(mask, 1, constant_values=fill)
    return [padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]


def _open(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary opening with a k x k square: keep the pixels covered by a k x k
    block lying entirely inside the mask."""
    h, w = mask.shape
    padded = np.pad(mask, ((0, k - 1), (0, k - 1)))
    # Erode: the block whose top-left corner is here is full.
    corner = np.logical_and.reduce([padded[dy : dy + h, dx : dx + w] for dy in range(k) for dx in range(k)])
    # Dilate: some full block covers this pixel.
    padded = np.pad(corner, ((k - 1, 0), (k - 1, 0)))
    return np.logical_or.reduce([padded[dy : dy + h, dx : dx + w] for dy in range(k) for dx in range(k)])


def unmix(rgb: np.ndarray, bg_index: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Explain each pixel as ``a*colour + (1-a)*background`` for each palette colour.

    Returns (labels, alphas): ``alphas[i]`` is the fraction a in [0, 1] of
    colour i, or 0 where the pixel's RGB distance from the blend line exceeds
    the tolerance (_MAX_BLEND_RESIDUAL + _RESIDUAL_REL * |colour - background|:
    noise and mild colour shifts pass, other colours don't); a pixel is
    "colour i" if a >= 0.5. ``labels`` gives each pixel the colour with the
    best score (residual + penalty for a < 1) among those, or ``bg_index`` if
    none. The 50% threshold puts blurred edges where they were.
    """
    bg = _PALETTE_RGB[bg_index]
    rel = rgb - bg
    best = np.full(rgb.shape[:2], np.inf, dtype=np.float32)
    labels = np.full(rgb.shape[:2], bg_index, dtype=np.int64)
    alphas: list[np.ndarray] = []
    for index in range(len(_PALETTE_NAMES)):
        if index == bg_index:
            alphas.append(np.zeros(rgb.shape[:2], dtype=np.float32))
            continue
        diff = _PALETTE_RGB[index] - bg
        alpha = np.clip((rel @ diff) / float(diff @ diff), 0.0, 1.0)
        residual = np.linalg.norm(rel - alpha[..., None] * diff, axis=-1)
        tolerance = _MAX_BLEND_RESIDUAL + _RESIDUAL_REL * float(np.linalg.norm(diff))
        alpha = np.where(residual <= tolerance, alpha, 0.0).astype(np.float32)
        ok = alpha >= 0.5
        alphas.append(alpha)
        # Prefer pure colours over partial blends when labelling: on red, an
        # orange pixel is also "59% yellow" (red, orange, yellow are nearly
        # collinear in RGB, as are black, gray, white), so penalise the missing
        # fraction of the colour.
        score = residual + _BLEND_PENALTY * (1.0 - alpha) * float(np.linalg.norm(diff))
        better = ok & (score < best)
        best[better] = score[better]
        labels[better] = index
    return labels, alphas


def _regions(grown: np.ndarray, max_side: float) -> list[np.ndarray]:
    """Masks of objects from labelled regrown cores.

    Cores that touch after regrowing are one object when together they fit in
    one object's box (noise can cut a thin cross arm, splitting one object into
    several cores); otherwise (two same-coloured neighbours bridged by soft
    edges) each core stays its own object.
    """
    merged = _components(grown > 0)
    regions = []
    for m in range(1, int(merged.max()) + 1):
        mask = merged == m
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        if max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= max_side:
            regions.append(mask)
        else:
            regions.extend(grown == label for label in np.unique(grown[mask]))
    return regions


def _regrow(components: np.ndarray, raw: np.ndarray, steps: int) -> np.ndarray:
    """Geodesic dilation of labelled components inside ``raw``; labels never merge."""
    for _ in range(steps):
        grown = np.maximum.reduce(_shift_stack(components, 0))
        claim = (components == 0) & raw & (grown > 0)
        if not claim.any():
            break
        components = np.where(claim, grown, components)
    return components


def _components(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels 1..n (0 = not in mask), numbered in raster order."""
    out = np.zeros(mask.shape, dtype=np.int32)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return out
    # Work on the mask's bounding box only (objects cover a small part of the image).
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    out[box] = _components_dense(mask[box])
    return out


def _components_dense(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    none = h * w  # larger than any pixel index
    idx = np.arange(h * w).reshape(h, w)
    lab = np.where(mask, idx, none)
    while True:
        # Min over the 3x3 neighbourhood, then pointer jumping (label -> label of
        # that pixel) so long components converge in few iterations.
        new = np.minimum.reduce(_shift_stack(lab, none))
        new = np.where(mask, new, none)
        flat = new.ravel()
        new = np.where(mask, flat[np.minimum(new, none - 1)], none)
        if np.array_equal(new, lab):
            break
        lab = new
    roots = np.unique(lab[mask])
    out = np.zeros((h, w), dtype=np.int32)
    out[mask] = np.searchsorted(roots, lab[mask]) + 1
    return out


# --- per-component description -------------------------------------------------------


#: Area of each shape as a fraction of its extent box (for the area-based extent).
_FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5, "cross": 5 / 9}


def _describe_component(comp: np.ndarray, alpha: np.ndarray, color: str, area: int, h: int, w: int) -> Detection:
    rows = np.flatnonzero(comp.any(axis=1))
    cols = np.flatnonzero(comp.any(axis=0))
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    # Soft coverage of this object: its own pixels keep their colour fraction,
    # pixels of other same-coloured objects count as empty, and faint (< 50%)
    # pixels around it keep their fraction (soft edges carry shape evidence).
    soft = np.where(comp, alpha, np.where(alpha >= 0.5, 0.0, alpha))
    shape, iou, (cx, cy), extent = _fit_shape(comp, area, soft)
    cx, cy, extent = cx / w, cy / h, extent / w
    col = min(2, max(0, int(cx * 3)))
    row = min(2, max(0, int(cy * 3)))
    return Detection(
        shape=shape,
        color=color,
        size="large" if extent >= SIZE_THRESHOLD else "small",
        position=_CELL_NAMES[(row, col)],
        center=(cx, cy),
        bbox=(x0 / w, y0 / h, x1 / w, y1 / h),
        extent=extent,
        bbox_extent=max((x1 - x0) / w, (y1 - y0) / h),
        area=area / (h * w),
        iou=iou,
    )


def _fit_shape(comp: np.ndarray, area: int, soft: np.ndarray) -> tuple[str, float, tuple[float, float], float]:
    """Analysis by synthesis: which ideal shape, placed by moments, matches the region best?

    For each shape the extent comes from the area (area = fill * extent^2) and
    the box centre from the centroid (a triangle's centroid sits extent/6 below
    its box centre). Area and centroid barely move when a few pixels are wrong,
    unlike a bounding box, which one stray pixel can stretch. The match is the
    soft IoU sum(min(soft, model)) / sum(max(soft, model)) over a common window,
    so soft edges (e.g. the filled-in notches of a blurred small cross) count
    by their colour fraction instead of flipping at 50%. Returns (shape, soft
    IoU, box centre (x, y) px, extent px).
    """
    ys, xs = np.nonzero(comp)
    mx, my = xs.mean() + 0.5, ys.mean() + 0.5  # pixel centres
    hypotheses = []
    for shape in SHAPES:
        extent = float(np.sqrt(area / _FILL[shape]))
        hypotheses.append((shape, mx, my - (extent / 6 if shape == "triangle" else 0.0), extent))
    # One window covering the region and every hypothesis box (+1 px of soft edge).
    r = max(e for *_, e in hypotheses) / 2 + 2
    wx0 = max(0, min(int(xs.min()), int(mx - r)))
    wy0 = max(0, min(int(ys.min()), int(my - r)))
    wx1 = min(comp.shape[1], max(int(xs.max()) + 1, int(np.ceil(mx + r))))
    wy1 = min(comp.shape[0], max(int(ys.max()) + 1, int(np.ceil(my + r))))
    px = np.arange(wx0, wx1) + 0.5
    py = np.arange(wy0, wy1) + 0.5
    region = soft[wy0:wy1, wx0:wx1]
    best: tuple[str, float, tuple[float, float], float] = ("", -1.0, (0.0, 0.0), 0.0)
    for shape, cx, cy, extent in hypotheses:
        model = inside_shape(shape, px[None, :] - cx, py[:, None] - cy, extent)
        iou = float(np.minimum(region, model).sum() / np.maximum(region, model).sum())
        if iou > best[1]:
            best = (shape, iou, (float(cx), float(cy)), extent)
    return best
