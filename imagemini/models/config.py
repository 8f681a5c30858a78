"""Janus checkpoint configuration, read from the same `config.json` that
`transformers.JanusForConditionalGeneration` reads.

    cfg = JanusConfig.from_dir("models/bundled")

Only the fields the network needs are kept; unknown fields are ignored, unsupported
values (a RoPE type we do not implement, say) raise ValueError so that a checkpoint we
cannot run faithfully is refused at load time rather than served wrongly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ACTIVATIONS = {"gelu", "gelu_pytorch_tanh", "gelu_new", "quick_gelu", "silu"}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TextConfig":
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        _check(rope_type == "default", f"unsupported RoPE type {rope_type!r} (only 'default')")
        heads = d["num_attention_heads"]
        cfg = cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            max_position_embeddings=d.get("max_position_embeddings", 4096),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", d.get("rope_theta", 10000.0)),
            attention_bias=d.get("attention_bias", False),
            mlp_bias=d.get("mlp_bias", False),
            hidden_act=d.get("hidden_act", "silu"),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"),
        )
        _check(cfg.hidden_act in _ACTIVATIONS, f"unsupported text activation {cfg.hidden_act!r}")
        _check(heads % cfg.num_key_value_heads == 0, "num_attention_heads must be a multiple of num_key_value_heads")
        return cfg


@dataclass(frozen=True)
class VisionConfig:
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 384
    patch_size: int = 16
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    mlp_ratio: float = 4.0
    attention_bias: bool = True
    projection_dim: int = 2048
    use_qk_norm: bool = False
    depth: int = 2
    num_image_tokens: int = 576

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VisionConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        cfg = cls(**known)
        _check(cfg.hidden_act in _ACTIVATIONS, f"unsupported vision activation {cfg.hidden_act!r}")
        _check(cfg.image_size % cfg.patch_size == 0, "image_size must be a multiple of patch_size")
        _check(not cfg.use_qk_norm, "vision use_qk_norm is not supported")
        return cfg

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class VQConfig:
    embed_dim: int = 8
    num_embeddings: int = 16384
    double_latent: bool = False
    latent_channels: int = 256
    in_channels: int = 3
    base_channels: int = 128
    channel_multiplier: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    out_channels: int = 3
    projection_dim: int = 2048
    num_hidden_layers: int = 2
    hidden_act: str = "gelu"
    image_token_embed_dim: int = 2048
    num_patches: int = 32

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VQConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "channel_multiplier" in known:
            known["channel_multiplier"] = tuple(known["channel_multiplier"])
        cfg = cls(**known)
        _check(cfg.base_channels % 32 == 0, "vq base_channels must be a multiple of 32 (GroupNorm(32))")
        _check(cfg.hidden_act in _ACTIVATIONS, f"unsupported vq activation {cfg.hidden_act!r}")
        return cfg

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_multiplier) - 1)


@dataclass(frozen=True)
class JanusConfig:
    text: TextConfig
    vision: VisionConfig
    vq: VQConfig
    image_token_id: int
    tie_word_embeddings: bool = True
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JanusConfig":
        _check(d.get("model_type") == "janus", f"not a Janus checkpoint (model_type={d.get('model_type')!r})")
        vision = VisionConfig.from_dict(d.get("vision_config") or {})
        vq_dict = dict(d.get("vq_config") or {})
        # transformers derives this at load time; do the same so both agree.
        vq_dict["num_patches"] = vision.image_size // vision.patch_size
        vq = VQConfig.from_dict(vq_dict)
        text = TextConfig.from_dict(d["text_config"])
        _check(vq.image_token_embed_dim == text.hidden_size, "vq image_token_embed_dim must equal text hidden_size")
        _check(vision.projection_dim == text.hidden_size, "vision projection_dim must equal text hidden_size")
        return cls(
            text=text,
            vision=vision,
            vq=vq,
            image_token_id=d.get("image_token_id", 100581),
            tie_word_embeddings=d.get("tie_word_embeddings", True),
            raw=d,
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> "JanusConfig":
        return cls.from_dict(json.loads((Path(path) / "config.json").read_text()))

    @property
    def image_resolution(self) -> int:
        """Side of generated images in pixels: code grid side × VQ upsampling."""
        return self.vq.num_patches * self.vq.downsample_factor

    @property
    def num_image_tokens(self) -> int:
        return self.vision.num_image_tokens
