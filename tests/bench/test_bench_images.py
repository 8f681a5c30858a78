"""`imagemini bench images` times what a resent picture saves: on a checkpoint with a source echo
that includes the echo's VQ codes (a miss encodes them, a hit finds them cached)."""

from __future__ import annotations

import argparse

import torch

from imagemini.bench import images


def _bench(model) -> dict:
    result = images.main(argparse.Namespace(model=model, dtype="bfloat16", side=128, repeats=2))
    assert torch.is_grad_enabled(), "the bench turned autograd off for the rest of the process"
    return result


def test_a_miss_with_a_source_echo_encodes_features_and_echo_and_a_resend_hits_both(echo_checkpoint):
    result = _bench(echo_checkpoint)
    assert result["echo"]
    # the warm cache: one miss each for the features and the echo, then both found on every resend
    assert (result["cache"]["misses"], result["cache"]["hits"], result["cache"]["entries"]) == (2, 4, 2)
    assert result["miss_s"] > result["hit_s"] > 0


def test_a_plain_checkpoint_caches_the_features_alone(plain_checkpoint):
    result = _bench(plain_checkpoint)
    assert not result["echo"]
    assert (result["cache"]["misses"], result["cache"]["hits"], result["cache"]["entries"]) == (1, 2, 1)
