"""Stage 2 of the bundled-model recipe: the whole Janus model on the shapes-world task mixture.

    python -m imagemini.train.lm --vq runs/vq --out runs/lm --minutes 60

Reads the trained image tokenizer (stage 1, `imagemini.train.vq`), trains a BPE on the task
text, builds a fresh Janus network around the frozen VQ-VAE and trains everything else:
- text loss (lm_head) on the last assistant turn of each chat, thought included;
- image-code loss (generation_head) on images the assistant draws or edits, the codes being
  the frozen VQ's encoding of the rendered target scene, near-duplicate codes merged
  (vq_codebook.synonym_map);
- scene reading (lm_vision.SceneReader, training only): every understanding feature of a patch that
  shows an object must tell its shape, colour and size; their mean the background;
- shape naming (`lm_vision.name_shapes_example`, training only): a few chats per batch ask for the shapes
  of a scene painted in unnamed colours, so the language model names shapes from the picture
  and not from their colour;
- the source echo (models/processor.py, on by default, `--no-echo` for plain Janus prompts):
  every prompt that shows a picture also holds its codes just before the reply, and the
  checkpoint's echo.json says so (and which code the model knows each VQ code as);
- the copy lesson (`lm_losses.copy_head_loss`, training only): one attention head is taught to look,
  from the row predicting an edit's i-th code, at the echo's i-th code;
- classifier-free-guidance dropout: 10% of drawing/editing chats lose their whole condition
  (every token but BOS and begin-of-image becomes pad, the echo too), exactly the
  unconditional row the engine builds at inference, so guidance works.
Fixed seeds, bf16 autocast, resumable (`last.pt`), a progress bar with loss and ETA, a time
budget. `export()` writes a checkpoint that `transformers.JanusForConditionalGeneration` loads.

Where each part lives: lm_config.py (TrainConfig, the network's shape), lm_data.py (chats ->
batches), lm_vision.py (scene reader, unnamed colours, vision warm-up), lm_losses.py (the losses),
lm_checkpoint.py (the run's init directory, warm start and layer growth, export); this module is
the loop and its command line.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from imagemini.models.janus import Janus, load_janus
from imagemini.models.processor import Processor
from imagemini.world.tasks import task_mixture

from .lm_checkpoint import export, load_teacher, load_trained_vq, prepare_checkpoint_dir, warm_start
from .lm_config import TrainConfig
from .lm_data import batch_stream, map_arrays, on_device
from .lm_losses import AUX_WEIGHT, loss_fn, teacher_code_logprobs
from .lm_vision import SceneReader, read_scenes
from .vq_codebook import synonym_map


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


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


@dataclass
class Progress:
    """Where a run stands; saved in last.pt beside the weights."""

    step: int = 0
    elapsed: float = 0.0  # training seconds over all of the run's calls
    vision_seconds: float = 0.0  # of them in the vision warm-up (read_scenes)
    phase_step: int = 0  # the step this optimizer started at: its warm-up counts from there
    seconds_on: dict[str, float] = field(default_factory=dict)  # training seconds per device type, for the model card


def _resume(out: Path, model: Janus, reader: SceneReader, opt: torch.optim.Optimizer, rng: random.Random,
            cfg: TrainConfig) -> Progress:
    """Continues the run saved in out/last.pt, or starts one (from cfg.init_from's weights if set).

    A state saved without its optimizer (the weights alone, small enough to move to another
    machine) starts a new phase: a fresh optimizer with its own warm-up."""
    opt.add_param_group({"params": list(reader.parameters()), "weight_decay": 0.0})
    progress = Progress()
    if (out / "last.pt").exists():
        state = torch.load(out / "last.pt", weights_only=False, map_location="cpu")
        model.load_state_dict(state["model"])
        reader.load_state_dict(state["reader"])
        with_opt = "opt" in state
        if with_opt:
            opt.load_state_dict(state["opt"])
        progress = Progress(state["step"], state["elapsed"], state["vision_seconds"],
                            state["phase_step"] if with_opt else state["step"], state["seconds_on"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
    elif cfg.init_from is not None:
        warm_start(model, cfg.init_from)
    for group in opt.param_groups:  # a state saved on another device type
        group["fused"], group["foreach"] = (torch.device(cfg.device).type == "cuda") or None, None
    return progress


def _save_state(out: Path, model: Janus, opt: torch.optim.Optimizer, reader: SceneReader, rng: random.Random,
                progress: Progress) -> None:
    tmp = out / "last.pt.tmp"
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "reader": reader.state_dict()}
    state = map_arrays(lambda t: t.detach().cpu(), state)  # a state saved on a GPU loads anywhere
    torch.save({**state, "step": progress.step, "elapsed": progress.elapsed, "rng": rng.getstate(),
                "torch_rng": torch.get_rng_state(), "vision_seconds": progress.vision_seconds,
                "phase_step": progress.phase_step, "seconds_on": progress.seconds_on}, tmp)
    tmp.replace(out / "last.pt")


def _drawing_code_map(model: Janus, proc: Processor, init: Path, vq_dir: Path, cfg: TrainConfig) -> torch.Tensor:
    """code -> the code that drawn targets and echoes name it by."""
    if cfg.init_from is None:  # from --init-from, warm_start (or the state) holds the parent's VQ
        load_trained_vq(model, init, vq_dir)
    # With an echo, its saved map: drawn targets and echoes must name each code alike.
    code_map = (torch.tensor(proc.echo.code_map) if proc.echo is not None
                else synonym_map(model.model.vqmodel.eval())).to(cfg.device)
    print(f"drawing targets: {int((code_map.cpu() == torch.arange(len(code_map))).sum())} of {len(code_map)} codes")
    return code_map


class StepLog:
    """log.jsonl and the progress bar. A step's row is written once the next step is queued:
    reading its losses waits for the device, and a GPU would otherwise idle at every step's end."""

    def __init__(self, path: Path, budget: float, elapsed: float) -> None:
        self.bar = tqdm(total=int(budget), unit="s", desc="lm", dynamic_ncols=True)
        self.bar.update(int(elapsed))
        self.file = open(path, "a")
        self.pending: dict | None = None  # the last step's row, its losses still on the device

    def add(self, row: dict) -> None:
        self.flush()  # the step before this one: by now the device has finished it
        self.pending = row

    def flush(self) -> None:
        if self.pending is None:
            return
        row = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in self.pending.items()}
        self.pending = None
        self.bar.n = int(row["elapsed"])
        self.bar.set_postfix(step=row["step"], **{k: f"{row[k]:.3f}" for k in row if k not in ("step", "elapsed", "lr")})
        self.bar.refresh()
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.flush()
        self.bar.close()
        self.file.close()


