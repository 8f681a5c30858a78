"""`imagemini bench picture`: how long a chat with a picture takes through the server.

    imagemini bench picture [--model DIR] [--plain] [--repeats 5] [--max-tokens 32]

One request at a time, streamed ("Describe the image." on a rendered shapes scene, greedy, a
fixed answer length): the time to the first token and to the last, median over `--repeats`,
for a new picture each time (encoder cache miss: decode, vision encoder and, on a checkpoint
with a source echo, the echo's VQ codes) and for the same picture sent again (hit). `--plain`
also serves the same weights without `echo.json` (a copy with plain Janus prompts), so the
echo's cost shows: its 258 prompt tokens and its encoding.
"""

from __future__ import annotations

import argparse
import base64
import io
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from imagemini.bench.http import served, sse_chunk
from imagemini.models.processor import ECHO_FILE, EchoConfig
from imagemini.models.tokenizer import Tokenizer
from imagemini.world import render, sample_scene


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=Path(__file__).parents[1] / "models" / "bundled")
    p.add_argument("--plain", action="store_true", help="also time the same weights without the source echo")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=32, help="answer length (its end of text suppressed)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")


def picture_url(seed: int) -> str:
    buffer = io.BytesIO()
    render(sample_scene(random.Random(seed)), 256, rng=seed).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def ask(client: httpx.Client, base: str, model_id: str, url: str, max_tokens: int, eos: int) -> dict:
    """One streamed request: seconds to the first token and to the end, and the usage."""
    body = {
        "model": model_id, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0,
        "max_completion_tokens": max_tokens, "logit_bias": {str(eos): -100},
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                  {"type": "text", "text": "Describe the image."}]}],
    }
    start, first, usage = time.perf_counter(), None, None
    with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            chunk = sse_chunk(line)
            if chunk is None:
                continue
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
            usage = chunk.get("usage") or usage
    return {"first_s": first, "total_s": time.perf_counter() - start, "usage": usage}


def bench_checkpoint(path: Path, args: argparse.Namespace) -> dict:
    eos = Tokenizer.from_dir(path).special.eos
    with served(path, args.dtype) as (base, model_id), httpx.Client(timeout=300) as client:
        ask(client, base, model_id, picture_url(-1), 4, eos)  # warm-up
        new = [ask(client, base, model_id, picture_url(i), args.max_tokens, eos) for i in range(args.repeats)]
        again = [ask(client, base, model_id, picture_url(0), args.max_tokens, eos) for _ in range(args.repeats)]
    timings = {f"{label}_{k}": statistics.median(r[k] for r in rows)
               for label, rows in (("new", new), ("again", again)) for k in ("first_s", "total_s")}
    return {"prompt_tokens": new[0]["usage"]["prompt_tokens"], "completion_tokens": new[0]["usage"]["completion_tokens"],
            **timings}


def main(args: argparse.Namespace) -> dict[str, dict]:
    echo = EchoConfig.from_dir(args.model) is not None
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"echo" if echo else "plain": args.model}
        if args.plain and echo:
            plain = Path(tmp) / "plain"
            shutil.copytree(args.model, plain, ignore=shutil.ignore_patterns(ECHO_FILE))
            runs["plain"] = plain
        print(f"checkpoint {args.model}  dtype {args.dtype}  one request at a time, {args.max_tokens} tokens each, "
              f"median of {args.repeats}")
        print(f"{'prompt':>6} {'prompt tokens':>14} {'new: first':>11} {'last':>8} {'again: first':>13} {'last':>8}")
        results = {}
        for label, path in runs.items():
            r = results[label] = bench_checkpoint(path, args)
            print(f"{label:>6} {r['prompt_tokens']:>14} {r['new_first_s'] * 1e3:>8.1f} ms {r['new_total_s'] * 1e3:>5.0f} ms "
                  f"{r['again_first_s'] * 1e3:>10.1f} ms {r['again_total_s'] * 1e3:>5.0f} ms", flush=True)
    return results
