"""A padded vocabulary (the network has more rows than the tokenizer has tokens, as Janus-Pro's
102,400 for a ~100K tokenizer): the ids with no token are never sampled, never listed among the
top logprobs and never reach the detokenizer."""

from __future__ import annotations

import pytest
import torch

from imagemini.engine.engine import Engine, EngineConfig
from imagemini.engine.params import SamplingParams

PADDED_VOCAB = 4096  # tests/conftest.py's padded_checkpoint: the tiny tokenizer has 384 tokens


@pytest.fixture(scope="module")
def engine(padded_checkpoint) -> Engine:
    return Engine.from_checkpoint(padded_checkpoint, EngineConfig(dtype="float32"))


def prompt(engine: Engine) -> list[int]:
    tok = engine.tokenizer
    return tok.encode(tok.render_chat([{"role": "user", "content": "Draw a red circle"}]))


@torch.no_grad()
def test_the_padding_rows_would_take_most_of_the_mass(engine):
    """What makes the tests below able to fail: the random network gives the rows with no token
    most of the probability, so a sampler that let them through would draw them nearly always."""
    ids = torch.tensor([prompt(engine)])
    logits = engine.model(ids)[0, -1].float()
    assert engine.model.cfg.text.vocab_size == PADDED_VOCAB and engine.tokenizer.vocab_size < 400
    assert torch.softmax(logits, -1)[engine.tokenizer.vocab_size :].sum() > 0.5


def test_no_id_without_a_token_is_sampled_at_high_temperature(engine):
    params = [SamplingParams(max_tokens=150, temperature=2.0, seed=seed, logprobs=True, top_logprobs=20) for seed in range(4)]
    outs = engine.generate([prompt(engine)] * 4, params)
    tokens = engine.tokenizer.vocab_size
    for out in outs:
        assert len(out["token_ids"]) == 150 or out["finish_reason"] == "stop"
        assert max(out["token_ids"]) < tokens
        assert all(t < tokens for lp in out["logprobs"] for t, _ in lp.top)
        # the probabilities are the tokens' own: they sum to one over the tokenizer's ids
        assert all(lp.logprob <= 0 for lp in out["logprobs"])


def test_a_bias_towards_an_id_without_a_token_does_not_draw_it(engine):
    """The API refuses such a bias (400); the engine on its own ignores it."""
    params = SamplingParams(max_tokens=20, temperature=2.0, seed=5, logit_bias={PADDED_VOCAB - 1: 100.0})
    out = engine.generate([prompt(engine)], params)[0]
    assert max(out["token_ids"]) < engine.tokenizer.vocab_size
