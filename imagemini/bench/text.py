"""`imagemini bench text`: decode throughput of our engine against transformers' `generate`,
same checkpoint, same dtype, same prompts, same number of new tokens, in one run, each figure
also as a share of the machine's ceiling measured in the same run (ceiling.py).

    imagemini bench text [--model DIR] [--concurrency 1 4 8 16] [--max-tokens 128] [--json OUT]

Concurrency c means c requests in flight. For our engine they are decoded together
(continuous batching). For transformers two baselines are reported:
- `hf sequential`: one `generate` per request, one after the other — what a server built on
  `generate` does with concurrent requests. Its rate does not depend on c, so each distinct
  prompt is timed once and c requests' time is the sum of theirs (prompts cycle through PROMPTS);
- `hf batched`: the c prompts left-padded into one `generate` call — transformers' best case,
  only possible when all requests arrive together with the same settings.
Tokens/s counts generated tokens over wall time, prefill included (prompts are short).
EOS is suppressed on both sides so every request produces exactly `--max-tokens` tokens.
The share of the ceiling compares each figure with the ceiling at the rows its steps carry:
c for ours and hf batched, 1 for hf sequential.

`untiled` prices the seed guarantee: the same engine with plain batched matmuls instead of
fixed row tiles (`EngineConfig(row_tile=None)`, whose outputs then depend on the batch), and
the share of throughput the tiles cost. Attention is per sequence in both, so that part of the
guarantee is not priced here.

Time to first token: one prompt of about `--ttft-tokens` tokens, one new token, alone.
The three models are loaded one after the other (ours, untiled, transformers), each freed
before the next, so the run holds one copy of the weights at a time; the peak memory after
each phase is reported.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import torch

from imagemini.engine.engine import DTYPES, Engine, EngineConfig
from imagemini.engine.params import SamplingParams
from imagemini.models import random_fixture
from imagemini.models.tokenizer import Tokenizer

from .ceiling import ceiling, decoder_linears
from .report import add_report_arguments, draw_bars, peak_rss_gib, write_report

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


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Also the options of `bench http` and `bench structured`."""
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: random fixture, small size)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)
    p.set_defaults(concurrency=[1, 4, 8, 16])
    p.add_argument("--ttft-tokens", type=int, default=512, help="prompt length for the time to first token")
    add_report_arguments(p)


def _chat(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(tok.render_chat([{"role": "user", "content": text}]))


def chat_prompts(tok: Tokenizer, concurrency: int) -> list[list[int]]:
    return [_chat(tok, PROMPTS[i % len(PROMPTS)]) for i in range(concurrency)]


def _prompts(engine: Engine, concurrency: int) -> list[list[int]]:
    return chat_prompts(engine.tokenizer, concurrency)


def long_prompt(tok: Tokenizer, tokens: int) -> list[int]:
    """A chat prompt of at least `tokens` tokens: the questions above, over and over."""
    text = ""
    while len(_chat(tok, text)) < tokens:
        text += " ".join(PROMPTS) + " "
    return _chat(tok, text)


def bench_engine(engine: Engine, prompts: list[list[int]], max_tokens: int) -> float:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logit_bias={engine.tokenizer.special.eos: -100.0})
    engine.generate(prompts[:1], SamplingParams(max_tokens=4))  # warm-up
    start = time.perf_counter()
    results = engine.generate(prompts, params)
    elapsed = time.perf_counter() - start
    assert all(len(r["token_ids"]) == max_tokens for r in results)
    return len(prompts) * max_tokens / elapsed


