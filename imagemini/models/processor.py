"""From a chat with pictures to model inputs, by the checkpoint's own processor settings.

    proc = Processor.from_dir("models/bundled")
    pixels = proc.preprocess(pil_image)                 # [3, S, S] float, normalised
    ids = proc.expand_images(token_ids)                 # each <image_placeholder> -> BOI + N placeholders + EOI
    ids = proc.with_echo(ids, proc.echo_codes(codes))   # checkpoints with echo.json only (below)

Image preprocessing follows transformers' JanusImageProcessor (preprocessor_config.json):
convert to RGB (transparency composited onto white, as transformers' convert_to_rgb does),
resize the longer side to `size` (bicubic, sides at least `min_size`), pad to a square with
the mean colour, rescale to [0, 1], normalise with `image_mean` / `image_std`.

The source echo (imagemini's extension of the Janus prompt, declared by the checkpoint's
`echo.json`): the prompt's last picture is also written as its VQ codes, BOI + N codes + EOI,
just before the reply's generation prompt (the last `before_token`, `<|Assistant|>`). Janus
sees a picture only through the understanding encoder, so an edit had to be redrawn from those
features, every unchanged object a fresh chance of error; with the codes at a fixed distance
before the drawn ones (the reply's image starts a constant number of tokens after the echo),
keeping what the instruction leaves alone is a copy. The codes are those the model draws
(`code_map`: the synonym-merged codes it was trained on) and they are embedded as drawn codes
are (ids from the text vocabulary size up). Stock transformers can feed the same prompt through
`inputs_embeds`; checkpoints without echo.json get plain Janus prompts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import JanusConfig
from .tokenizer import Tokenizer

DEFAULT_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's, transformers' default for Janus
DEFAULT_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageProcessorConfig:
    size: int
    image_mean: tuple[float, float, float] = DEFAULT_MEAN
    image_std: tuple[float, float, float] = DEFAULT_STD
    min_size: int = 14
    resample: int = Image.Resampling.BICUBIC
    do_pad: bool = True
    do_normalize: bool = True

    @classmethod
    def from_dir(cls, path: str | Path, default_size: int) -> "ImageProcessorConfig":
        file = Path(path) / "preprocessor_config.json"
        d = json.loads(file.read_text()) if file.exists() else {}
        size = d.get("size", default_size)
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge") or size.get("longest_edge") or default_size
        return cls(
            size=int(size),
            image_mean=tuple(d.get("image_mean", DEFAULT_MEAN)),
            image_std=tuple(d.get("image_std", DEFAULT_STD)),
            min_size=int(d.get("min_size", 14)),
            resample=int(d.get("resample", Image.Resampling.BICUBIC)),
            do_pad=bool(d.get("do_pad", True)),
            do_normalize=bool(d.get("do_normalize", True)),
        )

    def to_dict(self) -> dict:
        return {
            "image_processor_type": "JanusImageProcessor",
            "size": {"height": self.size, "width": self.size},
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "min_size": self.min_size,
            "resample": self.resample,
            "do_resize": True,
            "do_pad": self.do_pad,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": self.do_normalize,
            "do_convert_rgb": True,
        }


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (transformers' convert_to_rgb)."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


@dataclass(frozen=True)
class EchoConfig:
    """echo.json: where the source echo goes and which code the model knows each VQ code as."""

    before_token: str
    code_map: tuple[int, ...]

    @classmethod
    def from_dir(cls, path: str | Path) -> "EchoConfig | None":
        file = Path(path) / ECHO_FILE
        if not file.exists():
            return None
        d = json.loads(file.read_text())
        return cls(before_token=d["before_token"], code_map=tuple(int(c) for c in d["code_map"]))

    def save(self, path: str | Path) -> None:
        (Path(path) / ECHO_FILE).write_text(json.dumps({"before_token": self.before_token, "code_map": list(self.code_map)}))


ECHO_FILE = "echo.json"


class Processor:
    def __init__(self, cfg: JanusConfig, image_cfg: ImageProcessorConfig, tokenizer: Tokenizer,
                 echo: EchoConfig | None = None) -> None:
        self.cfg = cfg
        self.image_cfg = image_cfg
        self.tokenizer = tokenizer
        self.num_image_tokens = cfg.vision.num_patches
        self.echo = echo
        self._echo_before = None
        self._echo_code_map = None  # echo.code_map as a tensor, made once
        if echo is not None:
            self._echo_before = tokenizer.token_id(echo.before_token)
            if self._echo_before is None:
                raise ValueError(f"{ECHO_FILE}: {echo.before_token!r} is not a token of this tokenizer")
            if len(echo.code_map) != cfg.vq.num_embeddings:
                raise ValueError(f"{ECHO_FILE}: {len(echo.code_map)} codes mapped, the VQ has {cfg.vq.num_embeddings}")
            self._echo_code_map = torch.tensor(echo.code_map)

    @classmethod
    def from_dir(cls, path: str | Path, tokenizer: Tokenizer | None = None) -> "Processor":
        cfg = JanusConfig.from_dir(path)
        image_cfg = ImageProcessorConfig.from_dir(path, cfg.vision.image_size)
        return cls(cfg, image_cfg, tokenizer or Tokenizer.from_dir(path), EchoConfig.from_dir(path))

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        c = self.image_cfg
        image = to_rgb(image)
        w, h = image.size
        scale = c.size / max(w, h)
        new = (max(round(w * scale), c.min_size), max(round(h * scale), c.min_size))
        if new != (w, h):
            image = image.resize(new, resample=c.resample)
        if c.do_pad and new[0] != new[1]:
            side = max(new)
            background = tuple(int(m * 255) for m in c.image_mean)
            canvas = Image.new("RGB", (side, side), background)
            canvas.paste(image, ((side - new[0]) // 2, (side - new[1]) // 2))
            image = canvas
        return self.normalize(torch.from_numpy(np.array(image, dtype=np.uint8))[None])[0]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [n, S, S, 3] pictures already at the model's size -> float [n, 3, S, S], rescaled
        and normalised, on the pictures' device (training ships pictures as uint8: 4x fewer bytes)."""
        c = self.image_cfg
        pixels = images.permute(0, 3, 1, 2).float() / 255.0
        if c.do_normalize:
            mean = torch.tensor(c.image_mean, device=images.device)[:, None, None]
            std = torch.tensor(c.image_std, device=images.device)[:, None, None]
            pixels = (pixels - mean) / std
        return pixels

    def expand_images(self, ids: list[int]) -> list[int]:
        """Each image placeholder token becomes BOI + N placeholders + EOI, as Janus expects."""
        s = self.tokenizer.special
        out: list[int] = []
        for token in ids:
            if token == s.image:
                out += [s.boi] + [s.image] * self.num_image_tokens + [s.eoi]
            else:
                out.append(token)
        return out

    def with_echo(self, ids: list[int], codes: list[int]) -> list[int]:
        """`ids` (a prompt ending in the reply's generation prompt) with BOI `codes` EOI inserted
        before that prompt; unchanged without an echo config. `codes` are token ids (the model's
        code + the text vocabulary size), or placeholders the caller fills later (training)."""
        if self.echo is None:
            return ids
        if self._echo_before not in ids:
            raise ValueError(f"the prompt holds no {self.echo.before_token!r}: nowhere to put the echo")
        at = len(ids) - 1 - ids[::-1].index(self._echo_before)
        s = self.tokenizer.special
        return ids[:at] + [s.boi, *codes, s.eoi] + ids[at:]

    def echo_codes(self, codes: torch.Tensor) -> list[int]:
        """One picture's VQ codes [N] -> the token ids of its echo (the codes the model draws)."""
        mapped = self._echo_code_map[codes.flatten().cpu()]
        return (mapped + self.cfg.text.vocab_size).tolist()

    def vq_range(self, pixels: torch.Tensor) -> torch.Tensor:
        """Processor-normalised pixels -> the VQ's input range [-1, 1]."""
        c = self.image_cfg
        if c.do_normalize:
            mean = torch.tensor(c.image_mean, device=pixels.device)[:, None, None]
            std = torch.tensor(c.image_std, device=pixels.device)[:, None, None]
            pixels = pixels * std + mean
        return pixels * 2 - 1

    def image_to_uint8(self, pixels: torch.Tensor) -> np.ndarray:
        """VQ decoder output [3, S, S] in [-1, 1] -> uint8 [S, S, 3]."""
        return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
