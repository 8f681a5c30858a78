"""The engine on each device under test (conftest.devices_under_test: the CPU always, CUDA where
there is a GPU), with each attention plan: where everything lives, the seed guarantee over a mix
of text, logprobs, penalties, a JSON answer and a guided picture, and how often a step waits
for the device."""

from __future__ import annotations

import random

import pytest
import torch
from apitest import devices_under_test

from imagemini.engine.engine import Engine, EngineConfig
from imagemini.engine.params import SamplingParams
from imagemini.engine.scheduler import SchedulerConfig
from imagemini.engine.structured import json_grammar

DEVICES = devices_under_test()
PLANS = ["per_sequence", "batched"]


def make(path, device: str, attention: str | None = None, dtype: str = "float32") -> Engine:
    scheduler = SchedulerConfig(prefill_chunk=32, max_prefill_rows=64)  # prompts prefilled beside decoders
    return Engine.from_checkpoint(path, EngineConfig(dtype=dtype, device=device, attention=attention, scheduler=scheduler))


def chat(engine: Engine, text: str) -> list[int]:
    tok = engine.tokenizer
    return tok.encode(tok.render_chat([{"role": "user", "content": text}]))


def mixed_requests(engine: Engine, n: int) -> list[tuple[list[int], SamplingParams]]:
    rng = random.Random(1)
    words = "red green blue circle square triangle cross top left right bottom center small large".split()
    schema = engine.grammars.compile(json_grammar({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}))
    requests = []
    for i in range(n):
        prompt = chat(engine, " ".join(rng.choice(words) for _ in range(rng.randint(1, 50))))
        kind = i % 4
        if kind == 3:  # a guided picture
            params = SamplingParams(max_tokens=engine.num_image_tokens + 1, seed=50 + i, image_output=True)
            prompt = prompt + [engine.tokenizer.special.boi]
        else:
            params = SamplingParams(
                max_tokens=rng.randint(4, 24), temperature=rng.choice([0.0, 0.8, 1.2]), top_p=rng.choice([1.0, 0.7]),
                frequency_penalty=rng.choice([0.0, 0.5]), logit_bias={7: 1.5} if i % 5 == 0 else {}, seed=100 + i,
                logprobs=kind != 1, top_logprobs=2 if kind == 0 else 0, grammar=schema if kind == 2 else None,
            )
        requests.append((prompt, params))
    return requests


def key(result: dict) -> tuple:
    lps = [(lp.token_id, lp.logprob, tuple(lp.top)) for lp in result["logprobs"]]
    return result["token_ids"], result["text"], result["finish_reason"], lps, result["images"]


@pytest.fixture(scope="module", params=[(d, a) for d in DEVICES for a in PLANS], ids=lambda p: f"{p[0]}-{p[1]}")
def engine(request, tiny_checkpoint):
    device, plan = request.param
    return make(tiny_checkpoint, device, plan)


def test_weights_cache_and_sampling_live_on_the_device(engine):
    device = torch.device(engine.config.device)
    prompt = chat(engine, "Describe the picture.")
    engine.add_request(prompt, SamplingParams(max_tokens=8, seed=1))
    engine.step()
    assert all(p.device.type == device.type for p in engine.model.parameters())
    assert engine.kv_cache.used_tokens > 0
    running = engine.scheduler.running[0]
    assert running.kv.k.device.type == device.type
    while engine.has_work():
        engine.step()


def test_requests_together_equal_each_alone(engine):
    """The seed guarantee: tokens, text, logprobs and pictures of each request are the same bits
    whether it runs alone or among a dozen others (32 on a GPU) of other lengths and kinds."""
    requests = mixed_requests(engine, 32 if engine.transfer.on_gpu else 12)  # a GPU takes 32 at once cheaply
    alone = [key(engine.generate([p], sp)[0]) for p, sp in requests]
    together = [key(r) for r in engine.generate([p for p, _ in requests], [sp for _, sp in requests])]
    for i, (a, b) in enumerate(zip(alone, together)):
        assert a == b, f"request {i} changed beside the others"
    assert len({tuple(a[0]) for a in alone}) > 6  # and they are not all the same answer
    assert any(a[4] for a in alone)  # a picture was drawn


def test_a_step_waits_for_the_device_once(engine):
    """Tokens, logprobs and image codes of a step come back in one read; a structured answer
    whose budget needs its tokens first costs one more in the steps it is sampled."""
    requests = [r for r in mixed_requests(engine, 8) if r[1].grammar is None]
    reads, steps = engine.host_reads, engine.steps_run
    engine.generate([p for p, _ in requests], [sp for _, sp in requests])
    assert engine.steps_run > steps
    assert engine.host_reads - reads == engine.steps_run - steps


def test_a_step_waits_for_nothing_else(engine):
    """On a GPU: with torch's sync debug mode set to raise, a mix of requests (a JSON answer
    left out: its budget reads tokens on purpose) runs to the end: no step waits for the device
    anywhere but in `Transfer.read`."""
    if not engine.transfer.on_gpu:
        pytest.skip("a CPU has no device to wait for")
    requests = [r for r in mixed_requests(engine, 8) if r[1].grammar is None]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for p, sp in requests:
            engine.add_request(p, sp)
        while engine.has_work():
            engine.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_the_same_arithmetic_on_every_device(tiny_checkpoint):
    """Greedy tokens and logprobs of float32 runs agree across devices and plans (to float
    rounding: different kernels add in different orders)."""
    prompt = None
    results = {}
    for device in DEVICES:
        for plan in PLANS:
            engine = make(tiny_checkpoint, device, plan)
            prompt = prompt or chat(engine, "How many circles are there?")
            out = engine.generate([prompt], SamplingParams(max_tokens=16, temperature=0, logprobs=True))[0]
            results[device, plan] = out
    first = next(iter(results.values()))
    for name, out in results.items():
        assert out["token_ids"] == first["token_ids"], name
        assert max(abs(a.logprob - b.logprob) for a, b in zip(out["logprobs"], first["logprobs"])) < 1e-4, name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_weights_decode(tiny_checkpoint, device, dtype):
    engine = make(tiny_checkpoint, device, dtype=dtype)
    prompts = [chat(engine, "Is there a blue triangle?"), chat(engine, "Draw a cross") + [engine.tokenizer.special.boi]]
    params = [SamplingParams(max_tokens=12, seed=3, logprobs=True),
              SamplingParams(max_tokens=engine.num_image_tokens + 1, seed=4, image_output=True)]
    text, picture = engine.generate(prompts, params)
    assert len(text["token_ids"]) > 0 and all(lp.logprob <= 0 and lp.logprob == lp.logprob for lp in text["logprobs"])
    assert len(picture["images"]) == 1 and len(picture["images"][0]) == engine.num_image_tokens


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cuda:99"])
def test_a_device_this_machine_lacks_is_refused_saying_why(device):
    with pytest.raises(ValueError, match="device"):
        EngineConfig(device=device)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            EngineConfig(device="cuda")
