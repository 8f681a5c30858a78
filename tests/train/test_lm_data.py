"""Stage 2's batches (imagemini.train.lm_data): each echoed and drawn picture's codes land in its
own positions, in order."""

from __future__ import annotations

import pytest
import torch

from imagemini.models.janus import load_janus
from imagemini.train import lm_data, lm_vision
from imagemini.train.vq_images import to_pixels


@pytest.mark.parametrize("echo", [False, True])
def test_echoed_and_drawn_images_get_their_own_codes_in_order(monkeypatch, echo_checkpoint, plain_checkpoint, echo):
    """Collator leaves -1 where an echoed or drawn image's codes go; on_device fills each run with
    the VQ codes of that sample's image, in order (nothing shifted between samples or images): the
    echo (the source picture) first, then the drawn one. An unconditional row has no echo."""
    import random

    import numpy as np

    from imagemini.models.processor import Processor
    from imagemini.world.tasks import generate

    checkpoint = echo_checkpoint if echo else plain_checkpoint
    model, proc = load_janus(checkpoint, torch.float32), Processor.from_dir(checkpoint)
    assert (proc.echo is not None) == echo
    examples = generate(random.Random(5), 12, tasks={"draw": 1.0, "edit_move": 1.0})
    samples = [s for s in (lm_data.build_sample(e, proc) for e in examples) if s is not None]
    assert any(s.echo_image is not None for s in samples) == echo
    monkeypatch.setattr(lm_data, "UNCOND_RATE", 0.0)
    batch = lm_data.Collator(proc, random.Random(0), grid=16)(samples)
    pictures = [[*([s.echo_image] if s.echo_image is not None else []), *s.drawn_images] for s in samples]
    assert len(batch["code_slots"]) == int((batch["ids"] == -1).sum()) == 256 * sum(map(len, pictures)) > 0
    code_map = torch.randperm(model.cfg.vq.num_embeddings, generator=torch.Generator().manual_seed(0))
    ids = lm_data.on_device(batch, model, proc, code_map)["ids"]
    assert not (ids == -1).any()
    vocab = model.cfg.text.vocab_size
    # One encode of every image, as on_device does (GEMM results depend on the batch size).
    flat = [r for refs in pictures for r in refs]
    pixels = to_pixels(np.stack([np.array(lm_vision.render_ref(r)) for r in flat]))
    encoded = iter(code_map[model.model.vqmodel.encode(pixels)])
    for row, refs in zip(ids, pictures):
        want = [next(encoded) for _ in refs]
        assert torch.equal(row[row >= vocab] - vocab, torch.cat(want))
    assert len({tuple(c.tolist()) for c in model.model.vqmodel.encode(pixels)}) == len(flat)  # all differ

    monkeypatch.setattr(lm_data, "UNCOND_RATE", 1.0)  # every drawing row unconditional: prompt and echo padded out
    batch = lm_data.Collator(proc, random.Random(0), grid=16)(samples)
    assert int((batch["ids"] == -1).sum()) == 256 * sum(len(s.drawn_images) for s in samples)
    assert batch["coded"].shape[0] == sum(len(s.drawn_images) for s in samples)
