"""Fast checks of the VQ tokenizer training stages (imagemini.train.vq) on a tiny config: stage 1
trains, saves, resumes and loads; stage 1b trains the decoder alone."""

from __future__ import annotations

import json
import random

import torch
from safetensors.torch import load_file

from imagemini.models.config import VQConfig
from imagemini.models.vq import VQModel
from imagemini.train import vq as train
from imagemini.train import vq_codebook, vq_images
from imagemini.world import render_array, sample_scene

TINY = {**train.BUNDLED_VQ_CONFIG, "latent_channels": 32, "num_embeddings": 64}


def tiny_cfg(**kw) -> train.TrainConfig:
    base = dict(batch_size=4, lr=2e-3, lr_warmup_steps=1, kmeans_images=64, kmeans_iters=3,
                restart_every=2, eval_minutes=1e9, ckpt_minutes=1e9, eval_scenes=8, bf16=False)
    return train.TrainConfig(**{**base, **kw})


def test_training_lowers_loss_and_saves_unit_codebook(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg(ae_frac=0.5)
    vq, opt, state = train._new_state(TINY, cfg, seed=0)
    rng, gen = random.Random(0), torch.Generator().manual_seed(0)
    batch = vq_images.sample_batch(rng, 4)
    first = train._train_step(vq, opt, batch, state, cfg, gen)[0]
    for _ in range(8):
        last = train._train_step(vq, opt, batch, state, cfg, gen)[0]
    assert last < first
    train._init_codebook(vq, rng, cfg, gen)
    state["phase"] = "vq"
    for _ in range(3):
        state["step"] += 1
        train._train_step(vq, opt, batch, state, cfg, gen)
    vq_codebook.save_vq(vq, TINY, tmp_path)
    book = load_file(str(tmp_path / "vq.safetensors"))["quantize.embedding.weight"]
    assert torch.allclose(book.norm(dim=1), torch.ones(len(book)), atol=1e-5)


def test_train_vq_end_to_end_then_load_and_roundtrip(tmp_path):
    row = train.train_vq(tmp_path, minutes=0.1, cfg=tiny_cfg(ae_frac=0.3), vq_config=TINY, progress=False)
    assert row["phase"] == "vq" and 0 <= row["readback"] <= 1
    for name in ("last.pt", "best.pt", "vq.safetensors", "vq_config.json", "metrics.jsonl"):
        assert (tmp_path / name).exists()
    assert json.loads((tmp_path / "vq_config.json").read_text())["num_embeddings"] == 64
    vq = vq_codebook.load_vq(tmp_path)
    assert isinstance(vq, VQModel)
    rng = random.Random(1)
    x = vq_images.to_pixels(render_array(sample_scene(rng), 64, rng)[None])
    codes = vq.encode(x)
    assert codes.shape == (1, 256) and int(codes.max()) < 64
    assert vq.decode(codes).shape == (1, 3, 64, 64)
    # Resuming continues the same run: the step count only grows.
    state = torch.load(tmp_path / "last.pt", weights_only=False)["state"]
    again = train.train_vq(tmp_path, minutes=state["elapsed"] / 60 + 0.03, progress=False)
    assert again["step"] > state["step"]


def test_tune_decoder_trains_the_decoder_alone_and_keeps_a_better_one(tmp_path):
    """Stage 1b: codes keep their meaning (encoder, quant_conv and codebook bit-identical in the
    saved file), the decoder changes, and the file is replaced only by a decoder that scores
    better than the one it started from."""
    torch.manual_seed(0)
    vq_codebook.save_vq(VQModel(VQConfig.from_dict(TINY)), TINY, tmp_path)
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
