"""`imagemini bench prefix`: what the prefix cache saves on a chat's second turn.

    imagemini bench prefix [--model DIR] [--dtype bfloat16] [--history-tokens 2000] [--repeats 3]

The engine alone, in this process: a first turn whose prompt is a history of about
`--history-tokens` tokens is answered; the time to the first token of the second turn (that
history, the answer and a new question) is then measured on an engine without the cache (cold)
and on the one that answered the first turn (cached). Median of `--repeats` conversations, each
with its own history. A checkpoint whose context is shorter than the second turn is run from a
copy with a longer one (RoPE takes any length; the timing, not the text, is what counts here).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from imagemini.engine.engine import Engine, EngineConfig
from imagemini.engine.params import SamplingParams
from imagemini.models import random_fixture

WORDS = "red green blue yellow circle square triangle cross top left right bottom center small large".split()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: random fixture, small size)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--history-tokens", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)


def with_context(path: Path, tokens: int, tmp: Path) -> Path:
    """`path`, or a copy (weights linked) whose context holds `tokens`."""
    config = json.loads((path / "config.json").read_text())
    if config["text_config"]["max_position_embeddings"] >= tokens:
        return path
    copy = tmp / path.name
    copy.mkdir()
    for f in path.iterdir():
        if f.name != "config.json":
            (copy / f.name).symlink_to(f.resolve())
    config["text_config"]["max_position_embeddings"] = tokens
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def history(engine: Engine, tokens: int, seed: int) -> list[dict]:
    """Alternating turns of shapes-world words until the rendered chat holds about `tokens`."""
    rng, messages = random.Random(seed), []
    tok = engine.tokenizer
    while len(tok.encode(tok.render_chat(messages or [{"role": "user", "content": ""}]))) < tokens:
        role = "user" if len(messages) % 2 == 0 else "assistant"
        messages.append({"role": role, "content": " ".join(rng.choice(WORDS) for _ in range(40))})
    if messages[-1]["role"] == "assistant":
        messages.append({"role": "user", "content": "And the next one?"})
    return messages


def first_token(engine: Engine, prompt: list[int]) -> tuple[float, int]:
    """Seconds to the first token of `prompt`, and the prompt tokens it read from the cache."""
    start = time.perf_counter()
    result = engine.generate([prompt], SamplingParams(max_tokens=1, temperature=0))[0]
    return time.perf_counter() - start, result["num_cached_tokens"]


@torch.no_grad()  # not set_grad_enabled(False): a caller in the same process keeps its own mode
def main(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = with_context(args.model or random_fixture.cached_small(), 2 * args.history_tokens + 256, Path(tmp))
        cached = Engine.from_checkpoint(path, EngineConfig(dtype=args.dtype))
        cold = Engine.from_checkpoint(path, EngineConfig(dtype=args.dtype, prefix_cache_tokens=0))
    tok = cached.tokenizer
    render = lambda messages: tok.encode(tok.render_chat(messages))  # noqa: E731
    first_token(cold, render(history(cold, 64, seed=-1)))  # warm-up: first calls pay one-off costs
    times: dict[str, list[float]] = {"cold": [], "cached": []}
    reused = []
    for seed in range(args.repeats):
        messages = history(cached, args.history_tokens, seed)
        reply = cached.generate([render(messages)], SamplingParams(max_tokens=16, seed=seed))[0]["text"]
        second = render(messages + [{"role": "assistant", "content": reply}, {"role": "user", "content": "Why?"}])
        for name, engine in (("cold", cold), ("cached", cached)):
            seconds, cached_tokens = first_token(engine, second)
            times[name].append(seconds)
        reused.append(cached_tokens)
    cold_s, cached_s = statistics.median(times["cold"]), statistics.median(times["cached"])
    print(f"checkpoint {path.name}  dtype {args.dtype}  second turn {len(second)} tokens  "
          f"prefill chunk {cached.config.scheduler.prefill_chunk}  threads {torch.get_num_threads()}")
    print(f"time to first token: cold {cold_s * 1000:.0f} ms, cached {cached_s * 1000:.0f} ms "
          f"({cold_s / cached_s:.1f}x faster; {min(reused)} prompt tokens from the cache), median of {args.repeats}")
    return {"cold_s": cold_s, "cached_s": cached_s, "prompt_tokens": len(second), "cached_tokens": reused}
