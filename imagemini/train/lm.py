"""Stage 2 of the bundled-model recipe: the whole Janus model on the shapes-world task mixture.

    python -m imagemini.train.lm --vq runs/vq --out runs/lm --minutes 60

Reads the trained image tokenizer (stage 1, `imagemini.train.vq`), trains a BPE on the task
text, builds a fresh Janus network around the frozen VQ-VAE and trains everything else:
- text loss (lm_head) on the last assistant turn of each chat, thought included;
- image-code loss (generation_head) on images the assistant draws or edits, the codes being
  the frozen VQ's encoding of the rendered target scene, near-duplicate codes merged
  (vq.synonym_map);
- scene reading (SceneReader, training only): every understanding feature of a patch that
  shows an object must tell its shape, colour and size; their mean the background;
- shape naming (`name_shapes_example`, training only): a few chats per batch ask for the shapes
  of a scene painted in unnamed colours, so the language model names shapes from the picture
  and not from their colour;
- the source echo (models/processor.py, on by default, `--no-echo` for plain Janus prompts):
  every prompt that shows a picture also holds its codes just before the reply, and the
  checkpoint's echo.json says so (and which code the model knows each VQ code as);
- the copy lesson (`copy_head_loss`, training only): one attention head is taught to look,
  from the row predicting an edit's i-th code, at the echo's i-th code;
- classifier-free-guidance dropout: 10% of drawing/editing chats lose their whole condition
  (every token but BOS and begin-of-image becomes pad, the echo too), exactly the
  unconditional row the engine builds at inference, so guidance works.
Fixed seeds, bf16 autocast, resumable (`last.pt`), a progress bar with loss and ETA, a time
budget. `export()` writes a checkpoint that `transformers.JanusForConditionalGeneration` loads.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from imagemini.models.config import JanusConfig
from imagemini.models.janus import Janus
from imagemini.models.llama import padded_causal_attend
from imagemini.models.processor import ECHO_FILE, EchoConfig, ImageProcessorConfig, Processor
from imagemini.models.tokenizer import Tokenizer
from imagemini.world import render
from imagemini.world.render import object_masks, render_array
from imagemini.world.scene import BACKGROUNDS, COLORS, PALETTE, SHAPES, SIZES, join_phrases, sample_offsets
from imagemini.world.chat import Example, ImageRef, Turn, prompt_and_completion, render_text
from imagemini.world.task_builder import split_scene
from imagemini.world.tasks import generate, task_mixture

from . import tokenizer as tokenizer_stage
from .vq import to_pixels

IMAGE_SIZE = 64
TEXT = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4)
# The Janus format ties the two grids: transformers sets the VQ's num_patches to image_size //
# patch_size, so the understanding patch grid must equal the 16x16 code grid.
VISION = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, patch_size=4, mlp_ratio=4.0)
MAX_LENGTH = 1024
UNCOND_RATE = 0.1
ECHO_BEFORE = "<|Assistant|>"  # the source echo goes just before the reply (processor.py)
COPY_LAYER, COPY_HEAD, COPY_WEIGHT = 1, 1, 0.1  # the head taught to look at the echo (copy_head_loss)
TEACHER_WEIGHT = 1.0  # KL to a teacher's drawing, per drawn code (teacher_code_logprobs)
# Image-code sampling defaults of a fresh run (chosen on training-split drawings and edits, model
# card); a run continuing from a checkpoint keeps that checkpoint's own (prepare_checkpoint_dir).
GENERATION = {"guidance_scale": 2.0, "temperature": 0.7, "top_p": 0.9}


@dataclass
class TrainConfig:
    minutes: float = 60.0
    batch_tokens: int = 12_000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 200
    weight_decay: float = 0.05
    seed: int = 0
    vocab_size: int = 2048
    text_only: bool = False  # phase A: understanding and text tasks only (no image tokenizer needed yet)
    threads: int = 2
    device: str = "cpu"  # "cuda" on a lent GPU: the same recipe, the data still made on the CPU
    init_from: Path | None = None  # a checkpoint to continue from (its tokenizer, and weights whose shapes fit)
    max_steps: int | None = None  # stop here even if time is left (tests)
    tokenizer_examples: int = 20_000  # chats the BPE is trained on
    vision_minutes: float = 0.0  # scene-reading warm-up of the vision encoder alone (cumulative, see read_scenes)
    vision_batch: int = 32
    unnamed_colour_rate: float = 0.5  # warm-up images whose objects wear colours outside the palette
    unnamed_per_step: int = 4  # unnamed-colour images read beside each whole-model batch
    name_shapes_per_64: int = 4  # name_shapes_example chats added to every 64 task chats
    echo: bool = True  # prompts echo their last picture as codes (processor.py); off: plain Janus prompts
    data_workers: int = 0  # processes making batches (a GPU needs several; 0: made here, resumes exactly)
    save_minutes: float = 5.0  # last.pt this often
    teacher: Path | None = None  # a checkpoint whose drawing the run keeps close to (teacher_code_logprobs)
    text_layers: int | None = None  # decoder depth; None: TEXT's, or the parent's (deeper than it: warm_start grows it)
    changed_weight: float = 1.0  # loss weight of an edit's codes that differ from its echo (changed_code_weights)

    weights: dict[str, float] = field(default_factory=dict)  # task weights replacing task_mixture()'s

    def tasks(self) -> dict[str, float] | None:
        """The task weights to sample by; None: task_mixture() as it is."""
        if not self.text_only and not self.weights:
            return None
        mixture = {**task_mixture(), **self.weights}
        if self.text_only:
            mixture = {t: w for t, w in mixture.items() if t != "draw" and not t.startswith("edit_")}
        return mixture


def janus_config_dict(vocab_size: int, vq_config: dict, special: dict[str, int], layers: int | None = None) -> dict:
    text = {**TEXT, "num_hidden_layers": layers or TEXT["num_hidden_layers"]}
    hidden = text["hidden_size"]
    grid = IMAGE_SIZE // VISION["patch_size"]
    vq = {**vq_config, "model_type": "janus_vqgan", "projection_dim": hidden, "image_token_embed_dim": hidden}
    return {
        "architectures": ["JanusForConditionalGeneration"],
        "model_type": "janus",
        "image_token_id": special["image"],
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "llama", "vocab_size": vocab_size, **text, "head_dim": hidden // text["num_attention_heads"],
            "max_position_embeddings": MAX_LENGTH, "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
            "bos_token_id": special["bos"], "eos_token_id": special["eos"], "pad_token_id": special["pad"],
            "tie_word_embeddings": False,
        },
        "vision_config": {
            "model_type": "janus_vision_model", **VISION, "image_size": IMAGE_SIZE, "projection_dim": hidden,
            "num_image_tokens": grid * grid, "depth": 2, "hidden_act": "gelu",
        },
        "vq_config": vq,
    }


# --- scene reading: a training-only auxiliary loss on the understanding features ------------
AUX_WEIGHT = 0.5


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


# --- chats -> training sequences -------------------------------------------------------------
@dataclass
class Sample:
    ids: list[int]  # text ids; the code positions of the echo and of drawn images hold -1
    loss_from: int  # first position whose token is a training target
    user_images: list[ImageRef] = field(default_factory=list)
    drawn_images: list[ImageRef] = field(default_factory=list)
    echo_image: ImageRef | None = None  # the prompt's last picture, echoed as codes (processor.py)


def _image_marker(role_of: dict[int, str]):
    """User images become the understanding placeholder; drawn images an empty BOI EOI pair."""
    return lambda ref: "<begin_of_image><end_of_image>" if role_of[id(ref)] == "assistant" else "<image_placeholder>"


def build_sample(example: Example, proc: Processor) -> Sample | None:
    tok = proc.tokenizer
    role_of = {id(p): t.role for t in example.turns for p in t.parts if isinstance(p, ImageRef)}
    refs = [(t.role, p) for t in example.turns for p in t.parts if isinstance(p, ImageRef)]
    prompt, completion = prompt_and_completion(example, _image_marker(role_of))
    prefix = proc.expand_images(tok.encode(prompt))
    full = proc.expand_images(tok.encode(prompt + completion))
    if full[: len(prefix)] != prefix:
        return None  # a BPE merge across the prompt/answer border: skip rather than mis-train
    s, n = tok.special, proc.cfg.vq.num_patches**2
    shown = [r for role, r in refs if role != "assistant"]
    echo = shown[-1] if shown and proc.echo is not None else None
    if echo is not None:
        echoed = proc.with_echo(prefix, [-1] * n)
        prefix, full = echoed, echoed + full[len(prefix):]
    # Make room for the codes of each drawn image: BOI EOI -> BOI <N codes> EOI.
    ids: list[int] = []
    for i, t in enumerate(full):
        ids.append(t)
        if t == s.boi and i + 1 < len(full) and full[i + 1] == s.eoi and i >= len(prefix) - 1:
            ids += [-1] * n  # filled with codes at batch time
    if len(ids) > MAX_LENGTH:
        return None
    return Sample(ids, len(prefix), user_images=shown, drawn_images=[r for role, r in refs if role == "assistant"],
                  echo_image=echo)


class Collator:
    """Packs samples into padded CPU tensors. Needs no model, so it can run in the data workers.

    Pictures travel as uint8 (`Processor.normalize` and the VQ read them on the training device);
    the code positions of each echoed or drawn picture are left at -1 for `on_device` to fill. Every position set
    the loss needs (code inputs, image placeholders, text and code targets) is listed here as
    flat indices: the host knows them, so the device never has to report back how many there are
    (boolean masks would stop the GPU for that count several times a step).
    """

    def __init__(self, proc: Processor, rng: random.Random, grid: int, unnamed_per_step: int = 0) -> None:
        self.proc, self.rng, self.grid = proc, rng, grid
        self.unnamed_per_step = unnamed_per_step

    def __call__(self, samples: list[Sample]) -> dict:
        s = self.proc.tokenizer.special
        width = max(len(smp.ids) for smp in samples)
        ids = torch.full((len(samples), width), s.pad, dtype=torch.long)
        mask = torch.zeros(len(samples), width, dtype=torch.bool)
        loss_mask = torch.zeros(len(samples), width, dtype=torch.bool)
        user_refs: list[ImageRef] = []
        coded: list[ImageRef] = []  # pictures whose codes fill the -1 positions, in sequence order
        copies: list[tuple[int, int, int]] = []  # (row, first query, first key) of the copy head's lesson
        for b, smp in enumerate(samples):
            row = smp.ids
            if smp.drawn_images and self.rng.random() < UNCOND_RATE:
                boi = row.index(s.boi, smp.loss_from - 1)
                # The prompt (the echo too) padded out, as the engine's unconditional row has it.
                row = [t if (t in (s.bos, s.boi) or j >= boi) else s.pad for j, t in enumerate(row)]
                loss_mask[b, boi + 1 : boi + 1 + self.grid**2] = True  # only the image is learnt here
            else:
                user_refs += smp.user_images
                coded += [smp.echo_image] if smp.echo_image is not None else []
                loss_mask[b, smp.loss_from : len(row)] = True
                if smp.echo_image is not None and smp.drawn_images:
                    echo = row.index(-1)
                    drawn = row.index(-1, echo + self.grid**2)
                    copies.append((b, drawn - 1, echo))  # the row before code i predicts it: it looks at echo code i
            coded += smp.drawn_images
            ids[b, : len(row)] = torch.tensor(row)
            mask[b, : len(row)] = True
        wanted, next_is_code = loss_mask[:, 1:] & mask[:, 1:], ids[:, 1:] == -1
        code_targets = wanted & next_is_code
        # Rows without an echo read alike to a checkpoint without one: a teacher can score them.
        plain = torch.tensor([smp.echo_image is None for smp in samples])
        order_in_code_targets = code_targets.flatten().cumsum(0) - 1
        batch = {
            "ids": ids, "mask": mask,
            "code_slots": _flat_positions(ids == -1),  # row-major: samples, then their images in order
            "image_slots": _flat_positions(ids == self.proc.cfg.image_token_id),
            "text_targets": _flat_positions(wanted & ~next_is_code),  # into the [B, W - 1] targets
            "code_targets": _flat_positions(code_targets),
            "teacher_rows": plain.nonzero().squeeze(1),
            "teacher_code_slots": _flat_positions((ids == -1)[plain]),  # into the [R, W] teacher rows
            "teacher_targets": _flat_positions(code_targets[plain]),  # into the [R, W - 1] teacher targets
            "teacher_in_code_targets": order_in_code_targets[(code_targets & plain[:, None]).flatten()],
            "coded": _uint8_pictures(coded), "images": None, "scenes": None,
            "copy_spans": torch.tensor(copies, dtype=torch.long).view(-1, 3),
        }
        if user_refs:
            batch["images"] = _uint8_pictures(user_refs)
            scenes = SceneReader.labels(user_refs, IMAGE_SIZE, self.grid)
            batch["scenes"] = forget_unnamed_colours(scenes, [isinstance(r, UnnamedImageRef) for r in user_refs])
        if self.unnamed_per_step:  # read beside the batch: keeps shape reading colour-blind (see read_scenes)
            batch["unnamed"] = reading_batch(self.rng, self.unnamed_per_step, self.grid, 1.0)
        return batch


def _flat_positions(where: torch.Tensor) -> torch.Tensor:
    return where.flatten().nonzero().squeeze(1)


def _uint8_pictures(refs: list[ImageRef]) -> torch.Tensor | None:
    return torch.from_numpy(np.stack([np.asarray(render_ref(r)) for r in refs])) if refs else None


@torch.no_grad()
def on_device(batch: dict, model: Janus, proc: Processor, code_map: torch.Tensor | None) -> dict:
    """Moves a collated batch to the model's device: user pictures normalised into `pixels`, and
    each echoed or drawn picture's codes (the frozen VQ's encoding, in float32 outside autocast,
    synonyms merged) written into its -1 positions."""
    device = next(model.parameters()).device
    pinned = device.type == "cuda"  # a copy from pageable memory would wait for the GPU to finish its queue
    moved = _map_arrays(lambda t: (t.pin_memory() if pinned else t).to(device, non_blocking=True), batch)
    moved["pixels"] = proc.normalize(moved["images"]) if moved["images"] is not None else None
    if moved.get("unnamed") is not None:
        images, labels = moved["unnamed"]
        moved["unnamed"] = (proc.normalize(images), labels)
    if moved["coded"] is not None:
        with torch.autocast(device.type, enabled=False):
            codes = model.encode_image_codes(to_pixels(moved["coded"]))
        if code_map is not None:
            codes = code_map[codes]
        moved["ids"].view(-1)[moved["code_slots"]] = (codes + model.cfg.text.vocab_size).flatten()
    return moved


def _embed(model: Janus, ids: torch.Tensor, code_slots: torch.Tensor) -> torch.Tensor:
    """[B, T] ids -> [B * T, hidden] embeddings; the flat positions in code_slots hold image codes
    (ids from the text vocabulary size up), embedded as drawn codes are."""
    vocab = model.cfg.text.vocab_size
    flat_ids = ids.flatten()
    embeds = model.embed_tokens(flat_ids.clamp(max=vocab - 1))
    if code_slots.numel():
        codes = model.embed_image_codes(flat_ids[code_slots] - vocab).to(embeds.dtype)
        embeds = embeds.index_copy(0, code_slots, codes)
    return embeds


def loss_fn(model: Janus, batch: dict, reader: SceneReader | None = None,
            changed_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy over the text and image-code targets (plus the scene reader's loss);
    an edit's codes that differ from its echo weigh `changed_weight` in the image codes' mean.
    The parts come back as tensors: reading them is the caller's choice of when to wait."""
    ids = batch["ids"]
    vocab = model.cfg.text.vocab_size
    embeds = _embed(model, ids, batch["code_slots"])
    aux = None
    if batch["pixels"] is not None:
        encoded = model.encode_images(batch["pixels"])
        if reader is not None and batch.get("scenes") is not None:
            aux = reader.loss(encoded, batch["scenes"])
        embeds = embeds.index_copy(0, batch["image_slots"], encoded.flatten(0, 1).to(embeds.dtype))
    # No attention mask: the Collator pads on the right, where causal attention already keeps the
    # padding out of every real token's view (and checking a mask would make the device report back).
    b, t = ids.shape
    causal = padded_causal_attend(b, t)
    seen: dict[str, torch.Tensor] = {}
    copy_layer = min(COPY_LAYER, model.cfg.text.num_hidden_layers - 1)  # (toy models: fewer layers)

    def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if layer == copy_layer:
            seen["q"], seen["k"] = q, k
        return causal(layer, q, k, v)

    positions = torch.arange(t, device=ids.device).repeat(b)
    hidden = model.decoder(embeds, positions, attend).view(b, t, -1)[:, :-1].flatten(0, 1)
    targets = ids[:, 1:].flatten()
    text_at, code_at = batch["text_targets"], batch["code_targets"]
    zero = hidden.new_zeros((), dtype=torch.float32)
    # A batch of unconditional drawings alone has no text target (the mean of nothing is NaN).
    text_loss = F.cross_entropy(model.text_logits(hidden[text_at]).float(), targets[text_at]) if text_at.numel() else zero
    code_logits = model.image_logits(hidden[code_at]).float()
    spans = batch.get("copy_spans")
    code_loss = zero
    if code_at.numel():
        per_code = F.cross_entropy(code_logits, targets[code_at] - vocab, reduction="none")
        if changed_weight != 1.0 and spans is not None and spans.numel():
            weights = changed_code_weights(ids, spans, model.cfg.vq.num_patches**2, changed_weight).flatten()[code_at]
            code_loss = (per_code * weights).sum() / weights.sum()
        else:
            code_loss = per_code.mean()
    n_text, n_code = text_at.numel(), code_at.numel()
    loss = (text_loss * n_text + code_loss * n_code) / max(n_text + n_code, 1)
    parts = {"text": text_loss.detach(), "image": code_loss.detach()}
    if aux is not None:
        loss = loss + AUX_WEIGHT * aux
        parts["scene"] = aux.detach()
    teacher = batch.get("teacher_logprobs")
    if teacher is not None and teacher.numel():
        student = F.log_softmax(code_logits[batch["teacher_in_code_targets"]], -1)
        kl = (teacher.exp() * (teacher - student)).sum(-1).mean()
        loss = loss + TEACHER_WEIGHT * kl
        parts["teacher"] = kl.detach()
    if spans is not None and spans.numel():
        copy = copy_head_loss(seen["q"], seen["k"], spans, b, t, model.cfg.vq.num_patches**2)
        loss = loss + COPY_WEIGHT * copy
        parts["copy"] = copy.detach()
    return loss, parts


