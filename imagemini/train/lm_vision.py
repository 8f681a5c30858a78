"""What teaches stage 2's vision encoder to read scenes: the scene reader, pictures in unnamed
colours, name-the-shapes chats, and the vision warm-up.

    reader = SceneReader(hidden)                       # trained beside the model, never exported
    loss = reader.loss(model.encode_images(pixels), SceneReader.labels(refs, IMAGE_SIZE, grid))
    read_scenes(model, reader, proc, seconds, cfg, rng)  # the encoder alone, before the whole model

An unnamed colour is one far from every palette colour: a shape painted in it shows no shape/colour
pair of the world, so only its form tells the encoder which shape it is.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from imagemini.models.janus import Janus
from imagemini.models.processor import Processor
from imagemini.world import render
from imagemini.world.chat import Example, ImageRef, Turn
from imagemini.world.render import object_masks, render_array
from imagemini.world.scene import BACKGROUNDS, COLORS, PALETTE, SHAPES, SIZES, join_phrases, sample_offsets
from imagemini.world.task_builder import split_scene

from .lm_config import IMAGE_SIZE, TrainConfig


class SceneReader(nn.Module):
    """Reads the scene back from the image features the language model sees (vision encoder +
    aligner output): every patch that shows part of an object tells that object's shape, colour
    and size (the others: none); the mean of all patches tells the background. Trained beside
    the model, never exported.

    Why: the answer tokens give the vision encoder one word of signal per image ("red"), and
    after 100 minutes the first checkpoint named shapes no better with the true image than with
    another one. Dense labels, free from the world's truth, teach the features what is where.
    History: reading each grid cell's mean feature made colour and size readable but not shape
    (a mean measures area, not form); asking every patch of a cell for its cell's object learnt
    slowly (a patch of empty background must find the object first). Labels on the object's own
    patches learn colour and size within minutes in a stand-alone probe (runs the same encoder).
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.shape = nn.Linear(hidden, len(SHAPES) + 1)
        self.color = nn.Linear(hidden, len(COLORS) + 1)
        self.size = nn.Linear(hidden, len(SIZES) + 1)
        self.background = nn.Linear(hidden, len(BACKGROUNDS))

    @staticmethod
    def labels(refs: list[ImageRef], image_size: int, grid: int) -> dict[str, torch.Tensor]:
        """Per patch of a `grid` x `grid` patch grid: the attributes of the object drawn in it
        (class 0: no object pixel), and the background of each image."""
        patch = image_size // grid
        shape = torch.zeros(len(refs), grid * grid, dtype=torch.long)
        color, size = shape.clone(), shape.clone()
        for i, ref in enumerate(refs):
            for obj, pixels in zip(ref.scene.objects, object_masks(ref.scene, image_size, ref.offsets)):
                covered = torch.from_numpy(pixels.reshape(grid, patch, grid, patch).any(axis=(1, 3)).reshape(-1))
                shape[i, covered] = SHAPES.index(obj.shape) + 1
                color[i, covered] = list(COLORS).index(obj.color) + 1
                size[i, covered] = list(SIZES).index(obj.size) + 1
        background = torch.tensor([BACKGROUNDS.index(r.scene.background) for r in refs])
        return {"shape": shape, "color": color, "size": size, "background": background}

    def loss(self, features: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        features = features.float()
        loss = sum(
            F.cross_entropy(getattr(self, k)(features).flatten(0, 1), labels[k].flatten())
            for k in ("shape", "color", "size")
        )
        return (loss + F.cross_entropy(self.background(features.mean(1)), labels["background"])) / 4


UNNAMED_MIN_DISTANCE = 100.0  # RGB distance an unnamed colour keeps from every palette colour


_PALETTE_RGB = np.array(list(PALETTE.values()), dtype=np.float64)


def unnamed_colour(rng: random.Random) -> tuple[int, int, int]:
    """A random colour far from every palette colour: no object of the world could wear it, so
    painting a shape in it never shows a held-out shape/colour pair."""
    while True:
        rgb = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float64)
        if np.sqrt(((_PALETTE_RGB - rgb) ** 2).sum(1)).min() >= UNNAMED_MIN_DISTANCE:
            return tuple(int(v) for v in rgb)


def paint_unnamed(ref: ImageRef, size: int, rng: random.Random) -> Image.Image:
    """The scene as rendered, each object repainted in its own unnamed colour."""
    canvas = render_array(ref.scene, size, offsets=ref.offsets)
    for mask in object_masks(ref.scene, size, ref.offsets):
        canvas[mask] = unnamed_colour(rng)
    return Image.fromarray(canvas)


