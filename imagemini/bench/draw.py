"""`imagemini bench draw`: image generation speed of our engine against transformers' Janus
`generate(generation_mode="image")`, same checkpoint, same dtype, same prompts, in one run.

    imagemini bench draw [--model DIR] [--concurrency 1 8] [--dtype bfloat16]

Each request draws one image: the checkpoint's code count sampled from the generation head
with classifier-free guidance (a conditional and an unconditional row), then the VQ decoder
turns the codes into pixels. Both sides decode greedily with the same guidance scale, so both
do the same work. Concurrency c means c requests in flight: our engine batches them
(continuous batching); for transformers `hf sequential` runs one `generate` per request (a
server built on `generate`), `hf batched` one `generate` for all c prompts, left-padded (its
best case, only possible when the requests arrive together with the same settings).
Images/s counts decoded images over wall time, prompt prefill included.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from imagemini.engine.engine import DTYPES, Engine, EngineConfig
from imagemini.engine.params import SamplingParams

PROMPTS = [
    "Draw a large red circle at the top left on a white background.",
    "Draw a small blue square in the center on a black background.",
    "Draw a green triangle at the bottom right on a yellow background.",
    "Draw a purple cross at the top on a white background.",
    "Draw two circles, a red one on the left and a blue one on the right.",
    "Draw a large orange square at the bottom on a gray background.",
    "Draw a small yellow triangle at the top right on a blue background.",
    "Draw a black circle in the center on a green background.",
]
GUIDANCE = 3.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=Path(__file__).parents[1] / "models" / "bundled")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per setting (the best is kept)")


def draw_prompts(engine: Engine, concurrency: int) -> list[list[int]]:
    tok = engine.tokenizer
    return [
        tok.encode(tok.render_chat([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}])) + [tok.special.boi]
        for i in range(concurrency)
    ]


def bench_engine(engine: Engine, prompts: list[list[int]]) -> float:
    n = engine.num_image_tokens
    params = SamplingParams(max_tokens=n + 1, temperature=0.0, image_output=True, guidance_scale=GUIDANCE)
    start = time.perf_counter()
    results = engine.generate(prompts, params)
    pixels = [engine.model.decode_image_pixels(r["images"][0]) for r in results]
    elapsed = time.perf_counter() - start
    assert len(pixels) == len(prompts)
    return len(prompts) / elapsed


def bench_hf(model, prompts: list[list[int]], pad_id: int, batched: bool) -> float:
    common = dict(generation_mode="image", do_sample=False, guidance_scale=GUIDANCE, pad_token_id=pad_id)
    start = time.perf_counter()
    groups = [prompts] if batched else [[p] for p in prompts]
    images = 0
    for group in groups:
        width = max(len(p) for p in group)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in group])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group])
        codes = model.generate(ids, attention_mask=mask, **common)
        images += model.decode_image_tokens(codes).shape[0]
    assert images == len(prompts)
    return images / (time.perf_counter() - start)


def main(args: argparse.Namespace) -> None:
    import transformers

    torch.set_grad_enabled(False)
    engine = Engine.from_checkpoint(args.model, EngineConfig(dtype=args.dtype))
    transformers.logging.set_verbosity_error()
    hf = transformers.JanusForConditionalGeneration.from_pretrained(args.model, dtype=DTYPES[args.dtype]).eval()
    pad = engine.tokenizer.special.pad
    warm = draw_prompts(engine, 1)
    bench_engine(engine, warm)
    bench_hf(hf, warm, pad, batched=False)
    print(f"checkpoint {args.model}  dtype {args.dtype}  codes/image {engine.num_image_tokens}  "
          f"guidance {GUIDANCE}  threads {torch.get_num_threads()}")
    print(f"{'concurrency':>11} {'ours img/s':>11} {'hf seq img/s':>13} {'hf batch img/s':>15} {'vs seq':>7} {'vs batch':>9}")
    for c in args.concurrency:
        prompts = draw_prompts(engine, c)
        ours = max(bench_engine(engine, prompts) for _ in range(args.repeats))
        seq = max(bench_hf(hf, prompts, pad, batched=False) for _ in range(args.repeats))
        batch = max(bench_hf(hf, prompts, pad, batched=True) for _ in range(args.repeats)) if c > 1 else seq
        print(f"{c:>11} {ours:>11.2f} {seq:>13.2f} {batch:>15.2f} {ours / seq:>6.2f}x {ours / batch:>8.2f}x", flush=True)
