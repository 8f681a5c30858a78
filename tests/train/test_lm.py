"""Stage 2 of the recipe (imagemini.train.lm) at toy size: the loss goes down, the run resumes
from its state, the scene reader trains beside it, and the export loads as a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imagemini.models.config import VQConfig
from imagemini.models.janus import load_janus
from imagemini.models.vq import VQModel
from imagemini.train import lm
from imagemini.train import vq as vq_stage


@pytest.fixture
def toy(monkeypatch, tmp_path):
    monkeypatch.setattr(lm, "TEXT", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    monkeypatch.setattr(lm, "VISION", dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                           patch_size=4, mlp_ratio=2.0))
    config = {**vq_stage.BUNDLED_VQ_CONFIG, "num_embeddings": 64}
    torch.manual_seed(0)
    vq_stage.save_vq(VQModel(VQConfig.from_dict(config)), config, tmp_path)
    return tmp_path


def losses(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_tiny_run_lowers_the_loss_resumes_and_exports(toy, tmp_path):
    out = tmp_path / "lm"
    cfg = lm.TrainConfig(minutes=10, batch_tokens=3000, lr=3e-3, warmup_steps=5, vocab_size=600,
                         tokenizer_examples=2000, max_steps=30, threads=1, vision_minutes=0.05)
    first_checkpoint = lm.train(out, toy, cfg)
    first = losses(out)
    assert len(first) == 30
    assert any("scene" in row for row in first)  # the scene reader saw user images
    assert all(row["unnamed"] > 0 for row in first)  # and unnamed-colour scenes beside every batch
    assert any("copy" in row for row in first)  # edits echo their source, the copy head has its lesson
    early = sum(r["loss"] for r in first[:5]) / 5
    late = sum(r["loss"] for r in first[-5:]) / 5
    assert late < 0.8 * early
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["step"] == 30 and "reader" in state
    assert state["vision_seconds"] >= 3  # the vision warm-up ran first, for its budget

    # Going on with a teacher (here the export of step 30), drawings mostly: its KL joins the losses.
    more = {"max_steps": 35, "teacher": first_checkpoint, "weights": {"draw": 20.0}}
    checkpoint = lm.train(out, toy, lm.TrainConfig(**{**cfg.__dict__, **more}))
    assert [r["step"] for r in losses(out)][30:] == [31, 32, 33, 34, 35]  # went on from step 30
    assert any("teacher" in row for row in losses(out)[30:]) and not any("teacher" in row for row in first)
    assert torch.load(out / "last.pt", weights_only=False)["vision_seconds"] == state["vision_seconds"]  # not again
    model = load_janus(checkpoint, torch.float32)
    assert json.loads((checkpoint / "training.json").read_text())["steps"] == 35
    assert not any(k.startswith("reader") for k in model.state_dict())  # the reader is not exported
    from imagemini.models.processor import Processor

    echo = Processor.from_dir(checkpoint).echo  # the echo travels with the checkpoint
    assert echo is not None and len(echo.code_map) == 64 and echo.before_token == lm.ECHO_BEFORE


def test_scene_reader_labels_mark_exactly_the_patches_an_object_is_drawn_in():
    import random

    import numpy as np

    from imagemini.world import render, sample_scene
    from imagemini.world.scene import BACKGROUNDS, COLORS, PALETTE, SHAPES, SIZES, sample_offsets
    from imagemini.world.chat import ImageRef

    rng = random.Random(3)
    refs = []
    for _ in range(20):
        scene = sample_scene(rng)
        refs.append(ImageRef(scene, tuple(sample_offsets(scene, rng))))
    labels = lm.SceneReader.labels(refs, 64, 16)
    for i, ref in enumerate(refs):
        pixels = np.asarray(render(ref.scene, 64, offsets=ref.offsets)).astype(int)
        drawn = (pixels != np.array(PALETTE[ref.scene.background])).any(-1)
        patches = torch.from_numpy(drawn.reshape(16, 4, 16, 4).any(axis=(1, 3)).reshape(-1))
        for key in ("shape", "color", "size"):
            assert torch.equal(labels[key][i] > 0, patches)
        attributes = {
            (SHAPES[s - 1], list(COLORS)[c - 1], list(SIZES)[z - 1])
            for s, c, z in zip(labels["shape"][i][patches], labels["color"][i][patches], labels["size"][i][patches])
        }
        assert attributes == {(o.shape, o.color, o.size) for o in ref.scene.objects}
        assert BACKGROUNDS[labels["background"][i]] == ref.scene.background


def test_a_continued_run_keeps_its_parents_sampling_defaults(toy, tmp_path):
    """A fresh run writes the recipe's image sampling defaults; a run from --init-from keeps the
    parent checkpoint's (tuned for those weights), so its export is judged as the parent was."""
    import dataclasses
    import json

    cfg = lm.TrainConfig(vocab_size=600, tokenizer_examples=2000, threads=1)
    parent = lm.prepare_checkpoint_dir(tmp_path / "parent", toy, cfg)
    written = json.loads((parent / "generation_config.json").read_text())
    assert {k: written[k] for k in lm.GENERATION} == lm.GENERATION
    tuned = {"guidance_scale": 1.25, "temperature": 0.4, "top_p": 0.8}
    (parent / "generation_config.json").write_text(json.dumps({**written, **tuned}))
    child = lm.prepare_checkpoint_dir(tmp_path / "child", toy, dataclasses.replace(cfg, init_from=parent))
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
    parent = lm.prepare_checkpoint_dir(tmp_path / "parent", toy, cfg)
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
    parent = lm.prepare_checkpoint_dir(tmp_path / "parent", toy, cfg)
    weights = load_file(str(parent / "model.safetensors"))
    torch.manual_seed(1)  # a parent whose layer outputs are far from zero
    save_file({k: v + 0.05 * torch.randn_like(v) if ".layers." in k else v for k, v in weights.items()},
              str(parent / "model.safetensors"))
    grown_cfg = dataclasses.replace(cfg, init_from=parent, text_layers=3)
    init = lm.prepare_checkpoint_dir(tmp_path / "child", toy, grown_cfg)
    assert json.loads((init / "config.json").read_text())["text_config"]["num_hidden_layers"] == 3

    def logits(model, ids):
        hidden = model.decoder(model.model.language_model.embed_tokens(ids[0]), torch.arange(ids.shape[1]),
                               padded_causal_attend(1, ids.shape[1]))
        return model.text_logits(hidden)

    from imagemini.models.config import JanusConfig
    from imagemini.models.janus import Janus

    child = Janus(JanusConfig.from_dict(json.loads((init / "config.json").read_text()))).eval()
    lm.warm_start(child, parent)
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
    assert lm.grown_layers(weights, 1) == {}  # as deep as the parent: nothing grows
    with pytest.raises(ValueError, match="shallower"):
        lm.prepare_checkpoint_dir(tmp_path / "shallower", toy, dataclasses.replace(cfg, init_from=init, text_layers=2))


