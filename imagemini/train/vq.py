"""Stage 1 of the bundled-model recipe: train the VQ-VAE image tokenizer on the shapes world.

    python -m imagemini.train.vq --out runs/vq --minutes 75     # train; resumes out/last.pt if present
    python -m imagemini.train.vq --out runs/vq --minutes 120    # extend the same run to 120 minutes in all
    python -m imagemini.train.vq --out runs/vq --eval-only      # readback of out/vq.safetensors
    python -m imagemini.train.vq --out runs/vq --tune-decoder 30 --lr 3e-4   # stage 1b (below)

`--minutes` is the run's *total* wall-clock budget, counted across resumes (a crashed run
resumed with the same flag ends when it would have; a larger value extends it). The learning
rate and the two phases follow the fraction of that budget spent, so extending a finished run
raises the learning rate again part-way up its cosine.

Recipe (LlamaGen-style quantiser):
1. PyTorch default init (not N(0, 0.02)); AdamW, linear LR warm-up then cosine by budget fraction.
2. Autoencoder warm-up: for the first `ae_frac` of the budget the decoder sees the L2-normalised
   latents directly (no quantisation).
3. Codebook from k-means++ / spherical k-means on warmed-up latents, then quantised training:
   cosine nearest code, straight-through estimator, codebook + beta * commitment loss; codes
   unused for a while are restarted at badly-quantised latents. The codebook is re-normalised
   after every step, so the parameter itself always has unit rows: what is saved is what
   transformers' plain-distance encode and normalised decode need.
4. Loss: MSE + L1 + a palette cross-entropy (pixels scored against the 9 exact world colours)
   with extra weight on edge pixels: crisp colours and edges are what the scene parser reads.
5. Stage 1b (`tune_decoder`): encoder and codebook frozen, the decoder alone learns to paint the
   codes the whole model actually draws (near-duplicates merged, `synonym_map`), which stage 1
   never decoded. Codes keep their meaning, so it may run after the whole model has trained.

Data are drawn on the fly from a seeded `random.Random` (`sample_scene` + `render_array`); a
fixed held-out set (`heldout_set`) scores readback: the fraction of scenes that
`parse_image(decode(encode(image)))` reads back exactly.

Pieces: vq_images.py (training scenes, the held-out set, readback), vq_codebook.py (quantiser,
k-means, dead-code restarts, synonym map, the saved tokenizer files); this module holds the loss,
both training loops and the command line.

Outputs in out_dir: last.pt (resumable state), best.pt and vq.safetensors + vq_config.json
(best readback so far; state dict of `imagemini.models.vq.VQModel` in float32, codebook unit
rows, loadable with `load_vq(out_dir)`), metrics.jsonl (one line per evaluation).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from imagemini.models.config import VQConfig
from imagemini.models.vq import VQModel

from .vq_codebook import latents, load_vq, quantize, restart_dead_codes, save_vq, spherical_kmeans, synonym_map
from .vq_images import PALETTE_PIXELS, evaluate_readback, heldout_set, sample_batch

#: The bundled model's VQ (keys as in transformers' `vq_config`): 64 px -> 16x16 = 256 codes.
#: The aligner fields (projection_dim, image_token_embed_dim, num_hidden_layers, hidden_act)
#: follow the text model and are set where the checkpoint is assembled.
BUNDLED_VQ_CONFIG: dict = {
    "embed_dim": 8,
    "num_embeddings": 1024,
    "double_latent": False,
    "latent_channels": 64,
    "in_channels": 3,
    "out_channels": 3,
    "base_channels": 32,
    "channel_multiplier": [1, 2, 2],
    "num_res_blocks": 1,
    "dropout": 0.0,
    "num_patches": 16,
}


@dataclass
class TrainConfig:
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_frac: float = 0.05  # cosine ends at lr * min_lr_frac
    lr_warmup_steps: int = 100
    grad_clip: float = 1.0
    bf16: bool = True  # torch.autocast("cpu", bfloat16) for encoder/decoder
    threads: int = 1  # 2 threads ran 2-7x slower than 1 while other jobs shared the 2 cores
    ae_frac: float = 0.2  # budget fraction of autoencoder warm-up (no quantisation)
    beta: float = 0.25  # commitment weight
    l1_weight: float = 1.0
    palette_weight: float = 0.1  # palette cross-entropy (0 disables)
    palette_tau: float = 0.1  # temperature of the palette logits -|y - colour|^2 / tau
    edge_weight: float = 3.0  # pixels on a colour edge weigh 1 + edge_weight (0 disables)
    kmeans_images: int = 256
    kmeans_iters: int = 20
    restart_every: int = 50  # steps between dead-code restarts
    dead_usage: float = 0.03  # EMA uses per batch below which a code is dead
    eval_minutes: float = 5.0
    ckpt_minutes: float = 3.0
    eval_scenes: int = 500


#: TrainConfig fields a resumed run takes from the caller rather than from its checkpoint.
RUNTIME_FIELDS = ("threads", "eval_minutes", "ckpt_minutes")


# --- loss ------------------------------------------------------------------------------


def edge_mask(index: torch.Tensor) -> torch.Tensor:
    """[n, S, S] palette index -> bool mask of pixels whose 3x3 neighbourhood has another colour."""
    f = index[:, None].float()
    hi = F.max_pool2d(f, 3, 1, 1)
    lo = -F.max_pool2d(-f, 3, 1, 1)
    return (hi != lo)[:, 0]


def reconstruction_loss(y: torch.Tensor, x: torch.Tensor, index: torch.Tensor, cfg: TrainConfig):
    """Edge-weighted MSE + L1 + palette cross-entropy. Returns (loss, plain MSE for logging)."""
    y = y.float()
    err = y - x
    sq = err.pow(2).mean(1)  # [n, S, S]
    w = 1 + cfg.edge_weight * edge_mask(index).float()
    wmean = lambda t: (w * t).sum() / w.sum()  # noqa: E731
    loss = wmean(sq) + cfg.l1_weight * wmean(err.abs().mean(1))
    if cfg.palette_weight > 0:
        dist = (y[:, None] - PALETTE_PIXELS[None, :, :, None, None]).pow(2).sum(2)  # [n, 9, S, S]
        loss = loss + cfg.palette_weight * wmean(F.cross_entropy(-dist / cfg.palette_tau, index, reduction="none"))
    return loss, sq.mean().detach()


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# --- training --------------------------------------------------------------------------


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    warm = min(1.0, (step + 1) / cfg.lr_warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * warm * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * cosine)


def _init_codebook(vq: VQModel, data_rng: random.Random, cfg: TrainConfig, gen: torch.Generator) -> None:
    """k-means codebook from the warmed-up encoder's latents on fresh images."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        pts = torch.cat([latents(vq, sample_batch(data_rng, 64)[0]) for _ in range(cfg.kmeans_images // 64)])
    book = spherical_kmeans(pts.float(), vq.cfg.num_embeddings, cfg.kmeans_iters, gen)
    vq.quantize.embedding.weight.data.copy_(book)


