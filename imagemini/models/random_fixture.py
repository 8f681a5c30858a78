"""A randomly initialised Janus checkpoint, built with a fixed seed, for tests and benchmarks.

    python -m imagemini.models.random_fixture OUT_DIR [--size tiny|small|pro-1b|pro-7b] [--vocab-size N] [--device cuda]

THIS IS A TEST FIXTURE, NOT A MODEL: its weights are random (seed 0) and it answers gibberish.
It exists so that the network, the engine and the API can be checked exactly against
`transformers` on the same files, before and independently of the trained bundled model.
Its tokenizer speaks the bundled model's chat format (`chat_format.py`). Same seed and size ->
byte-identical files (for pro-1b and pro-7b: same seed, size and `--device`).

`tiny` and `small` are small enough for CPU tests and benchmarks (one `model.safetensors`).
`pro-1b` and `pro-7b` have the published Janus-Pro networks at full size (text decoder, SigLIP-L
vision encoder at 384 px, the 16,384-code VQ with 576 codes an image, the generation head; see
PUBLISHED) in the published layout: bfloat16 shards named by `model.safetensors.index.json`,
with the processor, tokenizer and chat-template files such a checkpoint ships. Their vocabulary
is padded like the published one: 102,400 rows, of which only the tokenizer's first ids have a
token (the rest are never sampled: engine.py). They are built on demand into a cache outside the
repository (`cached(size)`); pro-1b takes about 4 GB of disk, pro-7b about 15 GB. Drawing
pro-7b's 7.4 billion normal values takes about a minute on one CPU core (the generator is
sequential); `--device cuda` draws them on the GPU in about a second, so writing the files is
all that is left (other values than the CPU's: CUDA's generator is another one).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .chat_format import CHAT_TEMPLATE, SPECIAL_TOKENS, tokenizer_config
from .config import JanusConfig
from .janus import Janus
from .weights import INDEX_FILE, SINGLE_FILE

SIZES = {
    # text decoder, vision encoder, VQ: kept small so CPU tests run in seconds
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, inter=128, vocab=384),
    # the scale of the bundled model: what benchmarks run on
    "small": dict(hidden=256, layers=4, heads=4, kv_heads=4, inter=768, vocab=1024),
}

# The published Janus-Pro text decoders. Janus-Pro-1B: the config.json of its transformers
# conversion (deepseek-community/Janus-Pro-1B, as mirrored in hf-internal-testing/tiny-processor-janus);
# Janus-Pro-7B: deepseek-ai/Janus-Pro-7B's config.json (language_config and its top-level Llama
# fields). Both: head_dim 128, rope_theta 10000, rms_norm_eps 1e-6, 16,384 positions, vocab 102,400,
# no tied embeddings. Their vision encoder and VQ are transformers' JanusVisionConfig and
# JanusVQVAEConfig defaults (which are Janus-Pro's), with the aligner, generation aligner and
# generation head at the decoder's width (the converter's n_embed / image_token_embed).
PUBLISHED = {
    "pro-1b": dict(hidden=2048, layers=24, heads=16, kv_heads=16, inter=5632),
    "pro-7b": dict(hidden=4096, layers=30, heads=32, kv_heads=32, inter=11008),
}
PUBLISHED_VOCAB_SIZE = 102400
PUBLISHED_CONTEXT = 16384
PUBLISHED_TOKENIZER_SIZE = 1024  # our own small tokenizer: ids from here to 102,400 have no token
SHARD_BYTES = 1 << 30


def _corpus() -> list[str]:
    shapes = ["circle", "square", "triangle", "cross"]
    colors = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
    where = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]
    lines = ["Hello! I can describe, draw and edit pictures of simple shapes. Ünïcödé → 形状 ✓ 🙂"]
    for i, s in enumerate(shapes):
        for j, c in enumerate(colors):
            w = where[(i + j) % len(where)]
            lines.append(f"A large {c} {s} at the {w} on a white background. How many {s}s are there? {i + 1}.")
    return lines * 4


def build_tokenizer(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


def _text_config(size: str, vocab_size: int, tok: Tokenizer) -> dict:
    s = SIZES.get(size) or PUBLISHED[size]
    published = size in PUBLISHED
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": s["hidden"],
        "intermediate_size": s["inter"],
        "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"],
        "head_dim": s["hidden"] // s["heads"],
        "max_position_embeddings": PUBLISHED_CONTEXT if published else 1024,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "bos_token_id": tok.token_to_id(SPECIAL_TOKENS[0]),
        "eos_token_id": tok.token_to_id(SPECIAL_TOKENS[1]),
        "pad_token_id": tok.token_to_id(SPECIAL_TOKENS[2]),
        "tie_word_embeddings": False,
    }


def _published_parts(hidden: int) -> tuple[dict, dict]:
    """Janus-Pro's vision encoder (SigLIP-L, 384 px, patches of 16: 576 image tokens) and VQ
    (16,384 codes of 8 dims, 16x down: a 24x24 grid), aligned to a decoder of width `hidden`."""
    vision = {
        "model_type": "janus_vision_model", "hidden_size": 1024, "num_hidden_layers": 24,
        "num_attention_heads": 16, "num_channels": 3, "image_size": 384, "patch_size": 16,
        "hidden_act": "gelu", "layer_norm_eps": 1e-6, "mlp_ratio": 4.0, "attention_bias": True,
        "projection_dim": hidden, "use_qk_norm": False, "depth": 2, "num_image_tokens": 576,
    }
    vq = {
        "model_type": "janus_vqgan", "embed_dim": 8, "num_embeddings": 16384, "double_latent": False,
        "latent_channels": 256, "in_channels": 3, "base_channels": 128, "channel_multiplier": [1, 1, 2, 2, 4],
        "num_res_blocks": 2, "out_channels": 3, "projection_dim": hidden, "image_token_embed_dim": hidden,
        "num_hidden_layers": 2, "hidden_act": "gelu",
    }
    return vision, vq


def _small_parts(hidden: int) -> tuple[dict, dict]:
    vision = {
        "model_type": "janus_vision_model", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": 64, "patch_size": 8, "projection_dim": hidden, "num_image_tokens": 64, "depth": 2,
        "hidden_act": "gelu",
    }
    vq = {
        "model_type": "janus_vqgan", "embed_dim": 8, "num_embeddings": 256, "latent_channels": 32,
        "base_channels": 32, "channel_multiplier": [1, 1, 2, 2], "num_res_blocks": 1, "projection_dim": hidden,
        "image_token_embed_dim": hidden, "num_hidden_layers": 2, "hidden_act": "gelu",
    }
    return vision, vq


def janus_config(size: str, vocab_size: int, tok: Tokenizer) -> dict:
    text = _text_config(size, vocab_size, tok)
    parts = _published_parts if size in PUBLISHED else _small_parts
    vision, vq = parts(text["hidden_size"])
    config = {
        "architectures": ["JanusForConditionalGeneration"],
        "model_type": "janus",
        "image_token_id": tok.token_to_id("<image_placeholder>"),
        "tie_word_embeddings": False,
        "text_config": text,
        "vision_config": vision,
        "vq_config": vq,
    }
    if size in PUBLISHED:
        config["dtype"] = "bfloat16"
    return config


def build(
    out_dir: str | Path,
    size: str = "tiny",
    seed: int = 0,
    vocab_size: int | None = None,
    shard_bytes: int | None = None,
    device: str = "cpu",
) -> Path:
    """Write the fixture. `vocab_size` pads the network's vocabulary past the tokenizer's (the
    published sizes: 102,400); `shard_bytes` splits the weights into shards of at most that many
    bytes with an index (the published sizes: 1 GiB), else one `model.safetensors`; `device`
    is where the published sizes' random values are drawn (tiny and small: on the CPU only)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    published = size in PUBLISHED
    tok = build_tokenizer(PUBLISHED_TOKENIZER_SIZE if published else SIZES[size]["vocab"])
    tokens = tok.get_vocab_size(with_added_tokens=True)
    vocab_size = vocab_size or (PUBLISHED_VOCAB_SIZE if published else tokens)
    if vocab_size < tokens:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {tokens} tokens")
    config = janus_config(size, vocab_size, tok)
    if not published and torch.device(device).type != "cpu":
        raise ValueError(f"the {size} fixture is built on the CPU; --device is for {' and '.join(PUBLISHED)}")
    if published:
        shapes, make = _streamed_weights(JanusConfig.from_dict(config), seed, device)
        shard_bytes = shard_bytes or SHARD_BYTES
    else:
        state = _small_weights(JanusConfig.from_dict(config), seed)
        shapes, make = {k: (v.shape, v.dtype) for k, v in state.items()}, state.pop
    save_weights(out, shapes, make, shard_bytes)
    _write_side_files(out, config, tok, size, seed)
    return out


