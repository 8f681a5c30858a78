"""`imagemini bench profile`: where a decode step's time goes, from torch's profiler.

    imagemini bench profile [--model DIR] [--device cuda] [--concurrency 1 32] [--steps 8] [--out FILE]

For each concurrency c: c text requests (the `bench text` prompts, EOS suppressed) are admitted
and prefilled, then `--steps` decode steps of all c rows are profiled. Printed per c: wall time
a step, device-kernel launches a step (on a GPU), the engine's host reads a step, and the
operators with the most self time (device time on a GPU, CPU time otherwise), per step. The
answer to "is it the weights, attention, launches or the host?" without a second tool.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from imagemini.engine.engine import DTYPES, Engine, EngineConfig
from imagemini.engine.params import SamplingParams
from imagemini.models import random_fixture

from .device import add_device_arguments, is_cuda, synchronize
from .text import chat_prompts

TOP_OPERATORS = 25


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: random fixture, small size)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--steps", type=int, default=8, help="decode steps profiled at each concurrency")
    p.add_argument("--attention", choices=["per_sequence", "batched"], default=None, help="default: the device's")
    p.add_argument("--out", type=Path, default=None, help="also write the tables to this file")
    add_device_arguments(p)


def decoding_engine(engine: Engine, concurrency: int, steps: int) -> None:
    """Admit `concurrency` requests long enough for `steps` decode steps and step until every one
    of them decodes (prefill done)."""
    eos = engine.tokenizer.special.eos
    params = SamplingParams(max_tokens=steps + 64, temperature=0.0, logit_bias={eos: -100.0})
    for prompt in chat_prompts(engine.tokenizer, concurrency):
        engine.add_request(prompt, params)
    while any(s.num_computed < s.num_tokens - 1 for s in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()
    engine.step()  # one plain decode step before the profile


def profile_steps(engine: Engine, steps: int, device: str) -> tuple[float, object]:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if is_cuda(device) else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        synchronize(device)
        seconds = time.perf_counter() - start
    return seconds / steps, prof


def report(prof, concurrency: int, step_s: float, steps: int, reads: float, device: str) -> str:
    events = prof.key_averages()
    on_gpu = is_cuda(device)
    lines = [f"== c={concurrency}: {step_s * 1e3:.2f} ms a step (profiled), host reads {reads:.2f} a step"]
    if on_gpu:
        kernels = sum(e.count for e in prof.events() if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA)
        lines.append(f"   device kernels a step: {kernels / steps:.0f}")
    sort_by = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    lines.append(events.table(sort_by=sort_by, row_limit=TOP_OPERATORS))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> str:
    path = args.model or random_fixture.cached_small()
    config = EngineConfig(dtype=args.dtype, device=args.device, attention=args.attention, prefix_cache_tokens=0)
    engine = Engine.from_checkpoint(path, config)
    print(f"profile: {path.name}, {args.dtype}, {args.device}, attention {engine.config.attention}, "
          f"row tile {engine.config.row_tile}")
    tables = []
    for c in args.concurrency:
        decoding_engine(engine, c, args.steps)
        reads, steps = engine.host_reads, engine.steps_run
        step_s, prof = profile_steps(engine, args.steps, args.device)
        tables.append(report(prof, c, step_s, args.steps, (engine.host_reads - reads) / (engine.steps_run - steps), args.device))
        print(tables[-1], flush=True)
        for seq in list(engine.scheduler.running):
            engine.abort(seq.request_id)
        engine.step()
    text = "\n\n".join(tables)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return text