def _hf_generate(model, prompts: list[list[int]], max_tokens: int, pad_id: int) -> int:
    """One left-padded `generate` of `max_tokens` new tokens per prompt; returns the tokens made."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                         do_sample=False, pad_token_id=pad_id)
    return (out.shape[1] - width) * len(prompts)


def _timed(run, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = run(*args)
    return time.perf_counter() - start, result


def engine_phase(path: Path, config: EngineConfig, args: argparse.Namespace, prompt: list[int]) -> dict:
    """Tokens/s at each concurrency and the time to first token of `prompt`, for one engine."""
    engine = Engine.from_checkpoint(path, config)
    rates = {c: bench_engine(engine, _prompts(engine, c), args.max_tokens) for c in args.concurrency}
    ttft, _ = _timed(engine.generate, [prompt], SamplingParams(max_tokens=1))
    return {"tokens_per_s": rates, "ttft_s": ttft, "peak_rss_gib": peak_rss_gib()}


def hf_phase(path: Path, args: argparse.Namespace, prompts: dict[int, list[list[int]]], prompt: list[int], pad: int) -> dict:
    """transformers sequential and batched tokens/s, its time to first token, and the ceilings."""
    import transformers

    transformers.logging.set_verbosity_error()
    hf = transformers.JanusForConditionalGeneration.from_pretrained(path, dtype=DTYPES[args.dtype]).eval()
    _hf_generate(hf, prompts[min(prompts)][:1], 4, pad)  # warm-up
    distinct = {i: prompts[max(prompts)][i] for i in range(min(len(PROMPTS), max(prompts)))}
    alone = {i: _timed(_hf_generate, hf, [p], args.max_tokens, pad) for i, p in distinct.items()}  # (s, tokens)
    sequential, batched = {}, {}
    for c in args.concurrency:
        runs = [alone[i % len(PROMPTS)] for i in range(c)]
        sequential[c] = sum(made for _, made in runs) / sum(s for s, _ in runs)
        if c > 1:
            seconds, made = _timed(_hf_generate, hf, prompts[c], args.max_tokens, pad)
            batched[c] = made / seconds
    ttft, _ = _timed(_hf_generate, hf, [prompt], 1, pad)
    linears = decoder_linears(hf, "text")
    ceilings = {rows: ceiling(linears, rows) for rows in sorted({1, *args.concurrency})}
    result = {"sequential": sequential, "batched": batched, "ttft_s": ttft, "ceilings": ceilings, "peak_rss_gib": peak_rss_gib()}
    del hf
    gc.collect()
    return result


def decode_rows(args: argparse.Namespace, ours: dict, untiled: dict, hf: dict) -> list[dict]:
    """Per concurrency: every side's tokens/s, the ceiling at c rows, and each side's share of the
    ceiling at the rows its steps carry."""
    rows = []
    for c in args.concurrency:
        rates = {"ours": ours["tokens_per_s"][c], "untiled": untiled["tokens_per_s"][c],
                 "hf_sequential": hf["sequential"][c], "hf_batched": hf["batched"].get(c, hf["sequential"][c])}
        step_rows = {"ours": c, "untiled": c, "hf_sequential": 1, "hf_batched": c}
        rows.append({
            "concurrency": c, "tokens_per_s": rates, "ceiling": hf["ceilings"][c],
            "share_of_ceiling": {k: v / hf["ceilings"][step_rows[k]]["tokens_per_s"] for k, v in rates.items()},
            "tile_cost": 1 - rates["ours"] / rates["untiled"],
        })
    return rows


def print_decode(rows: list[dict]) -> None:
    print(f"{'concurrency':>11} {'ours tok/s':>11} {'of ceil':>8} {'hf seq tok/s':>13} {'hf batch tok/s':>15} {'vs seq':>7}"
          f" {'vs batch':>9} {'untiled tok/s':>14} {'tile cost':>10} {'ceiling tok/s':>14} {'pass ms':>8}")
    for r in rows:
        t = r["tokens_per_s"]
        print(f"{r['concurrency']:>11} {t['ours']:>11.1f} {r['share_of_ceiling']['ours']:>8.0%} {t['hf_sequential']:>13.1f}"
              f" {t['hf_batched']:>15.1f} {t['ours'] / t['hf_sequential']:>6.2f}x {t['ours'] / t['hf_batched']:>8.2f}x"
              f" {t['untiled']:>14.1f} {r['tile_cost']:>10.0%} {r['ceiling']['tokens_per_s']:>14.1f} {r['ceiling']['pass_ms']:>8.1f}")


def main(args: argparse.Namespace) -> None:
    torch.set_grad_enabled(False)
    path = args.model or random_fixture.cached_small()
    tok = Tokenizer.from_dir(path)
    prompts = {c: chat_prompts(tok, c) for c in args.concurrency}
    long = long_prompt(tok, args.ttft_tokens)
    print(f"checkpoint {path}  dtype {args.dtype}  new tokens/request {args.max_tokens}  threads {torch.get_num_threads()}", flush=True)
    ours = engine_phase(path, EngineConfig(dtype=args.dtype), args, long)
    gc.collect()
    untiled = engine_phase(path, EngineConfig(dtype=args.dtype, row_tile=None), args, long)
    gc.collect()
    hf = hf_phase(path, args, prompts, long, tok.special.pad)
    rows = decode_rows(args, ours, untiled, hf)
    print_decode(rows)
    ttft = {"prompt_tokens": len(long), "ours_s": ours["ttft_s"], "untiled_s": untiled["ttft_s"], "hf_s": hf["ttft_s"]}
    print(f"time to first token, {len(long)}-token prompt: ours {ttft['ours_s']:.2f} s  untiled {ttft['untiled_s']:.2f} s"
          f"  hf {ttft['hf_s']:.2f} s")
    peaks = {"after ours": ours["peak_rss_gib"], "after untiled": untiled["peak_rss_gib"], "after hf": hf["peak_rss_gib"]}
    print("peak RSS GiB: " + "  ".join(f"{k} {v}" for k, v in peaks.items()))
    results = {"bench": "text", "checkpoint": str(path), "dtype": args.dtype, "threads": torch.get_num_threads(),
               "max_tokens": args.max_tokens, "decode": rows, "time_to_first_token": ttft, "peak_rss_gib": peaks}
    labels = {"ours": "ours", "untiled": "ours untiled", "hf_sequential": "hf sequential", "hf_batched": "hf batched"}
    groups = {f"c={r['concurrency']}": {**{labels[k]: v for k, v in r["tokens_per_s"].items()},
                                          "ceiling (weight pass)": r["ceiling"]["tokens_per_s"]} for r in rows}
    title = f"bench text: decode tokens/s, {Path(path).name}, {args.dtype}, {torch.get_num_threads()} threads"
    write_report(args, results, draw_bars(title, "tokens/s", groups))