def test_scene_reading_warm_up_trains_the_vision_side_only(toy, tmp_path):
    import random

    from imagemini.models.processor import Processor

    cfg = lm.TrainConfig(vocab_size=600, tokenizer_examples=2000, threads=1, vision_batch=4)
    init = lm.prepare_checkpoint_dir(tmp_path / "lm", toy, cfg)
    model = load_janus(init, torch.float32).train()
    reader = lm.SceneReader(model.cfg.text.hidden_size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spent = lm.read_scenes(model, reader, Processor.from_dir(init), 2.0, cfg, random.Random(0))
    assert spent >= 2.0
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("model.vision_model.") for k in changed)
    assert any(k.startswith("model.aligner.") for k in changed)
    assert all(k.startswith(("model.vision_model.", "model.aligner.")) for k in changed)


def test_unnamed_colours_keep_the_layout_and_stay_far_from_every_palette_colour():
    import random

    import numpy as np

    from imagemini.world import render
    from imagemini.world.scene import PALETTE, sample_offsets
    from imagemini.world.chat import ImageRef
    from imagemini.world.task_builder import split_scene

    rng = random.Random(5)
    palette = np.array(list(PALETTE.values()))
    for _ in range(30):
        scene = split_scene(rng)
        ref = ImageRef(scene, tuple(sample_offsets(scene, rng)))
        named = np.asarray(render(scene, 64, offsets=ref.offsets)).astype(int)
        unnamed = np.asarray(lm.paint_unnamed(ref, 64, rng)).astype(int)
        background = (named == PALETTE[scene.background]).all(-1)
        assert (unnamed[background] == PALETTE[scene.background]).all()
        objects = unnamed[~background]
        assert len(objects) and np.sqrt(((objects[:, None] - palette[None]) ** 2).sum(-1)).min() >= lm.UNNAMED_MIN_DISTANCE


