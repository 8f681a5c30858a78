"""A padded vocabulary (the network has more rows than the tokenizer has tokens, as Janus-Pro's
102,400 for a ~100K tokenizer), and gaps in a tokenizer's ids: the ids with no token are never
sampled, never listed among the top logprobs and never reach the detokenizer."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from imagemini.api.errors import APIError
from imagemini.api.sampling import logit_bias_ids
from imagemini.engine.engine import Engine, EngineConfig
from imagemini.engine.params import SamplingParams

PADDED_VOCAB = 4096  # tests/conftest.py's padded_checkpoint: the tiny tokenizer has 384 tokens
GAP_END = 2000  # gapped_checkpoint's tokenizer has one more token, at this id


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


@pytest.fixture(scope="module")
def gapped_checkpoint(padded_checkpoint, tmp_path_factory):
    """The padded checkpoint whose tokenizer also has a token at id 2,000: ids 384-1,999 are a gap."""
    out = tmp_path_factory.mktemp("tiny-gapped")
    for f in padded_checkpoint.iterdir():
        shutil.copy(f, out / f.name)
    spec = json.loads((out / "tokenizer.json").read_text())
    spec["model"]["vocab"]["ĠZZZ"] = GAP_END
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    return out


def test_a_gap_in_the_tokenizers_ids_is_never_sampled_nor_biased(gapped_checkpoint):
    engine = Engine.from_checkpoint(gapped_checkpoint, EngineConfig(dtype="float32"))
    tok = engine.tokenizer
    assert tok.vocab_size == GAP_END + 1 and tok.no_token_ids == frozenset(range(384, GAP_END))
    assert tok.token_bytes(GAP_END) == b" ZZZ" and tok.token_bytes(GAP_END - 1) == b""
    params = [SamplingParams(max_tokens=100, temperature=2.0, seed=seed) for seed in range(3)]
    for out in engine.generate([prompt(engine)] * 3, params):
        assert not set(out["token_ids"]) & tok.no_token_ids and max(out["token_ids"]) <= GAP_END
    with pytest.raises(APIError) as refused:
        logit_bias_ids({str(GAP_END - 1): 100}, tok.vocab_size, tok.no_token_ids)
    assert refused.value.status == 400 and refused.value.param == "logit_bias"
    assert logit_bias_ids({str(GAP_END): 100}, tok.vocab_size, tok.no_token_ids) == {GAP_END: 100.0}
