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

`--ledger`: what keys and the ledger cost. Two servers side by side, one without a store, one
with an SQLite store (--data-dir) called with a key that has a credit limit, so that every
request is authenticated, reserves its worst case, and commits its ledger row before [DONE];
tokens/s and p50 request latency of each, taking turns as above.

`--replicas 1 2`: what scaling out costs and gives. A lone server (`imagemini serve`), then
`imagemini serve --replicas N` on a local Ray cluster for each N, one after the other (each Ray
server needs the machine's cores), all with the same engine threads per replica; `--requests`
streams at each concurrency through each: tokens/s, tokens/s per replica and per engine thread,
p50/p99 request latency. Ray at 1 replica over the lone server is the proxy's cost; tokens/s per
engine thread is what predicts N machines (docs/ray/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from imagemini.bench.text import PROMPTS, _prompts, bench_engine, add_run_arguments as _text_arguments
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
def served(path: Path | str, dtype: str, engine_threads: int | None = None, *extra: str, key: str | None = None):
    """`imagemini serve --model path [extra]` as a subprocess, ready: yields (base URL, model id)."""
    with served_process(path, dtype, engine_threads, *extra, key=key) as (base, model_id, _):
        yield base, model_id


@contextlib.contextmanager
def served_process(path: Path | str, dtype: str, engine_threads: int | None = None, *extra: str,
                   key: str | None = None, log: Path | None = None, start_timeout_s: float = 60.0):
    """As `served`, also yielding the server's process; its output goes to `log` (if given)."""
    port = _free_port()
    output = open(log, "wb") if log else subprocess.DEVNULL
    server = subprocess.Popen(
        [sys.executable, "-m", "imagemini.cli", "serve", "--model", str(path), "--port", str(port), "--dtype", dtype,
         *(["--engine-threads", str(engine_threads)] if engine_threads else []), *extra],
        stdout=output, stderr=output, env=_server_env(),
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + start_timeout_s
    try:
        while True:
            try:
                models = httpx.get(f"{base}/v1/models", timeout=1, headers=_auth(key)).json()
                break
            except (httpx.HTTPError, ValueError):  # not listening yet, or Ray's proxy before the app is up
                if time.monotonic() > deadline:
                    raise RuntimeError(f"imagemini serve --model {path} did not answer in {start_timeout_s:.0f} s") from None
                time.sleep(0.1)
        yield base, models["data"][0]["id"], server
    finally:
        server.terminate()
        server.wait(timeout=30)
        if log:
            output.close()


def _server_env() -> dict[str, str]:
    """Quiet, and with this `imagemini` importable by Ray's workers whatever their directory."""
    checkout = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "IMAGEMINI_LOG_LEVEL": "warning", "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")]))}


def add_arguments(p: argparse.ArgumentParser) -> None:
    _text_arguments(p)
    p.add_argument("--engine-threads", type=int, default=None, help="passed to `imagemini serve`")
    p.add_argument("--repeats", type=int, default=3, help="turns of the three timings (the best of each is kept)")
    p.add_argument("--ledger", action="store_true",
                   help="instead: tokens/s and p50 latency with keys and the SQLite ledger on vs off")
    p.add_argument("--replicas", type=int, nargs="+", default=None,
                   help="instead: a lone server, then `serve --replicas N` for each N (Ray): tokens/s, p50/p99 latency")
    p.add_argument("--requests", type=int, default=32, help="with --replicas: streams per concurrency and server")


def main(args: argparse.Namespace) -> dict[int, dict[str, float]]:
    """Print and return, per concurrency, the best tokens/s of each timing (with --ledger: the
    ledger's cost instead, `ledger_cost`)."""
    if args.ledger:
        return ledger_cost(args)
    if args.replicas:
        return replica_scaling(args)
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
                http = max(http, asyncio.run(_bench_http(base, c, args.max_tokens, eos, model_id))[0])
            print(f"{c:>11} {alone:>13.1f} {alone_as_served:>13.1f} {http:>11.1f} {http / alone:>11.0%} "
                  f"{http / alone_as_served:>12.0%}", flush=True)
            results[c] = {"engine": alone, "engine_as_served": alone_as_served, "http": http}
    return results


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def ledger_cost(args: argparse.Namespace) -> dict[int, dict[str, float]]:
    """Per concurrency: best tokens/s and p50 latency (s) without a store ("off") and with keys
    and the SQLite ledger ("on")."""
    from imagemini.store.store import Store, database_url

    path = args.model or random_fixture.cached_small()
    eos = Engine.from_checkpoint(path, EngineConfig(dtype=args.dtype)).tokenizer.special.eos
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as data_dir:

        async def make_key() -> str:
            store = Store(database_url(data_dir=Path(data_dir)))
            await store.migrate()
            secret, _ = await store.create_key("bench", limit_nanos=10**15)  # a limit: reservations run too
            await store.close()
            return secret

        key = asyncio.run(make_key())
        with served(path, args.dtype, args.engine_threads) as (off, model_id), \
                served(path, args.dtype, args.engine_threads, "--data-dir", data_dir, key=key) as (on, _):
            print(f"keys and ledger: checkpoint {path}  new tokens/request {args.max_tokens}  best of {args.repeats}")
            print(f"{'concurrency':>11} {'off tok/s':>10} {'on tok/s':>10} {'on/off':>7} {'off p50 ms':>11} {'on p50 ms':>10}")
            for c in args.concurrency:
                row = {"off": 0.0, "on": 0.0, "off_p50": float("inf"), "on_p50": float("inf")}
                for _ in range(args.repeats):
                    for name, base, secret in (("off", off, None), ("on", on, key)):
                        rate, p50 = asyncio.run(_bench_http(base, c, args.max_tokens, eos, model_id, secret))
                        row[name], row[f"{name}_p50"] = max(row[name], rate), min(row[f"{name}_p50"], p50)
                print(f"{c:>11} {row['off']:>10.1f} {row['on']:>10.1f} {row['on'] / row['off']:>7.1%} "
                      f"{row['off_p50'] * 1000:>11.1f} {row['on_p50'] * 1000:>10.1f}", flush=True)
                results[c] = row
    return results