def test_shape_naming_chats_show_unnamed_colours_and_answer_without_colour_words():
    import random

    import numpy as np

    from imagemini.models.processor import Processor
    from imagemini.world import render
    from imagemini.world.scene import COLORS, PALETTE

    rng = random.Random(3)
    palette = np.array(list(PALETTE.values()))
    examples = [lm.name_shapes_example(rng) for _ in range(20)]
    for ex in examples:
        ref = next(p for p in ex.turns[0].parts if isinstance(p, lm.UnnamedImageRef))
        assert ex.split == "train" and not any(w in ex.answer.lower().split() for w in COLORS)
        assert all(f"{o.size} {o.shape} at the {o.position}" in ex.answer for o in ref.scene.objects)
        pixels = np.asarray(lm.render_ref(ref)).astype(int)
        assert (pixels == np.asarray(lm.render_ref(ref))).all()  # the seed fixes the colours
        objects = pixels[(pixels != np.asarray(render(ref.scene, 64, offsets=ref.offsets))).any(-1)]
        assert len(objects) and np.sqrt(((objects[:, None] - palette[None]) ** 2).sum(-1)).min() >= lm.UNNAMED_MIN_DISTANCE

    # In a training batch their colour labels are ignored; shape labels stay.
    bundled = Path(lm.__file__).parents[1] / "models" / "bundled"
    proc = Processor.from_dir(bundled)
    collate = lm.Collator(proc, random.Random(0), grid=16)
    samples = [s for s in (lm.build_sample(e, proc) for e in examples[:4]) if s is not None]
    scenes = collate(samples)["scenes"]
    assert (scenes["shape"] > 0).any() and not (scenes["color"] > 0).any()


def test_a_state_without_optimizer_starts_a_new_warmed_up_phase_made_by_data_workers(toy, tmp_path):
    """How a run moves to a lent GPU: the state travels without its optimizer (the carry limit),
    the optimizer starts afresh with its own warm-up, and spawned workers make the batches."""
    import dataclasses

    out = tmp_path / "lm"
    cfg = lm.TrainConfig(minutes=10, batch_tokens=2000, lr=3e-3, warmup_steps=5, vocab_size=600,
                         tokenizer_examples=2000, max_steps=6, threads=1)
    lm.train(out, toy, cfg)
    state = torch.load(out / "last.pt", weights_only=False)
    assert losses(out)[-1]["lr"] == pytest.approx(3e-3)  # past its warm-up
    del state["opt"]
    torch.save(state, out / "last.pt")

    lm.train(out, toy, dataclasses.replace(cfg, max_steps=9, data_workers=2))
    rows = losses(out)[6:]
    assert [r["step"] for r in rows] == [7, 8, 9]
    assert [r["lr"] for r in rows] == pytest.approx([3e-3 / 5, 2 * 3e-3 / 5, 3 * 3e-3 / 5])
    resumed = torch.load(out / "last.pt", weights_only=False)
    assert resumed["phase_step"] == 6 and "opt" in resumed and set(resumed["seconds_on"]) == {"cpu"}