def _small_weights(cfg: JanusConfig, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = Janus(cfg)
    # Random weights of the scale a trained model has, so logits are not degenerate.
    with torch.no_grad():
        model.model.language_model.embed_tokens.weight.normal_(0.0, 0.5)
        model.lm_head.weight.normal_(0.0, 0.25)  # logits of a few nats' spread: sampling is not degenerate
        model.model.generation_embeddings.weight.normal_(0.0, 1.0)
        book = model.model.vqmodel.quantize.embedding.weight
        book.copy_(torch.nn.functional.normalize(book.normal_(), dim=-1))
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _streamed_weights(cfg: JanusConfig, seed: int, device: str = "cpu"):
    """Shapes of every tensor, and a function that makes one (bfloat16, on the CPU) on demand: a
    full-size network is never held whole. Norm scales are ones, biases zeros, everything else
    N(0, 0.02) (transformers' initializer_range), the codebook unit vectors; drawn on `device`."""
    with torch.device("meta"):
        shapes = {k: (v.shape, torch.bfloat16) for k, v in Janus(cfg).state_dict().items()}
    generator = torch.Generator(device).manual_seed(seed)

    def make(name: str) -> torch.Tensor:
        shape = shapes[name][0]
        if name.endswith(".bias"):
            return torch.zeros(shape, dtype=torch.bfloat16)
        if len(shape) == 1:
            return torch.ones(shape, dtype=torch.bfloat16)
        values = torch.empty(shape, device=device).normal_(0.0, 0.02, generator=generator)
        if name.endswith("quantize.embedding.weight"):
            values = torch.nn.functional.normalize(values, dim=-1)
        return values.to(torch.bfloat16).cpu()

    return shapes, make


def save_weights(
    out: Path,
    shapes: dict[str, tuple[torch.Size, torch.dtype]],
    make: Callable[[str], torch.Tensor],
    shard_bytes: int | None = None,
) -> None:
    """One `model.safetensors`, or shards of at most `shard_bytes` (a tensor larger than that gets
    a shard of its own) named `model-0000i-of-0000n.safetensors` with transformers' index. Only
    one shard's tensors are in memory at a time."""
    names = list(shapes)
    if shard_bytes is None:
        save_file({k: make(k) for k in names}, str(out / SINGLE_FILE), metadata={"format": "pt"})
        return
    nbytes = {k: shapes[k][0].numel() * shapes[k][1].itemsize for k in names}
    shards: list[list[str]] = [[]]
    for name in names:
        if shards[-1] and sum(nbytes[k] for k in shards[-1]) + nbytes[name] > shard_bytes:
            shards.append([])
        shards[-1].append(name)
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: make(k) for k in shard}, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    index = {"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2))


def _write_side_files(out: Path, config: dict, tok: Tokenizer, size: str, seed: int) -> None:
    text = config["text_config"]
    tok.save(str(out / "tokenizer.json"))
    tokenizer_settings = tokenizer_config()
    if size in PUBLISHED:
        tokenizer_settings = {**tokenizer_settings, "model_max_length": PUBLISHED_CONTEXT}
        _write_published_processor_files(out, config)
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_settings, indent=2, ensure_ascii=False))
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": text["bos_token_id"],
        "eos_token_id": text["eos_token_id"],
        "pad_token_id": text["pad_token_id"],
        "guidance_scale": 5.0,
        "generation_kwargs": {"boi_token_id": tok.token_to_id("<begin_of_image>")},
    }, indent=2))
    (out / "README.md").write_text(
        f"# Random Janus test fixture ({size}, seed {seed})\n\n"
        "NOT A MODEL: randomly initialised weights for exact reference tests. "
        "Built by `python -m imagemini.models.random_fixture`.\n"
    )
    (out / "config.json").write_text(json.dumps(config, indent=2))  # last: its presence means a whole build


