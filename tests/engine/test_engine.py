"""The engine end to end on the random fixture: reference agreement with transformers,
stop/length/abort, and the seed guarantee under concurrency."""

from __future__ import annotations

import random

import pytest
import torch

from imagemini.engine.engine import Engine, EngineConfig
from imagemini.engine.params import SamplingParams
from imagemini.engine.scheduler import SchedulerConfig


def make_engine(path, dtype="float32", chunk=256, **kw) -> Engine:
    return Engine.from_checkpoint(path, EngineConfig(dtype=dtype, scheduler=SchedulerConfig(prefill_chunk=chunk, **kw)))


def chat(engine: Engine, text: str) -> list[int]:
    tok = engine.tokenizer
    return tok.encode(tok.render_chat([{"role": "user", "content": text}]))


@pytest.fixture(scope="module")
def engine32(tiny_checkpoint):
    return make_engine(tiny_checkpoint)


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    transformers = pytest.importorskip("transformers")
    return transformers.JanusForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()


@torch.no_grad()
def test_greedy_and_logprobs_match_transformers(engine32, reference):
    prompt = chat(engine32, "What colour is the circle?")
    out = engine32.generate([prompt], SamplingParams(max_tokens=24, temperature=0, logprobs=True, top_logprobs=5))[0]
    assert len(out["token_ids"]) == 24 and out["finish_reason"] == "length"
    ids = torch.tensor([prompt + out["token_ids"]])
    ref_logprobs = torch.log_softmax(reference(input_ids=ids).logits[0].float(), -1)
    for step, (token, lp) in enumerate(zip(out["token_ids"], out["logprobs"])):
        row = ref_logprobs[len(prompt) - 1 + step]
        assert token == int(row.argmax()), f"step {step}: greedy differs from the reference argmax"
        assert abs(lp.logprob - row[token].item()) < 1e-5
        ref_top = row.topk(5)
        assert [t for t, _ in lp.top] == ref_top.indices.tolist()
        assert max(abs(a - b) for (_, a), b in zip(lp.top, ref_top.values.tolist())) < 1e-5


def test_eos_stop_string_and_length(engine32):
    prompt = chat(engine32, "Hi")
    eos = engine32.tokenizer.special.eos
    out = engine32.generate([prompt], SamplingParams(max_tokens=10, logit_bias={eos: 100.0}, seed=1))[0]
    assert out["finish_reason"] == "stop" and out["text"] == "" and out["token_ids"] == [eos]
    free = engine32.generate([prompt], SamplingParams(max_tokens=30, temperature=0))[0]
    stop = free["text"][5:8]
    cut = engine32.generate([prompt], SamplingParams(max_tokens=30, temperature=0, stop=(stop,)))[0]
    assert cut["finish_reason"] == "stop" and cut["text"] == free["text"][: free["text"].index(stop)]


def test_context_overflow_is_refused(engine32):
    with pytest.raises(ValueError, match="context"):
        engine32.add_request([1] * 10, SamplingParams(max_tokens=engine32.context_length))


def test_a_guided_picture_must_fit_the_kv_budget_twice(tiny_checkpoint):
    """Its unconditional partner reserves as much room: refused up front, never left waiting."""
    engine = Engine.from_checkpoint(tiny_checkpoint, EngineConfig(dtype="float32", kv_budget_tokens=200, prefix_cache_tokens=0))
    prompt = chat(engine, "Draw a cross") + [engine.tokenizer.special.boi]
    room = 200 - len(prompt)
    with pytest.raises(ValueError, match="twice"):
        engine.add_request(prompt, SamplingParams(max_tokens=room, image_output=True))
    plain = engine.generate([prompt], SamplingParams(max_tokens=room, image_output=True, guidance_scale=1.0, seed=1))[0]
    assert len(plain["images"]) == 1  # unguided, the same request fits once