@pytest.mark.parametrize("echo", [False, True])
def test_echoed_and_drawn_images_get_their_own_codes_in_order(monkeypatch, echo_checkpoint, plain_checkpoint, echo):
    """Collator leaves -1 where an echoed or drawn image's codes go; on_device fills each run with
    the VQ codes of that sample's image, in order (nothing shifted between samples or images): the
    echo (the source picture) first, then the drawn one. An unconditional row has no echo."""
    import random

    import numpy as np

    from imagemini.models.processor import Processor
    from imagemini.world.tasks import generate

    checkpoint = echo_checkpoint if echo else plain_checkpoint
    model, proc = load_janus(checkpoint, torch.float32), Processor.from_dir(checkpoint)
    assert (proc.echo is not None) == echo
    examples = generate(random.Random(5), 12, tasks={"draw": 1.0, "edit_move": 1.0})
    samples = [s for s in (lm.build_sample(e, proc) for e in examples) if s is not None]
    assert any(s.echo_image is not None for s in samples) == echo
    monkeypatch.setattr(lm, "UNCOND_RATE", 0.0)
    batch = lm.Collator(proc, random.Random(0), grid=16)(samples)
    pictures = [[*([s.echo_image] if s.echo_image is not None else []), *s.drawn_images] for s in samples]
    assert len(batch["code_slots"]) == int((batch["ids"] == -1).sum()) == 256 * sum(map(len, pictures)) > 0
    code_map = torch.randperm(model.cfg.vq.num_embeddings, generator=torch.Generator().manual_seed(0))
    ids = lm.on_device(batch, model, proc, code_map)["ids"]
    assert not (ids == -1).any()
    vocab = model.cfg.text.vocab_size
    # One encode of every image, as on_device does (GEMM results depend on the batch size).
    flat = [r for refs in pictures for r in refs]
    pixels = vq_stage.to_pixels(np.stack([np.array(lm.render_ref(r)) for r in flat]))
    encoded = iter(code_map[model.model.vqmodel.encode(pixels)])
    for row, refs in zip(ids, pictures):
        want = [next(encoded) for _ in refs]
        assert torch.equal(row[row >= vocab] - vocab, torch.cat(want))
    assert len({tuple(c.tolist()) for c in model.model.vqmodel.encode(pixels)}) == len(flat)  # all differ

    monkeypatch.setattr(lm, "UNCOND_RATE", 1.0)  # every drawing row unconditional: prompt and echo padded out
    batch = lm.Collator(proc, random.Random(0), grid=16)(samples)
    assert int((batch["ids"] == -1).sum()) == 256 * sum(len(s.drawn_images) for s in samples)
    assert batch["coded"].shape[0] == sum(len(s.drawn_images) for s in samples)


@pytest.mark.parametrize("echo", [False, True])
@pytest.mark.parametrize("uncond_rate", [0.0, 1.0])
def test_the_loss_reads_each_target_once_in_place(monkeypatch, echo_checkpoint, plain_checkpoint, uncond_rate, echo):
    """loss_fn finds code inputs, image placeholders and targets through the Collator's flat
    position lists; here they are found again the plain way (masks over the padded batch, the
    targets of each sample from its own ids) and the two losses must agree."""
    import random

    import torch.nn.functional as F

    from imagemini.models.processor import Processor
    from imagemini.world.tasks import generate

    monkeypatch.setattr(lm, "UNCOND_RATE", uncond_rate)
    checkpoint = echo_checkpoint if echo else plain_checkpoint
    model, proc = load_janus(checkpoint, torch.float32), Processor.from_dir(checkpoint)
    examples = generate(random.Random(3), 10, tasks={"draw": 1.0, "edit_recolor": 1.0, "describe": 1.0, "count": 1.0})
    samples = [s for s in (lm.build_sample(e, proc) for e in examples) if s is not None]
    batch = lm.on_device(lm.Collator(proc, random.Random(0), grid=16)(samples), model, proc, None)
    with torch.no_grad():
        loss, parts = lm.loss_fn(model, batch)

        ids, vocab = batch["ids"], model.cfg.text.vocab_size
        embeds, logits_in = plain_hidden_states(model, batch)
        text, code = [], []
        for b, sample in enumerate(samples):
            if uncond_rate and sample.drawn_images:  # the drawn image's codes alone, after its BOI
                first = (ids[b] == proc.tokenizer.special.boi).nonzero()[-1].item() + 1
                span = range(first, first + 256)
            else:
                span = range(sample.loss_from, len(sample.ids))
            for j in span:
                (code if ids[b, j] >= vocab else text).append((b, j))
        assert code and text

        def mean_loss(positions, head, offset):
            rows = torch.stack([logits_in[b, j - 1] for b, j in positions])
            return F.cross_entropy(head(rows), torch.stack([ids[b, j] for b, j in positions]) - offset)

        want_code, want_text = mean_loss(code, model.image_logits, vocab), mean_loss(text, model.text_logits, 0)
        assert parts["image"].item() == pytest.approx(want_code.item(), rel=1e-4)
        assert parts["text"].item() == pytest.approx(want_text.item(), rel=1e-4)
        want = (want_text * len(text) + want_code * len(code)) / (len(text) + len(code))
        copies = [b for b, smp in enumerate(samples) if smp.echo_image is not None and smp.drawn_images]
        if echo and not uncond_rate:  # the copy head's lesson: from each edit's own code runs
            assert copies and parts["copy"].item() == pytest.approx(copy_reference(model, ids, embeds, copies), rel=1e-4)
            want = want + lm.COPY_WEIGHT * parts["copy"]
        else:
            assert "copy" not in parts
        assert loss.item() == pytest.approx(want.item(), rel=1e-4)


