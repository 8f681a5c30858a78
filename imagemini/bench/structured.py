"""`imagemini bench structured`: decode throughput with and without a JSON schema, and what the
grammar mask and the closing within the budget cost per token, in one run on one engine.

For each concurrency c, c requests decode together, greedy, `--max-tokens` tokens each:
- `plain`: no schema (EOS suppressed, as in `bench text`);
- `schema`: response_format json_schema = an unbounded array of shapes-world objects (enums,
  bounded integers, a patterned string, a nested array), so that every answer stays inside the
  grammar for all its tokens (EOS and every token holding "]" are suppressed by logit_bias),
  without the closing (EngineConfig.close_within_budget off: the answer is cut at the budget);
- `closing`: the same with the closing on (the default): every step checks that the answer can
  still close in the tokens left (GrammarMatcher.settle), and the last tokens close the array.
Mask cost = wall time spent computing the per-row bitmasks (llguidance), applying them to the
logits and advancing the matchers, per constrained token; closing cost = wall time in `settle`
per constrained token (closing.py's greedy walks); shares are of their run's time.
Grammar compilation (once, cached) is reported apart: in the server it runs in a worker thread.
The runs alternate `REPEATS` times and the best of each is kept (a shared CPU is noisy); the
costs are medians over the runs.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from imagemini.engine import structured
from imagemini.engine.engine import Engine, EngineConfig
from imagemini.engine.params import SamplingParams
from imagemini.models import random_fixture
from imagemini.world.scene import COLORS, SHAPES, SIZES

from .text import _prompts, add_run_arguments as _text_arguments

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
    """Wraps the engine's mask building, the sampler's mask application and the matchers'
    consume (`seconds`), and the matchers' settle (`closing_seconds`)."""

    def __init__(self, engine: Engine) -> None:
        self.seconds = self.closing_seconds = 0.0
        self.rows = 0
        build, apply = engine._row_masks, structured.RowMasks.apply
        consume, settle = structured.GrammarMatcher.consume, structured.GrammarMatcher.settle
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

        def timed_settle(self, token, tokens_left, stop_token):
            start = time.perf_counter()
            token = settle(self, token, tokens_left, stop_token)
            timer.closing_seconds += time.perf_counter() - start
            return token

        engine._row_masks = timed_build
        structured.RowMasks.apply = timed_apply
        structured.GrammarMatcher.consume = timed_consume
        structured.GrammarMatcher.settle = timed_settle

    def reset(self) -> None:
        self.seconds, self.closing_seconds, self.rows = 0.0, 0.0, 0

    def per_token_us(self, seconds: float) -> float:
        return seconds / max(self.rows, 1) * 1e6


def run(engine: Engine, prompts: list[list[int]], params: SamplingParams) -> tuple[float, int]:
    start = time.perf_counter()
    results = engine.generate(prompts, params)
    elapsed = time.perf_counter() - start
    return elapsed, sum(len(r["token_ids"]) for r in results)


def add_arguments(p: argparse.ArgumentParser) -> None:
    _text_arguments(p)  # the same options as `bench text`


@torch.no_grad()  # not set_grad_enabled(False): a caller in the same process keeps its own mode
def main(args: argparse.Namespace) -> None:
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
    print(f"{'concurrency':>11} {'plain tok/s':>12} {'schema tok/s':>13} {'closing tok/s':>14} {'mask us/token':>14} "
          f"{'closing us/token':>17} {'closing share':>14}")
    for c in args.concurrency:
        prompts = _prompts(engine, c)
        rates = {"plain": [], "schema": [], "closing": []}
        costs = []  # (mask us per constrained token, closing us per constrained token, closing share of the run)
        for _ in range(REPEATS):
            seconds, tokens = run(engine, prompts, plain)
            rates["plain"].append(tokens / seconds)
            for closing in (False, True):
                engine.config = replace(engine.config, close_within_budget=closing)
                timer.reset()
                seconds, tokens = run(engine, prompts, constrained)
                rates["closing" if closing else "schema"].append(tokens / seconds)
            costs.append((timer.per_token_us(timer.seconds), timer.per_token_us(timer.closing_seconds), timer.closing_seconds / seconds))
        mask_us = sorted(cost[0] for cost in costs)[len(costs) // 2]
        closing_us, share = sorted(cost[1:] for cost in costs)[len(costs) // 2]
        print(f"{c:>11} {max(rates['plain']):>12.1f} {max(rates['schema']):>13.1f} {max(rates['closing']):>14.1f} "
              f"{mask_us:>14.1f} {closing_us:>17.1f} {share:>13.1%}")
