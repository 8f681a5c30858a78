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

`--compare-attention` adds our engine with the other attention plan than the device's default
(`EngineConfig.attention`: "batched" on a GPU, "per_sequence" on a CPU), as `other attention`.

Time to first token: one prompt of about `--ttft-tokens` tokens, one new token, alone.
The models are loaded one after the other (ours, untiled, other attention, transformers), each
freed before the next, so the run holds one copy of the weights at a time; the peak memory after
each phase is reported.

`--device cuda[:N]` runs both engines and transformers' model there (device.py: every timing
waits for the device). Then, and with `--bandwidth` on a CPU, the device's memory bandwidth is
measured first and every figure is also given as a share of the decode limit it sets
(ceiling.py: weight bytes / bandwidth a step), with each engine's synchronisations a step.
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

import torch

from imagemini.engine.engine import ATTENTION, DTYPES, Engine, EngineConfig
from imagemini.engine.params import SamplingParams
from imagemini.models import random_fixture
from imagemini.models.tokenizer import Tokenizer

from . import device_report
from .ceiling import ceiling, decode_limit, decoder_linears, memory_bandwidth, weight_bytes
from .device import (SYNC_PASS_STEPS, add_device_arguments, count_syncs, engine_counters, engine_steps, free_device_memory,
                     is_cuda, measures_bandwidth, peak_device_gib, per_step, reset_peak_memory, sync_counting_works, timed)
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
PREFILL_STEPS = 4  # steps left out of the sync debug pass: the prompts' prefill (2 at 32 prompts)


def add_run_arguments(p: argparse.ArgumentParser, dtypes: tuple[str, ...] = ("bfloat16", "float32")) -> None:
    """Also the options of `bench http` and `bench structured`."""
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: random fixture, small size)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--dtype", choices=list(dtypes), default="bfloat16")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p, tuple(DTYPES))
    p.set_defaults(concurrency=[1, 4, 8, 16])
    p.add_argument("--ttft-tokens", type=int, default=512, help="prompt length for the time to first token")
    p.add_argument("--compare-attention", action="store_true",
                   help="also time our engine with the other attention plan than the device's default")
    add_device_arguments(p)
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


def _decode_params(engine: Engine, max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, logit_bias={engine.tokenizer.special.eos: -100.0})


def run_engine(engine: Engine, prompts: list[list[int]], max_tokens: int) -> dict:
    """Tokens/s of one timed `generate` of `prompts` (after a short warm-up), and the engine's
    host reads a step over it (None where the engine does not count them)."""
    engine.generate(prompts[:1], SamplingParams(max_tokens=4))  # warm-up
    before = engine_counters(engine)
    elapsed, results = timed(engine.config.device, engine.generate, prompts, _decode_params(engine, max_tokens))
    after = engine_counters(engine)
    assert all(len(r["token_ids"]) == max_tokens for r in results)
    return {"tokens_per_s": len(prompts) * max_tokens / elapsed, "host_reads_per_step": per_step(before, after)}


def bench_engine(engine: Engine, prompts: list[list[int]], max_tokens: int) -> float:
    return run_engine(engine, prompts, max_tokens)["tokens_per_s"]


def _hf_generate(model, prompts: list[list[int]], max_tokens: int, pad_id: int) -> int:
    """One left-padded `generate` of `max_tokens` new tokens per prompt; returns the tokens made."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                         do_sample=False, pad_token_id=pad_id)
    return (out.shape[1] - width) * len(prompts)


def engine_phase(path: Path, config: EngineConfig, args: argparse.Namespace, prompt: list[int]) -> dict:
    """Tokens/s at each concurrency and the time to first token of `prompt`, for one engine;
    on a GPU also its synchronisations a step (sync debug pass) and its peak device memory."""
    reset_peak_memory(config.device)
    engine = Engine.from_checkpoint(path, config)
    runs = {c: run_engine(engine, _prompts(engine, c), args.max_tokens) for c in args.concurrency}
    ttft, _ = timed(config.device, engine.generate, [prompt], SamplingParams(max_tokens=1))
    result = {"tokens_per_s": {c: r["tokens_per_s"] for c, r in runs.items()},
              "host_reads_per_step": {c: r["host_reads_per_step"] for c, r in runs.items()},
              "ttft_s": ttft, "peak_rss_gib": peak_rss_gib()}
    if is_cuda(config.device):
        c = max(args.concurrency)
        params = _decode_params(engine, PREFILL_STEPS + SYNC_PASS_STEPS + 1)  # the timed runs warmed every shape up
        result["sync_debug"] = {"concurrency": c, **engine_steps(engine, _prompts(engine, c), params, count=True,
                                                                 skip=PREFILL_STEPS)}
        result["peak_gpu_gib"] = peak_device_gib(config.device)
    weights = device_report.weights_device(engine.model)
    del engine
    gc.collect()
    free_device_memory(config.device)
    device_report.progress(f"row_tile {config.row_tile}, {config.attention} attention, weights on {weights}",
                           result["tokens_per_s"], "tok/s")
    return result


def _hf_rates(hf, args: argparse.Namespace, prompts: dict[int, list[list[int]]], pad: int) -> tuple[dict, dict]:
    """transformers' tokens/s one request at a time and batched, at each concurrency."""
    distinct = {i: prompts[max(prompts)][i] for i in range(min(len(PROMPTS), max(prompts)))}
    alone = {i: timed(args.device, _hf_generate, hf, [p], args.max_tokens, pad) for i, p in distinct.items()}  # (s, tokens)
    sequential, batched = {}, {}
    for c in args.concurrency:
        runs = [alone[i % len(PROMPTS)] for i in range(c)]
        sequential[c] = sum(made for _, made in runs) / sum(s for s, _ in runs)
        if c > 1:
            seconds, made = timed(args.device, _hf_generate, hf, prompts[c], args.max_tokens, pad)
            batched[c] = made / seconds
    return sequential, batched


