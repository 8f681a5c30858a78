"""`imagemini eval` end to end on the random tiny checkpoint: every score is reported, the
thinking runs go through the engine's reasoning mode, and the sample grid is written."""

from __future__ import annotations

import json

from imagemini.train.evaluate import IMAGE_TASKS, TEXT_TASKS, evaluate


def test_eval_reports_every_score_and_writes_the_grid(tiny_checkpoint, tmp_path):
    report = evaluate(tiny_checkpoint, n=1, out=tmp_path)
    scores = report["scores"]
    for group in TEXT_TASKS:
        assert 0.0 <= scores[group] <= 1.0
    assert 0.0 <= scores["reasoning_thinking"] <= 1.0
    for key in ("draw_exact", "edit_exact", "counting", "position"):
        assert 0.0 <= scores[key] <= 1.0
    for key in ("single_object", "two_objects", "colours", "colour_attribution", "geneval_overall"):
        assert key in scores  # None when n=1 drew no scene with that many objects
    wording = report["by_wording"]  # each score split by the user's wording: trained or held out
    for group in [*TEXT_TASKS, "draw_exact", "edit_exact"]:
        split = [wording[k] for k in (f"{group}@train_wording", f"{group}@new_wording") if k in wording]
        assert split and all(0.0 <= v <= 1.0 for v in split)
    assert set(report["strict"]) >= {"counting", "colours", "position"}
    assert report["split"] == "heldout"
    # every held-out scene holds a held-out pair, so some requested object is one
    assert 0.0 <= report["draw_objects"]["heldout_combo"] <= 1.0
    assert json.loads((tmp_path / "report.json").read_text()) == report
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert {a["task"] for a in answers} == {t for group in TEXT_TASKS.values() for t in group} | set(IMAGE_TASKS)
    assert sum(a["correct"] for a in answers if a["task"] == "describe") == round(scores["caption"] * 1)
    assert (tmp_path / "samples.png").stat().st_size > 0


def test_train_split_eval_asks_only_about_trained_pairs_and_wordings(tiny_checkpoint, tmp_path):
    from imagemini.world.scene import parse_description
    from imagemini.world.task_builder import has_heldout_combo

    report = evaluate(tiny_checkpoint, n=1, out=tmp_path, split="train")
    assert report["split"] == "train"
    assert set(report["draw_objects"]) == {"train_combo"}
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert {a["wording"] for a in answers} == {"train_wording"}
    scenes = [parse_description(d) for a in answers for d in a["images"]]
    scenes += [parse_description(a["truth"]) for a in answers if a["task"] == "draw" or a["task"].startswith("edit")]
    assert scenes and not any(map(has_heldout_combo, scenes))


def test_wording_split_eval_reports_free_worded_figures(tiny_checkpoint, tmp_path):
    from imagemini.world.language import FRAMES

    report = evaluate(tiny_checkpoint, n=2, out=tmp_path, split="wording")
    assert report["split"] == "wording"
    free = report["free_wording"]
    for key in ("questions", "counting", "drawings"):
        assert 0.0 <= free[key] <= 1.0
    heldout_frames = {f[2:] for _, held in FRAMES.values() for f in held}
    assert free["by_frame"] and all(k.split("|", 1)[1] in heldout_frames for k in free["by_frame"])
    assert all(row["n"] >= 1 for part in ("by_frame", "by_synonym") for row in free[part].values())
    assert isinstance(report["leading_whitespace"], int)
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert {a["wording"] for a in answers} == {"new_wording"} and all(a["frame"] in heldout_frames for a in answers)
    draws = [a for a in answers if a["task"] == "draw"]
    assert sum(a["correct"] for a in draws) == round(free["drawings"] * len(draws))
