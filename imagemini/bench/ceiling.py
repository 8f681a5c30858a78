"""The machine's ceiling for a decode step, measured in the same run as the figures it bounds.

A decode step of r rows must at least read every weight of the decoder and its output head
once; on a CPU at Janus-Pro sizes that read, not the arithmetic, is the step's cost. So the
ceiling is one pass of `F.linear` over those weights (each Linear once, in their own dtype)
with r rows of input: r / pass time is the most tokens/s any engine decoding r rows at a time
can reach here. Attention, norms and sampling are left out: they only lower what is reachable.

The weights are transformers' copy of the checkpoint (every `nn.Linear` of its language model,
plus the text head `lm_head` or the image head `generation_head`), so the pass is independent
of how our engine lays its weights out.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn


def decoder_linears(hf_model, head: str) -> list[nn.Linear]:
    """Every Linear of the language model, then those of the head: "text" or "image"."""
    head_module = hf_model.lm_head if head == "text" else hf_model.model.generation_head
    modules = [*hf_model.model.language_model.modules(), *head_module.modules()]
    return [m for m in modules if isinstance(m, nn.Linear)]


@torch.inference_mode()
def weight_pass_seconds(linears: list[nn.Linear], rows: int, repeats: int = 3) -> float:
    """The best of `repeats` passes of `rows` input rows through every Linear (after a warm-up)."""
    inputs = {m.in_features: torch.randn(rows, m.in_features, dtype=m.weight.dtype) for m in linears}

    def one_pass() -> float:
        start = time.perf_counter()
        for m in linears:
            F.linear(inputs[m.in_features], m.weight, m.bias)
        return time.perf_counter() - start

    one_pass()
    return min(one_pass() for _ in range(repeats))


def ceiling(linears: list[nn.Linear], rows: int) -> dict:
    """{"rows", "pass_ms", "tokens_per_s"}: the most rows/s a step of `rows` rows can reach here."""
    seconds = weight_pass_seconds(linears, rows)
    return {"rows": rows, "pass_ms": seconds * 1e3, "tokens_per_s": rows / seconds}
