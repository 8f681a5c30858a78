"""`imagemini bench draw`: image generation speed of our engine against transformers' Janus
`generate(generation_mode="image")`, same checkpoint, same dtype, same prompts, in one run.

    imagemini bench draw [--model DIR] [--concurrency 1 8] [--dtype bfloat16] [--json OUT]

Each request draws one image: the checkpoint's code count sampled from the generation head
with classifier-free guidance (a conditional and an unconditional row), then the VQ decoder
turns the codes into pixels. Both sides decode greedily with the same guidance scale, so both
do the same work. Concurrency c means c requests in flight: our engine batches them
(continuous batching); for transformers `hf sequential` runs one `generate` per request (a
server built on `generate`), `hf batched` one `generate` for all c prompts, left-padded (its
best case, only possible when the requests arrive together with the same settings). A
sequential image's time does not depend on c, so each distinct prompt is timed alone and c
requests' time is the sum of theirs. Images/s counts decoded images over wall time, prompt
prefill included. `--partial-images P` times previews instead (bench/draw_previews.py).

The ceiling (ceiling.py): c guided images decode 2c rows a step, one code each per pair, so
no engine draws more than c / (codes x one weight pass of 2c rows) images/s here (the decoder
and the image head; the VQ decoder's pixels are left out). Our engine and transformers are
loaded one after the other, each freed before the next.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import torch

from imagemini.engine.engine import DTYPES, Engine, EngineConfig
from imagemini.engine.params import SamplingParams
from imagemini.models.tokenizer import Tokenizer

from .ceiling import ceiling, decoder_linears
from .report import add_report_arguments, draw_bars, peak_rss_gib, write_report

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
    p.add_argument("--partial-images", type=int, choices=[1, 2, 3], default=None,
                   help="instead: time per picture through `imagemini serve` streams with this many previews vs none "
                        "(bench/draw_previews.py)")
    add_report_arguments(p)


def draw_prompts(tok: Tokenizer, concurrency: int) -> list[list[int]]:
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


def bench_hf(model, prompts: list[list[int]], pad_id: int) -> float:
    """Images/s of one left-padded `generate(generation_mode="image")` for all `prompts`."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    codes = model.generate(ids, attention_mask=mask, generation_mode="image", do_sample=False,
                           guidance_scale=GUIDANCE, pad_token_id=pad_id)
    images = model.decode_image_tokens(codes).shape[0]
    assert images == len(prompts)
    return images / (time.perf_counter() - start)


def engine_phase(args: argparse.Namespace, prompts: dict[int, list[list[int]]]) -> dict:
    engine = Engine.from_checkpoint(args.model, EngineConfig(dtype=args.dtype))
    bench_engine(engine, prompts[min(prompts)][:1])  # warm-up
    rates = {c: max(bench_engine(engine, p) for _ in range(args.repeats)) for c, p in prompts.items()}
    return {"images_per_s": rates, "codes": engine.num_image_tokens, "peak_rss_gib": peak_rss_gib()}


def hf_phase(args: argparse.Namespace, prompts: dict[int, list[list[int]]], pad: int, codes: int) -> dict:
    import transformers

    transformers.logging.set_verbosity_error()
    hf = transformers.JanusForConditionalGeneration.from_pretrained(args.model, dtype=DTYPES[args.dtype]).eval()
    bench_hf(hf, prompts[min(prompts)][:1], pad)  # warm-up
    widest = prompts[max(prompts)]
    alone = [1 / max(bench_hf(hf, [p], pad) for _ in range(args.repeats)) for p in widest[: len(PROMPTS)]]  # s/image
    sequential = {c: c / sum(alone[i % len(PROMPTS)] for i in range(c)) for c in prompts}
    batched = {c: max(bench_hf(hf, p, pad) for _ in range(args.repeats)) if c > 1 else sequential[c] for c, p in prompts.items()}
    linears = decoder_linears(hf, "image")
    ceilings = {}
    for c in prompts:
        bound = ceiling(linears, 2 * c)
        ceilings[c] = {**bound, "images_per_s": bound["tokens_per_s"] / 2 / codes}
    result = {"sequential": sequential, "batched": batched, "ceilings": ceilings, "peak_rss_gib": peak_rss_gib()}
    del hf
    gc.collect()
    return result


def main(args: argparse.Namespace) -> dict | None:
    if args.partial_images:
        from .draw_previews import preview_cost

        return preview_cost(args)
    torch.set_grad_enabled(False)
    tok = Tokenizer.from_dir(args.model)
    prompts = {c: draw_prompts(tok, c) for c in args.concurrency}
    ours = engine_phase(args, prompts)
    gc.collect()
    hf = hf_phase(args, prompts, tok.special.pad, ours["codes"])
    print(f"checkpoint {args.model}  dtype {args.dtype}  codes/image {ours['codes']}  "
          f"guidance {GUIDANCE}  threads {torch.get_num_threads()}")
    print(f"{'concurrency':>11} {'ours img/s':>11} {'of ceil':>8} {'hf seq img/s':>13} {'hf batch img/s':>15} {'vs seq':>7}"
          f" {'vs batch':>9} {'ceiling img/s':>14}")
    rows = []
    for c in args.concurrency:
        rates = {"ours": ours["images_per_s"][c], "hf_sequential": hf["sequential"][c], "hf_batched": hf["batched"][c]}
        bound = hf["ceilings"][c]
        rows.append({"concurrency": c, "images_per_s": rates, "ceiling": bound, "ours_share_of_ceiling": rates["ours"] / bound["images_per_s"]})
        print(f"{c:>11} {rates['ours']:>11.3f} {rows[-1]['ours_share_of_ceiling']:>8.0%} {rates['hf_sequential']:>13.3f}"
              f" {rates['hf_batched']:>15.3f} {rates['ours'] / rates['hf_sequential']:>6.2f}x"
              f" {rates['ours'] / rates['hf_batched']:>8.2f}x {bound['images_per_s']:>14.3f}")
    peaks = {"after ours": ours["peak_rss_gib"], "after hf": hf["peak_rss_gib"]}
    print("peak RSS GiB: " + "  ".join(f"{k} {v}" for k, v in peaks.items()))
    results = {"bench": "draw", "checkpoint": str(args.model), "dtype": args.dtype, "threads": torch.get_num_threads(),
               "codes_per_image": ours["codes"], "guidance": GUIDANCE, "images": rows, "peak_rss_gib": peaks}
    groups = {f"c={r['concurrency']}": {"ours": r["images_per_s"]["ours"], "hf sequential": r["images_per_s"]["hf_sequential"],
                                        "hf batched": r["images_per_s"]["hf_batched"], "ceiling (weight pass)": r["ceiling"]["images_per_s"]}
              for r in rows}
    title = f"bench draw: images/s, {Path(args.model).name}, {args.dtype}, {torch.get_num_threads()} threads"
    write_report(args, results, draw_bars(title, "images/s", groups))
