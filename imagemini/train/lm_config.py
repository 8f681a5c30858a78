"""Stage 2's settings (TrainConfig) and the shape of the network it trains (janus_config_dict).

    cfg = TrainConfig(minutes=30, device="cuda", weights={"draw": 0.3})
    json.dumps(janus_config_dict(vocab_size, vq_config, special_ids))   # the checkpoint's config.json
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from imagemini.world.tasks import task_mixture

IMAGE_SIZE = 64
TEXT = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4)
# The Janus format ties the two grids: transformers sets the VQ's num_patches to image_size //
# patch_size, so the understanding patch grid must equal the 16x16 code grid.
VISION = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, patch_size=4, mlp_ratio=4.0)
MAX_LENGTH = 1024
# Image-code sampling defaults of a fresh run (chosen on training-split drawings and edits, model
# card); a run continuing from a checkpoint keeps that checkpoint's own (lm_checkpoint.py).
GENERATION = {"guidance_scale": 2.0, "temperature": 0.7, "top_p": 0.9}


@dataclass
class TrainConfig:
    minutes: float = 60.0
    batch_tokens: int = 12_000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 200
    weight_decay: float = 0.05
    seed: int = 0
    vocab_size: int = 2048
    text_only: bool = False  # phase A: understanding and text tasks only (no image tokenizer needed yet)
    threads: int = 2
    device: str = "cpu"  # "cuda" on a GPU: the same recipe, the data still made on the CPU
    init_from: Path | None = None  # a checkpoint to continue from (its tokenizer, and weights whose shapes fit)
    max_steps: int | None = None  # stop here even if time is left (tests)
    tokenizer_examples: int = 20_000  # chats the BPE is trained on
    vision_minutes: float = 0.0  # scene-reading warm-up of the vision encoder alone (cumulative, see lm_vision.read_scenes)
    vision_batch: int = 32
    unnamed_colour_rate: float = 0.5  # warm-up images whose objects wear colours outside the palette
    unnamed_per_step: int = 4  # unnamed-colour images read beside each whole-model batch
    name_shapes_per_64: int = 4  # name_shapes_example chats added to every 64 task chats
    echo: bool = True  # prompts echo their last picture as codes (processor.py); off: plain Janus prompts
    data_workers: int = 0  # processes making batches (a GPU needs several; 0: made here, resumes exactly)
    save_minutes: float = 5.0  # last.pt this often
    teacher: Path | None = None  # a checkpoint whose drawing the run keeps close to (lm_losses.teacher_code_logprobs)
    text_layers: int | None = None  # decoder depth; None: TEXT's, or the parent's (deeper than it: lm_checkpoint.warm_start grows it)
    changed_weight: float = 1.0  # loss weight of an edit's codes that differ from its echo (lm_losses.changed_code_weights)

    weights: dict[str, float] = field(default_factory=dict)  # task weights replacing task_mixture()'s

    def tasks(self) -> dict[str, float] | None:
        """The task weights to sample by; None: task_mixture() as it is."""
        if not self.text_only and not self.weights:
            return None
        mixture = {**task_mixture(), **self.weights}
        if self.text_only:
            mixture = {t: w for t, w in mixture.items() if t != "draw" and not t.startswith("edit_")}
        return mixture


def janus_config_dict(vocab_size: int, vq_config: dict, special: dict[str, int], layers: int | None = None) -> dict:
    """The checkpoint's config.json (transformers' Janus format): TEXT (`layers` deep) and VISION
    around the trained VQ's `vq_config`; `special` names the special token ids."""
    text = {**TEXT, "num_hidden_layers": layers or TEXT["num_hidden_layers"]}
    hidden = text["hidden_size"]
    grid = IMAGE_SIZE // VISION["patch_size"]
    vq = {**vq_config, "model_type": "janus_vqgan", "projection_dim": hidden, "image_token_embed_dim": hidden}
    return {
        "architectures": ["JanusForConditionalGeneration"],
        "model_type": "janus",
        "image_token_id": special["image"],
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "llama", "vocab_size": vocab_size, **text, "head_dim": hidden // text["num_attention_heads"],
            "max_position_embeddings": MAX_LENGTH, "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
            "bos_token_id": special["bos"], "eos_token_id": special["eos"], "pad_token_id": special["pad"],
            "tie_word_embeddings": False,
        },
        "vision_config": {
            "model_type": "janus_vision_model", **VISION, "image_size": IMAGE_SIZE, "projection_dim": hidden,
            "num_image_tokens": grid * grid, "depth": 2, "hidden_act": "gelu",
        },
        "vq_config": vq,
    }
