"""Stage 2's loop (imagemini.train.lm) at toy size: the loss goes down, the run resumes from its
state (also one saved without its optimizer), a teacher joins the losses, the export loads as a
checkpoint, and --weight replaces the task mixture."""

from __future__ import annotations

import json

import pytest
import torch

from imagemini.models.janus import load_janus
from imagemini.train import lm, lm_checkpoint


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
    assert echo is not None and len(echo.code_map) == 64 and echo.before_token == lm_checkpoint.ECHO_BEFORE


def test_a_state_without_optimizer_starts_a_new_warmed_up_phase_made_by_data_workers(toy, tmp_path):
    """How a run moves to another machine: the state travels without its optimizer (the weights
    alone are smaller), the optimizer starts afresh with its own warm-up, and spawned workers make
    the batches."""
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
