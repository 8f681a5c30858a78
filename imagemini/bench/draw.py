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
loaded one after the other, each freed before the next. Each is warmed up before it is timed:
on a CPU with a whole image, since oneDNN builds a kernel for each attention shape on its first
use and an image's steps attend over ever longer contexts; on a GPU, where kernels are not built
per shape, with a few steps and one VQ decode (an image at Janus-Pro-7B's size takes seconds).
`--sequential-prompts K` times only the first K prompts alone for `hf sequential` (cycled).

`--device cuda[:N]` runs both there (device.py: every timing waits for the device). Then, and
with `--bandwidth` on a CPU, the device's memory bandwidth is measured first and every figure is
also given as a share of the decode limit it sets (ceiling.py): c / (codes x weight bytes /
bandwidth) images/s, with our engine's synchronisations a step.
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

import torch

from imagemini.engine.engine import DTYPES, Engine, EngineConfig
from imagemini.engine.params import SamplingParams
from imagemini.models.tokenizer import Tokenizer

from . import device_report
from .ceiling import ceiling, decode_limit, decoder_linears, memory_bandwidth, weight_bytes
from .device import (add_device_arguments, engine_counters, engine_steps, free_device_memory, is_cuda, measures_bandwidth,
                     peak_device_gib, per_step, reset_peak_memory, timed)
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
WARM_UP_STEPS = 8
PREFILL_STEPS = 4  # steps left out of the sync debug pass: the prompts' prefill


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=Path(__file__).parents[1] / "models" / "bundled")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per setting (the best is kept)")
    p.add_argument("--sequential-prompts", type=int, default=len(PROMPTS),
                   help="distinct prompts timed alone for `hf sequential` (cycled over the c requests)")
    p.add_argument("--partial-images", type=int, choices=[1, 2, 3], default=None,
                   help="instead: time per picture through `imagemini serve` streams with this many previews vs none "
                        "(bench/draw_previews.py)")
    add_device_arguments(p)
    add_report_arguments(p)


def draw_prompts(tok: Tokenizer, concurrency: int) -> list[list[int]]:
    return [
        tok.encode(tok.render_chat([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}])) + [tok.special.boi]
        for i in range(concurrency)
    ]


def _image_params(engine: Engine) -> SamplingParams:
    return SamplingParams(max_tokens=engine.num_image_tokens + 1, temperature=0.0, image_output=True, guidance_scale=GUIDANCE)


def _draw(engine: Engine, prompts: list[list[int]]) -> list[torch.Tensor]:
    results = engine.generate(prompts, _image_params(engine))
    return [engine.model.decode_image_pixels(r["images"][0]) for r in results]


def run_engine(engine: Engine, prompts: list[list[int]]) -> dict:
    """Images/s of drawing `prompts` at once, pixels included, and the engine's host reads a step."""
    before = engine_counters(engine)
    elapsed, pixels = timed(engine.config.device, _draw, engine, prompts)
    after = engine_counters(engine)
    assert len(pixels) == len(prompts)
    return {"images_per_s": len(prompts) / elapsed, "host_reads_per_step": per_step(before, after)}


def bench_engine(engine: Engine, prompts: list[list[int]]) -> float:
    return run_engine(engine, prompts)["images_per_s"]


def warm_up_engine(engine: Engine, prompt: list[int]) -> None:
    """A whole image on a CPU; on a GPU a few steps of one (prefill, guided steps) and one VQ decode."""
    if not is_cuda(engine.config.device):
        _draw(engine, [prompt])
        return
    engine_steps(engine, [prompt], _image_params(engine), WARM_UP_STEPS)
    engine.model.decode_image_pixels([0] * engine.num_image_tokens)


def _device_ids(model, prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    return ids, mask


def _hf_draw(model, prompts: list[list[int]], pad_id: int) -> int:
    ids, mask = _device_ids(model, prompts, pad_id)
    codes = model.generate(ids, attention_mask=mask, generation_mode="image", do_sample=False,
                           guidance_scale=GUIDANCE, pad_token_id=pad_id)
    return model.decode_image_tokens(codes).shape[0]


def bench_hf(model, prompts: list[list[int]], pad_id: int) -> float:
    """Images/s of one left-padded `generate(generation_mode="image")` for all `prompts`."""
    seconds, images = timed(model.device, _hf_draw, model, prompts, pad_id)
    assert images == len(prompts)
    return images / seconds


def warm_up_hf(model, prompt: list[int], pad_id: int, codes: int) -> None:
    """A whole image on a CPU; on a GPU a few text steps of the decoder and one VQ decode."""
    if not is_cuda(model.device):
        _hf_draw(model, [prompt], pad_id)
        return
    ids, mask = _device_ids(model, [prompt], pad_id)
    model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=pad_id)
    model.decode_image_tokens(torch.zeros(1, codes, dtype=torch.long, device=model.device))


