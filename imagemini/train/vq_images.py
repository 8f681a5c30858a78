"""Pictures for the VQ stages (vq.py): fresh training scenes, the fixed held-out set, pixel
conversions, and readback, the score both stages keep their best model by.

    scenes, images = heldout_set(500)
    evaluate_readback(load_vq("runs/vq"), scenes, images)["readback"]

Readback is the fraction of scenes that ``parse_image(decode(encode(image)))`` reads back exactly:
what the whole model's drawings are judged by, since the parser reads them the same way.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F

from imagemini.models.vq import VQModel
from imagemini.world import PALETTE, SceneParseError, parse_image, render_array, sample_scene

IMAGE_SIZE = 64
EVAL_SEED = 1_000_003  # held-out scenes; training data use the run's seed

_PALETTE_RGB = torch.tensor(list(PALETTE.values()), dtype=torch.float32)  # [9, 3], 0-255
PALETTE_PIXELS = _PALETTE_RGB / 127.5 - 1  # [9, 3] in [-1, 1]


def to_pixels(arrays: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [n, S, S, 3] -> float [n, 3, S, S] in [-1, 1] (on the tensor's device)."""
    return torch.as_tensor(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """float [n, 3, S, S] in [-1, 1] -> uint8 [n, S, S, 3] (what the parser should read)."""
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def palette_index(arrays: np.ndarray) -> torch.Tensor:
    """uint8 [n, S, S, 3] of exact palette colours -> palette index [n, S, S]."""
    diff = torch.from_numpy(arrays).float()[..., None, :] - _PALETTE_RGB  # [n, S, S, 9, 3]
    return diff.abs().sum(-1).argmin(-1)


def sample_batch(rng: random.Random, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n fresh scenes (1-4 objects, all backgrounds) -> (pixels [n,3,S,S], palette index [n,S,S])."""
    arrays = np.stack([render_array(sample_scene(rng), IMAGE_SIZE, rng) for _ in range(n)])
    return to_pixels(arrays), palette_index(arrays)


def heldout_set(n: int = 500, seed: int = EVAL_SEED) -> tuple[list, np.ndarray]:
    """The fixed evaluation set: (scenes, uint8 images [n, S, S, 3])."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    return scenes, np.stack([render_array(s, IMAGE_SIZE, rng) for s in scenes])


def _mistake(truth, image: np.ndarray) -> str | None:
    """None if the parser reads `truth` back from `image`, else what went wrong first."""
    try:
        got = parse_image(image)
    except SceneParseError:
        return "unparsable"
    if got == truth:
        return None
    if got.background != truth.background:
        return "background"
    if len(got.objects) != len(truth.objects):
        return "count"
    for field in ("position", "color", "size", "shape"):
        if [getattr(o, field) for o in got.objects] != [getattr(o, field) for o in truth.objects]:
            return field
    return "other"


@torch.no_grad()
def reconstruct(vq: VQModel, pixels: torch.Tensor, quantized: bool = True,
                code_map: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """decode(encode(pixels)) through the inference path (each code replaced by `code_map[code]`
    when given), or through the normalised continuous latents when quantized=False (autoencoder
    warm-up). -> (pixels, codes)."""
    if quantized:
        codes = vq.encode(pixels)
        if code_map is not None:
            codes = code_map[codes]
        return vq.decode(codes), codes
    z = F.normalize(vq.quant_conv(vq.encoder(pixels)), dim=1)
    return vq.decoder(vq.post_quant_conv(z)), None


@torch.no_grad()
def evaluate_readback(vq_model: VQModel, scenes, images: np.ndarray | None = None, *, batch_size: int = 100,
                      quantized: bool = True, bf16: bool = False, code_map: torch.Tensor | None = None) -> dict:
    """Readback of `scenes` through `vq_model`: parse_image(decode(encode(image))) == scene.

    images: uint8 [n, S, S, 3] renders of the scenes (rendered here, seeded, if None).
    code_map: decode `code_map[code]` instead (the codes the whole model draws: `synonym_map`).
    Returns readback overall and by number of objects, first mistake kinds, MSE, palette
    pixel accuracy, codes used and code perplexity (quantized only).
    """
    if images is None:
        rng = random.Random(EVAL_SEED)
        images = np.stack([render_array(s, IMAGE_SIZE, rng) for s in scenes])
    was_training = vq_model.training
    vq_model.eval()
    outs, codes, sq = [], [], 0.0
    for i in range(0, len(scenes), batch_size):
        x = to_pixels(images[i:i + batch_size])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y, c = reconstruct(vq_model, x, quantized, code_map)
        sq += (y.float().clamp(-1, 1) - x).pow(2).mean((1, 2, 3)).sum().item()
        outs.append(to_uint8(y))
        if c is not None:
            codes.append(c.flatten())
    vq_model.train(was_training)
    recon = np.concatenate(outs)
    mistakes = [_mistake(s, im) for s, im in zip(scenes, recon)]
    by_n: dict[int, list[bool]] = {}
    for s, m in zip(scenes, mistakes):
        by_n.setdefault(len(s.objects), []).append(m is None)
    kinds: dict[str, int] = {}
    for m in mistakes:
        if m is not None:
            kinds[m] = kinds.get(m, 0) + 1
    right = palette_index(recon) == palette_index(images)
    result = {
        "readback": sum(m is None for m in mistakes) / len(scenes),
        "readback_by_objects": {n: round(sum(v) / len(v), 4) for n, v in sorted(by_n.items())},
        "mistakes": kinds,
        "mse": sq / len(scenes),
        "palette_acc": right.float().mean().item(),
    }
    if codes:
        counts = torch.bincount(torch.cat(codes), minlength=vq_model.cfg.num_embeddings).float()
        p = counts[counts > 0] / counts.sum()
        result["codes_used"] = int((counts > 0).sum())
        result["code_perplexity"] = float(torch.exp(-(p * p.log()).sum()))
    return result

