"""Image output of a Janus checkpoint: how an answer starts an image, which tokens each mode bans,
and how drawn codes become a PNG. The server, `imagemini generate --out` and `imagemini eval`
all draw through this module, so they start and sample images the same way.

    image = ImageOutput.from_dir(model_dir, tokenizer, model.cfg)
    prompt_ids + list(image.start_ids)          # the answer starts with an image
    SamplingParams(..., image_output=True, banned_token_ids=image.banned_ids(drawing=True))
    ImageWriter(model).png(codes)               # one image's codes -> PNG bytes
    ImageWriter(model).preview_png(codes[:k])   # a picture drawn up to its k-th code -> PNG bytes

Defaults come from the checkpoint's generation_config.json: guidance_scale, temperature and top_p
(image sampling), and imagemini's own image_start_after_prompt (bool: every image request starts
drawing) and image_start_prefix (the text written before begin-of-image).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .config import JanusConfig
from .janus import Janus
from .tokenizer import SpecialTokens, Tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageOutput:
    """What the checkpoint can draw, and its image sampling defaults (generation_config.json)."""

    enabled: bool  # the checkpoint draws and the server offers it
    num_tokens: int  # codes per image
    resolution: int  # side of a generated image in pixels
    guidance_scale: float = 5.0  # default of image_config.guidance_scale
    temperature: float | None = None  # default temperature of image requests (else 1)
    top_p: float | None = None  # default top_p of image requests (else 1)
    start_after_prompt: bool = False  # generation_config image_start_after_prompt: always start drawing
    start_ids: tuple[int, ...] = ()  # appended to the prompt to start drawing: template text + BOI
    aspect_ratios: tuple[str, ...] = ("1:1",)
    image_sizes: tuple[str, ...] = ("1K",)  # "1K" = the checkpoint's native size
    text_mode_banned: tuple[int, ...] = ()  # never sampled by a request that may not draw
    image_mode_banned: tuple[int, ...] = ()  # never sampled by a request that may draw

    @property
    def tokens_per_image(self) -> int:
        """Completion tokens one image takes: begin-of-image, the codes, end-of-image."""
        return self.num_tokens + 2

    def banned_ids(self, drawing: bool) -> tuple[int, ...]:
        return self.image_mode_banned if drawing else self.text_mode_banned

    @classmethod
    def from_dir(cls, model_dir: Path, tokenizer: Tokenizer, config: JanusConfig, offered: bool = True) -> "ImageOutput":
        """The checkpoint's image output; enabled when `offered` (the server's model card lists image
        output) and the tokenizer has a begin-of-image token."""
        gen = _generation_config(Path(model_dir))
        special = tokenizer.special
        enabled = offered and special.boi is not None

        def number(key: str, low: float, high: float) -> float | None:
            value = gen.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                return min(max(float(value), low), high)
            return None

        prefix = gen.get("image_start_prefix")
        return cls(
            enabled=enabled,
            num_tokens=config.vq.num_patches**2,
            resolution=config.image_resolution,
            guidance_scale=number("guidance_scale", 1.0, 20.0) or 5.0,
            temperature=number("temperature", 0.0, 2.0),
            top_p=number("top_p", 1e-6, 1.0),
            start_after_prompt=bool(gen.get("image_start_after_prompt", False)),
            start_ids=tuple(image_start_ids(tokenizer, prefix if isinstance(prefix, str) else None)) if enabled else (),
            text_mode_banned=banned_token_ids(special, drawing=False),
            image_mode_banned=banned_token_ids(special, drawing=True),
        )


def _generation_config(model_dir: Path) -> dict:
    path = model_dir / "generation_config.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        log.warning("%s is not valid JSON: image defaults ignored", path)
        return {}


def banned_token_ids(special: SpecialTokens, drawing: bool) -> tuple[int, ...]:
    """Text mode: no image span can start, so no image placeholder or end can follow either.
    Image mode: the model may open an image; the engine itself closes it."""
    tokens = (special.eoi, special.image) if drawing else (special.boi, special.eoi, special.image)
    return tuple(t for t in tokens if t is not None)


def image_start_ids(tokenizer: Tokenizer, prefix: str | None = None) -> list[int]:
    """What to append to a generation prompt so that the answer starts with an image.

    The text the template writes between the generation prompt and an assistant message's
    content (" " for imagemini's template: "<|Assistant|>:" then " " ANSWER), then
    begin-of-image. `prefix` (generation_config.json `image_start_prefix`) overrides the text.
    """
    boi = tokenizer.special.boi
    if prefix is None:
        sentinel = "\ue000imagemini-answer\ue001"
        user = [{"role": "user", "content": "x"}]
        prompt = tokenizer.render_chat(user, add_generation_prompt=True)
        full = tokenizer.render_chat([*user, {"role": "assistant", "content": sentinel}], add_generation_prompt=False)
        before = full.split(sentinel)[0]
        prefix = before[len(prompt):] if sentinel in full and before.startswith(prompt) else ""
    return tokenizer.encode(prefix) + [boi] if prefix else [boi]


PREVIEW_GREY = 128  # the value of every channel where a preview's picture is not drawn yet


def preview_codes(codes: list[int], side: int) -> list[int]:
    """The whole grid a preview decodes: the codes drawn so far (row by row), each place not drawn
    yet taking the code above it (in the first row: the last code drawn). The decoder's attention
    lets every code shape every pixel, so what fills the rest shows in the drawn part too: a
    continuation of the drawn rows keeps them closest to the finished picture's."""
    grid = list(codes)
    for place in range(len(codes), side * side):
        grid.append(grid[place - side] if place >= side else codes[-1])
    return grid


def grey_undrawn(pixels: torch.Tensor, drawn: int, side: int) -> torch.Tensor:
    """uint8 pixels [S, S, 3] of a `side`x`side` code grid with the places from `drawn` on greyed out."""
    patch = pixels.shape[0] // side
    rows, in_row = divmod(drawn, side)
    pixels = pixels.clone()
    pixels[rows * patch : (rows + 1) * patch, in_row * patch :] = PREVIEW_GREY
    pixels[(rows + 1) * patch :] = PREVIEW_GREY
    return pixels


class ImageWriter:
    """Code grids -> PNG (the VQ decoder; one image per call, so the same codes give the same bytes)."""

    def __init__(self, model: Janus) -> None:
        self.model = model

    def png(self, codes: list[int]) -> bytes:
        return _png(self.model.decode_image_pixels(codes))

    def preview_png(self, codes: list[int]) -> bytes:
        """A picture drawn up to len(codes) codes: `preview_codes` decoded, what is not drawn yet grey."""
        side = self.model.cfg.vq.num_patches
        return _png(grey_undrawn(self.model.decode_image_pixels(preview_codes(codes, side)), len(codes), side))

    def png_data_url(self, codes: list[int]) -> str:
        return _data_url(self.png(codes))

    def preview_png_data_url(self, codes: list[int]) -> str:
        return _data_url(self.preview_png(codes))


def _png(pixels: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy(), "RGB").save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
