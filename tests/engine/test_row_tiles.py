"""Fixed row tiles (models/layers.py): every row of a matmul gets the numbers a whole tile gives
it, however many rows share the call; short blocks skip their padding only where a probe has
shown that they compute exactly what the padded tile would."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imagemini.models.layers import Linear, fuse_linears, set_row_tile, short_blocks_exact


def tiled_linear(dtype: torch.dtype, tile: int = 8) -> Linear:
    torch.manual_seed(0)
    layer = Linear(64, 96).to(dtype)
    layer.requires_grad_(False)
    set_row_tile(layer, tile)
    return layer


def padded_reference(layer: Linear, x: torch.Tensor) -> torch.Tensor:
    """What the tiled layer must give: x cut into whole tiles, padding rows added, each tile alone."""
    tile, n = layer.row_tile, x.shape[0]
    rows = F.pad(x, (0, 0, 0, -n % tile))
    return torch.cat([F.linear(block, layer.weight, layer.bias) for block in rows.split(tile)])[:n]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, 3, 8, 11, 16, 21])
def test_every_row_gets_what_its_padded_tile_gives(dtype, rows):
    layer = tiled_linear(dtype)
    x = torch.randn(rows, 64).to(dtype)
    with torch.no_grad():
        assert torch.equal(layer(x), padded_reference(layer, x))
        assert torch.equal(layer(x[None])[0], padded_reference(layer, x))  # leading dims flattened


def test_a_kernel_whose_rows_depend_on_the_block_keeps_its_padding(monkeypatch):
    """A kernel that rounds differently for short blocks (as CPU GEMMs may: docs/design.md,
    "Seed guarantee") fails the probe, and then every call is padded to whole tiles."""
    calls: list[int] = []

    def block_dependent(self, block):
        calls.append(block.shape[0])
        out = F.linear(block, self.weight, self.bias)
        return out + (block.shape[0] < self.row_tile) * 1e-3  # short blocks round differently

    monkeypatch.setattr(Linear, "_tile_matmul", block_dependent)
    layer = tiled_linear(torch.float32)
    assert not layer.short_blocks_exact and not short_blocks_exact(layer)
    calls.clear()
    x = torch.randn(11, 64)
    with torch.no_grad():
        out = layer(x)
    assert calls == [8, 8]  # 11 rows ran as two whole tiles, never as a short block
    assert torch.allclose(out, F.linear(x, layer.weight, layer.bias), atol=1e-5)


def test_an_exact_kernel_runs_short_blocks_unpadded(monkeypatch):
    calls: list[int] = []

    def row_by_row(self, block):  # each row alone: exact for any block by construction
        calls.append(block.shape[0])
        return torch.cat([F.linear(row[None], self.weight, self.bias) for row in block])

    monkeypatch.setattr(Linear, "_tile_matmul", row_by_row)
    layer = tiled_linear(torch.float32)
    assert layer.short_blocks_exact
    calls.clear()
    with torch.no_grad():
        layer(torch.randn(11, 64))
    assert calls == [8, 3]


def test_setting_tiles_up_leaves_the_callers_random_stream_alone():
    layer = Linear(64, 96).to(torch.bfloat16).requires_grad_(False)
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    set_row_tile(layer, 8)  # its probes draw random rows
    assert torch.equal(torch.rand(4), expected)


def test_released_weights_leave_the_packed_copy_computing_the_same_numbers():
    def fused_pair() -> tuple[Linear, list[Linear]]:
        parts = [tiled_linear(torch.bfloat16) for _ in range(2)]
        for part in parts:
            set_row_tile(part, None)
        return fuse_linears(parts), parts

    kept, kept_parts = fused_pair()
    set_row_tile(nn.ModuleList([kept, *kept_parts]), 8)
    if kept._packed is None:
        pytest.skip("this torch build has no packed bf16 matmul")
    assert all(p.row_tile is None and p._packed is None for p in kept_parts)  # only the fused one runs
    released, parts = fused_pair()
    set_row_tile(nn.ModuleList([released, *parts]), 8, keep_plain_weights=False)
    assert released.weight is None and all(p.weight is None for p in parts)
    x = torch.randn(5, 64).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(released(x), kept(x))
        assert torch.equal(released(x), padded_reference(kept, x))
    with pytest.raises(RuntimeError, match="released"):
        set_row_tile(released, 4)
