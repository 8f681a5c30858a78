"""The batched attention plan (engine/attention.py) and its pooled KV cache (engine/kv_cache.py):
it computes softmax attention, a row's bits never depend on the other rows of its step, and the
engine keeps the seed guarantee with it (text, guided images, the prefix cache, a full pool)."""

from __future__ import annotations

import random

import pytest
from apitest import devices_under_test
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from imagemini.engine.attention import BLOCK_TOKENS, BatchedAttention
from imagemini.engine.engine import Engine, EngineConfig
from imagemini.engine.kv_cache import FreeRanges, KVCache
from imagemini.engine.model_runner import Chunk
from imagemini.engine.params import SamplingParams
from imagemini.engine.scheduler import SchedulerConfig
from imagemini.engine.transfer import Transfer
from imagemini.models.config import TextConfig

CFG = TextConfig(vocab_size=16, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=4096)
LAYER = 1
DEVICES = devices_under_test()


# --- the plan alone, on a pool of random keys and values ---------------------------------------
class PooledSequence:
    """What attention reads of a sequence: its reservation."""

    def __init__(self, kv) -> None:
        self.kv = kv


def pooled_sequences(lengths: list[int], seed: int = 0, device: str = "cpu") -> tuple[KVCache, list[PooledSequence]]:
    """A pooled cache holding one sequence a length (room for 3 more tokens each), its earlier
    keys and values random (drawn on the host: the same numbers on every device)."""
    cache = KVCache(CFG, torch.float32, sum(lengths) + 3 * len(lengths) + 5, device, pooled=True)
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for length in lengths:
        kv = cache.allocate(length + 3)
        kv.k.copy_(torch.randn(kv.k.shape, generator=g).to(device))
        kv.v.copy_(torch.randn(kv.v.shape, generator=g).to(device))
        seqs.append(PooledSequence(kv))
    return cache, seqs


def step_rows(chunk: Chunk, index: int) -> tuple[torch.Tensor, ...]:
    """q, k, v of a chunk's rows: fixed by the sequence and the positions, whatever else runs."""
    g = torch.Generator().manual_seed(1000 * index + chunk.start)
    q = torch.randn(chunk.length, CFG.num_attention_heads, CFG.head_dim, generator=g)
    k, v = torch.randn(2, chunk.length, CFG.num_key_value_heads, CFG.head_dim, generator=g)
    return q, k, v


def run_step(attention: BatchedAttention, chunks: list[Chunk], seqs: list, padding: int = 0) -> list[torch.Tensor]:
    """Each chunk's attention output, with `padding` tile padding rows after the step's rows."""
    rows = [step_rows(c, seqs.index(c.seq)) for c in chunks]
    q, k, v = (torch.cat([r[i] for r in rows]) for i in range(3))
    q, k, v = (torch.cat([t, torch.randn(padding, *t.shape[1:])]) for t in (q, k, v))
    device = chunks[0].seq.kv.k.device
    out = attention.attend(chunks, Transfer(device))(LAYER, q.to(device), k.to(device), v.to(device)).cpu()
    assert torch.equal(out[out.shape[0] - padding :], torch.zeros(padding, *out.shape[1:]))
    return list(out[: out.shape[0] - padding].split([c.length for c in chunks]))


