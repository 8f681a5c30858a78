"""`imagemini bench draw --partial-images P`: what previews of a picture being drawn cost.

    imagemini bench draw --partial-images 3 [--model DIR] [--concurrency 1 8]

`imagemini serve` on the checkpoint, c streams at once, each drawing one picture greedily
(`modalities: ["image"]`), without previews and with P previews per picture
(`image_config.partial_images`), taking turns `--repeats` times. Through HTTP because that is
where previews are decoded (in the API process, while the engine process draws on). The figure is
the mean time from sending a request to its picture's `delta.images`, the median of the turns: on
a shared machine the best turn is the luckiest one, and a small cost drowns in the luck. Beside
it, the CPU seconds the server's processes (API and engine) spent per picture, which other load on
the machine moves much less (Linux: read from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

from imagemini.engine.engine import DTYPES
from imagemini.engine.params import preview_points
from imagemini.models.tokenizer import Tokenizer

from .draw import GUIDANCE, PROMPTS


def preview_cost(args: argparse.Namespace) -> dict[int, dict[str, float]]:
    """Print and return, per concurrency, the median seconds per picture without and with previews
    (wall: request to picture; cpu: the server's processes, API and engine, per picture)."""
    from imagemini.bench.http import served_process

    previews = args.partial_images
    eos = Tokenizer.from_dir(args.model).special.eos
    decode = _preview_decode_seconds(args.model, args.dtype, previews)
    results: dict[int, dict[str, float]] = {}
    with served_process(args.model, args.dtype) as (base, model_id, server):
        asyncio.run(_draw_streams(base, model_id, eos, 1, previews))  # warm: both paths, the decoder too
        print(f"checkpoint {args.model}  dtype {args.dtype}  previews {previews}  guidance {GUIDANCE}  "
              f"median of {args.repeats}, through imagemini serve")
        print(f"decoding a picture's {previews} previews on the server's preview thread alone: {decode:.3f} s")
        print(f"{'concurrency':>11} {'wall s/picture':>15} {f'with {previews}':>7} {'cost':>7} "
              f"{'cpu s/picture':>14} {f'with {previews}':>7} {'cost':>7}")
        for c in args.concurrency:
            turns: dict[tuple[str, int], list[float]] = {(k, asked): [] for k in ("wall", "cpu") for asked in (0, previews)}
            for _ in range(args.repeats):
                for asked in (0, previews):
                    cpu = _cpu_seconds(server.pid)
                    turns["wall", asked].append(asyncio.run(_draw_streams(base, model_id, eos, c, asked)))
                    turns["cpu", asked].append((_cpu_seconds(server.pid) - cpu) / c)
            median = {f"{k}_{asked}": statistics.median(times) for (k, asked), times in turns.items()}
            row = [f"{median[f'{k}_0']:>{w}.3f} {median[f'{k}_{previews}']:>7.3f} "
                   f"{median[f'{k}_{previews}'] / median[f'{k}_0'] - 1:>+7.1%}" for k, w in (("wall", 15), ("cpu", 14))]
            print(f"{c:>11} {' '.join(row)}", flush=True)
            results[c] = median
    return results


def _preview_decode_seconds(model_dir: Path, dtype: str, previews: int) -> float:
    """Median seconds to decode one picture's previews as the server does (api/previews.py), here."""
    from imagemini.api.previews import preview_png
    from imagemini.models.image_output import ImageWriter
    from imagemini.models.janus import load_janus

    writer = ImageWriter(load_janus(model_dir, DTYPES[dtype]))
    num_codes = writer.model.cfg.vq.num_patches ** 2
    codes = [(7 * i) % writer.model.cfg.vq.num_embeddings for i in range(num_codes)]
    preview_png(writer, codes[:1])  # warm
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for drawn in preview_points(num_codes, previews):
            preview_png(writer, codes[:drawn])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children (the server and its engine), from /proc."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    total = 0
    for each in [pid, *map(int, children)]:
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return total / os.sysconf("SC_CLK_TCK")


async def _draw_streams(base: str, model_id: str, eos: int, concurrency: int, previews: int) -> float:
    """Mean seconds from request to picture of `concurrency` streams at once, each drawing one
    picture and ending right after it (end-of-sequence biased up)."""
    import httpx

    from imagemini.bench.http import sse_chunk

    async def one(client: httpx.AsyncClient, prompt: str) -> float:
        config = {"guidance_scale": GUIDANCE, "partial_images": previews}
        body = {"model": model_id, "messages": [{"role": "user", "content": prompt}], "modalities": ["image"],
                "stream": True, "temperature": 0, "image_config": config, "logit_bias": {str(eos): 100}}
        began, drawn, seen = time.perf_counter(), None, 0
        async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                chunk = sse_chunk(line)
                delta = chunk["choices"][0]["delta"] if chunk and chunk["choices"] else {}
                seen += len(delta.get("image_previews") or [])
                if delta.get("images") and drawn is None:
                    drawn = time.perf_counter() - began
        if drawn is None or seen != previews:
            raise RuntimeError(f"a stream brought {seen} previews (asked {previews}) and {'a' if drawn else 'no'} picture")
        return drawn

    async with httpx.AsyncClient(timeout=600) as client:
        times = await asyncio.gather(*[one(client, PROMPTS[i % len(PROMPTS)]) for i in range(concurrency)])
    return sum(times) / len(times)
