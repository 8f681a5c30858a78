"""The bundled checkpoint (once trained): loads in stock transformers and in our engine, and
both give the same logits on the same inputs (float32)."""

from __future__ import annotations

import pytest
import torch

from imagemini.cli import BUNDLED_MODEL
from imagemini.models.janus import load_janus
from imagemini.models.processor import Processor
from imagemini.world import render, sample_scene

pytestmark = pytest.mark.skipif(
    not (BUNDLED_MODEL / "model.safetensors").exists(), reason="no bundled checkpoint in this checkout"
)


@torch.no_grad()
def test_bundled_checkpoint_matches_transformers():
    transformers = pytest.importorskip("transformers")
    import random

    ref = transformers.JanusForConditionalGeneration.from_pretrained(BUNDLED_MODEL, dtype=torch.float32).eval()
    ours = load_janus(BUNDLED_MODEL, torch.float32)
    proc = Processor.from_dir(BUNDLED_MODEL)
    tok = proc.tokenizer
    text = tok.render_chat([{"role": "user", "content": "<image_placeholder>\nDescribe the image."}])
    ids = torch.tensor([proc.expand_images(tok.encode(text))])
    image = render(sample_scene(random.Random(0)), proc.image_cfg.size, rng=random.Random(1))
    pixels = proc.preprocess(image)[None]
    a = ours(ids, pixel_values=pixels)
    b = ref(input_ids=ids, pixel_values=pixels).logits
    assert (a - b).abs().max().item() < 1e-4
