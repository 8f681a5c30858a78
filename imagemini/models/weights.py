"""A checkpoint's weight files, single (`model.safetensors`) or sharded (`model.safetensors.index.json`
naming `model-0000i-of-0000n.safetensors`), read into tensors allocated once in the target dtype.

    files = weight_files("models/bundled")               # the files, in a stable order
    for name, tensor in read_tensors(files, expected, torch.bfloat16): ...

Each tensor is read from the file straight into its final storage (`readinto`); only a tensor
stored in another dtype passes through a scratch buffer of its own size. So loading holds the
weights once, in the process's own memory, plus at most the largest tensor: pro-1b in bfloat16
(4.15 GB of weights) peaks at 4.47 GB resident. (The safetensors library's `get_tensor` hands
back tensors over a memory map of the file instead: the model's weights would stay file pages of
every shard, and a dtype conversion would hold the converted copy beside the touched pages.)

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length,
a JSON header {name: {dtype, shape, data_offsets: [begin, end]}} (offsets from the end of the
header), then the bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def weight_files(path: str | Path) -> list[Path]:
    """The checkpoint's weight files: the shards its index names (sorted), else the single file."""
    path = Path(path)
    index = path / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [path / name for name in sorted(set(weight_map.values()))]
    if (path / SINGLE_FILE).exists():
        return [path / SINGLE_FILE]
    raise FileNotFoundError(f"{path}: neither {SINGLE_FILE} nor {INDEX_FILE}")


def read_header(file: Path) -> tuple[int, dict]:
    """(offset of the data, {tensor name: its entry}) of one safetensors file."""
    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return 8 + length, header


def read_tensors(
    files: list[Path], expected: dict[str, torch.Size], dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of `files` as a new `dtype` tensor (floating point ones; others keep theirs).
    A name not in `expected` or a shape that differs from it is a ValueError."""
    for file in files:
        data_start, header = read_header(file)
        with open(file, "rb", buffering=0) as f:
            for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
                if name not in expected:
                    raise ValueError(f"unexpected tensor {name!r} in {file}")
                shape = tuple(entry["shape"])
                if shape != tuple(expected[name]):
                    raise ValueError(f"{name}: shape {shape} != expected {tuple(expected[name])}")
                begin, end = entry["data_offsets"]
                f.seek(data_start + begin)
                yield name, _read_tensor(f, _DTYPES[entry["dtype"]], shape, end - begin, dtype)


def _read_tensor(f, stored: torch.dtype, shape: tuple[int, ...], nbytes: int, dtype: torch.dtype) -> torch.Tensor:
    target = dtype if stored.is_floating_point else stored
    out = torch.empty(shape, dtype=target)
    if target == stored:
        _read_exactly(f, out, nbytes)
        return out
    scratch = torch.empty(shape, dtype=stored)
    _read_exactly(f, scratch, nbytes)
    return out.copy_(scratch)


def _read_exactly(f, tensor: torch.Tensor, nbytes: int) -> None:
    if tensor.numel() * tensor.element_size() != nbytes:
        raise ValueError(f"tensor of {tuple(tensor.shape)} {tensor.dtype} stored in {nbytes} bytes")
    view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
    done = 0
    while done < nbytes:  # a raw read may return fewer bytes than asked
        n = f.readinto(view[done:])
        if not n:
            raise ValueError(f"{f.name}: file ends inside a tensor")
        done += n
