"""Where `bench text` and `bench draw` run (`--device cpu|cuda[:N]`), timing that waits for
the device, and the figures only a device has: synchronisations a step and peak device memory.

A CUDA device runs kernels asynchronously: a wall-clock time measures the work only when the
host waits for the device before it reads the clock, at the start and at the end
(`synchronize`, a no-op on a CPU, where every op has finished when it returns). Every timed
figure of both benchmarks goes through `timed`.

Synchronisations a step, counted two ways:
- the engine's own count: `Engine.host_reads` (the device-to-host reads it made, each of which
  waits for the device) over `Engine.steps_run` (steps that ran a forward), as deltas over the
  timed run; None while the engine does not count;
- on CUDA, torch's own: `torch.cuda.set_sync_debug_mode("warn")` warns at every synchronising
  call (a device-to-host copy, `.item()`, `nonzero`...), counted over a short untimed pass of
  `SYNC_PASS_STEPS` steps, after a warm-up, so one-time set-up is not counted. A probe checks
  first that a known synchronisation is counted; where it is not, the count is None.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from imagemini.engine.engine import check_device


SYNC_PASS_STEPS = 16
SYNC_WARNING = "synchronizing CUDA operation"  # torch's warning text in sync debug mode


def parse_device(text: str) -> str:
    """`--device`'s type: "cpu", "cuda" or "cuda:N" that this machine has (the engine's own check)."""
    try:
        check_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=parse_device, default="cpu",
                   help="where our engine and transformers' model run: cpu, cuda or cuda:N")
    p.add_argument("--bandwidth", action=argparse.BooleanOptionalAction, default=None,
                   help="measure the device's memory bandwidth and give every figure as a share of the decode limit "
                        "it sets (weight bytes / bandwidth); default: on a GPU only")


def measures_bandwidth(args: argparse.Namespace) -> bool:
    return args.bandwidth if args.bandwidth is not None else is_cuda(args.device)


def is_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


def synchronize(device: str | torch.device) -> None:
    """Wait for every kernel queued on `device` (nothing to wait for on a CPU)."""
    if is_cuda(device):
        torch.cuda.synchronize(device)


def timed(device: str | torch.device, run: Callable, *args) -> tuple[float, Any]:
    """(seconds, result) of `run(*args)`, the device's queued work included at both ends."""
    synchronize(device)
    start = time.perf_counter()
    result = run(*args)
    synchronize(device)
    return time.perf_counter() - start, result


def best_seconds(device: str | torch.device, run: Callable[[], Any], repeats: int) -> float:
    """The best of `repeats` timed calls of `run`, after one untimed call (the warm-up)."""
    run()
    return min(timed(device, run)[0] for _ in range(repeats))


def engine_counters(engine) -> tuple[int | None, int | None]:
    """(host reads, steps run) so far: the engine's cumulative counts, None where it keeps none."""
    return getattr(engine, "host_reads", None), getattr(engine, "steps_run", None)


def per_step(before: tuple[int | None, int | None], after: tuple[int | None, int | None]) -> float | None:
    """Host reads per step between two `engine_counters` readings; None if unknown or no step ran."""
    if None in before or None in after or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def count_syncs(run: Callable[[], Any]) -> tuple[int, Any]:
    """(synchronising CUDA calls `run()` made, its result), by torch's sync debug mode."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = run()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum(SYNC_WARNING in str(w.message) for w in caught), result


def sync_counting_works(device: str | torch.device) -> bool:
    """Whether a read of a device value (one synchronisation) is counted here."""
    if not is_cuda(device):
        return False
    counted, _ = count_syncs(lambda: torch.ones(1, device=device).item())
    return counted >= 1


def engine_steps(engine, prompts: list[list[int]], params, steps: int = SYNC_PASS_STEPS, count: bool = False,
                 skip: int = 0) -> dict:
    """Add `prompts`, run `skip` steps (their prefill), then `steps` more, then abort them: a
    warm-up, or (`count`, on CUDA) the sync debug pass over those `steps`. Returns the steps that
    ran a forward, the synchronising calls counted in them (None if not counted) and both per step."""
    ids = [engine.add_request(p, params) for p in prompts]

    def run(limit: int) -> int:
        calls = 0
        while calls < limit and engine.has_work():
            engine.step()
            calls += 1
        return calls

    device = engine.config.device
    run(skip)
    before = engine_counters(engine)
    syncs, calls = count_syncs(lambda: run(steps)) if count and sync_counting_works(device) else (None, run(steps))
    after = engine_counters(engine)
    for request_id in ids:
        engine.abort(request_id)
    while engine.has_work():
        engine.step()
    synchronize(device)
    forwards = after[1] - before[1] if None not in (before[1], after[1]) else calls
    return {"steps": forwards, "after_steps": skip, "syncs": syncs,
            "syncs_per_step": syncs / forwards if syncs is not None and forwards else None,
            "host_reads_per_step": per_step(before, after)}


def reset_peak_memory(device: str | torch.device) -> None:
    if is_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)


def peak_device_gib(device: str | torch.device) -> float | None:
    """Peak device memory allocated by tensors since the last reset; None on a CPU."""
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if is_cuda(device) else None


def free_device_memory(device: str | torch.device) -> None:
    """Hand cached blocks back after a model is freed, so the next phase's peak is its own."""
    if is_cuda(device):
        torch.cuda.empty_cache()
