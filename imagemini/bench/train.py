"""`imagemini bench train`: how fast stage 2 of the recipe trains on a device, and what feeds it.

    imagemini bench train [--device cuda] [--batch-tokens 12000 48000] [--steps 8]

For each batch size, batches are made first (timed apart: the data side), then whole-model
optimizer steps run on them (`train.lm.train_step`, the training loop's own step, on the
bundled checkpoint's weights; nothing is saved). Reported: milliseconds per step, tokens per
second (padding excluded; the share of them that are targets beside it), batches per second one CPU process makes, and so the
data workers (`--data-workers`) that would keep the device fed. On CUDA the timed steps run
under torch's sync-debug mode and every host-device synchronisation is counted (the step is
meant to have none: `Collator`, `loss_fn`). `--profile` prints the torch profiler's top ops
of one step: where the time goes.

GPU time is usually short: run this first (about a minute), then train with the batch size
that gives the most tokens per second.
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
import warnings
from pathlib import Path

import torch

from imagemini.models.janus import load_janus
from imagemini.models.processor import Processor
from imagemini.train import lm
from imagemini.train.vq import synonym_map


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=Path(__file__).parents[1] / "models" / "bundled",
                   help="checkpoint whose weights (and trained VQ) start the steps")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-tokens", type=int, nargs="+", default=[12_000, 48_000])
    p.add_argument("--steps", type=int, default=8, help="timed steps per batch size (after 2 untimed)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--profile", action="store_true", help="print the top ops of one step (torch profiler)")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batches(proc: Processor, model_dir: Path, cfg: lm.TrainConfig, grid: int, n: int) -> tuple[list[dict], float]:
    """`n` collated CPU batches made here, by the training loop's own stream, and the seconds
    one process took to make them."""
    stream = lm.batch_stream(proc, model_dir, random.Random(f"bench/{cfg.batch_tokens}"), cfg, grid, "bench")
    start = time.perf_counter()
    made = list(itertools.islice(stream, n))
    return made, time.perf_counter() - start


def count_syncs(run) -> int:
    """Host-device synchronisations while `run()` runs (CUDA's sync-debug mode warns on each)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = load_janus(args.model, torch.float32).to(device).train()
    proc = Processor.from_dir(args.model)
    grid = model.cfg.vq.num_patches
    code_map = synonym_map(model.model.vqmodel.eval()).to(device)
    reader = lm.SceneReader(model.cfg.text.hidden_size).to(device)
    print(f"checkpoint {args.model}  device {device}  threads {torch.get_num_threads()}")
    print(f"{'batch tokens':>12} {'ms/step':>8} {'tokens/s':>10} {'targets':>8} {'data batches/s':>15} "
          f"{'workers needed':>15} {'syncs/step':>11}")
    for batch_tokens in args.batch_tokens:
        cfg = lm.TrainConfig(batch_tokens=batch_tokens, device=args.device, lr=1e-5)
        opt = lm.make_optimizer(model, cfg)
        opt.add_param_group({"params": list(reader.parameters()), "weight_decay": 0.0})
        cpu_batches, data_seconds = make_batches(proc, args.model, cfg, grid, args.steps + 2)
        tokens = sum(int(b["mask"].sum()) for b in cpu_batches) / len(cpu_batches)
        targets = sum(len(b["text_targets"]) + len(b["code_targets"]) for b in cpu_batches) / len(cpu_batches) / tokens

        def step(i: int) -> None:
            lm.train_step(model, reader, opt, lm.on_device(cpu_batches[i], model, proc, code_map))

        for i in range(2):  # warm-up: allocator, kernels, autotuning
            step(i)
        _sync(device)
        start = time.perf_counter()
        for i in range(2, args.steps + 2):
            step(i)
        _sync(device)
        seconds = (time.perf_counter() - start) / args.steps
        syncs = f"{count_syncs(lambda: step(2)):>11}" if device.type == "cuda" else f"{'-':>11}"
        data_rate = len(cpu_batches) / data_seconds
        print(f"{batch_tokens:>12} {seconds * 1000:>8.1f} {tokens / seconds:>10.0f} {targets:>8.0%} "
              f"{data_rate:>15.2f} {1 / seconds / data_rate:>15.1f} {syncs}", flush=True)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                step(3)
                _sync(device)
            key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=15))
