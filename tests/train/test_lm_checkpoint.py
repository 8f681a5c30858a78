"""Stage 2's checkpoint directories (imagemini.train.lm_checkpoint): a continued run keeps its
parent's sampling defaults, VQ and code map, a deeper run grows from its parent, and a teacher
must read the run's tokens."""

from __future__ import annotations

import json

import pytest
import torch

from imagemini.models.janus import load_janus
from imagemini.train import lm, lm_checkpoint, lm_config


def test_a_continued_run_keeps_its_parents_sampling_defaults(toy, tmp_path):
    """A fresh run writes the recipe's image sampling defaults; a run from --init-from keeps the
    parent checkpoint's (tuned for those weights), so its export is judged as the parent was."""
    import dataclasses
    import json

    cfg = lm.TrainConfig(vocab_size=600, tokenizer_examples=2000, threads=1)
    parent = lm_checkpoint.prepare_checkpoint_dir(tmp_path / "parent", toy, cfg)
    written = json.loads((parent / "generation_config.json").read_text())
    assert {k: written[k] for k in lm_config.GENERATION} == lm_config.GENERATION
    tuned = {"guidance_scale": 1.25, "temperature": 0.4, "top_p": 0.8}
    (parent / "generation_config.json").write_text(json.dumps({**written, **tuned}))
    child = lm_checkpoint.prepare_checkpoint_dir(tmp_path / "child", toy, dataclasses.replace(cfg, init_from=parent))
    kept = json.loads((child / "generation_config.json").read_text())
    assert {k: kept[k] for k in tuned} == tuned
    assert kept["generation_kwargs"] == written["generation_kwargs"]


def test_a_continued_run_needs_no_stage_1_output_and_keeps_its_parents_vq_and_code_map(toy, tmp_path):
    """--init-from takes the image tokenizer and the echo's code map from the parent checkpoint:
    stage 1's output may be gone (a fresh clone), and the map cannot be recomputed from a 16-bit
    VQ without moving codes the weights were trained to draw."""
    from safetensors.torch import load_file, save_file

    from imagemini.models.processor import EchoConfig

    cfg = lm.TrainConfig(vocab_size=600, tokenizer_examples=2000, threads=1, batch_tokens=3000, max_steps=2)
    parent = lm_checkpoint.prepare_checkpoint_dir(tmp_path / "parent", toy, cfg)
    weights = load_file(str(parent / "model.safetensors"))
    codebook = "model.vqmodel.quantize.embedding.weight"
    weights[codebook] = weights[codebook] + 0.5  # a VQ that stage 1's output does not hold
    save_file(weights, str(parent / "model.safetensors"))
    echo = EchoConfig.from_dir(parent)
    code_map = tuple(reversed(range(len(echo.code_map))))  # no map synonym_map would give
    EchoConfig(echo.before_token, code_map).save(parent)

    import dataclasses

    child = lm.train(tmp_path / "child", tmp_path / "no-stage-1", dataclasses.replace(cfg, init_from=parent))
    assert EchoConfig.from_dir(child).code_map == code_map
    exported = load_file(str(child / "model.safetensors"))
    vq = [k for k in weights if k.startswith("model.vqmodel.")]
    assert vq and all(torch.equal(exported[k].float(), weights[k].bfloat16().float()) for k in vq)


def test_a_deeper_run_grows_from_its_parent_and_starts_with_its_function(toy, tmp_path):
    """--text-layers above the parent's depth: the extra layers start as copies whose output
    projections are zero, so the grown model's logits are the parent's, and training moves them."""
    import dataclasses

    from safetensors.torch import load_file, save_file

    from imagemini.models.llama import padded_causal_attend

    cfg = lm.TrainConfig(vocab_size=600, tokenizer_examples=2000, threads=1, batch_tokens=3000, max_steps=3, lr=3e-3,
                         warmup_steps=1)
    parent = lm_checkpoint.prepare_checkpoint_dir(tmp_path / "parent", toy, cfg)
    weights = load_file(str(parent / "model.safetensors"))
    torch.manual_seed(1)  # a parent whose layer outputs are far from zero
    save_file({k: v + 0.05 * torch.randn_like(v) if ".layers." in k else v for k, v in weights.items()},
              str(parent / "model.safetensors"))
    grown_cfg = dataclasses.replace(cfg, init_from=parent, text_layers=3)
    init = lm_checkpoint.prepare_checkpoint_dir(tmp_path / "child", toy, grown_cfg)
    assert json.loads((init / "config.json").read_text())["text_config"]["num_hidden_layers"] == 3

    def logits(model, ids):
        hidden = model.decoder(model.model.language_model.embed_tokens(ids[0]), torch.arange(ids.shape[1]),
                               padded_causal_attend(1, ids.shape[1]))
        return model.text_logits(hidden)

    from imagemini.models.config import JanusConfig
    from imagemini.models.janus import Janus

    child = Janus(JanusConfig.from_dict(json.loads((init / "config.json").read_text()))).eval()
    lm_checkpoint.warm_start(child, parent)
    old = load_janus(parent, torch.float32).eval()
    ids = torch.randint(5, 500, (1, 24))
    with torch.no_grad():
        torch.testing.assert_close(logits(child, ids), logits(old, ids), rtol=0, atol=1e-5)
    state = child.state_dict()
    assert torch.equal(state["model.language_model.layers.2.mlp.up_proj.weight"],
                       state["model.language_model.layers.0.mlp.up_proj.weight"])  # the rest of a layer is copied

    checkpoint = lm.train(tmp_path / "child", toy, grown_cfg)
    trained = load_file(str(checkpoint / "model.safetensors"))
    assert trained["model.language_model.layers.2.mlp.down_proj.weight"].abs().sum() > 0  # the new layers learn
    assert lm_checkpoint.grown_layers(weights, 1) == {}  # as deep as the parent: nothing grows
    with pytest.raises(ValueError, match="shallower"):
        lm_checkpoint.prepare_checkpoint_dir(tmp_path / "shallower", toy, dataclasses.replace(cfg, init_from=init, text_layers=2))


def test_a_teacher_must_read_the_runs_tokens(echo_checkpoint, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(echo_checkpoint, other)
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"] = {k + "x": v for k, v in tokenizer["model"]["vocab"].items()}
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ValueError, match="another tokenizer"):
        lm_checkpoint.load_teacher(other, echo_checkpoint, load_janus(echo_checkpoint, torch.float32))
