"""The Llama decoder that carries Janus' text and image tokens (`model.language_model.*`).

Every layer works on a flat list of token rows `[N, hidden]` with their positions; how
those rows attend to earlier tokens is the caller's business, passed in as `attend`:

    attend(layer_index, q [N, Hq, D], k [N, Hkv, D], v [N, Hkv, D]) -> [N, Hq, D]

The training/reference path attends inside a padded [B, T] batch (`padded_causal_attend`);
the engine attends per sequence against its KV cache. One network, two attention plans.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextConfig
from .layers import DirectCall, Linear, RMSNorm, activation, fuse_linears

Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin' of shape [N, head_dim] for integer positions [N] (Llama's default RoPE), where
    sin' is sin with its first half negated: see apply_rope."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=positions.device) / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), torch.cat((-freqs.sin(), freqs.sin()), dim=-1).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Llama's x·cos + rotate_half(x)·sin for x [N, H, D], cos and sin' [N, 1, D]. rotate_half(x) is
    (-x₂, x₁) and roll(x) is (x₂, x₁): with sin's first half negated the products are the same
    numbers bit for bit (negation is exact), in two fewer operations."""
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * signed_sin


class Attention(DirectCall, nn.Module):
    def __init__(self, cfg: TextConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_proj = Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=cfg.attention_bias)
        self.k_proj = Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=cfg.attention_bias)
        self.v_proj = Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=cfg.attention_bias)
        self.o_proj = Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=cfg.attention_bias)

        self.qkv_proj: Linear | None = None

    def fuse(self) -> None:
        """One matmul for q, k and v (inference): the three weights become views of one."""
        self.qkv_proj = fuse_linears([self.q_proj, self.k_proj, self.v_proj])

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend) -> torch.Tensor:
        n = x.shape[0]
        if self.qkv_proj is not None:
            # q and k are neighbours in the fused output: rotate them in one go.
            qkv = self.qkv_proj(x).view(n, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
            qk = apply_rope(qkv[:, : self.num_heads + self.num_kv_heads], cos, sin)
            q, k, v = qk[:, : self.num_heads], qk[:, self.num_heads :], qkv[:, self.num_heads + self.num_kv_heads :]
        else:
            q = apply_rope(self.q_proj(x).view(n, self.num_heads, self.head_dim), cos, sin)
            k = apply_rope(self.k_proj(x).view(n, self.num_kv_heads, self.head_dim), cos, sin)
            v = self.v_proj(x).view(n, self.num_kv_heads, self.head_dim)
        out = attend(self.layer_index, q, k, v)
        return self.o_proj(out.reshape(n, self.num_heads * self.head_dim))


class MLP(DirectCall, nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)
        self.act = activation(cfg.hidden_act)
        self.gate_up_proj: Linear | None = None

    def fuse(self) -> None:
        self.gate_up_proj = fuse_linears([self.gate_proj, self.up_proj])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(self.act(gate) * up)


class DecoderLayer(DirectCall, nn.Module):
    def __init__(self, cfg: TextConfig, layer_index: int) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, layer_index)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attend)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(DirectCall, nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

        self._rope_table: tuple[torch.Tensor, torch.Tensor] | None = None

    def fuse(self) -> None:
        """Inference form: fused projections and a precomputed RoPE table (same values)."""
        for layer in self.layers:
            layer.self_attn.fuse()
            layer.mlp.fuse()
        dtype = self.embed_tokens.weight.dtype
        cos, sin = rope_cos_sin(torch.arange(self.cfg.max_position_embeddings), self.cfg.head_dim, self.cfg.rope_theta, dtype)
        device = self.embed_tokens.weight.device  # computed on the host (the same table on any device), kept beside the weights
        self._rope_table = cos[:, None, :].to(device), sin[:, None, :].to(device)

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, attend: Attend) -> torch.Tensor:
        """embeds [N, hidden], positions [N] -> final-normed hidden states [N, hidden]."""
        if self._rope_table is not None:  # [positions, 1, head_dim]: broadcast over heads
            cos, sin = self._rope_table[0][positions], self._rope_table[1][positions]
        else:
            cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, embeds.dtype)
            cos, sin = cos[:, None, :], sin[:, None, :]
        x = embeds
        for layer in self.layers:
            x = layer(x, cos, sin, attend)
        return self.norm(x)


def padded_causal_attend(batch: int, length: int, key_mask: torch.Tensor | None = None) -> Attend:
    """Attention for rows that are a [batch, length] grid flattened: causal, optionally with a
    [batch, length] bool mask of real (True) vs padding (False) keys."""
    mask = None  # plain causal attention: the fast kernel
    if key_mask is not None:
        mask = torch.ones(length, length, dtype=torch.bool, device=key_mask.device).tril()[None, None] & key_mask[:, None, None, :]
        # A fully padded query row would softmax over nothing; let it see itself instead.
        mask = mask | torch.eye(length, dtype=torch.bool, device=key_mask.device)[None, None]

    def attend(layer_index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        heads, d = q.shape[1], q.shape[2]
        q4 = q.view(batch, length, heads, d).transpose(1, 2)
        k4 = k.view(batch, length, k.shape[1], d).transpose(1, 2)
        v4 = v.view(batch, length, v.shape[1], d).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q4, k4, v4, attn_mask=mask, is_causal=mask is None, enable_gqa=heads != k.shape[1]
        )
        return out.transpose(1, 2).reshape(batch * length, heads, d)

    return attend
