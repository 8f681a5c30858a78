"""The VQ's codebook (imagemini.train.vq_codebook): the cosine quantiser, k-means and dead-code
restarts, and the synonym map of near-duplicate codes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imagemini.models.config import VQConfig
from imagemini.models.vq import VQModel
from imagemini.train import vq_codebook
from imagemini.train.vq import BUNDLED_VQ_CONFIG

TINY = {**BUNDLED_VQ_CONFIG, "latent_channels": 32, "num_embeddings": 64}


def test_quantize_picks_nearest_unit_code_and_passes_gradient():
    book = torch.randn(16, 8)
    z = torch.randn(2, 8, 3, 3, requires_grad=True)
    zq, codes, loss = vq_codebook.quantize(z, book, beta=0.25)
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
    book = vq_codebook.spherical_kmeans(pts, 8, 5, gen)
    assert torch.allclose(book.norm(dim=1), torch.ones(8), atol=1e-5)
    usage = torch.ones(8)
    usage[:3] = 0
    assert vq_codebook.restart_dead_codes(book, usage, pts, 0.5, gen) == 3
    assert (usage >= 0.5).all()


def test_synonym_map_merges_near_duplicate_codes_only():
    torch.manual_seed(0)
    vq = VQModel(VQConfig.from_dict(TINY)).eval()
    book = vq.quantize.embedding.weight
    with torch.no_grad():
        book.copy_(torch.nn.functional.normalize(torch.randn_like(book), dim=-1))  # typical distances ~1.4
        book[5] = torch.nn.functional.normalize(book[3] + 0.02 * torch.randn_like(book[3]), dim=0)
        book[9] = torch.nn.functional.normalize(book[5] + 0.02 * torch.randn_like(book[5]), dim=0)  # a chain
    mapping = vq_codebook.synonym_map(vq, threshold=0.2, n_images=16)
    assert mapping.shape == (book.shape[0],)
    assert mapping[3] == mapping[5] == mapping[9] and int(mapping[3]) in (3, 5, 9)
    others = [c for c in range(book.shape[0]) if c not in (3, 5, 9)]
    assert mapping[others].tolist() == others  # distinct codes stay themselves
    assert torch.equal(mapping[mapping], mapping)  # representatives map to themselves