def engine_phase(args: argparse.Namespace, prompts: dict[int, list[list[int]]]) -> dict:
    reset_peak_memory(args.device)
    engine = Engine.from_checkpoint(args.model, EngineConfig(dtype=args.dtype, device=args.device))
    warm_up_engine(engine, prompts[min(prompts)][0])
    runs = {c: max((run_engine(engine, p) for _ in range(args.repeats)), key=lambda r: r["images_per_s"])
            for c, p in prompts.items()}
    result = {"images_per_s": {c: r["images_per_s"] for c, r in runs.items()},
              "host_reads_per_step": {c: r["host_reads_per_step"] for c, r in runs.items()},
              "codes": engine.num_image_tokens, "peak_rss_gib": peak_rss_gib()}
    if is_cuda(args.device):
        c = max(prompts)
        result["sync_debug"] = {"concurrency": c, **engine_steps(engine, prompts[c], _image_params(engine), count=True,
                                                                 skip=PREFILL_STEPS)}
        result["peak_gpu_gib"] = peak_device_gib(args.device)
    weights = device_report.weights_device(engine.model)
    del engine
    gc.collect()
    free_device_memory(args.device)
    device_report.progress(f"ours, weights on {weights}", result["images_per_s"], "img/s")
    return result


def _bounds(linears, prompts: dict, codes: int, bandwidth: dict | None) -> dict:
    """The ceilings at 2c rows a step, as images/s; with `bandwidth` the decode limits too."""
    bounds: dict = {"ceilings": {}}
    for c in prompts:
        bound = ceiling(linears, 2 * c)
        bounds["ceilings"][c] = {**bound, "images_per_s": bound["tokens_per_s"] / 2 / codes}
    if bandwidth is not None:
        bounds["weight_bytes"] = weight_bytes(linears)
        limits = {c: decode_limit(bounds["weight_bytes"], bandwidth["gb_s"], 2 * c) for c in {1, *prompts}}
        bounds["limits"] = {c: {**v, "images_per_s": v["tokens_per_s"] / 2 / codes} for c, v in limits.items()}
    return bounds


def hf_phase(args: argparse.Namespace, prompts: dict[int, list[list[int]]], pad: int, codes: int,
             bandwidth: dict | None = None) -> dict:
    import transformers

    transformers.logging.set_verbosity_error()
    reset_peak_memory(args.device)
    hf = transformers.JanusForConditionalGeneration.from_pretrained(args.model, dtype=DTYPES[args.dtype])
    hf = hf.to(args.device).eval()
    warm_up_hf(hf, prompts[min(prompts)][0], pad, codes)
    distinct = min(args.sequential_prompts, len(PROMPTS))
    widest = prompts[max(prompts)]
    alone = [1 / max(bench_hf(hf, [p], pad) for _ in range(args.repeats)) for p in widest[:distinct]]  # s/image
    sequential = {c: c / sum(alone[i % distinct] for i in range(c)) for c in prompts}
    batched = {c: max(bench_hf(hf, p, pad) for _ in range(args.repeats)) if c > 1 else sequential[c] for c, p in prompts.items()}
    result = {"sequential": sequential, "batched": batched, **_bounds(decoder_linears(hf, "image"), prompts, codes, bandwidth),
              "peak_rss_gib": peak_rss_gib()}
    if is_cuda(args.device):
        result["peak_gpu_gib"] = peak_device_gib(args.device)
    del hf
    gc.collect()
    free_device_memory(args.device)
    device_report.progress("transformers batched", batched, "img/s")
    return result


