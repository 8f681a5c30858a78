"""Stage 2's data: task chats -> token sequences (build_sample) -> padded CPU batches (Collator) ->
the training device (on_device), made here or in spawned worker processes (batch_stream).

    stream = batch_stream(proc, init, rng, cfg, grid, tag)
    batch = on_device(next(stream), model, proc, code_map)   # ready for lm_losses.loss_fn

A batch holds text ids with -1 where image codes go (the source echo's and each drawn picture's),
the pictures as uint8, and every position set the losses need as flat indices.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imagemini.models.janus import Janus
from imagemini.models.processor import Processor
from imagemini.world.chat import Example, ImageRef, prompt_and_completion
from imagemini.world.tasks import generate

from .lm_config import IMAGE_SIZE, MAX_LENGTH, TrainConfig
from .lm_vision import SceneReader, UnnamedImageRef, forget_unnamed_colours, name_shapes_example, reading_batch, render_ref
from .vq_images import to_pixels

UNCOND_RATE = 0.1  # drawing/editing chats that lose their whole condition (classifier-free guidance)


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
    moved = map_arrays(lambda t: (t.pin_memory() if pinned else t).to(device, non_blocking=True), batch)
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
                yield map_arrays(torch.from_numpy, queue.get(timeout=30))
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
        queue.put(map_arrays(lambda t: t.numpy(), collate(samples)))  # plain pickles: no shared-memory handles


def map_arrays(fn, x):
    """`fn` on every tensor or array in nested dicts, lists and tuples."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return fn(x)
    if isinstance(x, dict):
        return {k: map_arrays(fn, v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(map_arrays(fn, v) for v in x)
    return x