def plain_hidden_states(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's input embeddings and hidden states found the plain way (masks over the padded
    batch, no flat position lists), for checking loss_fn against."""
    ids, vocab = batch["ids"], model.cfg.text.vocab_size
    is_code = ids >= vocab
    embeds = model.input_embeddings(ids.clamp(max=vocab - 1), batch["pixels"])
    embeds[is_code] = model.embed_image_codes(ids[is_code] - vocab)
    return embeds, model.hidden_states(embeds, batch["mask"])


def copy_reference(model, ids, embeds, rows) -> float:
    """Mean -log(weight the copy head gives echo code i) over every row predicting drawn code i,
    with the head's weights recomputed per sample from a plain softmax."""
    import torch.nn.functional as F

    seen = {}
    b, t = ids.shape

    def attend(layer, q, k, v):
        if layer == lm.COPY_LAYER:
            seen["q"], seen["k"] = q.view(b, t, *q.shape[1:]), k.view(b, t, *k.shape[1:])
        from imagemini.models.llama import padded_causal_attend
        return padded_causal_attend(b, t)(layer, q, k, v)

    model.decoder(embeds.flatten(0, 1), torch.arange(t).repeat(b), attend)
    losses = []
    for r in rows:
        codes = (ids[r] >= model.cfg.text.vocab_size).nonzero().squeeze(1).tolist()
        echo, drawn = codes[:256], codes[256:512]
        assert echo[-1] + 1 < drawn[0]  # two separate runs
        for i in range(256):
            query = drawn[i] - 1
            scores = seen["k"][r, : query + 1, lm.COPY_HEAD] @ seen["q"][r, query, lm.COPY_HEAD] / model.cfg.text.head_dim**0.5
            losses.append(-F.log_softmax(scores, 0)[echo[i]].item())
    return sum(losses) / len(losses)


def test_the_teacher_scores_the_drawn_codes_of_rows_without_an_echo(echo_checkpoint, plain_checkpoint):
    """KL(teacher || model) over every drawn code of a row with no picture (so no echo): here the
    teacher reads each such sample alone, unpadded, and the model's own distributions come from a
    plain per-sample pass; rows with an echo (edits) are left out, their codes counted nowhere."""
    import random

    import torch.nn.functional as F

    from imagemini.models.processor import Processor
    from imagemini.world.tasks import generate

    model, proc = load_janus(echo_checkpoint, torch.float32), Processor.from_dir(echo_checkpoint)
    teacher = lm.load_teacher(plain_checkpoint, echo_checkpoint, model)
    torch.manual_seed(0)
    with torch.no_grad():  # a teacher that differs from the model (the bundled one is the same weights)
        for p in teacher.model.generation_head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    examples = generate(random.Random(4), 10, tasks={"draw": 1.0, "edit_add": 1.0, "describe": 1.0})
    samples = [s for s in (lm.build_sample(e, proc) for e in examples) if s is not None]
    assert any(s.echo_image is None and s.drawn_images for s in samples) and any(s.echo_image for s in samples)
    batch = lm.on_device(lm.Collator(proc, random.Random(1), grid=16)(samples), model, proc, None)
    with torch.no_grad():
        base, _ = lm.loss_fn(model, batch)
        batch["teacher_logprobs"] = lm.teacher_code_logprobs(teacher, batch)
        loss, parts = lm.loss_fn(model, batch)

        vocab, kls = model.cfg.text.vocab_size, []
        for r, sample in enumerate(samples):
            ids = batch["ids"][r, : len(sample.ids)][None]
            drawn = (ids[0] >= vocab).nonzero().squeeze(1)
            if sample.echo_image is not None or not drawn.numel():
                continue  # an unconditional drawing (its prompt padded out) is scored as it stands

            def logprobs(net):
                embeds = net.input_embeddings(ids)
                return F.log_softmax(net.image_logits(net.hidden_states(embeds)[0, drawn - 1]).float(), -1)

            want, got = logprobs(teacher), logprobs(model)
            kls += (want.exp() * (want - got)).sum(-1).tolist()
    plain_codes = sum(256 * len(s.drawn_images) for s in samples if s.echo_image is None)
    assert batch["teacher_logprobs"].shape[0] == plain_codes == len(kls)
    assert parts["teacher"].item() == pytest.approx(sum(kls) / len(kls), rel=1e-4) and parts["teacher"] > 0
    assert loss.item() == pytest.approx(base.item() + lm.TEACHER_WEIGHT * parts["teacher"].item(), rel=1e-5)


