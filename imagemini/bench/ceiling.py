"""The machine's ceiling for a decode step, measured in the same run as the figures it bounds.

A decode step of r rows must at least read every weight of the decoder and its output head
once; on a CPU at Janus-Pro sizes, and on a GPU at any batch a server decodes, that read, not
the arithmetic, is the step's cost. So the ceiling is one pass of `F.linear` over those weights
(each Linear once, in their own dtype, on their own device) with r rows of input: r / pass time
is the most tokens/s any engine decoding r rows at a time can reach here. Attention, norms and
sampling are left out: they only lower what is reachable.

The weights are transformers' copy of the checkpoint (every `nn.Linear` of its language model,
plus the text head `lm_head` or the image head `generation_head`), so the pass is independent
of how our engine lays its weights out.

The decode limit (`decode_limit`) is the same bound from the device's measured memory bandwidth
(`memory_bandwidth`: a copy and a read-only sum over a buffer of several GB) instead of from
kernels: weight bytes / bandwidth is the shortest a weight pass can be, so r rows a pass is the
most tokens/s a decode step of r rows can reach on this device, whatever the kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .device import best_seconds, free_device_memory, is_cuda

# Bytes of the buffer the bandwidth is measured over: far larger than any cache (an H200 has
# 60 MB of L2), small enough to sit beside nothing else on a CPU test.
BANDWIDTH_BYTES = {"cuda": 4 << 30, "cpu": 256 << 20}


def decoder_linears(hf_model, head: str) -> list[nn.Linear]:
    """Every Linear of the language model, then those of the head: "text" or "image"."""
    head_module = hf_model.lm_head if head == "text" else hf_model.model.generation_head
    modules = [*hf_model.model.language_model.modules(), *head_module.modules()]
    return [m for m in modules if isinstance(m, nn.Linear)]


def weight_bytes(linears: list[nn.Linear]) -> int:
    """Bytes a decode step reads at least: every weight and bias of `linears` once."""
    return sum(p.numel() * p.element_size() for m in linears for p in m.parameters())


@torch.inference_mode()
def weight_pass_seconds(linears: list[nn.Linear], rows: int, repeats: int = 3) -> float:
    """The best of `repeats` passes of `rows` input rows through every Linear (after a warm-up)."""
    device = linears[0].weight.device
    inputs = {m.in_features: torch.randn(rows, m.in_features, dtype=m.weight.dtype, device=device) for m in linears}

    def one_pass() -> None:
        for m in linears:
            F.linear(inputs[m.in_features], m.weight, m.bias)

    return best_seconds(device, one_pass, repeats)


def ceiling(linears: list[nn.Linear], rows: int) -> dict:
    """{"rows", "pass_ms", "tokens_per_s"}: the most rows/s a step of `rows` rows can reach here."""
    seconds = weight_pass_seconds(linears, rows)
    return {"rows": rows, "pass_ms": seconds * 1e3, "tokens_per_s": rows / seconds}


@torch.inference_mode()
def memory_bandwidth(device: str | torch.device, nbytes: int | None = None, repeats: int = 5) -> dict:
    """The device memory's measured bandwidth, GB/s: a copy of `nbytes` (each byte read and
    written) and a read-only sum over them, best of `repeats` each; "gb_s" is the higher."""
    nbytes = nbytes or BANDWIDTH_BYTES["cuda" if is_cuda(device) else "cpu"]
    source = torch.rand(nbytes // 4, device=device)
    target = torch.empty_like(source)
    moved = source.numel() * source.element_size()
    copy_s = best_seconds(device, lambda: target.copy_(source), repeats)
    read_s = best_seconds(device, source.sum, repeats)
    del source, target
    free_device_memory(device)  # the benchmark's models get the buffers' memory back
    copy, read = 2 * moved / copy_s / 1e9, moved / read_s / 1e9
    return {"bytes": moved, "copy_gb_s": copy, "read_gb_s": read, "gb_s": max(copy, read)}


def decode_limit(weights: int, bandwidth_gb_s: float, rows: int) -> dict:
    """{"rows", "pass_ms", "tokens_per_s"} of a weight pass that takes weight bytes / bandwidth."""
    seconds = weights / (bandwidth_gb_s * 1e9)
    return {"rows": rows, "pass_ms": seconds * 1e3, "tokens_per_s": rows / seconds}