def hf_sync_pass(hf, prompts: list[list[int]], pad: int) -> dict | None:
    """Synchronising CUDA calls a decode step of transformers' `generate`: the calls of a
    generate of 4 + SYNC_PASS_STEPS tokens less those of one of 4 (its set-up and prefill)."""
    if not sync_counting_works(hf.device):
        return None
    short, _ = count_syncs(lambda: _hf_generate(hf, prompts, 4, pad))
    long, _ = count_syncs(lambda: _hf_generate(hf, prompts, 4 + SYNC_PASS_STEPS, pad))
    return {"concurrency": len(prompts), "steps": SYNC_PASS_STEPS, "syncs": long - short,
            "syncs_per_step": (long - short) / SYNC_PASS_STEPS}


def hf_phase(path: Path, args: argparse.Namespace, prompts: dict[int, list[list[int]]], prompt: list[int], pad: int,
             bandwidth: dict | None = None) -> dict:
    """transformers sequential and batched tokens/s, its time to first token, and the ceilings
    (with `bandwidth`, also the decode limits it sets)."""
    import transformers

    transformers.logging.set_verbosity_error()
    reset_peak_memory(args.device)
    hf = transformers.JanusForConditionalGeneration.from_pretrained(path, dtype=DTYPES[args.dtype]).to(args.device).eval()
    _hf_generate(hf, prompts[min(prompts)][:1], 4, pad)  # warm-up
    sequential, batched = _hf_rates(hf, args, prompts, pad)
    ttft, _ = timed(args.device, _hf_generate, hf, [prompt], 1, pad)
    linears = decoder_linears(hf, "text")
    step_rows = sorted({1, *args.concurrency})
    ceilings = {rows: ceiling(linears, rows) for rows in step_rows}
    result = {"sequential": sequential, "batched": batched, "ttft_s": ttft, "ceilings": ceilings, "peak_rss_gib": peak_rss_gib()}
    if bandwidth is not None:
        result["weight_bytes"] = weight_bytes(linears)
        result["limits"] = {rows: decode_limit(result["weight_bytes"], bandwidth["gb_s"], rows) for rows in step_rows}
    if is_cuda(args.device):
        result["sync_debug"] = hf_sync_pass(hf, prompts[max(prompts)], pad)
        result["peak_gpu_gib"] = peak_device_gib(args.device)
    del hf, linears
    gc.collect()
    free_device_memory(args.device)
    device_report.progress("transformers, one request at a time", sequential, "tok/s")
    return result


STEP_ROWS = {"ours": "c", "untiled": "c", "other_attention": "c", "hf_sequential": 1, "hf_batched": "c"}


def decode_rows(args: argparse.Namespace, ours: dict, untiled: dict, hf: dict, other: dict | None = None) -> list[dict]:
    """Per concurrency: every side's tokens/s, the ceiling at c rows, and each side's share of the
    ceiling at the rows its steps carry; with `other` (the other attention plan) its rates too;
    where the run measured the bandwidth, each side's share of the decode limit likewise."""
    engines = {"ours": ours, "untiled": untiled, **({"other_attention": other} if other else {})}
    rows = []
    for c in args.concurrency:
        rates = {"ours": ours["tokens_per_s"][c], "untiled": untiled["tokens_per_s"][c],
                 "hf_sequential": hf["sequential"][c], "hf_batched": hf["batched"].get(c, hf["sequential"][c])}
        if other:
            rates["other_attention"] = other["tokens_per_s"][c]
        step_rows = {k: c if v == "c" else v for k, v in STEP_ROWS.items()}
        row = {
            "concurrency": c, "tokens_per_s": rates, "ceiling": hf["ceilings"][c],
            "share_of_ceiling": {k: v / hf["ceilings"][step_rows[k]]["tokens_per_s"] for k, v in rates.items()},
            "tile_cost": 1 - rates["ours"] / rates["untiled"],
            "host_reads_per_step": {k: e.get("host_reads_per_step", {}).get(c) for k, e in engines.items()},
        }
        if other:
            row["default_over_other_attention"] = rates["ours"] / rates["other_attention"]
        if "limits" in hf:
            limits = hf["limits"]
            row["bandwidth_limit"] = limits[c]
            row["share_of_bandwidth_limit"] = {k: v / limits[step_rows[k]]["tokens_per_s"] for k, v in rates.items()}
            row["share_of_bandwidth_limit"]["ceiling"] = hf["ceilings"][c]["tokens_per_s"] / limits[c]["tokens_per_s"]
        rows.append(row)
    return rows