def test_a_teacher_must_read_the_runs_tokens(echo_checkpoint, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(echo_checkpoint, other)
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"] = {k + "x": v for k, v in tokenizer["model"]["vocab"].items()}
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ValueError, match="another tokenizer"):
        lm.load_teacher(other, echo_checkpoint, load_janus(echo_checkpoint, torch.float32))


def test_task_weights_replace_the_default_mixture_and_reject_unknown_tasks():
    from imagemini.world.tasks import task_mixture

    cfg = lm.TrainConfig(weights=lm.task_weights(["edit_move=0.3", "draw=0"]))
    assert cfg.tasks() == {**task_mixture(), "edit_move": 0.3, "draw": 0.0}
    assert lm.TrainConfig().tasks() is None  # the default mixture
    text_only = lm.TrainConfig(text_only=True, weights={"count": 1.0}).tasks()
    assert text_only["count"] == 1.0 and "edit_move" not in text_only and "draw" not in text_only
    for bad in (["painting=1"], ["edit_move"], ["edit_move="]):
        with pytest.raises(SystemExit, match="TASK=W"):
            lm.task_weights(bad)


def test_an_edits_changed_codes_weigh_changed_weight_in_the_image_loss(monkeypatch, echo_checkpoint):
    """With --changed-weight w, the image loss is the mean over every code target with weight w on
    each drawn code of an edit that differs from the echo's code at the same patch (1 elsewhere,
    drawings included); recomputed here per sample from its own code runs."""
    import random

    import torch.nn.functional as F

    from imagemini.models.processor import Processor
    from imagemini.world.tasks import generate

    monkeypatch.setattr(lm, "UNCOND_RATE", 0.0)
    model, proc = load_janus(echo_checkpoint, torch.float32), Processor.from_dir(echo_checkpoint)
    examples = generate(random.Random(8), 8, tasks={"draw": 1.0, "edit_recolor": 1.0, "edit_move": 1.0})
    samples = [s for s in (lm.build_sample(e, proc) for e in examples) if s is not None]
    batch = lm.on_device(lm.Collator(proc, random.Random(0), grid=16)(samples), model, proc, None)
    ids, vocab = batch["ids"], model.cfg.text.vocab_size
    with torch.no_grad():
        _, plain = lm.loss_fn(model, batch)
        _, same = lm.loss_fn(model, batch, changed_weight=1.0)
        _, weighted = lm.loss_fn(model, batch, changed_weight=3.0)

        is_code = ids >= vocab
        _, hidden = plain_hidden_states(model, batch)
        losses, weights, changed_codes, edit_codes = [], [], 0, 0
        for b, sample in enumerate(samples):
            codes = is_code[b].nonzero().squeeze(1)
            echo, drawn = (codes[:256], codes[256:]) if sample.echo_image is not None else (None, codes)
            logits = model.image_logits(hidden[b, drawn - 1])
            losses += F.cross_entropy(logits, ids[b, drawn] - vocab, reduction="none").tolist()
            if echo is None:
                weights += [1.0] * len(drawn)
                continue
            changed = (ids[b, drawn] != ids[b, echo]).tolist()
            weights += [3.0 if c else 1.0 for c in changed]
            changed_codes, edit_codes = changed_codes + sum(changed), edit_codes + len(changed)
    assert 0 < changed_codes < edit_codes  # an edit changes some patches and keeps others
    assert same["image"].item() == plain["image"].item()
    assert plain["image"].item() == pytest.approx(sum(losses) / len(losses), rel=1e-4)
    want = sum(w * x for w, x in zip(weights, losses)) / sum(weights)
    assert weighted["image"].item() == pytest.approx(want, rel=1e-4)
    assert weighted["image"].item() != pytest.approx(plain["image"].item(), rel=1e-3)