def train(out: Path, vq_dir: Path, cfg: TrainConfig) -> Path:
    """Stage 2 in `out` (resuming out/last.pt) until `cfg.minutes` of training in all; returns the
    exported checkpoint's directory."""
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    init = prepare_checkpoint_dir(out, vq_dir, cfg)
    model = load_janus(init, torch.float32).to(cfg.device).train()
    proc = Processor.from_dir(init)
    opt = make_optimizer(model, cfg)
    rng = random.Random(cfg.seed + 1)
    reader = SceneReader(model.cfg.text.hidden_size).to(cfg.device)
    progress = _resume(out, model, reader, opt, rng, cfg)
    code_map = None if cfg.text_only else _drawing_code_map(model, proc, init, vq_dir, cfg)
    teacher = load_teacher(cfg.teacher, init, model) if cfg.teacher is not None else None
    if cfg.vision_minutes * 60 > progress.vision_seconds:
        vision_rng = random.Random(f"{cfg.seed}/vision/{progress.vision_seconds}")
        progress.vision_seconds += read_scenes(model, reader, proc, cfg.vision_minutes * 60 - progress.vision_seconds,
                                               cfg, vision_rng)
        _save_state(out, model, opt, reader, rng, progress)
    _train_loop(out, init, model, reader, opt, proc, rng, cfg, progress, code_map, teacher)
    minutes_on = {k: round(v / 60, 1) for k, v in progress.seconds_on.items()}
    return export(model, init, out / "checkpoint",
                  {"steps": progress.step, "train_minutes": round(progress.elapsed / 60, 1),
                   "minutes_by_device": minutes_on})


def _train_loop(out: Path, init: Path, model: Janus, reader: SceneReader, opt: torch.optim.Optimizer,
                proc: Processor, rng: random.Random, cfg: TrainConfig, progress: Progress,
                code_map: torch.Tensor | None, teacher: Janus | None) -> None:
    """Whole-model steps until the time budget (or cfg.max_steps) is spent; last.pt is saved every
    cfg.save_minutes and at the end."""
    device_type = torch.device(cfg.device).type
    seconds_here = progress.seconds_on.get(device_type, 0.0)
    budget, elapsed_before, first_step = cfg.minutes * 60, progress.elapsed, progress.step
    start = time.monotonic()
    est_total = progress.step + max(1, int(budget - elapsed_before))  # refined once this run's rate is known
    log = StepLog(out / "log.jsonl", budget, elapsed_before)
    last_save = time.monotonic()

    def save(elapsed: float) -> None:
        log.flush()  # the log keeps up with the state
        progress.elapsed = elapsed
        progress.seconds_on[device_type] = seconds_here + time.monotonic() - start
        _save_state(out, model, opt, reader, rng, progress)

    stream = batch_stream(proc, init, rng, cfg, model.cfg.vq.num_patches, f"{cfg.seed}/data/{progress.step}")
    for cpu_batch in stream:
        ran = time.monotonic() - start
        elapsed = elapsed_before + ran
        if elapsed >= budget or (cfg.max_steps is not None and progress.step >= cfg.max_steps):
            break
        if progress.step - first_step >= 20:  # this run's own rate: a resumed run may sit on another device
            est_total = progress.step + int((progress.step - first_step) / ran * (budget - elapsed))
        for group in opt.param_groups:
            group["lr"] = lr_at(progress.step - progress.phase_step, est_total - progress.phase_step, cfg)
        losses = train_step(model, reader, opt, on_device(cpu_batch, model, proc, code_map), teacher,
                            cfg.changed_weight)
        progress.step += 1
        log.add({"step": progress.step, "elapsed": round(elapsed, 1), "lr": opt.param_groups[0]["lr"], **losses})
        if time.monotonic() - last_save > cfg.save_minutes * 60:
            save(elapsed)
            last_save = time.monotonic()
    stream.close()
    save(elapsed_before + time.monotonic() - start)
    log.close()


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
    parser.add_argument("--device", default="cpu", help="torch device to train on (e.g. cuda)")
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