def image_rows(args: argparse.Namespace, ours: dict, hf: dict) -> list[dict]:
    """Per concurrency: each side's images/s, the ceiling and our share of it; where the run
    measured the bandwidth, each side's share of the decode limit (hf sequential: one image's)."""
    rows = []
    for c in args.concurrency:
        rates = {"ours": ours["images_per_s"][c], "hf_sequential": hf["sequential"][c], "hf_batched": hf["batched"][c]}
        bound = hf["ceilings"][c]
        row = {"concurrency": c, "images_per_s": rates, "ceiling": bound, "ours_share_of_ceiling": rates["ours"] / bound["images_per_s"],
               "host_reads_per_step": {"ours": ours["host_reads_per_step"][c]}}
        if "limits" in hf:
            limit = hf["limits"][c]
            row["bandwidth_limit"] = limit
            row["share_of_bandwidth_limit"] = {
                "ours": rates["ours"] / limit["images_per_s"], "hf_sequential": rates["hf_sequential"] / hf["limits"][1]["images_per_s"],
                "hf_batched": rates["hf_batched"] / limit["images_per_s"], "ceiling": bound["images_per_s"] / limit["images_per_s"]}
        rows.append(row)
    return rows


@torch.no_grad()  # not set_grad_enabled(False): a caller in the same process keeps its own mode
def main(args: argparse.Namespace) -> dict | None:
    if args.partial_images:
        from .draw_previews import preview_cost

        return preview_cost(args)
    tok = Tokenizer.from_dir(args.model)
    prompts = {c: draw_prompts(tok, c) for c in args.concurrency}
    bandwidth = memory_bandwidth(args.device) if measures_bandwidth(args) else None
    ours = engine_phase(args, prompts)
    hf = hf_phase(args, prompts, tok.special.pad, ours["codes"], bandwidth)
    print(f"checkpoint {args.model}  dtype {args.dtype}  codes/image {ours['codes']}  "
          f"guidance {GUIDANCE}  threads {torch.get_num_threads()}{device_report.device_note(args.device)}")
    rows = image_rows(args, ours, hf)
    print_images(rows)
    peaks = {"after ours": ours["peak_rss_gib"], "after hf": hf["peak_rss_gib"]}
    print("peak RSS GiB: " + "  ".join(f"{k} {v}" for k, v in peaks.items()))
    results = {"bench": "draw", "checkpoint": str(args.model), "dtype": args.dtype, "threads": torch.get_num_threads(),
               "device": args.device, "codes_per_image": ours["codes"], "guidance": GUIDANCE, "images": rows,
               "peak_rss_gib": peaks, **device_report.device_figures({"ours": ours, "hf": hf}, bandwidth, hf.get("weight_bytes"))}
    device_report.print_draw(results)
    write_report(args, results, draw_bars(_title(args), "images/s", _chart_groups(rows)))


def print_images(rows: list[dict]) -> None:
    print(f"{'concurrency':>11} {'ours img/s':>11} {'of ceil':>8} {'hf seq img/s':>13} {'hf batch img/s':>15} {'vs seq':>7}"
          f" {'vs batch':>9} {'ceiling img/s':>14}")
    for r in rows:
        rates, bound = r["images_per_s"], r["ceiling"]
        print(f"{r['concurrency']:>11} {rates['ours']:>11.3f} {r['ours_share_of_ceiling']:>8.0%} {rates['hf_sequential']:>13.3f}"
              f" {rates['hf_batched']:>15.3f} {rates['ours'] / rates['hf_sequential']:>6.2f}x"
              f" {rates['ours'] / rates['hf_batched']:>8.2f}x {bound['images_per_s']:>14.3f}")


def _chart_groups(rows: list[dict]) -> dict[str, dict[str, float]]:
    groups = {}
    for r in rows:
        group = {"ours": r["images_per_s"]["ours"], "hf sequential": r["images_per_s"]["hf_sequential"],
                 "hf batched": r["images_per_s"]["hf_batched"], "ceiling (weight pass)": r["ceiling"]["images_per_s"]}
        if "bandwidth_limit" in r:
            group["decode limit (bandwidth)"] = r["bandwidth_limit"]["images_per_s"]
        groups[f"c={r['concurrency']}"] = group
    return groups


def _title(args: argparse.Namespace) -> str:
    where = device_report.device_name(args.device) if is_cuda(args.device) else f"{torch.get_num_threads()} threads"
    return f"bench draw: images/s, {Path(args.model).name}, {args.dtype}, {where}"
