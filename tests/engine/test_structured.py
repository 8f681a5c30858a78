"""Grammar masks and thought budgets in the engine, on the random fixture (which wants noise).

The grammar makes a noise model write valid JSON; a thought never runs past its budget and
always ends with the end-of-thinking token; both keep the seed guarantee in a mixed batch.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from imagemini.engine import structured
from imagemini.engine.engine import Engine, EngineConfig
from imagemini.engine.params import SamplingParams
from imagemini.engine.structured import GrammarError, check_json_schema, json_grammar

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "n": {"type": "integer", "minimum": -5, "maximum": 5},
                                      "tags": {"type": "array", "items": {"enum": ["a", "b", None]}, "maxItems": 3}},
     "required": ["name", "n"], "additionalProperties": False},
    {"type": "array", "items": {"type": "string", "pattern": "^[A-C]{2}-[0-9]{2}$"}, "minItems": 1, "maxItems": 2},
    {"anyOf": [{"type": "boolean"}, {"const": {"k": [1, "two"]}}, {"type": "string", "format": "date"}]},
    {"$defs": {"p": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 4}}, "type": "object",
     "properties": {"a": {"$ref": "#/$defs/p"}, "b": {"$ref": "#/$defs/p"}}, "required": ["a"], "additionalProperties": False},
]


@pytest.fixture(scope="module")
def engine(tiny_checkpoint) -> Engine:
    return Engine.from_checkpoint(tiny_checkpoint, EngineConfig(dtype="float32"))


def prompt(engine: Engine, thinking: bool = False, text: str = "JSON please") -> list[int]:
    tok = engine.tokenizer
    return tok.encode(tok.render_chat([{"role": "user", "content": text}], thinking=thinking))


def test_bitmask_helpers_round_trip():
    mask = structured.bitmask(2, 70)
    structured.set_tokens(mask[0], [0, 31, 32, 69], False)
    mask[1].zero_()
    structured.set_tokens(mask[1], [31, 63], True)
    allowed = structured.allowed_tokens(mask, 70)
    assert allowed.shape == (2, 70)
    assert set(torch.nonzero(~allowed[0]).flatten().tolist()) == {0, 31, 32, 69}
    assert set(torch.nonzero(allowed[1]).flatten().tolist()) == {31, 63}
    logits = torch.zeros(3, 70)
    structured.RowMasks([2], mask[1:]).apply(logits)
    assert torch.isfinite(logits[2]).sum() == 2 and torch.isfinite(logits[:2]).all()


def test_strict_refuses_what_it_cannot_enforce_lenient_ignores_it():
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    with pytest.raises(GrammarError, match="uniqueItems"):
        check_json_schema(schema, strict=True)
    assert any("uniqueItems" in w for w in check_json_schema(schema, strict=False))
    with pytest.raises(GrammarError, match="format"):
        check_json_schema({"type": "string", "format": "phone"}, strict=True)


def test_compiled_grammars_are_cached_and_bounded(engine):
    compiler = structured.GrammarCompiler(engine.tokenizer, engine.code_offset, capacity=2)
    a = compiler.compile(json_grammar({"type": "integer"}))
    assert compiler.compile(json_grammar({"type": "integer"})) is a and compiler.hits == 1
    compiler.compile(json_grammar({"type": "boolean"}))
    compiler.compile(json_grammar({"type": "null"}))
    assert len(compiler) == 2 and compiler.compile(json_grammar({"type": "integer"})) is not a


def test_noise_inside_a_grammar_is_valid_json(engine):
    grammars = [engine.grammars.compile(json_grammar(s)) for s in SCHEMAS]
    n = 4
    params = [
        SamplingParams(max_tokens=300, temperature=1.0, seed=100 + i, grammar=grammars[i % len(SCHEMAS)])
        for i in range(n * len(SCHEMAS))
    ]
    results = engine.generate([prompt(engine)] * len(params), params)
    for i, r in enumerate(results):
        assert r["finish_reason"] == "stop", r
        jsonschema.validate(json.loads(r["text"]), SCHEMAS[i % len(SCHEMAS)])
        # Each of these values closes itself ("}", "]", a quote, "true"): the answer ends right there,
        # without waiting for an end-of-sequence token.
        assert engine.tokenizer.special.eos not in r["token_ids"]


def test_greedy_and_a_tight_answer(engine):
    grammar = engine.grammars.compile(json_grammar(SCHEMAS[0]))
    greedy = engine.generate([prompt(engine)], SamplingParams(max_tokens=300, temperature=0, grammar=grammar))[0]
    jsonschema.validate(json.loads(greedy["text"]), SCHEMAS[0])
    # The budget that just holds the shortest answer: the answer is steered onto it, and is valid.
    tight = engine.generate([prompt(engine)], SamplingParams(max_tokens=grammar.min_tokens, temperature=0, grammar=grammar))[0]
    assert tight["finish_reason"] == "length" and len(tight["token_ids"]) <= grammar.min_tokens
    jsonschema.validate(json.loads(tight["text"]), SCHEMAS[0])
    with pytest.raises(ValueError, match=f"shortest answer valid under the grammar takes {grammar.min_tokens} tokens"):
        engine.add_request(prompt(engine), SamplingParams(max_tokens=grammar.min_tokens - 1, grammar=grammar))


def test_thought_budget_is_exact_and_closed_by_the_engine(engine):
    think_start, think_end = engine.think
    eos = engine.tokenizer.special.eos
    # The end of thinking is made very unlikely and EOS very likely: the thought still runs
    # exactly to its budget (EOS is banned inside it), then closes, then EOS ends the answer.
    bias = {think_end: -100.0, eos: 50.0}
    for budget in (1, 2, 9):
        params = SamplingParams(max_tokens=20, seed=3, logit_bias=bias, reasoning_budget=budget)
        out = engine.generate([prompt(engine, thinking=True)], params)[0]
        assert out["num_reasoning_tokens"] == budget
        assert out["token_ids"][budget - 1] == think_end and think_end not in out["token_ids"][: budget - 1]
        assert eos not in out["token_ids"][: budget]
        assert out["token_ids"][budget:] == [eos] and out["finish_reason"] == "stop" and out["text"] == ""
        assert out["reasoning"] == engine.tokenizer.decode(out["token_ids"][: budget - 1])


def test_thought_never_opens_twice_nor_in_a_plain_answer(engine):
    think_start, think_end = engine.think
    bias = {think_start: 100.0, think_end: 100.0}
    out = engine.generate([prompt(engine)], SamplingParams(max_tokens=12, seed=1, logit_bias=bias, reasoning_budget=0))[0]
    assert not set(out["token_ids"]) & {think_start, think_end} and out["num_reasoning_tokens"] == 0
    out = engine.generate([prompt(engine, thinking=True)], SamplingParams(max_tokens=12, seed=1, logit_bias=bias, reasoning_budget=4))[0]
    assert out["token_ids"][0] == think_end  # the model wanted to close at once: it may
    assert out["num_reasoning_tokens"] == 1 and not set(out["token_ids"][1:]) & {think_start, think_end}


def test_stop_strings_and_grammar_apply_to_the_answer_only(engine):
    grammar = engine.grammars.compile(json_grammar({"type": "integer", "minimum": 0, "maximum": 9}))
    base = SamplingParams(max_tokens=40, seed=7, reasoning_budget=16, logit_bias={engine.think[1]: -100.0})
    free = engine.generate([prompt(engine, thinking=True)], base)[0]
    stop = free["reasoning"][2:4]
    assert stop.strip()
    from dataclasses import replace

    both = engine.generate([prompt(engine, thinking=True)], replace(base, stop=(stop,), grammar=grammar))[0]
    assert both["reasoning"] == free["reasoning"] and both["num_reasoning_tokens"] == 16  # same thought
    assert both["finish_reason"] == "stop" and 0 <= json.loads(both["text"]) <= 9


def test_engine_refuses_a_thought_the_prompt_did_not_open(engine):
    with pytest.raises(ValueError, match="think delimiter"):
        engine.add_request(prompt(engine), SamplingParams(max_tokens=8, reasoning_budget=3))
    with pytest.raises(ValueError, match="reasoning_budget"):
        SamplingParams(max_tokens=8, reasoning_budget=8)


def test_constrained_rows_keep_the_seed_guarantee(engine):
    """Each request alone equals itself beside others (grammar, thought, plain rows mixed)."""
    grammar = engine.grammars.compile(json_grammar(SCHEMAS[0]))
    jobs = [
        (prompt(engine), SamplingParams(max_tokens=60, seed=1, grammar=grammar)),
        (prompt(engine, thinking=True), SamplingParams(max_tokens=60, seed=2, reasoning_budget=10, grammar=grammar)),
        (prompt(engine, thinking=True), SamplingParams(max_tokens=30, seed=3, reasoning_budget=12)),
        (prompt(engine), SamplingParams(max_tokens=30, seed=4)),
        (prompt(engine, text="Other words"), SamplingParams(max_tokens=60, seed=5, temperature=0.7, top_p=0.9, grammar=grammar)),
    ]
    together = engine.generate([p for p, _ in jobs], [sp for _, sp in jobs])
    for (p, sp), both in zip(jobs, together):
        alone = engine.generate([p], sp)[0]
        assert alone["token_ids"] == both["token_ids"] and alone["reasoning"] == both["reasoning"]


# --- closing within the budget --------------------------------------------------------------------
SMALL_BUDGETS = (16, 32, 64)


def corpus_grammars(engine: Engine) -> list[tuple[str, dict, structured.Grammar]]:
    """The 200-schema corpus (tests/api/schema_corpus.py) and json_object, compiled; the schemas
    strict mode refuses are left out (the API answers them 400 before any budget is looked at)."""
    from schema_corpus import corpus

    out = []
    for name, schema in [*corpus(200, seed=8), ("json_object", {"type": "object"})]:
        try:
            check_json_schema(schema, strict=True)
        except GrammarError:
            continue
        out.append((name, schema, engine.grammars.compile(json_grammar(schema))))
    return out


def test_the_shortest_answers_are_valid(engine):
    from schema_corpus import validator

    ll = engine.grammars.ll_tokenizer
    for name, schema, grammar in corpus_grammars(engine):
        closing = grammar.matcher().closing()
        assert closing is not None and len(closing) == grammar.min_tokens, name
        assert not list(validator(schema).iter_errors(json.loads(ll.decode_str(closing)))), name


@pytest.mark.parametrize("budget", SMALL_BUDGETS)
def test_corpus_answers_parse_within_small_budgets(engine, budget):
    """Temperature 1, three seeds: every answer whose schema's shortest answer fits the budget
    (the API refuses the others up front) parses and validates, however it ended."""
    from schema_corpus import validator

    jobs = [(name, schema, SamplingParams(max_tokens=budget, temperature=1.0, seed=seed, grammar=grammar))
            for name, schema, grammar in corpus_grammars(engine) if grammar.min_tokens <= budget for seed in range(3)]
    short_prompt = [engine.tokenizer.special.bos]  # the random model writes noise whatever it is asked
    results = engine.generate([short_prompt] * len(jobs), [params for _, _, params in jobs])
    invalid, steered = [], 0
    for (name, schema, params), r in zip(jobs, results):
        try:
            errors = [e.message for e in validator(schema).iter_errors(json.loads(r["text"]))]
        except json.JSONDecodeError as exc:
            errors = [f"not JSON: {exc}"]
        if errors:
            invalid.append((name, params.seed, r["finish_reason"], r["text"][:120], errors[:1]))
        assert len(r["token_ids"]) <= budget
        steered += r["finish_reason"] == "length"
    assert not invalid, invalid
    assert len(jobs) >= 3 * 20 and steered >= len(jobs) // 10  # the budget was what ended many of them


def test_a_steered_answer_is_complete_and_ends_with_length(engine):
    schema = {"type": "object", "properties": {"words": {"type": "array", "items": {"type": "string"}}}, "required": ["words"]}
    grammar = engine.grammars.compile(json_grammar(schema))
    for budget in range(grammar.min_tokens, grammar.min_tokens + 6):
        out = engine.generate([prompt(engine)], SamplingParams(max_tokens=budget, seed=budget, grammar=grammar))[0]
        assert out["finish_reason"] == "length" and len(out["token_ids"]) <= budget
        assert isinstance(json.loads(out["text"])["words"], list)


def test_steered_rows_keep_the_seed_guarantee(engine):
    grammars = [g for _, _, g in corpus_grammars(engine) if g.min_tokens <= 24][:6]
    jobs = [(prompt(engine, text=f"JSON {i}"), SamplingParams(max_tokens=g.min_tokens + 5, seed=i, grammar=g))
            for i, g in enumerate(grammars)]
    jobs.append((prompt(engine), SamplingParams(max_tokens=30, seed=99)))
    together = engine.generate([p for p, _ in jobs], [sp for _, sp in jobs])
    for (p, sp), both in zip(jobs, together):
        assert engine.generate([p], sp)[0]["token_ids"] == both["token_ids"]


def test_the_answer_after_a_thought_gets_the_room_the_thought_leaves(engine):
    grammar = engine.grammars.compile(json_grammar(SCHEMAS[0]))
    never_closed = {engine.think[1]: -100.0}  # the thought runs to its budget
    for seed in range(3):
        params = SamplingParams(max_tokens=10 + grammar.min_tokens, seed=seed, reasoning_budget=10, logit_bias=never_closed,
                                grammar=grammar)
        out = engine.generate([prompt(engine, thinking=True)], params)[0]
        assert out["num_reasoning_tokens"] == 10 and out["finish_reason"] in ("stop", "length")
        jsonschema.validate(json.loads(out["text"]), SCHEMAS[0])
    with pytest.raises(ValueError, match="max_tokens leaves the answer"):
        engine.add_request(prompt(engine, thinking=True),
                           SamplingParams(max_tokens=9 + grammar.min_tokens, reasoning_budget=10, grammar=grammar))


def test_a_budget_longer_than_the_longest_closing_still_closes(engine, monkeypatch):
    from imagemini.engine import closing

    # A lower bound on the closings looked for (the same in both modules), to keep the run short.
    monkeypatch.setattr(closing, "MAX_CLOSING_BYTES", 48)
    monkeypatch.setattr(structured, "MAX_CLOSING_BYTES", 48)
    grammar = engine.grammars.compile(json_grammar({"type": "object"}))  # free keys: noise rarely closes it
    params = [SamplingParams(max_tokens=90, seed=seed, grammar=grammar) for seed in range(3)]
    for out in engine.generate([prompt(engine)] * len(params), params):
        assert isinstance(json.loads(out["text"]), dict) and out["finish_reason"] in ("stop", "length")
