"""What decides the engine's numbers besides the weights and the engine's own settings, as one
string that `system_fingerprint` hashes (engine.py): same fingerprint, same kernels.

Measured on the bundled checkpoint (4 seeded requests x 24 tokens, logprobs compared exactly,
on a CPU with AMX): torch threads 1, 2, 3 and 8 give identical outputs in bfloat16 and float32,
so the thread count is left out; `ATEN_CPU_CAPABILITY=avx2` (ATen's kernel family instead of
AVX512) changes the bfloat16 logprobs, and `ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16` (oneDNN's
bfloat16 matmuls without AMX) changes the tokens. So it covers: the torch version, ATen's CPU
capability, the oneDNN and MKL versions, the CPU features oneDNN picks its kernels by, and the
environment variables that override those choices.
"""

from __future__ import annotations

import os
import re

import torch

# Environment variables that change which kernels oneDNN, MKL or ATen run.
NUMERIC_ENV = (
    "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE",
    "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR",
    "CUBLAS_WORKSPACE_CONFIG", "NVIDIA_TF32_OVERRIDE", "CUBLASLT_WORKSPACE_SIZE",
)
# CPU features that select oneDNN's bfloat16 kernels (AMX tiles, AVX512-BF16, VNNI), as torch probes them.
CPU_FEATURES = ("amx_tile", "amx_fp16", "avx512_bf16", "vnni", "avx512", "avx2")


def cpu_features() -> list[str]:
    probes = {name: getattr(torch.cpu, f"_is_{name}_supported", None) for name in CPU_FEATURES}
    return [name for name, probe in probes.items() if probe is not None and probe()]


def library_versions() -> list[str]:
    """oneDNN and MKL as torch was built with them (a source build may differ from the wheel)."""
    config = torch.__config__.show()
    found = [re.search(pattern, config) for pattern in (r"MKL-DNN v([\w.]+)", r"Math Kernel Library Version ([\w.]+)")]
    return [f"onednn {found[0].group(1) if found[0] else '-'}", f"mkl {found[1].group(1) if found[1] else '-'}"]


def gpu_description(device: torch.device) -> list[str]:
    """What picks a GPU's kernels: the chip (its compute capability), the CUDA and cuDNN builds,
    and the switches that let matmuls round through TF32 or reduced-precision reductions."""
    props = torch.cuda.get_device_properties(device)
    matmul = torch.backends.cuda.matmul
    return [
        f"gpu {props.name} sm{props.major}{props.minor}", f"cuda {torch.version.cuda}",
        f"cudnn {torch.backends.cudnn.version()}",
        f"tf32 {int(matmul.allow_tf32)} bf16red {int(matmul.allow_bf16_reduced_precision_reduction)}"
        f" fp16red {int(matmul.allow_fp16_reduced_precision_reduction)}",
    ]


def numerics_description(device: str | torch.device = "cpu") -> str:
    """E.g. `torch 2.13.0+cpu|aten AVX512|onednn 3.12.0|mkl 2024.2|cpu amx_tile,avx512_bf16,...`;
    on a GPU the GPU's description follows (the host's part still decides the host's arithmetic)."""
    device = torch.device(device)
    env = [f"{name}={os.environ[name]}" for name in NUMERIC_ENV if os.environ.get(name)]
    parts = [f"torch {torch.__version__}", f"aten {torch.backends.cpu.get_cpu_capability()}", *library_versions(),
             "cpu " + ",".join(cpu_features()), *env]
    if device.type == "cuda":
        parts += gpu_description(device)
    return "|".join(parts)