def reference(chunk: Chunk, q: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention of the chunk's rows over its sequence's keys, in float64."""
    kv, group = chunk.seq.kv, CFG.num_attention_heads // CFG.num_key_value_heads
    keys = kv.k[LAYER, :, : chunk.end].cpu().double().repeat_interleave(group, 0)
    values = kv.v[LAYER, :, : chunk.end].cpu().double().repeat_interleave(group, 0)
    scores = torch.einsum("rhd,htd->rht", q.double() * CFG.head_dim**-0.5, keys)
    positions = torch.arange(chunk.end)
    scores = scores.masked_fill(positions[None, None, :] > torch.arange(chunk.start, chunk.end)[:, None, None], float("-inf"))
    return torch.einsum("rht,htd->rhd", scores.softmax(-1), values).float()


lengths_strategy = st.lists(st.integers(1, 300), min_size=1, max_size=12)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=30, deadline=None)
@given(lengths=lengths_strategy, tile_rows=st.sampled_from([None, 1, 4, 16]), block=st.sampled_from([16, BLOCK_TOKENS]))
def test_batched_attention_is_softmax_attention(device, lengths, tile_rows, block):
    _, seqs = pooled_sequences(lengths, device=device)
    # decode rows, and a prefill chunk of 3 rows where a sequence is long enough
    chunks = [Chunk(s, n - 3, 3) if i % 3 == 2 and n > 3 else Chunk(s, n - 1, 1) for i, (s, n) in enumerate(zip(seqs, lengths))]
    outputs = run_step(BatchedAttention(tile_rows, block), chunks, seqs, padding=2)
    for i, (c, out) in enumerate(zip(chunks, outputs)):
        assert (out - reference(c, step_rows(c, seqs.index(c.seq))[0])).abs().max() < 1e-5


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=30, deadline=None)
@given(lengths=lengths_strategy, target=st.integers(1, 300), tile_rows=st.sampled_from([None, 1, 3, 16]),
       shuffle=st.randoms(use_true_random=False))
def test_a_row_gets_the_same_bits_alone_and_beside_any_rows(device, lengths, target, tile_rows, shuffle):
    assume(tile_rows is not None or device == "cpu")  # unpadded tiles: test_unpadded_tiles_on_a_gpu
    _, seqs = pooled_sequences([target] + lengths, device=device)
    attention = BatchedAttention(tile_rows, 16)
    mine = Chunk(seqs[0], target - 1, 1)
    alone = run_step(attention, [mine], seqs)[0]
    others = [Chunk(s, n - 1, 1) if n < 4 or i % 2 else Chunk(s, n - 4, 4) for i, (s, n) in enumerate(zip(seqs[1:], lengths))]
    chunks = others + [mine]
    shuffle.shuffle(chunks)
    together = run_step(attention, chunks, seqs, padding=5)[chunks.index(mine)]
    assert torch.equal(alone, together)


@pytest.mark.parametrize("device", [d for d in DEVICES if d != "cpu"])
@pytest.mark.xfail(reason="one tile of any size is promised exact on a CPU only: this records whether this GPU's "
                          "kernels keep it too (XPASS: tiles could go unpadded there)", strict=False)
def test_unpadded_tiles_on_a_gpu(device):
    rng = random.Random(0)
    for _ in range(20):
        lengths, target = [rng.randint(1, 300) for _ in range(rng.randint(1, 40))], rng.randint(1, 300)
        _, seqs = pooled_sequences([target] + lengths, device=device)
        attention = BatchedAttention(None, BLOCK_TOKENS)
        mine = Chunk(seqs[0], target - 1, 1)
        alone = run_step(attention, [mine], seqs)[0]
        chunks = [Chunk(s, n - 1, 1) for s, n in zip(seqs[1:], lengths)] + [mine]
        assert torch.equal(alone, run_step(attention, chunks, seqs)[-1])


@pytest.mark.parametrize("device", DEVICES)
def test_trailing_blocks_are_no_ops_even_over_garbage(device):
    """Past its length a row reads only the zero slot, even where its own range holds NaN."""
    _, seqs = pooled_sequences([5, 200], device=device)
    seqs[0].kv.k[:, :, 5:].fill_(float("nan"))
    seqs[0].kv.v[:, :, 5:].fill_(float("inf"))
    attention = BatchedAttention(4, 16)
    mine = Chunk(seqs[0], 4, 1)
    alone = run_step(attention, [mine], seqs)[0]
    together = run_step(attention, [Chunk(seqs[1], 199, 1), mine], seqs)[1]
    assert torch.isfinite(alone).all() and torch.equal(alone, together)


# --- the pool allocator -----------------------------------------------------------------------
def test_free_ranges_are_first_fit_and_merge_on_free():
    free = FreeRanges(100)
    a, b, c, d = free.take(20), free.take(30), free.take(10), free.take(15)
    assert (a, b, c, d) == (0, 20, 50, 60) and free.ranges == [(75, 25)]
    free.give_back(b, 30)
    assert free.ranges == [(20, 30), (75, 25)] and free.largest == 30
    assert not free.fits([40]) and free.fits([30, 25]) and not free.fits([30, 30])
    assert free.take(12) == 20  # first fit: the hole, not the tail
    free.give_back(a, 20)
    assert free.ranges == [(0, 20), (32, 18), (75, 25)]
    free.give_back(20, 12)
    assert free.ranges == [(0, 50), (75, 25)]  # merged with both neighbours
    free.give_back(c, 10), free.give_back(d, 15)
    assert free.ranges == [(0, 100)]
    with pytest.raises(ValueError, match="already free"):
        free.give_back(10, 5)


def test_a_full_pool_refuses_until_a_free_and_keeps_its_zero_slot():
    cache = KVCache(CFG, torch.float32, 100, pooled=True)
    first, second = cache.allocate(40), cache.allocate(40)
    assert cache.free_tokens == 20 and not cache.can_allocate(30)
    cache.free(first)
    # 60 tokens free, but in two ranges: one sequence of 50 does not fit, a guided pair of 40 neither
    assert cache.free_tokens == 60 and not cache.can_allocate(50) and not cache.can_allocate(30, 2)
    assert cache.can_allocate(40) and cache.can_allocate(20, 2)
    cond, uncond = cache.allocate_pair(20)
    assert (cond.offset, uncond.offset) == (0, 20) and cond.pool is uncond.pool is cache.pool
    cache.free(second)
    assert cache.can_allocate(60) and not cache.can_allocate(61)
    cond.k.fill_(1.0), uncond.v.fill_(2.0)  # views of the pool
    assert cache.pool[0][:, :, :20].eq(1).all() and cache.pool[1][:, :, 20:40].eq(2).all()
    assert cache.pool[0][:, :, -1].eq(0).all() and cache.pool[0].shape[2] == 101


# --- the engine with the batched plan ---------------------------------------------------------
def engine(path, attention="batched", dtype="float32", chunk=32, cache_tokens=0, kv_budget=65536, **scheduler) -> Engine:
    config = EngineConfig(dtype=dtype, attention=attention, prefix_cache_tokens=cache_tokens, kv_budget_tokens=kv_budget,
                          scheduler=SchedulerConfig(prefill_chunk=chunk, **scheduler))
    return Engine.from_checkpoint(path, config)


def chat(e: Engine, text: str) -> list[int]:
    return e.tokenizer.encode(e.tokenizer.render_chat([{"role": "user", "content": text}]))


def draw_prompt(e: Engine, text: str) -> list[int]:
    return chat(e, text) + [e.tokenizer.special.boi]


def key(result: dict) -> tuple:
    lps = [(lp.token_id, lp.logprob, tuple(lp.top)) for lp in result["logprobs"]]
    return result["token_ids"], result["text"], result["images"], result["finish_reason"], lps


def mixed_requests(e: Engine, n: int, seed: int = 0) -> list[tuple[list[int], SamplingParams]]:
    rng = random.Random(seed)
    words = "red green blue circle square triangle cross top left right bottom center small large".split()
    return [
        (chat(e, " ".join(rng.choice(words) for _ in range(rng.randint(1, 60)))),
         SamplingParams(max_tokens=rng.randint(5, 40), temperature=rng.choice([0.0, 0.7, 1.3]), top_p=rng.choice([1.0, 0.9]),
                        seed=1000 + i, logprobs=True, top_logprobs=3 if i % 2 else 0))
        for i in range(n)
    ]


@pytest.mark.parametrize("tile_rows", [16, 3])
def test_requests_among_many_equal_each_alone(tiny_checkpoint, tile_rows):
    e = engine(tiny_checkpoint, chunk=32, max_prefill_rows=64)
    e.runner.batched = BatchedAttention(tile_rows)  # 3: a step's decode rows span several tiles
    requests = mixed_requests(e, 16)
    alone = [key(e.generate([p], sp)[0]) for p, sp in requests]
    together = [key(r) for r in e.generate([p for p, _ in requests], [sp for _, sp in requests])]
    assert alone == together
    assert len({tuple(a[0]) for a in alone}) > 8
    assert e.kv_cache.used_tokens == 0 and e.kv_cache.free_ranges.ranges == [(0, e.kv_cache.budget_tokens)]
    assert e.kv_cache.pool[0][:, :, -1].eq(0).all() and e.kv_cache.pool[1][:, :, -1].eq(0).all()


def test_guided_images_equal_alone_and_under_load(tiny_checkpoint):
    e = engine(tiny_checkpoint, dtype="bfloat16", chunk=256)
    n = e.num_image_tokens
    prompts = [draw_prompt(e, t) for t in ["Draw a red circle", "Make a big green square at the top left", "A cross"]]
    image_params = [SamplingParams(max_tokens=n + 1, temperature=1.0, top_p=0.9, seed=s, image_output=True) for s in (1, 2, 3)]
    alone = [e.generate([p], sp)[0]["images"] for p, sp in zip(prompts, image_params)]
    load = mixed_requests(e, 6, seed=1)
    together = e.generate(prompts + [p for p, _ in load], image_params + [sp for _, sp in load])
    assert [r["images"] for r in together[:3]] == alone
    assert len({tuple(a[0]) for a in alone}) == 3
    assert [key(r) for r in together[3:]] == [key(e.generate([p], sp)[0]) for p, sp in load]


def test_greedy_tokens_equal_the_per_sequence_plan(tiny_checkpoint):
    batched, per_sequence = engine(tiny_checkpoint), engine(tiny_checkpoint, attention="per_sequence")
    prompts = [chat(batched, t) for t in ["Describe the picture.", "red " * 90, "Hi"]]
    params = SamplingParams(max_tokens=40, temperature=0, logprobs=True)
    ours, theirs = batched.generate(prompts, params), per_sequence.generate(prompts, params)
    for a, b in zip(ours, theirs):
        assert a["token_ids"] == b["token_ids"]
        assert max(abs(x.logprob - y.logprob) for x, y in zip(a["logprobs"], b["logprobs"])) < 1e-4
    image = SamplingParams(max_tokens=batched.num_image_tokens + 1, temperature=0, image_output=True)
    drawing = draw_prompt(batched, "Draw a red circle")
    assert batched.generate([drawing], image)[0]["images"] == per_sequence.generate([drawing], image)[0]["images"]


def test_prefix_cache_reuses_exactly(tiny_checkpoint):
    cached, plain = engine(tiny_checkpoint, chunk=16, cache_tokens=4096), engine(tiny_checkpoint, chunk=16)
    prompt = chat(cached, "Tell me about the large red circle at the top left and the small blue square.")
    params = SamplingParams(max_tokens=16, temperature=0.9, seed=5, logprobs=True, top_logprobs=3)
    first, second = cached.generate([prompt], params)[0], cached.generate([prompt], params)[0]
    assert key(first) == key(second) == key(plain.generate([prompt], params)[0])
    assert first["num_cached_tokens"] == 0 and second["num_cached_tokens"] == (len(prompt) - 1) // 16 * 16 > 0


def test_a_full_pool_admits_the_next_request_after_a_free(tiny_checkpoint):
    e = engine(tiny_checkpoint, kv_budget=150)
    requests = [(chat(e, "red circle " * 3), SamplingParams(max_tokens=30, seed=i, temperature=1.0)) for i in range(3)]
    room = len(requests[0][0]) + 30
    assert 2 * room <= 150 < 3 * room
    alone = [key(e.generate([p], sp)[0]) for p, sp in requests]
    ids = [e.add_request(p, sp) for p, sp in requests]
    tokens = {i: [] for i in ids}
    for out in e.step():
        tokens[out.request_id] += out.token_ids
    assert len(e.scheduler.running) == 2 and len(e.scheduler.waiting) == 1
    while e.has_work():
        for out in e.step():
            tokens[out.request_id] += out.token_ids
    assert [tokens[i] for i in ids] == [a[0] for a in alone]
