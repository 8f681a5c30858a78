"""system_fingerprint names the numerics: whatever can change the kernels changes it (the
measurements behind the choice are in imagemini/engine/numerics.py); the thread count does not."""

from __future__ import annotations

import torch

from imagemini.engine.engine import Engine, EngineConfig
from imagemini.engine.numerics import numerics_description


def test_kernel_choices_change_the_description(monkeypatch):
    base = numerics_description()
    amx = torch.cpu._is_amx_tile_supported()
    changes = [
        lambda: monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16"),
        lambda: monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2"),
        lambda: monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2"),
        lambda: monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: not amx),
        lambda: monkeypatch.setattr(torch, "__version__", "0.0.0"),
        lambda: monkeypatch.setattr(torch.__config__, "show", lambda: "Intel(R) MKL-DNN v0.1 (Git Hash 0)"),
    ]
    seen = {base}
    for change in changes:
        change()
        seen.add(numerics_description())
        monkeypatch.undo()
    assert len(seen) == len(changes) + 1 and numerics_description() == base


def test_thread_count_is_not_in_it():
    threads = torch.get_num_threads()
    base = numerics_description()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        assert numerics_description() == base
    finally:
        torch.set_num_threads(threads)


def test_the_fingerprint_covers_the_numerics(tiny_checkpoint, monkeypatch):
    config = EngineConfig(dtype="float32")
    first = Engine.from_checkpoint(tiny_checkpoint, config).system_fingerprint
    assert Engine.from_checkpoint(tiny_checkpoint, config).system_fingerprint == first
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert Engine.from_checkpoint(tiny_checkpoint, config).system_fingerprint != first
