"""Fast checks of the VQ tokenizer training stage (imagemini.train.vq) on a tiny config."""

from __future__ import annotations

import json
import random

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from imagemini.models.config import VQConfig
from imagemini.models.vq import VQModel
from imagemini.train import vq as train
from imagemini.world import render_array, sample_scene

TINY = {**train.BUNDLED_VQ_CONFIG, "latent_channels": 32, "num_embeddings": 64}


def tiny_cfg(**kw) -> train.TrainConfig:
    base = dict(batch_size=4, lr=2e-3, lr_warmup_steps=1, kmeans_images=64, kmeans_iters=3,
                restart_every=2, eval_minutes=1e9, ckpt_minutes=1e9, eval_scenes=8, bf16=False)
    return train.TrainConfig(**{**base, **kw})


def test_quantize_picks_nearest_unit_code_and_passes_gradient():
    book = torch.randn(16, 8)
    z = torch.randn(2, 8, 3, 3, requires_grad=True)
    zq, codes, loss = train.quantize(z, book, beta=0.25)
    unit = F.normalize(book, dim=1)
    flat = F.normalize(z.detach(), dim=1).permute(0, 2, 3, 1).reshape(-1, 8)
    assert torch.equal(codes.flatten(), (flat @ unit.t()).argmax(1))
    assert torch.allclose(zq.detach().permute(0, 2, 3, 1).reshape(-1, 8), unit[codes.flatten()], atol=1e-6)
    assert loss.item() > 0
    zq.sum().backward()  # straight-through: gradient reaches the encoder side
    assert z.grad is not None and z.grad.abs().sum() > 0
    # With unit codes, the reference's plain-distance encode agrees with cosine.
    q = VQModel(VQConfig.from_dict({**TINY, "num_embeddings": 16, "embed_dim": 8})).quantize
    q.embedding.weight.data.copy_(unit)
    assert torch.equal(q.nearest(z.detach()), codes)


def test_kmeans_and_dead_code_restart():
    gen = torch.Generator().manual_seed(0)
    pts = F.normalize(torch.randn(200, 4), dim=1)
    book = train.spherical_kmeans(pts, 8, 5, gen)
    assert torch.allclose(book.norm(dim=1), torch.ones(8), atol=1e-5)
    usage = torch.ones(8)
    usage[:3] = 0
    assert train.restart_dead_codes(book, usage, pts, 0.5, gen) == 3
    assert (usage >= 0.5).all()


def test_training_lowers_loss_and_saves_unit_codebook(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg(ae_frac=0.5)
    vq, opt, state = train._new_state(TINY, cfg, seed=0)
    rng, gen = random.Random(0), torch.Generator().manual_seed(0)
    batch = train.sample_batch(rng, 4)
    first = train._train_step(vq, opt, batch, state, cfg, gen)[0]
    for _ in range(8):
        last = train._train_step(vq, opt, batch, state, cfg, gen)[0]
    assert last < first
    train._init_codebook(vq, rng, cfg, gen)
    state["phase"] = "vq"
    for _ in range(3):
        state["step"] += 1
        train._train_step(vq, opt, batch, state, cfg, gen)
    train.save_vq(vq, TINY, tmp_path)
    book = load_file(str(tmp_path / "vq.safetensors"))["quantize.embedding.weight"]
    assert torch.allclose(book.norm(dim=1), torch.ones(len(book)), atol=1e-5)


def test_train_vq_end_to_end_then_load_and_roundtrip(tmp_path):
    row = train.train_vq(tmp_path, minutes=0.1, cfg=tiny_cfg(ae_frac=0.3), vq_config=TINY, progress=False)
    assert row["phase"] == "vq" and 0 <= row["readback"] <= 1
    for name in ("last.pt", "best.pt", "vq.safetensors", "vq_config.json", "metrics.jsonl"):
        assert (tmp_path / name).exists()
    assert json.loads((tmp_path / "vq_config.json").read_text())["num_embeddings"] == 64
    vq = train.load_vq(tmp_path)
    assert isinstance(vq, VQModel)
    rng = random.Random(1)
    x = train.to_pixels(render_array(sample_scene(rng), 64, rng)[None])
    codes = vq.encode(x)
    assert codes.shape == (1, 256) and int(codes.max()) < 64
    assert vq.decode(codes).shape == (1, 3, 64, 64)
    # Resuming continues the same run: the step count only grows.
    state = torch.load(tmp_path / "last.pt", weights_only=False)["state"]
    again = train.train_vq(tmp_path, minutes=state["elapsed"] / 60 + 0.03, progress=False)
    assert again["step"] > state["step"]


def test_evaluate_readback_reports_perfect_identity():
    scenes, images = train.heldout_set(6, seed=3)

    class Identity(torch.nn.Module):  # a "VQ" that reconstructs perfectly
        cfg = VQConfig.from_dict(TINY)

        def encode(self, x):
            self.x = x
            return torch.zeros(len(x), 256, dtype=torch.long)

        def decode(self, codes):
            return self.x

    res = train.evaluate_readback(Identity(), scenes, images)
    assert res["readback"] == 1.0 and res["mse"] < 1e-4 and res["palette_acc"] == 1.0
    assert res["codes_used"] == 1


def test_synonym_map_merges_near_duplicate_codes_only():
    torch.manual_seed(0)
    vq = VQModel(VQConfig.from_dict(TINY)).eval()
    book = vq.quantize.embedding.weight
    with torch.no_grad():
        book.copy_(torch.nn.functional.normalize(torch.randn_like(book), dim=-1))  # typical distances ~1.4
        book[5] = torch.nn.functional.normalize(book[3] + 0.02 * torch.randn_like(book[3]), dim=0)
        book[9] = torch.nn.functional.normalize(book[5] + 0.02 * torch.randn_like(book[5]), dim=0)  # a chain
    mapping = train.synonym_map(vq, threshold=0.2, n_images=16)
    assert mapping.shape == (book.shape[0],)
    assert mapping[3] == mapping[5] == mapping[9] and int(mapping[3]) in (3, 5, 9)
    others = [c for c in range(book.shape[0]) if c not in (3, 5, 9)]
    assert mapping[others].tolist() == others  # distinct codes stay themselves
    assert torch.equal(mapping[mapping], mapping)  # representatives map to themselves


def test_tune_decoder_trains_the_decoder_alone_and_keeps_a_better_one(tmp_path):
    """Stage 1b: codes keep their meaning (encoder, quant_conv and codebook bit-identical in the
    saved file), the decoder changes, and the file is replaced only by a decoder that scores
    better than the one it started from."""
    torch.manual_seed(0)
    train.save_vq(VQModel(VQConfig.from_dict(TINY)), TINY, tmp_path)
    start = load_file(str(tmp_path / "vq.safetensors"))
    result = train.tune_decoder(tmp_path, minutes=0.05, cfg=tiny_cfg(eval_minutes=1e9), progress=False)
    assert result["after"]["mse"] < result["before"]["mse"]
    tuned = load_file(str(tmp_path / "vq.safetensors"))
    for name, tensor in start.items():
        frozen = not name.startswith(("decoder.", "post_quant_conv."))
        assert torch.equal(tuned[name], tensor) == frozen, name
    # The budget counts across calls: spent, a second call trains nothing.
    again = train.tune_decoder(tmp_path, minutes=0.05, cfg=tiny_cfg(eval_minutes=1e9), progress=False)
    assert again["after"] is again["before"]
    assert all(torch.equal(t, tuned[k]) for k, t in load_file(str(tmp_path / "vq.safetensors")).items())
