"""Fixtures of the stage-2 tests: `toy`, a stage-1 output directory with a small VQ, and the
network shapes patched down to toy size for the test."""

from __future__ import annotations

import pytest
import torch

from imagemini.models.config import VQConfig
from imagemini.models.vq import VQModel
from imagemini.train import lm_config
from imagemini.train.vq import BUNDLED_VQ_CONFIG
from imagemini.train.vq_codebook import save_vq


@pytest.fixture
def toy(monkeypatch, tmp_path):
    monkeypatch.setattr(lm_config, "TEXT", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                                num_attention_heads=2, num_key_value_heads=2))
    monkeypatch.setattr(lm_config, "VISION", dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                  patch_size=4, mlp_ratio=2.0))
    config = {**BUNDLED_VQ_CONFIG, "num_embeddings": 64}
    torch.manual_seed(0)
    save_vq(VQModel(VQConfig.from_dict(config)), config, tmp_path)
    return tmp_path