async def _bench_http(
    base: str, concurrency: int, max_tokens: int, eos: int, model_id: str, key: str | None = None
) -> tuple[float, float]:
    """(tokens/s, p50 request latency in s) of `concurrency` streams at once."""
    rate, latencies = await _stream_load(base, concurrency, concurrency, max_tokens, eos, model_id, key)
    return rate, statistics.median(latencies)


async def _stream_load(
    base: str, concurrency: int, requests: int, max_tokens: int, eos: int, model_id: str, key: str | None = None
) -> tuple[float, list[float]]:
    """(tokens/s, each request's latency in s) of `requests` streams, `concurrency` at a time."""
    url = f"{base}/v1/chat/completions"
    slots = asyncio.Semaphore(concurrency)

    async def one(client, prompt, n):
        body = {
            "model": model_id, "messages": [{"role": "user", "content": prompt}], "stream": True,
            "max_completion_tokens": n, "temperature": 0, "logit_bias": {str(eos): -100},
        }
        tokens, began = 0, time.perf_counter()
        async with client.stream("POST", url, json=body, headers=_auth(key)) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                chunk = sse_chunk(line)
                if chunk is not None and chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        return tokens, time.perf_counter() - began

    async def in_turn(client, prompt):
        async with slots:
            return await one(client, prompt, max_tokens)

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency + 1)) as client:
        await one(client, PROMPTS[0], 4)
        start = time.perf_counter()
        done = await asyncio.gather(*[in_turn(client, PROMPTS[i % len(PROMPTS)]) for i in range(requests)])
        elapsed = time.perf_counter() - start
    counts = [tokens for tokens, _ in done]
    if not all(c == max_tokens for c in counts):
        raise RuntimeError(f"streams returned {counts} tokens, expected {max_tokens} each")
    return sum(counts) / elapsed, [latency for _, latency in done]


def replica_scaling(args: argparse.Namespace) -> dict[str, dict[int, dict[str, float]]]:
    """Per server ("lone", "ray1", "ray2", ...) and concurrency: tokens/s, per replica and per
    engine thread, and p50/p99 latency (s), best of `--repeats` (tokens/s highest, latencies lowest)."""
    path = args.model or random_fixture.cached_small()
    eos = Engine.from_checkpoint(path, EngineConfig(dtype=args.dtype)).tokenizer.special.eos
    cores = len(os.sched_getaffinity(0))
    threads = args.engine_threads or max(1, cores // max(args.replicas) - 1)  # what each replica gets
    print(f"replicas: checkpoint {path}  new tokens/request {args.max_tokens}  {args.requests} requests per "
          f"concurrency  {threads} engine thread(s) per replica  {cores} cores  best of {args.repeats}")
    print(f"{'server':>7} {'concurrency':>11} {'tok/s':>8} {'/replica':>9} {'/thread':>8} {'p50 ms':>8} {'p99 ms':>8}")
    results: dict[str, dict[int, dict[str, float]]] = {}
    for replicas in [0, *args.replicas]:  # 0: the lone server
        name = f"ray{replicas}" if replicas else "lone"
        extra = ("--replicas", str(replicas)) if replicas else ()
        with served_process(path, args.dtype, threads, *extra, start_timeout_s=300.0) as (base, model_id, _):
            _wait_for_replicas(base, replicas)
            results[name] = {}
            for c in args.concurrency:
                row = {"tok_s": 0.0, "p50_s": float("inf"), "p99_s": float("inf")}
                for _ in range(args.repeats):
                    rate, latencies = asyncio.run(_stream_load(base, c, args.requests, args.max_tokens, eos, model_id))
                    ranked = statistics.quantiles(latencies, n=100, method="inclusive")
                    row = {"tok_s": max(row["tok_s"], rate), "p50_s": min(row["p50_s"], statistics.median(latencies)),
                           "p99_s": min(row["p99_s"], ranked[98])}
                row["tok_s_per_replica"] = row["tok_s"] / max(1, replicas)
                row["tok_s_per_thread"] = row["tok_s_per_replica"] / threads
                print(f"{name:>7} {c:>11} {row['tok_s']:>8.1f} {row['tok_s_per_replica']:>9.1f} "
                      f"{row['tok_s_per_thread']:>8.1f} {row['p50_s'] * 1000:>8.0f} {row['p99_s'] * 1000:>8.0f}", flush=True)
                results[name][c] = row
    return results


def _wait_for_replicas(base: str, replicas: int, timeout_s: float = 300.0) -> None:
    """Until `replicas` Ray replicas have answered /health (the proxy answers once ONE is up)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < replicas:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)} of {replicas} replicas answered in {timeout_s:.0f} s")
        health = httpx.get(f"{base}/health", timeout=30)
        if health.status_code == 200:
            seen.add(health.headers["x-imagemini-replica"])
        time.sleep(0.05)
