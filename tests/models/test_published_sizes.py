"""The published Janus-Pro sizes (random_fixture.PUBLISHED), checked without building weights:
the network built from each config has, name for name, the shapes of transformers'
JanusForConditionalGeneration built from the same config, both on the meta device."""

from __future__ import annotations

import pytest
import torch

from imagemini.models.config import JanusConfig
from imagemini.models.janus import Janus
from imagemini.models.random_fixture import (
    PUBLISHED,
    PUBLISHED_TOKENIZER_SIZE,
    PUBLISHED_VOCAB_SIZE,
    build_tokenizer,
    janus_config,
)

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(PUBLISHED_TOKENIZER_SIZE)


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


@pytest.mark.parametrize("size", sorted(PUBLISHED))
def test_parameter_names_and_shapes_match_transformers(size, tok):
    config = janus_config(size, PUBLISHED_VOCAB_SIZE, tok)
    with torch.device("meta"):
        ours = shapes(Janus(JanusConfig.from_dict(config)))
        theirs = shapes(transformers.JanusForConditionalGeneration(transformers.JanusConfig.from_dict(config)))
    assert sorted(set(ours) ^ set(theirs)) == []
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}


@pytest.mark.parametrize(("size", "billions"), [("pro-1b", 2.08), ("pro-7b", 7.41)])
def test_the_published_parts_at_full_size(size, billions, tok):
    cfg = JanusConfig.from_dict(janus_config(size, PUBLISHED_VOCAB_SIZE, tok))
    assert cfg.text.vocab_size == 102400 and cfg.text.max_position_embeddings == 16384
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.hidden_size, cfg.vision.num_hidden_layers) == (384, 16, 1024, 24)
    assert cfg.vq.num_embeddings == 16384 and cfg.vq.num_patches**2 == 576 and cfg.image_resolution == 384
    with torch.device("meta"):
        count = sum(p.numel() for p in Janus(cfg).parameters())
    assert round(count / 1e9, 2) == billions