def _train_step(vq, opt, batch, state, cfg: TrainConfig, gen) -> tuple[float, float]:
    x, index = batch
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        z = vq.quant_conv(vq.encoder(x))
    if state["phase"] == "ae":
        zq, qloss = F.normalize(z.float(), dim=1), torch.zeros(())
    else:
        zq, codes, qloss = quantize(z, vq.quantize.embedding.weight, cfg.beta)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        y = vq.decoder(vq.post_quant_conv(zq))
    rloss, mse = reconstruction_loss(y, x, index, cfg)
    loss = rloss + qloss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(vq.parameters(), cfg.grad_clip)
    opt.step()
    book = vq.quantize.embedding.weight
    with torch.no_grad():
        book.copy_(F.normalize(book, dim=1))
    if state["phase"] == "vq":
        usage = state["usage"]
        usage.mul_(0.99).add_(torch.bincount(codes.flatten(), minlength=len(usage)).float(), alpha=0.01)
        if state["step"] % cfg.restart_every == 0:
            flat = F.normalize(z.detach().float(), dim=1).permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            state["restarted"] += restart_dead_codes(book.data, usage, flat, cfg.dead_usage, gen)
    return loss.item(), mse.item()


def _new_state(vq_config: dict, cfg: TrainConfig, seed: int) -> tuple[VQModel, torch.optim.Optimizer, dict]:
    torch.manual_seed(seed)
    vq = VQModel(VQConfig.from_dict(vq_config))  # PyTorch default init (recipe step 1 above)
    opt = torch.optim.AdamW(vq.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    state = {"step": 0, "elapsed": 0.0, "phase": "ae", "best": None, "restarted": 0,
             "usage": torch.ones(vq.cfg.num_embeddings), "data_rng": random.Random(seed).getstate(),
             "gen": torch.Generator().manual_seed(seed).get_state(), "train_config": dataclasses.asdict(cfg),
             "vq_config": vq_config, "seed": seed}
    return vq, opt, state


def _load_state(path: Path) -> tuple[VQModel, torch.optim.Optimizer, dict, TrainConfig]:
    ckpt = torch.load(path, weights_only=False)
    cfg = TrainConfig(**ckpt["state"]["train_config"])
    vq, opt, _ = _new_state(ckpt["state"]["vq_config"], cfg, ckpt["state"]["seed"])
    vq.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    return vq, opt, ckpt["state"], cfg


def _checkpoint(vq, opt, state, data_rng, gen, path: Path) -> None:
    state["data_rng"], state["gen"] = data_rng.getstate(), gen.get_state()
    _atomic_save({"model": vq.state_dict(), "optimizer": opt.state_dict(), "state": state}, path)


def _evaluate(vq, state, heldout, out_dir: Path, window: dict) -> dict:
    """Evaluate, log a metrics line (and its summary on stderr), and keep the best quantised model
    by readback."""
    quantized = state["phase"] == "vq"
    res = evaluate_readback(vq, *heldout, quantized=quantized)
    row = {"step": state["step"], "minutes": round(state["elapsed"] / 60, 2), "phase": state["phase"],
           "train_loss": window["loss"] / max(window["n"], 1), "train_mse": window["mse"] / max(window["n"], 1),
           "steps_per_s": window["n"] / max(window["seconds"], 1e-9), "restarted": state["restarted"], **res}
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    key = (res["readback"], -res["mse"])
    if quantized and (state["best"] is None or key > tuple(state["best"])):
        state["best"] = list(key)
        _atomic_save({"model": vq.state_dict(), "step": state["step"], "metrics": row}, out_dir / "best.pt")
        save_vq(vq, state["vq_config"], out_dir)
    window.update(loss=0.0, mse=0.0, n=0, seconds=0.0)
    tqdm.write(_summary(row), file=sys.stderr)
    return row


def _open_run(last: Path, resume: bool, cfg: TrainConfig | None, vq_config: dict | None,
              seed: int) -> tuple[VQModel, torch.optim.Optimizer, dict, TrainConfig]:
    """The run saved in `last`, resumed, or a new one from `cfg` and `vq_config`."""
    if resume and last.exists():
        vq, opt, state, stored = _load_state(last)
        # Recipe fields stay as the run began; how it runs (threads, eval cadence) may change.
        runtime = {k: getattr(cfg, k) for k in RUNTIME_FIELDS} if cfg else {}
        cfg = dataclasses.replace(stored, **runtime)
        state["train_config"] = dataclasses.asdict(cfg)
        return vq, opt, state, cfg
    cfg = cfg or TrainConfig()
    vq, opt, state = _new_state(dict(vq_config or BUNDLED_VQ_CONFIG), cfg, seed)
    return vq, opt, state, cfg


def train_vq(out_dir: str | Path, minutes: float, seed: int = 0, resume: bool = True,
             cfg: TrainConfig | None = None, vq_config: dict | None = None, progress: bool = True) -> dict:
    """Train (or resume) a VQ tokenizer in out_dir until `minutes` of total budget are spent.
    cfg / vq_config apply to a new run; a resumed run keeps the ones it started with, except
    the RUNTIME_FIELDS of cfg (threads, eval and checkpoint cadence).
    Returns the final evaluation row."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last = out_dir / "last.pt"
    vq, opt, state, cfg = _open_run(last, resume, cfg, vq_config, seed)
    torch.set_num_threads(cfg.threads)
    data_rng = random.Random()
    data_rng.setstate(state["data_rng"])
    gen = torch.Generator()
    gen.set_state(state["gen"])
    heldout = heldout_set(cfg.eval_scenes)
    budget = minutes * 60.0
    window = {"loss": 0.0, "mse": 0.0, "n": 0, "seconds": 0.0}
    last_eval = last_ckpt = state["elapsed"]
    bar = tqdm(total=round(budget), initial=round(min(state["elapsed"], budget)), unit="s", disable=not progress,
               mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
    vq.train()
    row = None
    while state["elapsed"] < budget:
        t0 = time.perf_counter()
        frac = state["elapsed"] / budget
        if state["phase"] == "ae" and frac >= cfg.ae_frac:  # end of warm-up: score it, then k-means
            _evaluate(vq, state, heldout, out_dir, window)
            _init_codebook(vq, data_rng, cfg, gen)
            state["phase"] = "vq"
            last_eval = state["elapsed"]
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, state["step"], frac)
        loss, mse = _train_step(vq, opt, sample_batch(data_rng, cfg.batch_size), state, cfg, gen)
        state["step"] += 1
        dt = time.perf_counter() - t0
        window.update(loss=window["loss"] + loss, mse=window["mse"] + mse, n=window["n"] + 1,
                      seconds=window["seconds"] + dt)
        state["elapsed"] += dt
        bar.update(round(state["elapsed"]) - bar.n)
        bar.set_postfix(step=state["step"], phase=state["phase"], loss=f"{loss:.4f}", mse=f"{mse:.4f}", refresh=False)
        if state["elapsed"] - last_eval >= cfg.eval_minutes * 60 and state["elapsed"] < budget:
            t1 = time.perf_counter()
            row = _evaluate(vq, state, heldout, out_dir, window)
            state["elapsed"] += time.perf_counter() - t1
            last_eval = state["elapsed"]
        if state["elapsed"] - last_ckpt >= cfg.ckpt_minutes * 60:
            _checkpoint(vq, opt, state, data_rng, gen, last)
            last_ckpt = state["elapsed"]
    if window["n"] or row is None:
        row = _evaluate(vq, state, heldout, out_dir, window)
    _checkpoint(vq, opt, state, data_rng, gen, last)
    bar.close()
    return row


DECODER_PARTS = ("decoder.", "post_quant_conv.")  # what stage 1b trains and rewrites


def tune_decoder(out_dir: str | Path, minutes: float, seed: int = 0, cfg: TrainConfig | None = None,
                 progress: bool = True) -> dict:
    """Stage 1b: the decoder alone (and post_quant_conv) learns, for `minutes`, to paint back the
    codes the whole model is taught to draw: the synonym-merged ones (`synonym_map`), which stage
    1 never decoded. The encoder and codebook stay frozen, so every code keeps its meaning and a
    whole model trained on them stays valid. out_dir's vq.safetensors is replaced only by a
    decoder that reads back more held-out scenes (through merged codes) than the one it started
    from. `minutes` counts across calls, as stage 1's budget does (a call after the budget is
    spent trains nothing; a resumed call starts a fresh optimizer part-way down the schedule).
    Returns {"before": readback row, "after": best row}."""
    out_dir = Path(out_dir)
    cfg = cfg or TrainConfig(lr=3e-4)
    metrics = out_dir / "metrics.jsonl"
    done = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    spent = max((row["minutes"] * 60 for row in done if row.get("phase") == "decoder"), default=0.0)
    torch.set_num_threads(cfg.threads)
    vq = load_vq(out_dir)
    code_map = synonym_map(vq)
    heldout = heldout_set(cfg.eval_scenes)
    best = before = evaluate_readback(vq, *heldout, code_map=code_map)
    trained = [p for name, p in vq.named_parameters() if name.startswith(DECODER_PARTS)]
    for param in vq.parameters():
        param.requires_grad_(False)
    for param in trained:
        param.requires_grad_(True)
    opt = torch.optim.AdamW(trained, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    rng, budget, step, last_eval = random.Random(f"{seed}/decoder/{spent}"), minutes * 60.0, 0, spent
    bar = tqdm(total=round(budget), initial=round(min(spent, budget)), unit="s", desc="decoder", disable=not progress,
               dynamic_ncols=True)
    while spent < budget:
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step, spent / budget)
        x, index = sample_batch(rng, cfg.batch_size)
        with torch.no_grad():
            codes = code_map[vq.encode(x)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            y = vq.decode(codes)
        loss, _ = reconstruction_loss(y, x, index, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip)
        opt.step()
        step += 1
        spent += time.perf_counter() - t0
        bar.update(round(spent) - bar.n)
        bar.set_postfix(step=step, loss=f"{loss.item():.4f}", refresh=False)
        if spent - last_eval >= cfg.eval_minutes * 60 or spent >= budget:
            row = {"step": step, "minutes": round(spent / 60, 2), "phase": "decoder",
                   **evaluate_readback(vq, *heldout, code_map=code_map)}
            with open(metrics, "a") as f:
                f.write(json.dumps(row) + "\n")
            tqdm.write(f"[decoder] step {step}: readback {row['readback']:.3f} mistakes {row['mistakes']}", file=sys.stderr)
            if (row["readback"], -row["mse"]) > (best["readback"], -best["mse"]):
                best = row
                _save_decoder(vq, out_dir)
            last_eval = spent
    bar.close()
    return {"before": before, "after": best}


def _save_decoder(vq: VQModel, out_dir: Path) -> None:
    """Rewrites the decoder's tensors of out_dir/vq.safetensors; the others stay bit for bit."""
    path = out_dir / "vq.safetensors"
    tensors = load_file(str(path))
    tensors.update({k: v.detach().float().contiguous().clone() for k, v in vq.state_dict().items()
                    if k.startswith(DECODER_PARTS)})
    save_file(tensors, str(path.with_suffix(".tmp")))
    os.replace(path.with_suffix(".tmp"), path)


