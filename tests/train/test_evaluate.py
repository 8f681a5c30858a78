"""`imagemini eval` end to end on the random tiny checkpoint: every score is reported, the
thinking runs go through the engine's reasoning mode, and the sample grid is written."""

from __future__ import annotations

import json

from imagemini.train.evaluate import TEXT_TASKS, evaluate


def test_eval_reports_every_score_and_writes_the_grid(tiny_checkpoint, tmp_path):
    report = evaluate(tiny_checkpoint, n=1, out=tmp_path)
    scores = report["scores"]
    for group in TEXT_TASKS:
        assert 0.0 <= scores[group] <= 1.0
    assert 0.0 <= scores["reasoning_thinking"] <= 1.0
    for key in ("draw_exact", "edit_exact", "counting", "colours", "position"):  # single_object etc. need n > 1
        assert key in scores
    wording = report["by_wording"]  # each score split by the user's wording: trained or held out
    for group in [*TEXT_TASKS, "draw_exact", "edit_exact"]:
        split = [wording[k] for k in (f"{group}@train_wording", f"{group}@new_wording") if k in wording]
        assert split and all(0.0 <= v <= 1.0 for v in split)
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert (tmp_path / "samples.png").stat().st_size > 0