def changed_code_weights(ids: torch.Tensor, spans: torch.Tensor, n: int, weight: float) -> torch.Tensor:
    """[B, T - 1] weights of the next-token targets: `weight` where an edit's drawn code differs
    from the echo's code at the same patch, 1 elsewhere. Those codes are what an edit is about
    (a recolour's object, a moved object's old and new place), a fifth to a third of an edit's
    codes: the rest is a copy the echo makes easy. `spans` as the copy lesson's:
    (row, first query, first key), the query before drawn code i and echo code i."""
    b, t = ids.shape
    rows, at = spans[:, :1], torch.arange(n, device=ids.device)
    queries, keys = spans[:, 1:2] + at, spans[:, 2:3] + at
    changed = ids[rows, queries + 1] != ids[rows, keys]
    weights = torch.ones(b, t - 1, device=ids.device)
    weights[rows.expand_as(queries), queries] = torch.where(changed, weight, 1.0)
    return weights


@torch.no_grad()
def teacher_code_logprobs(teacher: Janus, batch: dict) -> torch.Tensor:
    """The teacher's log-probabilities of every drawn code in the rows without an echo (drawings,
    small talk: the same tokens whatever the checkpoint), [N, codebook] in `teacher_in_code_targets`
    order. loss_fn adds KL(teacher || model) over them: a run teaching something new (the echo)
    keeps the drawing of a checkpoint that draws better than it can learn to on a CPU (every
    CPU continuation so far lost drawing in its first few hundred steps, model card)."""
    ids = batch["ids"][batch["teacher_rows"]]
    embeds = _embed(teacher, ids, batch["teacher_code_slots"])
    embeds = embeds.view(*ids.shape, embeds.shape[-1])  # (not -1: a batch may have no such row)
    hidden = teacher.hidden_states(embeds)[:, :-1].flatten(0, 1)[batch["teacher_targets"]]
    return F.log_softmax(teacher.image_logits(hidden).float(), -1)


