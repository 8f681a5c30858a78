"""`imagemini bench prefix` times a chat's second turn cold and from the prefix cache."""

from __future__ import annotations

import argparse
import json

import torch

from imagemini.bench import prefix


def test_the_second_turn_reads_its_history_from_the_cache(tiny_checkpoint):
    history_tokens = 600  # the second turn then needs more than the fixture's 1,024 positions: a copy gets them
    assert json.loads((tiny_checkpoint / "config.json").read_text())["text_config"]["max_position_embeddings"] < 2 * history_tokens
    result = prefix.main(argparse.Namespace(model=tiny_checkpoint, dtype="float32", history_tokens=history_tokens, repeats=2))
    assert torch.is_grad_enabled(), "the bench turned autograd off for the rest of the process"
    assert result["prompt_tokens"] > history_tokens
    # every whole 256-token chunk of the first turn's prompt
    assert all(cached >= history_tokens // 256 * 256 > 0 for cached in result["cached_tokens"])
    assert result["cold_s"] > 0 and result["cached_s"] > 0