@torch.no_grad()
def test_a_prompt_may_hold_image_codes_and_nothing_else_beyond_the_vocabulary(engine32, reference):
    """A source echo (models/processor.py) puts image codes in the prompt: they are embedded as
    drawn codes are, the same as transformers' model fed those embeddings; any other id is refused."""
    offset, n_codes = engine32.code_offset, engine32.model.cfg.vq.num_embeddings
    prompt = chat(engine32, "Keep")
    prompt = prompt[:-2] + [offset + 5, offset + n_codes - 1, offset] + prompt[-2:]
    out = engine32.generate([prompt], SamplingParams(max_tokens=6, temperature=0, logprobs=True))[0]
    embeds = engine32.model.input_embeddings(torch.tensor([prompt + out["token_ids"]]))
    codes = torch.tensor(prompt[-5:-2]) - offset
    assert torch.equal(embeds[0, -len(out["token_ids"]) - 5 : -len(out["token_ids"]) - 2],
                       engine32.model.embed_image_codes(codes))
    ref = torch.log_softmax(reference(inputs_embeds=embeds).logits[0].float(), -1)
    for step, (token, lp) in enumerate(zip(out["token_ids"], out["logprobs"])):
        row = ref[len(prompt) - 1 + step]
        assert token == int(row.argmax()) and abs(lp.logprob - row[token].item()) < 1e-5
    for bad in (offset + n_codes, -1):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            engine32.add_request(prompt[:-2] + [bad] + prompt[-2:], SamplingParams(max_tokens=4))


def test_abort_frees_the_kv_cache(engine32):
    prompt = chat(engine32, "Count to a hundred")
    request_id = engine32.add_request(prompt, SamplingParams(max_tokens=200))
    engine32.step()
    engine32.step()
    assert engine32.kv_cache.used_tokens > 0
    engine32.abort(request_id)
    outputs = engine32.step()
    assert [o.finish_reason for o in outputs if o.request_id == request_id] == ["abort"]
    assert engine32.kv_cache.used_tokens == 0 and not engine32.has_work()


def _mixed_requests(engine: Engine, n: int) -> list[tuple[list[int], SamplingParams]]:
    rng = random.Random(0)
    words = "red green blue circle square triangle cross top left right bottom center small large".split()
    requests = []
    for i in range(n):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 60)))  # 10 to ~300 tokens
        params = SamplingParams(
            max_tokens=rng.randint(5, 40),
            temperature=rng.choice([0.0, 0.7, 1.0, 1.3]),
            top_p=rng.choice([1.0, 0.9, 0.5]),
            frequency_penalty=rng.choice([0.0, 0.5]),
            presence_penalty=rng.choice([0.0, -0.4]),
            seed=1000 + i,
            logprobs=i % 2 == 0,
            top_logprobs=3 if i % 4 == 0 else 0,
            stop=("ed",) if i % 5 == 0 else (),
        )
        requests.append((chat(engine, text), params))
    return requests


def _key(result: dict) -> tuple:
    lps = [(lp.token_id, lp.logprob, tuple(lp.top)) for lp in result["logprobs"]]
    return result["token_ids"], result["text"], result["finish_reason"], lps


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_sixteen_concurrent_requests_equal_each_alone(tiny_checkpoint, dtype):
    # a small prefill chunk so long prompts are prefilled over several steps beside decoders
    engine = make_engine(tiny_checkpoint, dtype=dtype, chunk=32, max_prefill_rows=64)
    requests = _mixed_requests(engine, 16)
    alone = [_key(engine.generate([p], sp)[0]) for p, sp in requests]
    together = [_key(r) for r in engine.generate([p for p, _ in requests], [sp for _, sp in requests])]
    for i, (a, b) in enumerate(zip(alone, together)):
        assert a == b, f"request {i} changed under load"
    # and the outputs are not trivially equal to each other
    assert len({tuple(a[0]) for a in alone}) > 8


def test_untiled_engine_decodes_like_the_reference(tiny_checkpoint, reference):
    """row_tile=None (plain batched matmuls: what `bench text` prices the seed guarantee against)
    is the same network: in float32 its greedy tokens are transformers' too."""
    engine = Engine.from_checkpoint(tiny_checkpoint, EngineConfig(dtype="float32", row_tile=None))
    prompt = chat(engine, "Describe the picture.")
    ours = engine.generate([prompt], SamplingParams(max_tokens=12, temperature=0.0))[0]["token_ids"]
    with torch.no_grad():
        ids = reference.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                 pad_token_id=engine.tokenizer.special.pad)[0, len(prompt):].tolist()
    assert ours == ids[: len(ours)] and len(ours) > 0