def forget_unnamed_colours(labels: dict[str, torch.Tensor], unnamed: list[bool]) -> dict[str, torch.Tensor]:
    """Scene-reading labels with no colour target on the objects of unnamed-colour images (an
    unnamed colour has no class)."""
    labels["color"][torch.tensor(unnamed, dtype=torch.bool)[:, None] & (labels["color"] > 0)] = -100
    return labels


def reading_batch(rng: random.Random, n: int, grid: int, unnamed_rate: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`n` freshly rendered train-split scenes (held-out pairs stay unseen), each painted in
    unnamed colours with probability `unnamed_rate`: uint8 pictures [n, S, S, 3] and their
    scene-reading labels."""
    scenes = [split_scene(rng, "train") for _ in range(n)]
    refs = [ImageRef(scene, tuple(sample_offsets(scene, rng))) for scene in scenes]
    unnamed = [rng.random() < unnamed_rate for _ in refs]
    images = [paint_unnamed(r, IMAGE_SIZE, rng) if u else render(r.scene, IMAGE_SIZE, offsets=r.offsets)
              for r, u in zip(refs, unnamed)]
    labels = forget_unnamed_colours(SceneReader.labels(refs, IMAGE_SIZE, grid), unnamed)
    return torch.from_numpy(np.stack([np.asarray(image) for image in images])), labels


@dataclass(frozen=True)
class UnnamedImageRef(ImageRef):
    """An image whose objects wear unnamed colours: ``paint_unnamed(ref, size, Random(seed))``."""

    seed: int = 0


def render_ref(ref: ImageRef, size: int = IMAGE_SIZE) -> Image.Image:
    if isinstance(ref, UnnamedImageRef):
        return paint_unnamed(ref, size, random.Random(ref.seed))
    return render(ref.scene, size, offsets=ref.offsets)


NAME_SHAPES = ("Name the shapes in this picture.", "Which shapes are in this image?", "What shapes do you see here?",
               "List the shapes in the picture.", "Tell me the shapes in this image.")


def name_shapes_example(rng: random.Random) -> Example:
    """A chat that asks for the shapes of a train-split scene painted in unnamed colours; the
    answer lists size, shape and position only ("A large circle at the top left and a small
    square at the center.").

    Why: the scene reader's loss made the encoder's features tell shape apart from colour, but
    the language model still named shapes through colour (held-out captions turned a purple
    circle into a purple triangle: no purple circle was ever written). Here the shape word can
    only come from the picture."""
    scene = split_scene(rng, "train")
    ref = UnnamedImageRef(scene, tuple(sample_offsets(scene, rng)), rng.randrange(2**31))
    body = join_phrases([f"a {o.size} {o.shape} at the {o.position}" for o in scene.objects])
    answer = body[0].upper() + body[1:] + "."
    question = rng.choice(NAME_SHAPES)
    user = (ref, question) if rng.random() < 0.5 else (question, ref)
    return Example("name_shapes", (Turn("user", user), Turn("assistant", (answer,))), False, answer, "train")


def read_scenes(model: Janus, reader: SceneReader, proc: Processor, seconds: float, cfg: TrainConfig,
                rng: random.Random) -> float:
    """Vision warm-up: the understanding encoder, its aligner and the scene reader alone, on
    freshly rendered train-split scenes, for `seconds`. Returns the seconds spent. `rng` is its
    own: how many steps fit in the time must not shift the whole-model stage's data.

    Why: inside the whole-model batches only a handful of images per step reach the reader, and
    the encoder learnt form (shape) at a crawl; alone, it sees ~15x more images per second.
    Half of its images paint the objects in unnamed colours (:func:`paint_unnamed`): trained on
    the palette alone, the encoder read the shape of 93% of objects in seen shape/colour pairs
    but 31% in held-out ones (a purple circle read as the shapes purple comes in); shape must
    not be told by colour.
    """
    grid = model.cfg.vq.num_patches
    params = [*model.model.vision_model.parameters(), *model.model.aligner.parameters(), *reader.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    start = time.monotonic()
    bar = tqdm(total=int(seconds), unit="s", desc="read scenes", dynamic_ncols=True)
    step = 0
    while (spent := time.monotonic() - start) < seconds:
        images, labels = reading_batch(rng, cfg.vision_batch, grid, cfg.unnamed_colour_rate)
        pixels, labels = proc.normalize(images.to(cfg.device)), {k: v.to(cfg.device) for k, v in labels.items()}
        for group in opt.param_groups:  # cosine from lr to min_lr over the phase
            group["lr"] = cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * spent / seconds))
        with torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16):
            loss = reader.loss(model.encode_images(pixels), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        bar.n = int(spent)
        bar.set_postfix(step=step, scene=f"{loss.item():.3f}")
        bar.refresh()
    bar.close()
    return time.monotonic() - start

