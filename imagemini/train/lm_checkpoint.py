"""Stage 2's checkpoint directories: the run's starting point (out/init: tokenizer, configs, fresh
or warm-started weights, the source echo's code map), the parent a run continues from, a teacher,
and the exported checkpoint.

    init = prepare_checkpoint_dir(out, vq_dir, cfg)   # once per run; a resumed run finds it made
    export(model, init, out / "checkpoint", info)      # what JanusForConditionalGeneration loads

A run from `--init-from` keeps its parent's tokenizer, code map and sampling defaults, and copies
every tensor whose name and shape fit; a deeper decoder grows from the parent's (grown_layers).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from imagemini.models.chat_format import ROLE_TOKENS
from imagemini.models.config import JanusConfig
from imagemini.models.janus import Janus, load_janus
from imagemini.models.processor import ECHO_FILE, EchoConfig, ImageProcessorConfig
from imagemini.models.tokenizer import Tokenizer
from imagemini.world.chat import render_text
from imagemini.world.tasks import generate

from . import tokenizer as tokenizer_stage
from .lm_config import GENERATION, IMAGE_SIZE, MAX_LENGTH, TrainConfig, janus_config_dict
from .vq import BUNDLED_VQ_CONFIG
from .vq_codebook import synonym_map

ECHO_BEFORE = ROLE_TOKENS[1]  # the source echo goes just before the reply, "<|Assistant|>" (processor.py)


def prepare_checkpoint_dir(out: Path, vq_dir: Path, cfg: TrainConfig) -> Path:
    """Tokenizer, configs and a freshly initialised network (with the trained VQ) in out/init."""
    init = out / "init"
    if (init / "config.json").exists():
        return init
    if cfg.init_from is not None:
        # Token ids, and the codes the echo and the drawn targets name, must stay those the
        # weights were trained with: recomputing the code map from the 16-bit VQ moves ~40 codes.
        init.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(cfg.init_from / name, init / name)
        if cfg.echo and not cfg.text_only and (cfg.init_from / ECHO_FILE).exists():
            shutil.copy(cfg.init_from / ECHO_FILE, init / ECHO_FILE)
    else:
        rng = random.Random(cfg.seed)
        tok = tokenizer_stage.train_tokenizer((render_text(e) for e in generate(rng, cfg.tokenizer_examples)), cfg.vocab_size)
        tokenizer_stage.save_tokenizer_files(tok, init, max_length=MAX_LENGTH)
    loaded = Tokenizer.from_dir(init)
    special = {k: getattr(loaded.special, k) for k in ("bos", "eos", "pad", "image", "boi", "eoi")}
    parent = json.loads((cfg.init_from / "config.json").read_text()) if cfg.init_from is not None else None
    vq_config = parent["vq_config"] if parent is not None else _vq_config(vq_dir)
    layers = cfg.text_layers or (parent["text_config"]["num_hidden_layers"] if parent is not None else None)
    if parent is not None and layers < parent["text_config"]["num_hidden_layers"]:
        raise ValueError(f"--text-layers {layers} is shallower than {cfg.init_from}'s decoder: a run may only grow it")
    config = janus_config_dict(loaded.vocab_size, vq_config, special, layers)
    (init / "config.json").write_text(json.dumps(config, indent=2))
    image_cfg = ImageProcessorConfig(size=IMAGE_SIZE, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    (init / "preprocessor_config.json").write_text(json.dumps(image_cfg.to_dict(), indent=2))
    sampling = dict(GENERATION)
    if cfg.init_from is not None and (cfg.init_from / "generation_config.json").exists():
        # Tuned for those weights: an export that reset them would judge the continuation with
        # other sampling than its parent (it once made guidance 2.0 vs 3.0 look like lost drawings).
        tuned = json.loads((cfg.init_from / "generation_config.json").read_text())
        sampling.update({k: tuned[k] for k in GENERATION if k in tuned})
    (init / "generation_config.json").write_text(json.dumps({
        "bos_token_id": special["bos"], "eos_token_id": special["eos"], "pad_token_id": special["pad"],
        **sampling, "generation_kwargs": {"boi_token_id": special["boi"]},
    }, indent=2))
    torch.manual_seed(cfg.seed)
    model = Janus(JanusConfig.from_dict(config))
    if cfg.echo and not cfg.text_only and not (init / ECHO_FILE).exists():
        if cfg.init_from is not None:
            warm_start(model, cfg.init_from)  # its VQ: stage 1's output need not exist
        else:
            load_trained_vq(model, init, vq_dir)
        code_map = synonym_map(model.model.vqmodel.eval()).tolist()
        EchoConfig(before_token=ECHO_BEFORE, code_map=tuple(code_map)).save(init)
    save_weights(model, init)
    return init


def _vq_config(vq_dir: Path) -> dict:
    file = vq_dir / "vq_config.json"
    return json.loads(file.read_text()) if file.exists() else dict(BUNDLED_VQ_CONFIG)


def load_trained_vq(model: Janus, init: Path, vq_dir: Path) -> None:
    """Put the stage-1 image tokenizer (frozen) into the model; its architecture must be the one
    the checkpoint was initialised with."""
    planned = json.loads((init / "config.json").read_text())["vq_config"]
    trained = _vq_config(vq_dir)
    differs = {k: (planned.get(k), v) for k, v in trained.items() if k in planned and planned[k] != v}
    if differs:
        raise ValueError(f"{vq_dir} holds a VQ of another shape than {init}: {differs}")
    model.model.vqmodel.load_state_dict(load_file(str(vq_dir / "vq.safetensors")))


def warm_start(model: Janus, checkpoint: Path) -> None:
    """Copy every tensor of `checkpoint` whose name and shape fit; the rest keep their fresh init
    (e.g. a vision encoder with another patch size). A decoder deeper than the checkpoint's grows
    from it (`grown_layers`)."""
    own = model.state_dict()
    parent = load_file(str(checkpoint / "model.safetensors"))
    fitting = {k: v for k, v in {**parent, **grown_layers(parent, model.cfg.text.num_hidden_layers)}.items()
               if k in own and own[k].shape == v.shape}
    model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in fitting.items()}})
    fresh = sorted({".".join(k.split(".")[:3]) for k in own if k not in fitting})
    print(f"warm start from {checkpoint}: {len(fitting)}/{len(own)} tensors; fresh: {', '.join(fresh) or 'none'}")


LAYER_PREFIX = "model.language_model.layers."
LAYER_OUTPUTS = ("self_attn.o_proj.weight", "mlp.down_proj.weight")  # what a layer adds to the residual stream


def grown_layers(parent: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """The tensors of decoder layers `parent` lacks, up to `layers`: layer n + i starts as a copy
    of the parent's layer i % n with its two output projections zero, so it adds nothing to the
    residual stream and the grown model computes exactly its parent's function (LLaMA Pro's block
    expansion); the zero projections still get gradients, and the copied rest gives them inputs
    that already mean something."""
    n = 1 + max((int(k[len(LAYER_PREFIX):].split(".")[0]) for k in parent if k.startswith(LAYER_PREFIX)), default=-1)
    grown: dict[str, torch.Tensor] = {}
    if n == 0:  # no decoder layers to copy
        return grown
    for new in range(n, layers):
        source = f"{LAYER_PREFIX}{(new - n) % n}."
        for name, tensor in parent.items():
            if name.startswith(source):
                rest = name[len(source):]
                grown[f"{LAYER_PREFIX}{new}.{rest}"] = torch.zeros_like(tensor) if rest in LAYER_OUTPUTS else tensor.clone()
    return grown


def save_weights(model: Janus, out: Path, dtype: torch.dtype = torch.float32) -> None:
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def load_teacher(checkpoint: Path, init: Path, model: Janus) -> Janus:
    """A frozen checkpoint that reads the same tokens and draws the same codes as the run's model."""
    if (checkpoint / "tokenizer.json").read_bytes() != (init / "tokenizer.json").read_bytes():
        raise ValueError(f"teacher {checkpoint} has another tokenizer than the run")
    teacher = load_janus(checkpoint, torch.float32).to(next(model.parameters()).device).eval()
    if teacher.cfg.vq.num_embeddings != model.cfg.vq.num_embeddings:
        raise ValueError(f"teacher {checkpoint} draws from another codebook than the run")
    return teacher.requires_grad_(False)


def export(model: Janus, init: Path, dest: Path, info: dict) -> Path:
    """A Hugging Face-format checkpoint directory with bf16 weights."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
                 "generation_config.json"):
        shutil.copy(init / name, dest / name)
    if (init / ECHO_FILE).exists():
        shutil.copy(init / ECHO_FILE, dest / ECHO_FILE)
    config = json.loads((dest / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    save_weights(model, dest, torch.bfloat16)
    (dest / "training.json").write_text(json.dumps(info, indent=2))
    return dest