def _write_published_processor_files(out: Path, config: dict) -> None:
    """The processor files a transformers Janus-Pro checkpoint ships: Janus-Pro's image settings
    (384 px, mean and std 0.5: deepseek-ai/Janus-Pro-1B's preprocessor_config.json), the special
    tokens map and the chat template beside the tokenizer."""
    side = config["vision_config"]["image_size"]
    files = {
        "preprocessor_config.json": {
            "image_processor_type": "JanusImageProcessor", "processor_class": "JanusProcessor",
            "do_convert_rgb": True, "do_resize": True, "size": {"height": side, "width": side}, "min_size": 14,
            "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_pad": True,
        },
        "processor_config.json": {
            "processor_class": "JanusProcessor", "num_image_tokens": config["vision_config"]["num_image_tokens"],
            "use_default_system_prompt": False,
        },
        "special_tokens_map.json": {
            "bos_token": SPECIAL_TOKENS[0], "eos_token": SPECIAL_TOKENS[1], "pad_token": SPECIAL_TOKENS[2],
            "additional_special_tokens": SPECIAL_TOKENS[3:],
        },
    }
    for name, content in files.items():
        (out / name).write_text(json.dumps(content, indent=2, ensure_ascii=False))
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)


FIXTURE_CACHE = Path.home() / ".cache" / "imagemini"
SMALL_FIXTURE_CACHE = FIXTURE_CACHE / "random-fixture-small"


def cached(size: str) -> Path:
    """The fixture of `size` (default vocabulary and sharding), built once into ~/.cache/imagemini."""
    path = FIXTURE_CACHE / f"random-fixture-{size}"
    if not (path / "config.json").exists():  # written last: a build cut short is built again
        build(path, size=size)
    return path


def cached_small() -> Path:
    """The "small" fixture the benchmarks and a checkout without a bundled model use, built once."""
    return cached("small")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--size", choices=[*SIZES, *PUBLISHED], default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=None, help="pad the network's vocabulary to this size")
    parser.add_argument("--shard-bytes", type=int, default=None, help="split the weights into shards of this size")
    parser.add_argument("--device", default="cpu", help="draw pro-1b's and pro-7b's random values here (cuda: seconds)")
    args = parser.parse_args()
    print(build(args.out_dir, args.size, args.seed, args.vocab_size, args.shard_bytes, args.device))


if __name__ == "__main__":
    main()
