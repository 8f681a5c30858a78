"""A step's small data between the host (token ids, row indices, each row's draw) and the device.

On a GPU every blocking copy is a synchronisation: the host waits until all queued work is
done. So inputs go to the device without blocking (from pinned memory), and results come back
in one place, `read`, which starts every copy it is given and then waits once. `reads` counts those
waits: benchmarks report them per step. On a CPU both are plain conversions.
"""

from __future__ import annotations

from typing import Any

import torch


class Transfer:
    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.on_gpu = self.device.type == "cuda"
        self.reads = 0  # synchronising reads so far (one per `read` call, on any device)

    def tensor(self, values: Any, dtype: torch.dtype = torch.long) -> torch.Tensor:
        """A host list (or nested lists) as a tensor on the device, without waiting for it."""
        return self.to_device(torch.tensor(values, dtype=dtype))

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.on_gpu or tensor.device.type != "cpu":
            return tensor
        # From pinned memory the copy is queued at once; from ordinary memory the driver may first
        # wait for the stream to stage it. torch's pinned pool is cached and keeps each block
        # until its copy has run.
        source = tensor if tensor.is_pinned() else tensor.pin_memory()
        return source.to(self.device, non_blocking=True)

    def read(self, *tensors: torch.Tensor) -> list[Any]:
        """Each tensor as (nested) Python lists, after one wait for the device."""
        self.reads += 1
        if not self.on_gpu:
            return [t.tolist() for t in tensors]
        host = [t.to("cpu", non_blocking=True) for t in tensors]
        # The one wait a step is meant to have: exempt from torch's sync debug mode, so that a
        # test running steps under set_sync_debug_mode("error") fails on any *other* wait.
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(0)
        try:
            torch.cuda.current_stream(self.device).synchronize()
        finally:
            torch.cuda.set_sync_debug_mode(mode)
        return [h.tolist() for h in host]
