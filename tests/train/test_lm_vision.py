"""What teaches stage 2's vision encoder to read scenes (imagemini.train.lm_vision): scene-reader
labels, the vision warm-up, unnamed colours and the name-the-shapes chats."""

from __future__ import annotations

from pathlib import Path

import torch

from imagemini.models.janus import load_janus
from imagemini.train import lm, lm_checkpoint, lm_data, lm_vision


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
    labels = lm_vision.SceneReader.labels(refs, 64, 16)
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


def test_scene_reading_warm_up_trains_the_vision_side_only(toy, tmp_path):
    import random

    from imagemini.models.processor import Processor

    cfg = lm.TrainConfig(vocab_size=600, tokenizer_examples=2000, threads=1, vision_batch=4)
    init = lm_checkpoint.prepare_checkpoint_dir(tmp_path / "lm", toy, cfg)
    model = load_janus(init, torch.float32).train()
    reader = lm_vision.SceneReader(model.cfg.text.hidden_size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spent = lm_vision.read_scenes(model, reader, Processor.from_dir(init), 2.0, cfg, random.Random(0))
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
        unnamed = np.asarray(lm_vision.paint_unnamed(ref, 64, rng)).astype(int)
        background = (named == PALETTE[scene.background]).all(-1)
        assert (unnamed[background] == PALETTE[scene.background]).all()
        objects = unnamed[~background]
        assert len(objects) and np.sqrt(((objects[:, None] - palette[None]) ** 2).sum(-1)).min() >= lm_vision.UNNAMED_MIN_DISTANCE


def test_shape_naming_chats_show_unnamed_colours_and_answer_without_colour_words():
    import random

    import numpy as np

    from imagemini.models.processor import Processor
    from imagemini.world import render
    from imagemini.world.scene import COLORS, PALETTE

    rng = random.Random(3)
    palette = np.array(list(PALETTE.values()))
    examples = [lm_vision.name_shapes_example(rng) for _ in range(20)]
    for ex in examples:
        ref = next(p for p in ex.turns[0].parts if isinstance(p, lm_vision.UnnamedImageRef))
        assert ex.split == "train" and not any(w in ex.answer.lower().split() for w in COLORS)
        assert all(f"{o.size} {o.shape} at the {o.position}" in ex.answer for o in ref.scene.objects)
        pixels = np.asarray(lm_vision.render_ref(ref)).astype(int)
        assert (pixels == np.asarray(lm_vision.render_ref(ref))).all()  # the seed fixes the colours
        objects = pixels[(pixels != np.asarray(render(ref.scene, 64, offsets=ref.offsets))).any(-1)]
        assert len(objects) and np.sqrt(((objects[:, None] - palette[None]) ** 2).sum(-1)).min() >= lm_vision.UNNAMED_MIN_DISTANCE

    # In a training batch their colour labels are ignored; shape labels stay.
    bundled = Path(lm.__file__).parents[1] / "models" / "bundled"
    proc = Processor.from_dir(bundled)
    collate = lm_data.Collator(proc, random.Random(0), grid=16)
    samples = [s for s in (lm_data.build_sample(e, proc) for e in examples[:4]) if s is not None]
    scenes = collate(samples)["scenes"]
    assert (scenes["shape"] > 0).any() and not (scenes["color"] > 0).any()
