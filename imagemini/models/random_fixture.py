"""A randomly initialised Janus checkpoint, built with a fixed seed, for tests and benchmarks.

    python -m imagemini.models.random_fixture OUT_DIR [--size tiny|small]

THIS IS A TEST FIXTURE, NOT A MODEL: its weights are random (PyTorch default init, seed 0)
and it answers gibberish. It exists so that the network, the engine and the API can be
checked exactly against `transformers` on the same files, before and independently of the
trained bundled model. Its tokenizer speaks the bundled model's chat format (`chat_format.py`).
Same seed and size -> byte-identical files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .chat_format import SPECIAL_TOKENS, tokenizer_config
from .config import JanusConfig
from .janus import Janus

SIZES = {
    # text decoder, vision encoder, VQ: kept small so CPU tests run in seconds
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, inter=128, vocab=384),
    # the scale of the bundled model: what benchmarks run on
    "small": dict(hidden=256, layers=4, heads=4, kv_heads=4, inter=768, vocab=1024),
}


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


def janus_config(size: str, vocab_size: int, tok: Tokenizer) -> dict:
    s = SIZES[size]
    hidden = s["hidden"]
    return {
        "architectures": ["JanusForConditionalGeneration"],
        "model_type": "janus",
        "image_token_id": tok.token_to_id("<image_placeholder>"),
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": s["inter"],
            "num_hidden_layers": s["layers"],
            "num_attention_heads": s["heads"],
            "num_key_value_heads": s["kv_heads"],
            "head_dim": hidden // s["heads"],
            "max_position_embeddings": 1024,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
            "bos_token_id": tok.token_to_id(SPECIAL_TOKENS[0]),
            "eos_token_id": tok.token_to_id(SPECIAL_TOKENS[1]),
            "pad_token_id": tok.token_to_id(SPECIAL_TOKENS[2]),
            "tie_word_embeddings": False,
        },
        "vision_config": {
            "model_type": "janus_vision_model",
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 8,
            "projection_dim": hidden,
            "num_image_tokens": 64,
            "depth": 2,
            "hidden_act": "gelu",
        },
        "vq_config": {
            "model_type": "janus_vqgan",
            "embed_dim": 8,
            "num_embeddings": 256,
            "latent_channels": 32,
            "base_channels": 32,
            "channel_multiplier": [1, 1, 2, 2],
            "num_res_blocks": 1,
            "projection_dim": hidden,
            "image_token_embed_dim": hidden,
            "num_hidden_layers": 2,
            "hidden_act": "gelu",
        },
    }


def build(out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(SIZES[size]["vocab"])
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    config = janus_config(size, vocab_size, tok)
    torch.manual_seed(seed)
    model = Janus(JanusConfig.from_dict(config))
    # Random weights of the scale a trained model has, so logits are not degenerate.
    with torch.no_grad():
        model.model.language_model.embed_tokens.weight.normal_(0.0, 0.5)
        model.lm_head.weight.normal_(0.0, 0.25)  # logits of a few nats' spread: sampling is not degenerate
        model.model.generation_embeddings.weight.normal_(0.0, 1.0)
        book = model.model.vqmodel.quantize.embedding.weight
        book.copy_(torch.nn.functional.normalize(book.normal_(), dim=-1))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2, ensure_ascii=False))
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": config["text_config"]["bos_token_id"],
        "eos_token_id": config["text_config"]["eos_token_id"],
        "pad_token_id": config["text_config"]["pad_token_id"],
        "guidance_scale": 5.0,
        "generation_kwargs": {"boi_token_id": tok.token_to_id("<begin_of_image>")},
    }, indent=2))
    (out / "README.md").write_text(
        f"# Random Janus test fixture ({size}, seed {seed})\n\n"
        "NOT A MODEL: randomly initialised weights for exact reference tests. "
        "Built by `python -m imagemini.models.random_fixture`.\n"
    )
    return out


SMALL_FIXTURE_CACHE = Path.home() / ".cache" / "imagemini" / "random-fixture-small"


def cached_small() -> Path:
    """The "small" fixture the benchmarks and a checkout without a bundled model use, built once."""
    if not (SMALL_FIXTURE_CACHE / "model.safetensors").exists():
        build(SMALL_FIXTURE_CACHE, size="small")
    return SMALL_FIXTURE_CACHE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build(args.out_dir, args.size, args.seed))


if __name__ == "__main__":
    main()
