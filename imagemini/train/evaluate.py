"""`imagemini eval`: the bundled model's scores on held-out shapes-world chats, judged exactly.

    imagemini eval --model imagemini/models/bundled --n 50 --out docs/eval

Held-out examples (scene combinations and phrasings never trained on, see world/tasks.py) run
through our own engine, batched. Text answers are compared exactly with the truth; drawn and
edited images are decoded by the checkpoint's VQ and read back by the scene parser (no model),
then scored by GenEval's rules with shape as the object class (their mean is `geneval_overall`)
and, stricter, as whole scenes (`report["strict"]`, `draw_exact`, `edit_exact`): scoring.py holds
the rules and the report's figures.
Writes `report.json`, `answers.jsonl` (every example: question, truth, output, correct) and
`samples.png` (a grid of drawings).

`--split train` scores the same tasks on training-split chats (trained shape/colour pairs and
template wordings, fresh scenes): beside the held-out report it separates what the model has not learnt from
what it does not carry over to the held-out pairs.

`--split wording` asks in words never trained on (held-out frames and synonyms of world/language.py,
trained shape/colour pairs): drawings state any part of the scene and are judged by what they
state (every stated attribute right, nothing extra drawn, the rest free), answers by their content
(the number, colour, place, yes/no), not by the canonical sentence. The report's "free_wording"
holds those figures with a breakdown by frame, held-out synonym and stated drawing attribute.
`leading_whitespace` counts answers that begin with whitespace. `draw_objects` scores each requested object of a
drawing alone (drawn at its position with its shape, colour and size), apart for held-out pairs and
trained ones: the two differ only in whether the model has ever seen that shape in that colour.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imagemini.engine.engine import Engine, EngineConfig
from imagemini.engine.params import SamplingParams
from imagemini.models.image_output import ImageOutput
from imagemini.models.processor import Processor
from imagemini.world import Scene, SceneParseError, parse_image, render
from imagemini.world.chat import Example, ImageRef, chat_messages
from imagemini.world.tasks import generate

from .scoring import Tally

TEXT_TASKS = {
    "vqa": ("count", "color_of", "where_is", "is_there", "bigger"),
    "background": ("background",),
    "caption": ("describe",),
    "json": ("describe_json",),
    "reasoning": ("reason_count", "reason_compare"),
    "smalltalk": ("smalltalk_greet", "smalltalk_capabilities", "smalltalk_decline"),
}
IMAGE_TASKS = ("draw", "edit_recolor", "edit_remove", "edit_add", "edit_move")
SAMPLE_SHEET_SIZE = 64  # drawings on samples.png


def evaluate(model_dir: Path, n: int, out: Path, seed: int = 1234, split: str = "heldout") -> dict:
    """Scores `model_dir` on `n` examples of each task of `split`; writes report.json, answers.jsonl
    and samples.png into `out` and returns the report."""
    engine = Engine.from_checkpoint(model_dir, EngineConfig(dtype="bfloat16"))
    proc = Processor.from_dir(model_dir, engine.tokenizer)
    per_task = _examples(random.Random(seed), n, split)
    tally = Tally(by_content=split == "wording")
    for (group, example, thinking), got in _answer_text_tasks(engine, proc, per_task):
        tally.add_text(group, example, thinking, got)
    drawings = _draw_image_tasks(engine, proc, per_task, model_dir, seed)
    for example, pixels in drawings:
        tally.add_drawing(example, _read_scene(pixels))
    report = {"model": str(model_dir), "split": split, "n_per_task": n, **tally.report()}
    write_report(out, report, tally.answers)
    sheet = [pixels for _, pixels in drawings if pixels is not None][:SAMPLE_SHEET_SIZE]
    if sheet:
        save_sample_sheet(sheet, out / "samples.png")
    return report


def _examples(rng: random.Random, n: int, split: str) -> dict[str, list[Example]]:
    """The first `n` examples of every scored task that `rng` generates."""
    per_task: dict[str, list[Example]] = defaultdict(list)
    wanted = [t for group in TEXT_TASKS.values() for t in group] + list(IMAGE_TASKS)
    while any(len(per_task[t]) < n for t in wanted):
        # the train split as every earlier report asked it: the templates, whole scenes stated
        for ex in generate(rng, 500, split=split, grammar_rate=0.0):
            if ex.task in wanted and len(per_task[ex.task]) < n:
                per_task[ex.task].append(ex)
    return per_task


def _prompt(engine: Engine, proc: Processor, example: Example, thinking: bool) -> tuple[list[int], torch.Tensor | None]:
    tok = engine.tokenizer
    messages = chat_messages(replace(example, turns=example.turns[:-1], thinking=False))
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


def _answer_text_tasks(engine: Engine, proc: Processor,
                       per_task: dict[str, list[Example]]) -> list[tuple[tuple[str, Example, bool], str]]:
    """((group, example, thinking), answer) of every text task, greedy; reasoning both with and
    without thinking."""
    jobs = [(group, ex, think) for group, tasks in TEXT_TASKS.items() for task in tasks for ex in per_task[task]
            for think in ((False, True) if group == "reasoning" else (False,))]
    prompts = [_prompt(engine, proc, ex, think) for _, ex, think in jobs]
    # With thinking on, the prompt opens the thought and the engine keeps it apart (the think
    # delimiters are special tokens: they never appear in the answer's text).
    plain = SamplingParams(max_tokens=160, temperature=0)
    thinking = SamplingParams(max_tokens=200, temperature=0, reasoning_budget=160)
    results = engine.generate(
        [p for p, _ in prompts], [thinking if think else plain for _, _, think in jobs], [e for _, e in prompts]
    )
    return [(job, r["text"]) for job, r in zip(jobs, results)]


def _draw_image_tasks(engine: Engine, proc: Processor, per_task: dict[str, list[Example]], model_dir: Path,
                      seed: int) -> list[tuple[Example, np.ndarray | None]]:
    """(example, its first drawn picture as uint8 [S, S, 3], None if none) of every drawing and
    editing task: guided sampling with the checkpoint's defaults."""
    gen = json.loads((model_dir / "generation_config.json").read_text())
    params = SamplingParams(
        max_tokens=engine.num_image_tokens + 3, temperature=gen.get("temperature", 1.0), top_p=gen.get("top_p", 1.0),
        image_output=True, guidance_scale=gen.get("guidance_scale", 5.0), seed=seed,
    )
    jobs = [ex for task in IMAGE_TASKS for ex in per_task[task]]
    start = list(ImageOutput.from_dir(model_dir, engine.tokenizer, engine.model.cfg).start_ids)  # as the server starts an image
    results = _generate_images(engine, [_prompt(engine, proc, ex, False) for ex in jobs], start, params)
    return [(ex, engine.model.decode_image_pixels(r["images"][0]).numpy() if r["images"] else None)
            for ex, r in zip(jobs, results)]