def copy_head_loss(q: torch.Tensor, k: torch.Tensor, spans: torch.Tensor, b: int, t: int, n: int) -> torch.Tensor:
    """Cross-entropy of one attention head's weights (head COPY_HEAD of layer COPY_LAYER) against
    the echo's code at the same grid index, for every row that predicts a drawn code of an edit.

    Keeping a patch an edit leaves alone is then a copy from the source echo (processor.py), a
    fixed number of tokens back. Left to find that offset from the token loss alone, the model did
    not within 1,000 CPU steps (the kept patches' loss stayed where drawing from the understanding
    features left it); this lesson points one head there (head 1 of layer 1: of the 16 the one
    already nearest to it on that state, 4.6 nats against 9-24), and it learns it within 100 steps.
    The network and inference are unchanged.
    """
    heads, d = q.shape[1], q.shape[2]
    head = min(COPY_HEAD, heads - 1)
    q = q.view(b, t, heads, d)[:, :, head]
    k = k.view(b, t, k.shape[1], d)[:, :, head * k.shape[1] // heads]
    grid = torch.arange(n, device=q.device)
    rows, queries, keys = spans[:, 0], spans[:, 1:2] + grid, spans[:, 2:3] + grid  # [S], [S, n], [S, n]
    scores = (q[rows[:, None], queries].float() @ k[rows].float().transpose(1, 2)) * d**-0.5  # [S, n, t]
    future = torch.arange(t, device=q.device)[None, None, :] > queries[..., None]
    scores = scores.masked_fill(future, float("-inf"))
    return F.cross_entropy(scores.flatten(0, 1), keys.flatten())


# --- the run -------------------------------------------------------------------------------
def prepare_checkpoint_dir(out: Path, vq_dir: Path, cfg: TrainConfig) -> Path:
    """Tokenizer, configs and a freshly initialised network (with the trained VQ) in out/init."""
    init = out / "init"
    if (init / "config.json").exists():
        return init
    if cfg.init_from is not None:
        # Token ids, and the codes the echo and the drawn targets name, must stay those the
        # weights were trained with: recomputing the code map from the 16-bit VQ moves ~40 codes.
        init.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(cfg.init_from / name, init / name)
        if cfg.echo and not cfg.text_only and (cfg.init_from / ECHO_FILE).exists():
            shutil.copy(cfg.init_from / ECHO_FILE, init / ECHO_FILE)
    else:
        rng = random.Random(cfg.seed)
        tok = tokenizer_stage.train_tokenizer((render_text(e) for e in generate(rng, cfg.tokenizer_examples)), cfg.vocab_size)
        tokenizer_stage.save_tokenizer_files(tok, init, max_length=MAX_LENGTH)
    loaded = Tokenizer.from_dir(init)
    special = {k: getattr(loaded.special, k) for k in ("bos", "eos", "pad", "image", "boi", "eoi")}
    parent = json.loads((cfg.init_from / "config.json").read_text()) if cfg.init_from is not None else None
    vq_config = parent["vq_config"] if parent is not None else _vq_config(vq_dir)
    layers = cfg.text_layers or (parent["text_config"]["num_hidden_layers"] if parent is not None else None)
    if parent is not None and layers < parent["text_config"]["num_hidden_layers"]:
        raise ValueError(f"--text-layers {layers} is shallower than {cfg.init_from}'s decoder: a run may only grow it")
    config = janus_config_dict(loaded.vocab_size, vq_config, special, layers)
    (init / "config.json").write_text(json.dumps(config, indent=2))
    image_cfg = ImageProcessorConfig(size=IMAGE_SIZE, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    (init / "preprocessor_config.json").write_text(json.dumps(image_cfg.to_dict(), indent=2))
    sampling = dict(GENERATION)
    if cfg.init_from is not None and (cfg.init_from / "generation_config.json").exists():
        # Tuned for those weights: an export that reset them would judge the continuation with
        # other sampling than its parent (it once made guidance 2.0 vs 3.0 look like lost drawings).
        tuned = json.loads((cfg.init_from / "generation_config.json").read_text())
        sampling.update({k: tuned[k] for k in GENERATION if k in tuned})
    (init / "generation_config.json").write_text(json.dumps({
        "bos_token_id": special["bos"], "eos_token_id": special["eos"], "pad_token_id": special["pad"],
        **sampling, "generation_kwargs": {"boi_token_id": special["boi"]},
    }, indent=2))
    torch.manual_seed(cfg.seed)
    model = Janus(JanusConfig.from_dict(config))
    if cfg.echo and not cfg.text_only and not (init / ECHO_FILE).exists():
        from .vq import synonym_map

        if cfg.init_from is not None:
            warm_start(model, cfg.init_from)  # its VQ: stage 1's output need not exist
        else:
            load_trained_vq(model, init, vq_dir)
        code_map = synonym_map(model.model.vqmodel.eval()).tolist()
        EchoConfig(before_token=ECHO_BEFORE, code_map=tuple(code_map)).save(init)
    save_weights(model, init)
    return init


def _vq_config(vq_dir: Path) -> dict:
    from .vq import BUNDLED_VQ_CONFIG

    file = vq_dir / "vq_config.json"
    return json.loads(file.read_text()) if file.exists() else dict(BUNDLED_VQ_CONFIG)


def load_trained_vq(model: Janus, init: Path, vq_dir: Path) -> None:
    """Put the stage-1 image tokenizer (frozen) into the model; its architecture must be the one
    the checkpoint was initialised with."""
    planned = json.loads((init / "config.json").read_text())["vq_config"]
    trained = _vq_config(vq_dir)
    differs = {k: (planned.get(k), v) for k, v in trained.items() if k in planned and planned[k] != v}
    if differs:
        raise ValueError(f"{vq_dir} holds a VQ of another shape than {init}: {differs}")
    model.model.vqmodel.load_state_dict(load_file(str(vq_dir / "vq.safetensors")))


def warm_start(model: Janus, checkpoint: Path) -> None:
    """Copy every tensor of `checkpoint` whose name and shape fit; the rest keep their fresh init
    (e.g. a vision encoder with another patch size). A decoder deeper than the checkpoint's grows
    from it (`grown_layers`)."""
    own = model.state_dict()
    parent = load_file(str(checkpoint / "model.safetensors"))
    fitting = {k: v for k, v in {**parent, **grown_layers(parent, model.cfg.text.num_hidden_layers)}.items()
               if k in own and own[k].shape == v.shape}
    model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in fitting.items()}})
    fresh = sorted({".".join(k.split(".")[:3]) for k in own if k not in fitting})
    print(f"warm start from {checkpoint}: {len(fitting)}/{len(own)} tensors; fresh: {', '.join(fresh) or 'none'}")


