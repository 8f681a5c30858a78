"""Readback (imagemini.train.vq_images): what the stage keeps its best model by."""

from __future__ import annotations

import torch

from imagemini.models.config import VQConfig
from imagemini.train import vq_images
from imagemini.train.vq import BUNDLED_VQ_CONFIG


def test_evaluate_readback_reports_perfect_identity():
    scenes, images = vq_images.heldout_set(6, seed=3)

    class Identity(torch.nn.Module):  # a "VQ" that reconstructs perfectly
        cfg = VQConfig.from_dict(BUNDLED_VQ_CONFIG)

        def encode(self, x):
            self.x = x
            return torch.zeros(len(x), 256, dtype=torch.long)

        def decode(self, codes):
            return self.x

    res = vq_images.evaluate_readback(Identity(), scenes, images)
    assert res["readback"] == 1.0 and res["mse"] < 1e-4 and res["palette_acc"] == 1.0
    assert res["codes_used"] == 1