def print_decode(rows: list[dict]) -> None:
    print(f"{'concurrency':>11} {'ours tok/s':>11} {'of ceil':>8} {'hf seq tok/s':>13} {'hf batch tok/s':>15} {'vs seq':>7}"
          f" {'vs batch':>9} {'untiled tok/s':>14} {'tile cost':>10} {'ceiling tok/s':>14} {'pass ms':>8}")
    for r in rows:
        t = r["tokens_per_s"]
        print(f"{r['concurrency']:>11} {t['ours']:>11.1f} {r['share_of_ceiling']['ours']:>8.0%} {t['hf_sequential']:>13.1f}"
              f" {t['hf_batched']:>15.1f} {t['ours'] / t['hf_sequential']:>6.2f}x {t['ours'] / t['hf_batched']:>8.2f}x"
              f" {t['untiled']:>14.1f} {r['tile_cost']:>10.0%} {r['ceiling']['tokens_per_s']:>14.1f} {r['ceiling']['pass_ms']:>8.1f}")


def _engine_phases(path: Path, args: argparse.Namespace, prompt: list[int]) -> tuple[dict, dict, dict | None]:
    """Ours (the device's defaults), untiled, and with --compare-attention the other plan."""
    config = EngineConfig(dtype=args.dtype, device=args.device)
    ours = engine_phase(path, config, args, prompt)
    untiled = engine_phase(path, EngineConfig(dtype=args.dtype, device=args.device, row_tile=None), args, prompt)
    other = None
    if args.compare_attention:
        plan = next(a for a in ATTENTION if a != config.attention)
        other = engine_phase(path, EngineConfig(dtype=args.dtype, device=args.device, attention=plan), args, prompt)
        other["attention"] = plan
    return ours, untiled, other


@torch.no_grad()  # not set_grad_enabled(False): a caller in the same process keeps its own mode
def main(args: argparse.Namespace) -> None:
    path = args.model or random_fixture.cached_small()
    tok = Tokenizer.from_dir(path)
    prompts = {c: chat_prompts(tok, c) for c in args.concurrency}
    long = long_prompt(tok, args.ttft_tokens)
    print(f"checkpoint {path}  dtype {args.dtype}  new tokens/request {args.max_tokens}  threads {torch.get_num_threads()}"
          f"{device_report.device_note(args.device)}", flush=True)
    bandwidth = memory_bandwidth(args.device) if measures_bandwidth(args) else None
    ours, untiled, other = _engine_phases(path, args, long)
    hf = hf_phase(path, args, prompts, long, tok.special.pad, bandwidth)
    rows = decode_rows(args, ours, untiled, hf, other)
    print_decode(rows)
    ttft = {"prompt_tokens": len(long), "ours_s": ours["ttft_s"], "untiled_s": untiled["ttft_s"], "hf_s": hf["ttft_s"]}
    print(f"time to first token, {len(long)}-token prompt: ours {ttft['ours_s']:.2f} s  untiled {ttft['untiled_s']:.2f} s"
          f"  hf {ttft['hf_s']:.2f} s")
    phases = {"ours": ours, "untiled": untiled, **({"other_attention": other} if other else {}), "hf": hf}
    peaks = {f"after {k}": v["peak_rss_gib"] for k, v in phases.items()}
    print("peak RSS GiB: " + "  ".join(f"{k} {v}" for k, v in peaks.items()))
    results = {"bench": "text", "checkpoint": str(path), "dtype": args.dtype, "threads": torch.get_num_threads(),
               "device": args.device, "max_tokens": args.max_tokens, "decode": rows, "time_to_first_token": ttft,
               "peak_rss_gib": peaks, **device_report.device_figures(phases, bandwidth, hf.get("weight_bytes"))}
    if other:
        results["attention"] = {"default": EngineConfig(device=args.device).attention, "other": other["attention"]}
    device_report.print_text(results)
    write_report(args, results, draw_bars(_title(path, args), "tokens/s", _chart_groups(rows)))


LABELS = {"ours": "ours", "untiled": "ours untiled", "other_attention": "ours other attention",
          "hf_sequential": "hf sequential", "hf_batched": "hf batched"}


def _chart_groups(rows: list[dict]) -> dict[str, dict[str, float]]:
    groups = {}
    for r in rows:
        group = {**{LABELS[k]: v for k, v in r["tokens_per_s"].items()}, "ceiling (weight pass)": r["ceiling"]["tokens_per_s"]}
        if "bandwidth_limit" in r:
            group["decode limit (bandwidth)"] = r["bandwidth_limit"]["tokens_per_s"]
        groups[f"c={r['concurrency']}"] = group
    return groups


def _title(path: Path, args: argparse.Namespace) -> str:
    where = f"{torch.get_num_threads()} threads" if not is_cuda(args.device) else device_report.device_name(args.device)
    return f"bench text: decode tokens/s, {Path(path).name}, {args.dtype}, {where}"