LAYER_PREFIX = "model.language_model.layers."
LAYER_OUTPUTS = ("self_attn.o_proj.weight", "mlp.down_proj.weight")  # what a layer adds to the residual stream


def grown_layers(parent: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """The tensors of decoder layers `parent` lacks, up to `layers`: layer n + i starts as a copy
    of the parent's layer i % n with its two output projections zero, so it adds nothing to the
    residual stream and the grown model computes exactly its parent's function (LLaMA Pro's block
    expansion); the zero projections still get gradients, and the copied rest gives them inputs
    that already mean something."""
    n = 1 + max((int(k[len(LAYER_PREFIX):].split(".")[0]) for k in parent if k.startswith(LAYER_PREFIX)), default=-1)
    grown: dict[str, torch.Tensor] = {}
    if n == 0:  # no decoder layers to copy
        return grown
    for new in range(n, layers):
        source = f"{LAYER_PREFIX}{(new - n) % n}."
        for name, tensor in parent.items():
            if name.startswith(source):
                rest = name[len(source):]
                grown[f"{LAYER_PREFIX}{new}.{rest}"] = torch.zeros_like(tensor) if rest in LAYER_OUTPUTS else tensor.clone()
    return grown


def save_weights(model: Janus, out: Path, dtype: torch.dtype = torch.float32) -> None:
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def batches(proc: Processor, rng: random.Random, cfg: TrainConfig, pool_batches: int = 8):
    """Endless stream of sample lists of about `batch_tokens` tokens (padded). Samples are drawn
    in pools of several batches and sorted by length first, so little compute goes to padding."""
    while True:
        pool: list[Sample] = []
        while sum(len(s.ids) for s in pool) < pool_batches * cfg.batch_tokens:
            chats = generate(rng, 64, tasks=cfg.tasks()) + [name_shapes_example(rng) for _ in range(cfg.name_shapes_per_64)]
            pool += [s for s in (build_sample(e, proc) for e in chats) if s is not None]
        pool.sort(key=lambda s: len(s.ids))
        groups, current = [], []
        for sample in pool:
            if current and len(sample.ids) * (len(current) + 1) > cfg.batch_tokens:
                groups.append(current)
                current = []
            current.append(sample)
        groups.append(current)
        rng.shuffle(groups)
        yield from groups


def batch_stream(proc: Processor, init: Path, rng: random.Random, cfg: TrainConfig, grid: int, tag: str):
    """Collated CPU batches, endlessly. With `cfg.data_workers` they are made in that many
    spawned processes (the GPU outruns one core's rendering; each loads `init`'s processor), each
    with its own data seed drawn from `tag`; without, here from `rng`, so a CPU run resumes its
    data exactly."""
    if not cfg.data_workers:
        collate = Collator(proc, rng, grid, cfg.unnamed_per_step)
        for samples in batches(proc, rng, cfg):
            yield collate(samples)
        return
    import multiprocessing
    import queue as queue_errors

    ctx = multiprocessing.get_context("spawn")  # never fork a process that holds a CUDA context
    queue = ctx.Queue(maxsize=4 * cfg.data_workers)
    workers = [ctx.Process(target=_data_worker, args=(init, cfg, grid, f"{tag}/{i}", queue), daemon=True)
               for i in range(cfg.data_workers)]
    for worker in workers:
        worker.start()
    try:
        while True:
            try:
                yield _map_arrays(torch.from_numpy, queue.get(timeout=30))
            except queue_errors.Empty:
                if not all(w.is_alive() for w in workers):
                    raise RuntimeError("a data worker died (its traceback is above)") from None
    finally:
        for worker in workers:
            worker.terminate()


def _data_worker(init: Path, cfg: TrainConfig, grid: int, seed: str, queue) -> None:
    torch.set_num_threads(1)
    rng = random.Random(seed)
    proc = Processor.from_dir(init)
    collate = Collator(proc, rng, grid, cfg.unnamed_per_step)
    for samples in batches(proc, rng, cfg):
        queue.put(_map_arrays(lambda t: t.numpy(), collate(samples)))  # plain pickles: no shared-memory handles


def _map_arrays(fn, x):
    """`fn` on every tensor or array in nested dicts, lists and tuples."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return fn(x)
    if isinstance(x, dict):
        return {k: _map_arrays(fn, v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_map_arrays(fn, v) for v in x)
    return x


def train(out: Path, vq_dir: Path, cfg: TrainConfig) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    init = prepare_checkpoint_dir(out, vq_dir, cfg)
    from imagemini.models.janus import load_janus

    model = load_janus(init, torch.float32).to(cfg.device).train()
    proc = Processor.from_dir(init)
    opt = make_optimizer(model, cfg)
    device_type = torch.device(cfg.device).type
    step, elapsed_before, vision_seconds, phase_step = 0, 0.0, 0.0, 0
    seconds_on = {}  # training seconds per device type, for the model card
    rng = random.Random(cfg.seed + 1)
    reader = SceneReader(model.cfg.text.hidden_size).to(cfg.device)
    state = torch.load(out / "last.pt", weights_only=False, map_location="cpu") if (out / "last.pt").exists() else None
    with_opt = state is not None and "opt" in state  # without: weights alone (carried to a GPU)
    if with_opt and "reader" not in state:
        opt.load_state_dict(state["opt"])  # a run from before the scene reader: no group for it yet
    opt.add_param_group({"params": list(reader.parameters()), "weight_decay": 0.0})
    if state is not None:
        model.load_state_dict(state["model"])
        if "reader" in state:
            reader.load_state_dict(state["reader"])
            if with_opt:
                opt.load_state_dict(state["opt"])
        step, elapsed_before = state["step"], state["elapsed"]
        phase_step = state.get("phase_step", 0) if with_opt else step  # a fresh optimizer warms up again
        vision_seconds = state.get("vision_seconds", 0.0)
        seconds_on = state.get("seconds_on", {"cpu": elapsed_before})
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
    elif cfg.init_from is not None:
        warm_start(model, cfg.init_from)
    for group in opt.param_groups:
        group["fused"], group["foreach"] = (device_type == "cuda") or None, None  # a state saved on another device type
    code_map = None
    if not cfg.text_only:
        from .vq import synonym_map

        if cfg.init_from is None:  # from --init-from, warm_start (or the state) holds the parent's VQ
            load_trained_vq(model, init, vq_dir)
        # With an echo, its saved map: drawn targets and echoes must name each code alike.
        code_map = (torch.tensor(proc.echo.code_map) if proc.echo is not None
                    else synonym_map(model.model.vqmodel.eval())).to(cfg.device)
        print(f"drawing targets: {int((code_map.cpu() == torch.arange(len(code_map))).sum())} of {len(code_map)} codes")
    teacher = load_teacher(cfg.teacher, init, model) if cfg.teacher is not None else None
    if cfg.vision_minutes * 60 > vision_seconds:
        vision_rng = random.Random(f"{cfg.seed}/vision/{vision_seconds}")
        vision_seconds += read_scenes(model, reader, proc, cfg.vision_minutes * 60 - vision_seconds, cfg, vision_rng)
        _save_state(out, model, opt, step, elapsed_before, rng, reader, vision_seconds, phase_step, seconds_on)
    seconds_here = seconds_on.get(device_type, 0.0)
    budget = cfg.minutes * 60
    start = time.monotonic()
    est_total = step + max(1, int(budget - elapsed_before))  # refined once this run's rate is known
    bar = tqdm(total=int(budget), unit="s", desc="lm", dynamic_ncols=True)
    bar.update(int(elapsed_before))
    log = open(out / "log.jsonl", "a")
    last_save = time.monotonic()
    first_step = step

    pending: dict | None = None  # the last step's log row, its losses still on the device

    def report() -> None:
        """Logs the pending row. Read one step late, so the host queues the next step before it
        waits for these numbers (a GPU would otherwise idle at every step's end)."""
        nonlocal pending
        if pending is None:
            return
        row = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in pending.items()}
        pending = None
        bar.n = int(row["elapsed"])
        bar.set_postfix(step=row["step"], **{k: f"{row[k]:.3f}" for k in row if k not in ("step", "elapsed", "lr")})
        bar.refresh()
        log.write(json.dumps(row) + "\n")
        log.flush()

    def save(elapsed: float) -> None:
        report()  # the log keeps up with the state
        seconds_on[device_type] = seconds_here + time.monotonic() - start
        _save_state(out, model, opt, step, elapsed, rng, reader, vision_seconds, phase_step, seconds_on)

    stream = batch_stream(proc, init, rng, cfg, model.cfg.vq.num_patches, f"{cfg.seed}/data/{step}")
    for cpu_batch in stream:
        ran = time.monotonic() - start
        elapsed = elapsed_before + ran
        if elapsed >= budget or (cfg.max_steps is not None and step >= cfg.max_steps):
            break
        if step - first_step >= 20:  # this run's own rate: a resumed run may sit on another device
            est_total = step + int((step - first_step) / ran * (budget - elapsed))
        for group in opt.param_groups:
            group["lr"] = lr_at(step - phase_step, est_total - phase_step, cfg)
        losses = train_step(model, reader, opt, on_device(cpu_batch, model, proc, code_map), teacher,
                            cfg.changed_weight)
        step += 1
        report()  # the step before this one: by now the device has finished it
        pending = {"step": step, "elapsed": round(elapsed, 1), "lr": opt.param_groups[0]["lr"], **losses}
        if time.monotonic() - last_save > cfg.save_minutes * 60:
            save(elapsed)
            last_save = time.monotonic()
    stream.close()
    elapsed = elapsed_before + time.monotonic() - start
    save(elapsed)
    bar.close()
    minutes_on = {k: round(v / 60, 1) for k, v in seconds_on.items()}
    return export(model, init, out / "checkpoint",
                  {"steps": step, "train_minutes": round(elapsed / 60, 1), "minutes_by_device": minutes_on})


def load_teacher(checkpoint: Path, init: Path, model: Janus) -> Janus:
    """A frozen checkpoint that reads the same tokens and draws the same codes as the run's model."""
    from imagemini.models.janus import load_janus

    if (checkpoint / "tokenizer.json").read_bytes() != (init / "tokenizer.json").read_bytes():
        raise ValueError(f"teacher {checkpoint} has another tokenizer than the run")
    teacher = load_janus(checkpoint, torch.float32).to(next(model.parameters()).device).eval()
    if teacher.cfg.vq.num_embeddings != model.cfg.vq.num_embeddings:
        raise ValueError(f"teacher {checkpoint} draws from another codebook than the run")
    return teacher.requires_grad_(False)


def make_optimizer(model: Janus, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable weights (the VQ stays frozen): decay on matrices only."""
    for p in model.model.vqmodel.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    fused = torch.device(cfg.device).type == "cuda"
    return torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
         {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), fused=fused or None,
    )


def train_step(model: Janus, reader: SceneReader, opt: torch.optim.Optimizer, batch: dict,
               teacher: Janus | None = None, changed_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """One optimizer step on a batch already on the device (`on_device`). The losses come back
    as device tensors: reading them waits for the step, so the caller chooses when."""
    with torch.autocast(batch["ids"].device.type, dtype=torch.bfloat16):
        if teacher is not None:
            batch = {**batch, "teacher_logprobs": teacher_code_logprobs(teacher, batch)}
        loss, parts = loss_fn(model, batch, reader, changed_weight)
        if batch.get("unnamed") is not None:
            pixels, labels = batch["unnamed"]
            unnamed = reader.loss(model.encode_images(pixels), labels)
            loss = loss + AUX_WEIGHT * unnamed
            parts["unnamed"] = unnamed.detach()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for group in opt.param_groups for p in group["params"]], 1.0)
    opt.step()
    return {"loss": loss.detach(), **parts}


def _save_state(out: Path, model: Janus, opt, step: int, elapsed: float, rng: random.Random, reader: SceneReader,
                vision_seconds: float, phase_step: int, seconds_on: dict) -> None:
    tmp = out / "last.pt.tmp"
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "reader": reader.state_dict()}
    state = _map_arrays(lambda t: t.detach().cpu(), state)  # a state saved on a GPU loads anywhere
    torch.save({**state, "step": step, "elapsed": elapsed, "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
                "vision_seconds": vision_seconds, "phase_step": phase_step, "seconds_on": seconds_on}, tmp)
    tmp.replace(out / "last.pt")


def export(model: Janus, init: Path, dest: Path, info: dict) -> Path:
    """A Hugging Face-format checkpoint directory with bf16 weights."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
                 "generation_config.json"):
        shutil.copy(init / name, dest / name)
    if (init / ECHO_FILE).exists():
        shutil.copy(init / ECHO_FILE, dest / ECHO_FILE)
    config = json.loads((dest / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    save_weights(model, dest, torch.bfloat16)
    (dest / "training.json").write_text(json.dumps(info, indent=2))
    return dest


def task_weights(pairs: list[str]) -> dict[str, float]:
    """["edit_move=0.1", ...] -> {"edit_move": 0.1, ...}, every name a task of the mixture."""
    weights = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in task_mixture() or not value:
            raise SystemExit(f"--weight {pair!r}: expected TASK=W with TASK one of {sorted(task_mixture())}")
        weights[name] = float(value)
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description="train the bundled Janus model (stage 2)")
    parser.add_argument("--vq", type=Path, default=Path("runs/vq"), help="stage-1 output (vq.safetensors); a run from --init-from uses its parent's VQ instead")
    parser.add_argument("--out", type=Path, default=Path("runs/lm"))
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--batch-tokens", type=int, default=12_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-only", action="store_true", help="phase A: no drawing/editing tasks (no VQ needed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="torch device to train on (cuda on a lent GPU)")
    parser.add_argument("--init-from", type=Path, help="continue from a checkpoint (e.g. imagemini/models/bundled)")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr, help="peak learning rate of this phase")
    parser.add_argument("--min-lr", type=float, default=TrainConfig.min_lr)
    parser.add_argument("--warmup-steps", type=int, default=TrainConfig.warmup_steps)
    parser.add_argument("--weight", action="append", default=[], metavar="TASK=W",
                        help="a task's sampling weight instead of the default mixture's (repeatable)")
    parser.add_argument("--teacher", type=Path,
                        help="a checkpoint whose drawing the run keeps close to (KL on the drawn codes of rows without an echo)")
    parser.add_argument("--changed-weight", type=float, default=TrainConfig.changed_weight,
                        help="loss weight of an edit's drawn codes that differ from its echo (1: as every code)")
    parser.add_argument("--text-layers", type=int, help="decoder depth; from --init-from, more layers than the parent's grow it")
    parser.add_argument("--no-echo", action="store_true", help="plain Janus prompts: no source echo (processor.py)")
    parser.add_argument("--data-workers", type=int, default=0, help="processes making batches (use several on a GPU)")
    parser.add_argument("--save-minutes", type=float, default=TrainConfig.save_minutes, help="save last.pt this often")
    parser.add_argument("--vision-minutes", type=float, default=TrainConfig.vision_minutes,
                        help="scene-reading warm-up of the vision encoder alone, before the whole model (cumulative)")
    args = parser.parse_args()
    cfg = TrainConfig(minutes=args.minutes, batch_tokens=args.batch_tokens, seed=args.seed,
                      text_only=args.text_only, threads=args.threads, init_from=args.init_from,
                      vision_minutes=args.vision_minutes, device=args.device, lr=args.lr, min_lr=args.min_lr,
                      warmup_steps=args.warmup_steps, echo=not args.no_echo, weights=task_weights(args.weight), data_workers=args.data_workers, save_minutes=args.save_minutes,
                      teacher=args.teacher, text_layers=args.text_layers, changed_weight=args.changed_weight)
    print(train(args.out, args.vq, cfg))


if __name__ == "__main__":
    main()