def _generate_images(engine: Engine, prompts: list[tuple[list[int], torch.Tensor | None]], start: list[int],
                     params: SamplingParams) -> list[dict]:
    """Each (ids, embeddings) prompt generated on from `start`, the start of an image."""
    results = engine.generate([p + start for p, _ in prompts], params, [
        None if e is None else torch.cat([e, engine.model.embed_tokens(torch.tensor(start)).to(e.dtype)]) for _, e in prompts
    ])
    return results


def _read_scene(pixels: np.ndarray | None) -> Scene | None:
    """The scene the parser reads in a drawing (None: nothing drawn, or nothing it could read)."""
    if pixels is None:
        return None
    try:
        return parse_image(pixels)
    except SceneParseError:
        return None


def write_report(out: Path, report: dict, answers: list[dict]) -> None:
    """report.json and answers.jsonl (one row per example) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))


def save_sample_sheet(pictures: list[np.ndarray], path: Path, cols: int = 8) -> None:
    """uint8 [S, S, 3] pictures on a white sheet, `cols` to a row 2 px apart, saved at twice the size."""
    side = pictures[0].shape[0]
    rows = (len(pictures) + cols - 1) // cols
    sheet = np.full((rows * (side + 2), cols * (side + 2), 3), 255, dtype=np.uint8)
    for i, img in enumerate(pictures):
        r, c = divmod(i, cols)
        sheet[r * (side + 2) : r * (side + 2) + side, c * (side + 2) : c * (side + 2) + side] = img
    Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(path)
