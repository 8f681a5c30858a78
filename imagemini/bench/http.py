"""`imagemini bench http`: tokens streamed through the HTTP server vs the engine alone.

Same checkpoint, same prompts, same token counts. The engine figure is measured in this
process with `Engine.generate`; the HTTP figure starts `imagemini serve` as a subprocess and
streams `c` concurrent chat completions through it with httpx (SSE parsed as a client would),
counting tokens from the final usage chunk. The ratio is what serving over HTTP costs.

The server's engine process runs on fewer torch threads than this process (one core is left
to HTTP), so the engine is also timed alone at the server's thread count: http over that
figure is the HTTP layer's own cost, the rest is the core the HTTP side takes.

A small VM's speed wanders by ±15% from one minute to the next, more than the effect measured,
so the three timings take turns `--repeats` times and each keeps its best (as `bench draw` does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

from imagemini.bench.text import PROMPTS, _prompts, bench_engine, add_arguments as _text_arguments
from imagemini.engine.engine import Engine, EngineConfig
from imagemini.models import random_fixture


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sse_chunk(line: str) -> dict | None:
    """One line of a chat completion stream -> its chunk; None for blank lines and `[DONE]`."""
    if not line.startswith("data: ") or line == "data: [DONE]":
        return None
    return json.loads(line[6:])


@contextlib.contextmanager
def served(path: Path | str, dtype: str, engine_threads: int | None = None):
    """`imagemini serve --model path` as a subprocess, ready: yields (base URL, model id)."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "imagemini.cli", "serve", "--model", str(path), "--port", str(port), "--dtype", dtype,
         *(["--engine-threads", str(engine_threads)] if engine_threads else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "IMAGEMINI_LOG_LEVEL": "warning"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                models = httpx.get(f"{base}/v1/models", timeout=1).json()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"imagemini serve --model {path} did not answer in 60 s")
        yield base, models["data"][0]["id"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def add_arguments(p: argparse.ArgumentParser) -> None:
    _text_arguments(p)
    p.add_argument("--engine-threads", type=int, default=None, help="passed to `imagemini serve`")
    p.add_argument("--repeats", type=int, default=3, help="turns of the three timings (the best of each is kept)")


def main(args: argparse.Namespace) -> dict[int, dict[str, float]]:
    """Print and return, per concurrency, the best tokens/s of each timing."""
    path = args.model or random_fixture.cached_small()
    engine = Engine.from_checkpoint(path, EngineConfig(dtype=args.dtype))
    threads = torch.get_num_threads()
    server_threads = args.engine_threads or max(1, len(os.sched_getaffinity(0)) - 1)  # serve's default
    eos = engine.tokenizer.special.eos
    results: dict[int, dict[str, float]] = {}
    with served(path, args.dtype, args.engine_threads) as (base, model_id):
        print(f"checkpoint {path}  dtype {args.dtype}  new tokens/request {args.max_tokens}  "
              f"threads: here {threads}, server's engine {server_threads}  best of {args.repeats}")
        print(f"{'concurrency':>11} {'engine tok/s':>13} {f'@{server_threads} threads':>13} {'http tok/s':>11} "
              f"{'http/engine':>12} {f'@{server_threads} threads':>13}")
        for c in args.concurrency:
            alone = alone_as_served = http = 0.0
            for _ in range(args.repeats):
                # The engine alone runs while the idle server waits: same machine load for both.
                alone = max(alone, bench_engine(engine, _prompts(engine, c), args.max_tokens))
                torch.set_num_threads(server_threads)
                alone_as_served = max(alone_as_served, bench_engine(engine, _prompts(engine, c), args.max_tokens))
                torch.set_num_threads(threads)
                http = max(http, asyncio.run(_bench_http(base, c, args.max_tokens, eos, model_id)))
            print(f"{c:>11} {alone:>13.1f} {alone_as_served:>13.1f} {http:>11.1f} {http / alone:>11.0%} "
                  f"{http / alone_as_served:>12.0%}", flush=True)
            results[c] = {"engine": alone, "engine_as_served": alone_as_served, "http": http}
    return results


async def _bench_http(base: str, concurrency: int, max_tokens: int, eos: int, model_id: str) -> float:
    url = f"{base}/v1/chat/completions"

    async def one(client, prompt, n):
        body = {
            "model": model_id, "messages": [{"role": "user", "content": prompt}], "stream": True,
            "max_completion_tokens": n, "temperature": 0, "logit_bias": {str(eos): -100},
        }
        tokens = 0
        async with client.stream("POST", url, json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                chunk = sse_chunk(line)
                if chunk is not None and chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        return tokens

    async with httpx.AsyncClient(timeout=300) as client:
        await one(client, PROMPTS[0], 4)
        start = time.perf_counter()
        counts = await asyncio.gather(*[one(client, PROMPTS[i % len(PROMPTS)], max_tokens) for i in range(concurrency)])
        elapsed = time.perf_counter() - start
    if not all(c == max_tokens for c in counts):
        raise RuntimeError(f"streams returned {counts} tokens, expected {max_tokens} each")
    return sum(counts) / elapsed