def _summary(row: dict) -> str:
    return (f"[eval] step {row['step']} {row['minutes']:.1f} min {row['phase']}: readback {row['readback']:.3f} "
            f"{row['readback_by_objects']} mse {row['mse']:.4f} palette_acc {row['palette_acc']:.4f} "
            f"codes {row.get('codes_used', '-')} mistakes {row['mistakes']} ({row['steps_per_s']:.2f} steps/s)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train the shapes-world VQ image tokenizer (see module docstring).")
    p.add_argument("--out", default="runs/vq")
    p.add_argument("--minutes", type=float, default=75.0, help="total wall-clock budget across resumes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start afresh even if out/last.pt exists")
    p.add_argument("--eval-only", action="store_true", help="evaluate out/vq.safetensors and exit")
    p.add_argument("--tune-decoder", type=float, default=0.0, metavar="MINUTES",
                   help="stage 1b on out/vq.safetensors: the decoder alone, on the codes the whole model draws")
    for f in dataclasses.fields(TrainConfig):  # every field is a flag (new runs; RUNTIME_FIELDS always)
        kind = (lambda s: s.lower() in ("1", "true", "yes")) if f.type in (bool, "bool") else type(f.default)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default)
    p.add_argument("--vq-config", default=None, help="JSON overrides of BUNDLED_VQ_CONFIG (new runs only)")
    args = p.parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    if args.tune_decoder:
        result = tune_decoder(args.out, args.tune_decoder, seed=args.seed, cfg=cfg)
        print(json.dumps({k: {"readback": v["readback"], "mistakes": v["mistakes"]} for k, v in result.items()}))
        return
    if args.eval_only:
        torch.set_num_threads(args.threads)
        print(json.dumps(evaluate_readback(load_vq(args.out), *heldout_set(args.eval_scenes))))
        return
    vq_config = {**BUNDLED_VQ_CONFIG, **json.loads(args.vq_config or "{}")}
    row = train_vq(args.out, args.minutes, seed=args.seed, resume=not args.no_resume, cfg=cfg, vq_config=vq_config)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
