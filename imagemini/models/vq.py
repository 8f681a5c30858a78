"""Janus' VQ-VAE image tokenizer (`model.vqmodel.*`): image <-> grid of discrete codes.

    codes = vq.encode(pixels)        # [n, 3, S, S] in [-1, 1] -> [n, (S/f)²] code ids
    pixels = vq.decode(codes)        # [n, (S/f)²] -> [n, 3, S, S]

Mirrors transformers' JanusVQVAE, including its asymmetry (docs/design.md, "Images in,
images out"): decoding looks up L2-normalised codebook vectors, encoding measures plain
distances. Checkpoints whose codebook is saved normalised (ours are) behave the same both ways.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VQConfig


class GroupNorm(nn.GroupNorm):
    """GroupNorm on a contiguous input. oneDNN convolutions hand back channels-last tensors, on
    which GroupNorm's CPU kernels (its backward above all) are ~50x slower (measured: 100 ms vs
    2 ms at [32, 32, 64, 64]). Same maths and parameter names."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)


def _norm(channels: int) -> nn.GroupNorm:
    return GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class AttnBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = x.shape
        q = self.q(h).reshape(b, c, hh * ww).transpose(1, 2)
        k = self.k(h).reshape(b, c, hh * ww)
        v = self.v(h).reshape(b, c, hh * ww)
        weights = F.softmax(torch.bmm(q, k) * (c**-0.5), dim=2)
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as the reference


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


def _level(blocks: list[nn.Module], attns: list[nn.Module], resample: nn.Module | None) -> nn.Module:
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList(attns)
    if resample is not None:
        level.add_module("downsample" if isinstance(resample, Downsample) else "upsample", resample)
    return level


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        mult = cfg.channel_multiplier
        last = len(mult) - 1
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        channels = cfg.base_channels
        for i, m in enumerate(mult):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(channels, cfg.base_channels * m))
                channels = cfg.base_channels * m
                if i == last:
                    attns.append(AttnBlock(channels))
            self.down.append(_level(blocks, attns, Downsample(channels) if i != last else None))
        self.mid = MidBlock(channels)
        self.norm_out = _norm(channels)
        out = 2 * cfg.latent_channels if cfg.double_latent else cfg.latent_channels
        self.conv_out = nn.Conv2d(channels, out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = _through_blocks(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def _through_blocks(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """One resolution level's resnet blocks, each followed by its attention block where the level has them."""
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
            h = level.attn[i](h)
    return h


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        mult = cfg.channel_multiplier
        last = len(mult) - 1
        channels = cfg.base_channels * mult[last]
        self.conv_in = nn.Conv2d(cfg.latent_channels, channels, 3, padding=1)
        self.mid = MidBlock(channels)
        self.up = nn.ModuleList()
        for i in reversed(range(len(mult))):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(channels, cfg.base_channels * mult[i]))
                channels = cfg.base_channels * mult[i]
                if i == last:
                    attns.append(AttnBlock(channels))
            self.up.append(_level(blocks, attns, Upsample(channels) if i != 0 else None))
        self.norm_out = _norm(channels)
        self.conv_out = nn.Conv2d(channels, cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in self.up:
            h = _through_blocks(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Quantizer(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(cfg.num_embeddings, cfg.embed_dim)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z [n, C, h, w] -> code ids [n, h*w] by plain squared distance (as the reference)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        book = self.embedding.weight
        dist = flat.pow(2).sum(1, keepdim=True) + book.pow(2).sum(1) - 2 * flat @ book.t()
        return dist.argmin(1).view(z.shape[0], -1)

    def lookup(self, codes: torch.Tensor, side: int) -> torch.Tensor:
        """code ids [n, side²] -> normalised latents [n, C, side, side]."""
        z = F.normalize(self.embedding(codes), p=2, dim=-1)
        return z.view(codes.shape[0], side, side, -1).permute(0, 3, 1, 2).contiguous()


class VQModel(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantize = Quantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.latent_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.latent_channels, 1)
        self.decoder = Decoder(cfg)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.quantize.nearest(self.quant_conv(self.encoder(pixels)))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        side = self.cfg.num_patches
        if codes.shape[1] != side * side:
            raise ValueError(f"expected {side * side} image codes per image, got {codes.shape[1]}")
        return self.decoder(self.post_quant_conv(self.quantize.lookup(codes, side)))
