"""`imagemini bench structured`: decode throughput with and without a JSON schema, and what the
grammar mask costs per token, in one run on one engine.

For each concurrency c, c requests decode together, greedy, exactly `--max-tokens` tokens each:
- `plain`: no schema (EOS suppressed, as in `bench text`);
- `schema`: response_format json_schema = an unbounded array of shapes-world objects (enums,
  bounded integers, a patterned string, a nested array), so that every answer stays inside the
  grammar for all its tokens (EOS and every token holding "]" are suppressed by logit_bias).
Mask cost = wall time spent computing the per-row bitmasks (llguidance), applying them to the
logits and advancing the matchers, per constrained token; its share is of the schema run's time.
Grammar compilation (once, cached) is reported apart: in the server it runs in a worker thread.
The two runs alternate `REPEATS` times and the best of each is kept (a shared CPU is noisy); the
mask cost is the median over the schema runs.
"""

from __future__ import annotations

import argparse
import time

import torch

from imagemini.engine import structured
from imagemini.engine.engine import Engine, EngineConfig
from imagemini.engine.params import SamplingParams
from imagemini.models import random_fixture
from imagemini.world.scene import COLORS, SHAPES, SIZES

from .text import _prompts, add_arguments as _text_arguments

REPEATS = 3

SCHEMA = {
    "type": "array",
    "items": {"$ref": "#/$defs/object"},
    "$defs": {"object": {
        "type": "object",
        "properties": {
            "shape": {"enum": list(SHAPES)},
            "color": {"enum": list(COLORS)},
            "size": {"enum": list(SIZES)},
            "cell": {"type": "integer", "minimum": 0, "maximum": 8},
            "id": {"type": "string", "pattern": "^[a-z]{2}[0-9]{2}$"},
            "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
        },
        "required": ["shape", "color", "size", "cell", "id"],
        "additionalProperties": False,
    }},
}


class MaskTimer:
    """Wraps the engine's mask building, the sampler's mask application and the matchers' consume."""

    def __init__(self, engine: Engine) -> None:
        self.seconds = 0.0
        self.rows = 0
        build, apply, consume = engine._row_masks, structured.RowMasks.apply, structured.GrammarMatcher.consume
        timer = self

        def timed_build(seqs):
            start = time.perf_counter()
            masks = build(seqs)
            timer.seconds += time.perf_counter() - start
            timer.rows += len(masks.rows) if masks is not None else 0
            return masks

        def timed_apply(self, logits):
            start = time.perf_counter()
            apply(self, logits)
            timer.seconds += time.perf_counter() - start

        def timed_consume(self, token):
            start = time.perf_counter()
            ok = consume(self, token)
            timer.seconds += time.perf_counter() - start
            return ok

        engine._row_masks = timed_build
        structured.RowMasks.apply = timed_apply
        structured.GrammarMatcher.consume = timed_consume

    def reset(self) -> None:
        self.seconds, self.rows = 0.0, 0


def run(engine: Engine, prompts: list[list[int]], params: SamplingParams) -> tuple[float, int]:
    start = time.perf_counter()
    results = engine.generate(prompts, params)
    elapsed = time.perf_counter() - start
    return elapsed, sum(len(r["token_ids"]) for r in results)


def add_arguments(p: argparse.ArgumentParser) -> None:
    _text_arguments(p)  # the same options as `bench text`


def main(args: argparse.Namespace) -> None:
    torch.set_grad_enabled(False)
    path = args.model or random_fixture.cached_small()
    engine = Engine.from_checkpoint(path, EngineConfig(dtype=args.dtype))
    tok = engine.tokenizer
    start = time.perf_counter()
    grammar = engine.grammars.compile(structured.json_grammar(SCHEMA))
    compile_ms = (time.perf_counter() - start) * 1e3  # includes the tokenizer tables (first use)
    start = time.perf_counter()
    engine.grammars.compile(structured.json_grammar({**SCHEMA, "description": "a second schema"}))
    second_ms = (time.perf_counter() - start) * 1e3
    eos = tok.special.eos
    closers = {i: -100.0 for i in range(tok.vocab_size) if b"]" in tok.token_bytes(i)}
    plain = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, logit_bias={eos: -100.0})
    constrained = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, logit_bias={eos: -100.0, **closers}, grammar=grammar)
    timer = MaskTimer(engine)
    engine.generate(_prompts(engine, 1), SamplingParams(max_tokens=4, grammar=grammar))  # warm-up
    print(f"checkpoint {path}  dtype {args.dtype}  vocab {engine.code_offset}  new tokens/request {args.max_tokens}  "
          f"threads {torch.get_num_threads()}")
    print(f"schema compile: {compile_ms:.1f} ms first (with tokenizer tables), {second_ms:.1f} ms next (cached after)")
    print(f"{'concurrency':>11} {'plain tok/s':>12} {'schema tok/s':>13} {'ratio':>6} {'mask us/token':>14} {'mask share':>11}")
    for c in args.concurrency:
        prompts = _prompts(engine, c)
        rates = {"plain": [], "schema": []}
        costs = []  # (us per constrained token, share of the run)
        for _ in range(REPEATS):
            seconds, tokens = run(engine, prompts, plain)
            rates["plain"].append(tokens / seconds)
            timer.reset()
            seconds, tokens = run(engine, prompts, constrained)
            rates["schema"].append(tokens / seconds)
            costs.append((timer.seconds / max(timer.rows, 1) * 1e6, timer.seconds / seconds))
        ours, theirs = max(rates["plain"]), max(rates["schema"])
        per_token, share = sorted(costs)[len(costs) // 2]
        print(f"{c:>11} {ours:>12.1f} {theirs:>13.1f} {theirs / ours:>6.2f} {per_token:>14.1f} {share:>10.1%}")
