"""Building blocks shared by the Janus sub-networks.

`Linear` is `nn.Linear` with one extra switch, `row_tile`: when set (the engine sets it),
every matmul runs on fixed blocks of `row_tile` rows. On CPU, the GEMM kernel — and so the
rounding of each output row — is chosen by the number of rows (docs/design.md, "Seed
guarantee"), so without this a request's logits would depend on how many other requests
share its batch. With fixed tiles every row always meets the same kernel, whatever else is in
the batch. Where a probe at set-up shows that a block of fewer rows gets each of its rows bit
for bit what the whole tile gives it (oneDNN's bf16 kernels on this AVX-512 CPU, for our
weights), short blocks skip their padding rows: the same numbers for less work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DirectCall:
    """Mixin for the modules a decode step runs (~45 calls a step): calling one runs its
    `forward` directly, without nn.Module.__call__'s hook dispatch (~2 µs a call, a few percent
    of a guided image step on the bundled 4-layer model). The price: hooks registered on these
    modules never run; imagemini registers none."""

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


class Linear(DirectCall, nn.Linear):
    row_tile: int | None = None
    _packed: torch.Tensor | None = None  # oneDNN-packed bf16 weight for `row_tile` rows
    short_blocks_exact: bool = False  # set by `set_row_tile`'s probe
    # Set by `fuse_linears`: the Linears whose weights are views into this one's (a plain tuple,
    # not submodules), and on each of those, that a fused Linear computes it.
    parts: tuple["Linear", ...] = ()
    is_fused_part: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tile = self.row_tile
        if tile is None:
            return F.linear(x, self.weight, self.bias)
        if x.dim() == 2 and (x.shape[0] == tile or (x.shape[0] < tile and self.short_blocks_exact)):
            return self._tile_matmul(x)  # the decoder's usual case: one block, nothing to pad or cut
        rows = x.reshape(-1, x.shape[-1])
        n = rows.shape[0]
        if n % tile and not self.short_blocks_exact:
            rows = F.pad(rows, (0, 0, 0, tile - n % tile))
        blocks = rows.split(tile)
        out = self._tile_matmul(blocks[0]) if len(blocks) == 1 else torch.cat([self._tile_matmul(b) for b in blocks])
        return out[:n].reshape(*x.shape[:-1], -1)

    def _tile_matmul(self, block: torch.Tensor) -> torch.Tensor:
        if self._packed is not None:
            return torch.ops.mkldnn._linear_pointwise(block, self._packed, self.bias, "none", [], "")
        return F.linear(block, self.weight, self.bias)

    def prepack(self) -> None:
        """Pre-arrange a bf16 weight for oneDNN's tile-sized matmul (same results, less set-up
        per call); silently keeps the plain path where this build of torch has no such op, and
        on a GPU, where cuBLAS takes the plain weight."""
        if self.weight.dtype != torch.bfloat16 or self.row_tile is None or self.weight.device.type != "cpu":
            return
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), self.row_tile)
            probe = _probe_rows(self.row_tile, self.in_features).to(torch.bfloat16)  # a CPU weight: a CPU probe
            got = torch.ops.mkldnn._linear_pointwise(probe, packed, self.bias, "none", [], "")
            if torch.equal(got, F.linear(probe, self.weight, self.bias)):
                self._packed = packed
        except (RuntimeError, AttributeError):
            self._packed = None

    @torch.no_grad()
    def probe_short_blocks(self) -> None:
        """Whether m < row_tile rows give each row exactly what a whole tile gives it, for every m.
        The kernel's arithmetic is chosen by shape, not by values, so one random tile
        per m settles it for this weight, dtype and thread count."""
        tile = self.row_tile
        self.short_blocks_exact = False
        if tile is None or tile == 1:
            return
        probe = _probe_rows(tile, self.in_features).to(self.weight.device, self.weight.dtype)
        whole = self._tile_matmul(probe)
        self.short_blocks_exact = all(torch.equal(self._tile_matmul(probe[:m]), whole[:m]) for m in range(1, tile))


def _probe_rows(rows: int, features: int) -> torch.Tensor:
    """Random set-up probes from a generator of their own: building an engine leaves the
    caller's torch random stream where it was."""
    return torch.randn(rows, features, generator=torch.Generator().manual_seed(0))


def fuse_linears(parts: list[Linear]) -> Linear:
    """One Linear computing `parts` side by side; the parts' weights become views into it,
    so the fused copy costs no extra memory and the state dict keeps its names."""
    weight = torch.cat([p.weight.detach() for p in parts])
    bias = torch.cat([p.bias.detach() for p in parts]) if parts[0].bias is not None else None
    fused = Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    fused.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
    fused.row_tile = parts[0].row_tile
    fused.parts = tuple(parts)
    offset = 0
    for p in parts:
        p.is_fused_part = True
        rows = p.weight.shape[0]
        p.weight = nn.Parameter(weight[offset : offset + rows], requires_grad=False)
        if bias is not None:
            p.bias = nn.Parameter(bias[offset : offset + rows], requires_grad=False)
        offset += rows
    return fused


def set_row_tile(module: nn.Module, tile: int | None, keep_plain_weights: bool = True) -> None:
    """Switch every `Linear` under `module` to fixed `tile`-row blocks (None: plain matmul).
    The parts of a fused Linear are left alone: only the fused one runs. Without
    `keep_plain_weights`, a Linear that computes from its packed copy drops its plain weight (and
    its parts theirs, views into it) as soon as it is packed: the model then holds its matmul
    weights once, never twice, and their state-dict entries go with them."""
    for m in module.modules():
        if isinstance(m, Linear) and not m.is_fused_part:
            if m.weight is None:
                raise RuntimeError("this Linear's plain weight was released: its tiles cannot change")
            m.row_tile = tile
            m._packed = None
            m.prepack()
            m.probe_short_blocks()
            if m._packed is not None and not keep_plain_weights:
                for holder in (m, *m.parts):
                    holder.weight = None


def short_blocks_exact(module: nn.Module) -> bool:
    """Whether every tiled `Linear` under `module` computes short blocks exactly (see above)."""
    return all(m.short_blocks_exact for m in module.modules() if isinstance(m, Linear) and m.row_tile)


class RMSNorm(DirectCall, nn.Module):
    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 and scale in the input dtype, as the Llama reference does.
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


def activation(name: str):
    if name == "silu":
        return F.silu
    if name == "gelu":
        return F.gelu
    if name in ("gelu_pytorch_tanh", "gelu_new"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    raise ValueError(f"unsupported activation {name!r}")


class AlignerMLP(DirectCall, nn.Module):
    """fc1 then (act, linear) × (depth-1): the understanding and generation aligners."""

    def __init__(self, in_dim: int, out_dim: int, depth: int, act: str) -> None:
        super().__init__()
        self.fc1 = Linear(in_dim, out_dim)
        self.hidden_layers = nn.ModuleList([Linear(out_dim, out_dim) for _ in range(1, depth)])
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        for layer in self.hidden_layers:
            x = layer(self.act(x))
        return x
