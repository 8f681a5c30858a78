"""Our Janus network against transformers' JanusForConditionalGeneration on the same files:
text logits, image-understanding logits, generation-head logits and VQ encode/decode, float32."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from imagemini.models.janus import load_janus  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def models(tiny_checkpoint):
    ours = load_janus(tiny_checkpoint, torch.float32)
    ref = transformers.JanusForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    return ours, ref


def _ids(cfg, batch: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, cfg.text.vocab_size, (batch, length), generator=g)
    ids[:, 0] = cfg.text.bos_token_id
    return ids


@torch.no_grad()
def test_text_logits_match(models):
    ours, ref = models
    ids = _ids(ours.cfg, 2, 37, seed=1)
    diff = (ours(ids) - ref(input_ids=ids).logits).abs().max().item()
    assert diff < TOL, diff


@torch.no_grad()
def test_image_understanding_logits_match(models):
    ours, ref = models
    cfg = ours.cfg
    n = cfg.vision.num_patches
    ids = _ids(cfg, 1, 10 + n, seed=2)
    ids[0, 5 : 5 + n] = cfg.image_token_id
    pixels = torch.rand(1, 3, cfg.vision.image_size, cfg.vision.image_size, generator=torch.Generator().manual_seed(3)) * 2 - 1
    a = ours(ids, pixel_values=pixels)
    b = ref(input_ids=ids, pixel_values=pixels).logits
    assert (a - b).abs().max().item() < TOL
    # The pixels really reach the logits: other pixels, other logits.
    assert (ours(ids, pixel_values=-pixels) - a).abs().max().item() > 1e-3


@torch.no_grad()
def test_generation_head_logits_match(models):
    ours, ref = models
    cfg = ours.cfg
    ids = _ids(cfg, 1, 9, seed=4)
    codes = torch.randint(0, cfg.vq.num_embeddings, (1, 12), generator=torch.Generator().manual_seed(5))
    embeds = torch.cat([ours.embed_tokens(ids), ours.embed_image_codes(codes)], dim=1)
    ours_logits = ours.image_logits(ours.hidden_states(embeds))
    ref_embeds = torch.cat([ref.get_input_embeddings()(ids), ref.prepare_embeddings_for_image_generation(codes)], dim=1)
    hidden = ref.model.language_model(inputs_embeds=ref_embeds).last_hidden_state
    ref_logits = ref.model.generation_head(hidden)
    assert (ours_logits - ref_logits).abs().max().item() < TOL


@torch.no_grad()
def test_vq_decode_and_encode_match(models):
    ours, ref = models
    cfg = ours.cfg
    codes = torch.randint(0, cfg.vq.num_embeddings, (2, cfg.vq.num_patches**2), generator=torch.Generator().manual_seed(6))
    pixels = ours.decode_image_codes(codes)
    assert pixels.shape[-1] == cfg.image_resolution
    assert (pixels - ref.model.vqmodel.decode(codes)).abs().max().item() < TOL
    image = torch.rand(2, 3, cfg.image_resolution, cfg.image_resolution, generator=torch.Generator().manual_seed(7)) * 2 - 1
    assert torch.equal(ours.model.vqmodel.encode(image), ref.model.vqmodel.encode(image).image_tokens.view(2, -1))
