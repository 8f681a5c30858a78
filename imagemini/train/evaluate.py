"""`imagemini eval`: the bundled model's scores on held-out shapes-world chats, judged exactly.

    imagemini eval --model imagemini/models/bundled --n 50 --out docs/eval

Held-out examples (scene combinations and phrasings never trained on, see world/tasks.py) run
through our own engine, batched. Text answers are compared exactly with the truth; drawn and
edited images are decoded by the checkpoint's VQ and read back by the scene parser (no model),
then scored by GenEval's rules with shape as the object class (`_geneval_checks`; their mean is
`geneval_overall`) and, stricter, as whole scenes (`report["strict"]`, `draw_exact`, `edit_exact`).
Writes `report.json`, `answers.jsonl` (every example: question, truth, output, correct) and
`samples.png` (a grid of drawings).

`--split train` scores the same tasks on training-split chats (trained shape/colour pairs and
wordings, fresh scenes): beside the held-out report it separates what the model has not learnt from
what it does not carry over to the held-out pairs. `draw_objects` scores each requested object of a
drawing alone (drawn at its position with its shape, colour and size), apart for held-out pairs and
trained ones: the two differ only in whether the model has ever seen that shape in that colour.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imagemini.engine.engine import Engine, EngineConfig
from imagemini.engine.params import SamplingParams
from imagemini.models.image_output import ImageOutput
from imagemini.models.processor import Processor
from imagemini.world import Scene, SceneParseError, parse_image, render
from imagemini.world.tasks import Example, ImageRef, chat_messages, generate, is_heldout_combo

TEXT_TASKS = {
    "vqa": ("count", "color_of", "where_is", "is_there", "bigger"),
    "caption": ("describe",),
    "json": ("describe_json",),
    "reasoning": ("reason_count", "reason_compare"),
    "smalltalk": ("smalltalk_greet", "smalltalk_capabilities", "smalltalk_decline"),
}
IMAGE_TASKS = ("draw", "edit_recolor", "edit_remove", "edit_add", "edit_move")
#: GenEval's six scores; their mean is its overall score.
GENEVAL = ("single_object", "two_objects", "counting", "colours", "position", "colour_attribution")


def _prompt(engine: Engine, proc: Processor, example: Example, thinking: bool) -> tuple[list[int], torch.Tensor | None]:
    tok = engine.tokenizer
    messages = chat_messages(Example(example.task, example.turns[:-1], False, example.answer, example.split))
    ids = proc.expand_images(tok.encode(tok.render_chat(messages, add_generation_prompt=True, thinking=thinking)))
    refs = [p for t in example.turns[:-1] for p in t.parts if isinstance(p, ImageRef)]
    if not refs:
        return ids, None
    size = proc.image_cfg.size
    pixels = torch.stack([proc.preprocess(render(r.scene, size, offsets=r.offsets)) for r in refs])
    model = engine.model
    with torch.inference_mode():
        if proc.echo is not None:
            ids = proc.with_echo(ids, proc.echo_codes(model.encode_image_codes(proc.vq_range(pixels[-1:]))[0]))
        embeds = model.input_embeddings(torch.tensor([ids]), pixels.to(next(model.parameters()).dtype))[0]
    return ids, embeds


def _wording(example: Example) -> str:
    return "new_wording" if example.heldout_phrasing else "train_wording"


def _answer(example: Example, thinking: bool, got: str, ok: bool) -> dict:
    truth = example.answer.describe() if isinstance(example.answer, Scene) else example.answer
    question = " ".join(p for p in example.turns[-2].parts if isinstance(p, str))
    images = [p.scene.describe() for t in example.turns[:-1] for p in t.parts if isinstance(p, ImageRef)]
    return {"task": example.task, "thinking": thinking, "wording": _wording(example), "images": images,
            "question": question, "truth": truth, "output": got, "correct": ok}


def _geneval_checks(truth: Scene, got: Scene | None) -> dict[str, bool]:
    """GenEval's rules (Ghosh et al. 2023, `evaluate_images.py`) with shape as the object class:
    a requested object counts as drawn when one of its shape is there; colour and position are
    checked on objects of the requested shape; counting also fails on one object too many."""
    if got is None:
        return dict.fromkeys(("present", "counting", "colours", "position"), False)

    def drawn(*attrs: str) -> bool:
        # every requested object's attributes, as often as requested, among the drawn objects'
        key = lambda o: tuple(getattr(o, a) for a in attrs)  # noqa: E731
        return not Counter(map(key, truth.objects)) - Counter(map(key, got.objects))

    asked = Counter(o.shape for o in truth.objects)
    return {
        "present": drawn("shape"),
        "counting": Counter(o.shape for o in got.objects if o.shape in asked) == asked,
        "colours": drawn("shape", "color"),
        "position": drawn("shape", "position"),
    }


def _object_checks(truth: Scene, got: Scene | None) -> list[tuple[str, bool]]:
    """Each requested object: ("heldout_combo" or "train_combo", drawn exactly at its position)."""
    at = {o.position: o for o in got.objects} if got is not None else {}
    return [("heldout_combo" if is_heldout_combo(o.shape, o.color) else "train_combo", at.get(o.position) == o)
            for o in truth.objects]


def _strict_checks(truth: Scene, got: Scene | None) -> dict[str, bool]:
    """Whole-scene checks (the figures reported before GenEval's rules, kept for comparison)."""
    if got is None:
        return {"exact": False, "count": False, "colors": False, "positions": False, "attribution": False}
    t_objs, g_objs = truth.objects, got.objects
    by_pos = {o.position: o for o in g_objs}
    return {
        "exact": got == truth,
        "count": len(g_objs) == len(t_objs),
        "colors": sorted(o.color for o in g_objs) == sorted(o.color for o in t_objs),
        "positions": sorted(o.position for o in g_objs) == sorted(o.position for o in t_objs),
        "attribution": sorted((o.shape, o.color) for o in g_objs) == sorted((o.shape, o.color) for o in t_objs)
        and all(by_pos.get(o.position) is not None and by_pos[o.position].shape == o.shape for o in t_objs),
    }


def evaluate(model_dir: Path, n: int, out: Path, seed: int = 1234, split: str = "heldout") -> dict:
    engine = Engine.from_checkpoint(model_dir, EngineConfig(dtype="bfloat16"))
    proc = Processor.from_dir(model_dir, engine.tokenizer)
    rng = random.Random(seed)
    per_task: dict[str, list[Example]] = defaultdict(list)
    wanted = [t for group in TEXT_TASKS.values() for t in group] + list(IMAGE_TASKS)
    while any(len(per_task[t]) < n for t in wanted):
        for ex in generate(rng, 500, split=split):
            if ex.task in wanted and len(per_task[ex.task]) < n:
                per_task[ex.task].append(ex)
    report: dict = {"model": str(model_dir), "split": split, "n_per_task": n, "scores": {}}
    n_codes = engine.num_image_tokens

    # Text tasks (greedy); reasoning both with and without thinking.
    jobs = []
    for group, tasks in TEXT_TASKS.items():
        for task in tasks:
            for ex in per_task[task]:
                jobs.append((group, ex, False))
                if group == "reasoning":
                    jobs.append((group, ex, True))
    prompts = [_prompt(engine, proc, ex, think) for _, ex, think in jobs]
    # With thinking on, the prompt opens the thought and the engine keeps it apart (the think
    # delimiters are special tokens: they never appear in the answer's text).
    plain = SamplingParams(max_tokens=160, temperature=0)
    thinking = SamplingParams(max_tokens=200, temperature=0, reasoning_budget=160)
    results = engine.generate(
        [p for p, _ in prompts], [thinking if think else plain for _, _, think in jobs], [e for _, e in prompts]
    )
    correct: dict[str, list[bool]] = defaultdict(list)
    answers: list[dict] = []  # every example's question, truth and output: answers.jsonl
    wording: dict[str, list[bool]] = defaultdict(list)  # held-out scenes asked in trained vs new words
    for (group, ex, think), r in zip(jobs, results):
        got = r["text"].strip()
        if ex.task == "describe_json":
            try:
                ok = json.loads(got) == ex.answer
            except json.JSONDecodeError:
                ok = False
        else:
            ok = got == str(ex.answer).strip()
        key = f"{group}_thinking" if think else group
        answers.append(_answer(ex, think, got, ok))
        correct[key].append(ok)
        wording[f"{key}@{_wording(ex)}"].append(ok)
        correct[f"task:{ex.task}{'+think' if think else ''}"].append(ok)
    for key, oks in correct.items():
        report["scores"][key] = round(sum(oks) / len(oks), 4)

    # Drawing and editing: guided sampling with the checkpoint's defaults, judged by the parser.
    gen = json.loads((model_dir / "generation_config.json").read_text())
    params = SamplingParams(
        max_tokens=n_codes + 3, temperature=gen.get("temperature", 1.0), top_p=gen.get("top_p", 1.0),
        image_output=True, guidance_scale=gen.get("guidance_scale", 5.0), seed=seed,
    )
    image_jobs = [ex for task in IMAGE_TASKS for ex in per_task[task]]
    prompts = [_prompt(engine, proc, ex, False) for ex in image_jobs]
    start = list(ImageOutput.from_dir(model_dir, engine.tokenizer, engine.model.cfg).start_ids)  # as the server starts an image
    results = engine.generate([p + start for p, _ in prompts], params, [
        None if e is None else torch.cat([e, engine.model.embed_tokens(torch.tensor(start)).to(e.dtype)]) for _, e in prompts
    ])
    checks: dict[str, list[bool]] = defaultdict(list)
    strict: dict[str, list[bool]] = defaultdict(list)
    objects: dict[str, list[bool]] = defaultdict(list)  # each requested object of a drawing, by pair
    grid = []
    for ex, r in zip(image_jobs, results):
        scene = None
        if r["images"]:
            pixels = engine.model.decode_image_pixels(r["images"][0]).numpy()
            if len(grid) < 64:
                grid.append(pixels)
            try:
                scene = parse_image(pixels)
            except SceneParseError:
                scene = None
        exact = scene == ex.answer
        group = "draw" if ex.task == "draw" else "edit"
        checks[f"{group}_exact"].append(exact)
        wording[f"{group}_exact@{_wording(ex)}"].append(exact)
        answers.append(_answer(ex, False, scene.describe() if scene else "(no scene read)", exact))
        if group != "draw":
            continue
        for pair, ok in _object_checks(ex.answer, scene):
            objects[pair].append(ok)
        k = len(ex.answer.objects)
        geneval, whole = _geneval_checks(ex.answer, scene), _strict_checks(ex.answer, scene)
        if k == 1:
            checks["single_object"].append(geneval["present"])
            checks["colours"].append(geneval["colours"])
            strict["single_object"].append(whole["exact"])
        if k == 2:
            checks["two_objects"].append(geneval["present"])
            checks["colour_attribution"].append(geneval["colours"])
            strict["two_objects"].append(whole["exact"])
            strict["colour_attribution"].append(whole["attribution"])
        checks["counting"].append(geneval["counting"])
        checks["position"].append(geneval["position"])
        strict["counting"].append(whole["count"])
        strict["colours"].append(whole["colors"])
        strict["position"].append(whole["positions"])
    for key in ("draw_exact", "edit_exact", *GENEVAL):
        oks = checks[key]
        report["scores"][key] = round(sum(oks) / len(oks), 4) if oks else None  # None: no such example drawn
    parts = [report["scores"].get(k) for k in GENEVAL]
    report["scores"]["geneval_overall"] = round(sum(parts) / len(parts), 4) if None not in parts else None
    report["strict"] = {key: round(sum(oks) / len(oks), 4) for key, oks in strict.items()}
    report["draw_objects"] = {pair: round(sum(oks) / len(oks), 4) for pair, oks in sorted(objects.items())}
    report["by_wording"] = {key: round(sum(oks) / len(oks), 4) for key, oks in sorted(wording.items())}
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    if grid:
        side = grid[0].shape[0]
        cols = 8
        rows = (len(grid) + cols - 1) // cols
        sheet = np.full((rows * (side + 2), cols * (side + 2), 3), 255, dtype=np.uint8)
        for i, img in enumerate(grid):
            r, c = divmod(i, cols)
            sheet[r * (side + 2) : r * (side + 2) + side, c * (side + 2) : c * (side + 2) + side] = img
        Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(out / "samples.png")
    return report
