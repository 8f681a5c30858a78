"""`imagemini bench text`: decode throughput of our engine against transformers' `generate`,
same checkpoint, same dtype, same prompts, same number of new tokens, in one run.

Concurrency c means c requests in flight. For our engine they are decoded together
(continuous batching). For transformers two baselines are reported:
- `hf sequential`: one `generate` per request, one after the other — what a server built on
  `generate` does with concurrent requests;
- `hf batched`: the c prompts left-padded into one `generate` call — transformers' best case,
  only possible when all requests arrive together with the same settings.
Tokens/s counts generated tokens over wall time, prefill included (prompts are short).
EOS is suppressed on both sides so every request produces exactly `--max-tokens` tokens.

The last columns price the seed guarantee: the same engine with plain batched matmuls instead
of fixed row tiles (`EngineConfig(row_tile=None)`, whose outputs then depend on the batch), and
the share of throughput the tiles cost. Attention is per sequence in both, so that part of the
guarantee is not priced here.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from imagemini.engine.engine import DTYPES, Engine, EngineConfig
from imagemini.engine.params import SamplingParams
from imagemini.models import random_fixture

PROMPTS = [
    "Describe the picture.",
    "How many circles are there?",
    "Draw a large red circle at the top left on a white background.",
    "What colour is the square at the center?",
    "Is there a blue triangle?",
    "Which is bigger, the cross or the circle?",
    "Hello! What can you do?",
    "Move the square to the left.",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Also the options of `bench http` and `bench structured`."""
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: random fixture, small size)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")


def _prompts(engine: Engine, concurrency: int) -> list[list[int]]:
    tok = engine.tokenizer
    return [tok.encode(tok.render_chat([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}])) for i in range(concurrency)]


def bench_engine(engine: Engine, prompts: list[list[int]], max_tokens: int) -> float:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logit_bias={engine.tokenizer.special.eos: -100.0})
    engine.generate(prompts[:1], SamplingParams(max_tokens=4))  # warm-up
    start = time.perf_counter()
    results = engine.generate(prompts, params)
    elapsed = time.perf_counter() - start
    assert all(len(r["token_ids"]) == max_tokens for r in results)
    return len(prompts) * max_tokens / elapsed


def bench_hf(model, prompts: list[list[int]], max_tokens: int, pad_id: int, batched: bool) -> float:
    common = dict(max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False, pad_token_id=pad_id)
    model.generate(torch.tensor([prompts[0]]), attention_mask=torch.ones(1, len(prompts[0]), dtype=torch.long), max_new_tokens=4, do_sample=False, pad_token_id=pad_id)
    start = time.perf_counter()
    if batched:
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = model.generate(ids, attention_mask=mask, **common)
        produced = (out.shape[1] - width) * len(prompts)
    else:
        produced = 0
        for p in prompts:
            out = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), **common)
            produced += out.shape[1] - len(p)
    return produced / (time.perf_counter() - start)


def main(args: argparse.Namespace) -> None:
    import transformers

    torch.set_grad_enabled(False)
    path = args.model or random_fixture.cached_small()
    engine = Engine.from_checkpoint(path, EngineConfig(dtype=args.dtype))
    untiled = Engine.from_checkpoint(path, EngineConfig(dtype=args.dtype, row_tile=None))
    transformers.logging.set_verbosity_error()
    hf = transformers.JanusForConditionalGeneration.from_pretrained(path, dtype=DTYPES[args.dtype]).eval()
    pad = engine.tokenizer.special.pad
    print(f"checkpoint {path}  dtype {args.dtype}  new tokens/request {args.max_tokens}  threads {torch.get_num_threads()}")
    print(f"{'concurrency':>11} {'ours tok/s':>11} {'hf seq tok/s':>13} {'hf batch tok/s':>15} {'vs seq':>7} {'vs batch':>9}"
          f" {'untiled tok/s':>14} {'tile cost':>10}")
    for c in args.concurrency:
        prompts = _prompts(engine, c)
        ours = bench_engine(engine, prompts, args.max_tokens)
        plain = bench_engine(untiled, prompts, args.max_tokens)
        seq = bench_hf(hf, prompts, args.max_tokens, pad, batched=False)
        batch = bench_hf(hf, prompts, args.max_tokens, pad, batched=True) if c > 1 else seq
        print(f"{c:>11} {ours:>11.1f} {seq:>13.1f} {batch:>15.1f} {ours / seq:>6.2f}x {ours / batch:>8.2f}x"
              f" {plain:>14.1f} {1 - ours / plain:>10.0%}")
