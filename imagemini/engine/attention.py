"""The batched attention plan: every decode row of a step in a fixed number of tensor ops per
layer, over the pooled KV cache (kv_cache.py), with no Python loop over sequences.

Per step, once (not per layer), from one host tensor copied to the device:
- the pool positions of every row's new key/value: a layer writes them all with one `index_copy_`;
- the decode rows (chunks of one row, a guided pair's two rows among them), cut into tiles of
  `tile_rows` rows (the last one padded), and for each tile and key block j the pool positions
  of keys j·S .. j·S+S-1 of each of its rows (S = `block_tokens`), with a mask of the positions
  past each row's length; those point at the pool's zero slot.

Per layer, each tile's rows attend block by block (a loop over tiles and blocks, never over
sequences): one `index_select` per K and V gathers the block, then an online softmax in float32
(flash attention's running maximum) folds it in. Prefill chunks (more than one row) keep
per-chunk attention, causal `scaled_dot_product_attention` over their range of the pool, as the
per-sequence plan does: a step holds only a few of them, and each is a large matmul already.

Batch invariance: a sequence's numbers must not depend on the rest of the batch.
- Its blocks are fixed windows of absolute positions, so its own blocks are the same alone or
  beside others. A tile may run more blocks than a row needs (a longer neighbour); such a
  trailing block is fully masked for the row and an exact no-op: every score is -inf, so the
  running maximum stays m (m_new = max(m, -inf) = m), alpha = exp(m - m) = exp(0) = 1 exactly,
  p = exp(-inf - m) = 0, and p·V = 0 exactly because V comes from the zero slot (a finite
  stale value would do too, but the zero slot also keeps a NaN or inf left in a freed range
  out of reach: 0·NaN is NaN). So l·1 + 0 = l and o·1 + 0 = o, the lone caveat being an entry of
  o that is exactly -0.0, which + 0 turns into +0.0: that needs every product in it to be -0.0,
  and no later sum can tell the two zeros apart unless all its terms are zero.
- The first block is exact whatever came before: m starts at -inf and every row has at least
  one key there (its position 0), so m_new is finite and alpha = exp(-inf - m_new) = 0; l and o
  start at 0, so l = sum(p) and o = p·V.
- Shapes. On a CPU each row's arithmetic in these ops does not depend on how many rows share
  them (tests/engine/test_attention.py checks it bit for bit). On a GPU, a kernel (a batched
  matmul's tiling, a reduction's split) may be chosen by the whole shape, so rows are attended
  in tiles of exactly `tile_rows` rows: every per-block op then has one shape whatever the batch.
  The price: a tile pads to `tile_rows` rows, so a lone sequence gathers and multiplies as many
  blocks as a full tile (padding rows read the zero slot, cached, but their gathered copies are
  written all the same), and every row of a tile runs as many blocks as the tile's longest row.
  `tile_rows=None` runs all decode rows as one tile of whatever size: least work, exact on a CPU,
  not guaranteed on a GPU. The engine's default is its row tile (models/layers.py), the same
  trade-off the matmuls make.
- Padding rows query with a real row's query over one key, the zero slot (length 1): their
  score is 0, never -inf everywhere, so they make no NaN; their output is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from imagemini.models.llama import Attend

from .transfer import Transfer

if TYPE_CHECKING:
    from .model_runner import Chunk

# Key positions per block: one gather and one online-softmax update (~15 kernels on a GPU) each.
# Larger blocks launch fewer kernels per layer for long contexts; smaller ones waste less on a
# row's last, partly masked block and gather less at once. Any fixed value keeps the invariance.
BLOCK_TOKENS = 128


def causal_chunk_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int) -> torch.Tensor:
    """A chunk's pre-scaled float32 query rows [rows, Hq, D] (positions start..) over its sequence's
    keys/values [Hkv, start + rows, D], causally: [rows, Hq, D]."""
    end = keys.shape[1]
    mask = torch.arange(end, device=keys.device)[None, :] <= torch.arange(start, end, device=keys.device)[:, None]
    out = F.scaled_dot_product_attention(
        query.transpose(0, 1)[None], keys[None], values[None], attn_mask=mask, scale=1.0,
        enable_gqa=query.shape[1] != keys.shape[0],
    )
    return out[0].transpose(0, 1)


@dataclass
class _Prefill:
    chunk: "Chunk"
    first: int  # its first row in the step's batch


@dataclass
class _DecodeTile:
    blocks: int  # key blocks its longest row needs
    keys: torch.Tensor  # [max blocks, tile_rows, S] pool positions, contiguous per block
    masked: torch.Tensor  # [max blocks, tile_rows, S] True: past the row's length


@dataclass
class StepIndex:
    """What every layer of one step reads to attend: built once per step, on the device."""

    written: int  # rows with keys/values (the step's tile padding rows come after them)
    write_positions: torch.Tensor  # [written] pool position of each row's new key/value
    decode_rows: torch.Tensor  # [decode rows] their rows in the step's batch
    query_rows: torch.Tensor  # [tiles · tile_rows] the batch row each tile row queries with
    tile_rows: int
    tiles: list[_DecodeTile]
    prefills: list[_Prefill]


def _tile_layout(lengths: list[int], tile_rows: int | None) -> tuple[int, int]:
    """(rows a tile, tiles) for decode rows of these lengths."""
    if not lengths:
        return 0, 0
    rows = tile_rows or len(lengths)
    return rows, -(-len(lengths) // rows)


class BatchedAttention:
    def __init__(self, tile_rows: int | None, block_tokens: int = BLOCK_TOKENS) -> None:
        if (tile_rows is not None and tile_rows < 1) or block_tokens < 1:
            raise ValueError("tile_rows and block_tokens must be positive")
        self.tile_rows = tile_rows
        self.block_tokens = block_tokens

    def step_index(self, chunks: list["Chunk"], zero_slot: int, transfer: Transfer) -> StepIndex:
        """Positions and masks of one step (see the module docstring)."""
        write, prefills = [], []
        decode_rows, offsets, lengths = [], [], []
        first = 0
        for c in chunks:
            offset = c.seq.kv.offset
            write.extend(range(offset + c.start, offset + c.end))
            if c.length == 1:
                decode_rows.append(first)
                offsets.append(offset)
                lengths.append(c.end)
            else:
                prefills.append(_Prefill(c, first))
            first += c.length
        rows, tiles = _tile_layout(lengths, self.tile_rows)
        padding = rows * tiles - len(lengths)
        query_rows = decode_rows + [0] * padding
        offsets += [zero_slot] * padding
        lengths += [1] * padding
        # One copy, from pinned memory on a GPU: it starts at once and the host never waits for it.
        host = torch.tensor(write + decode_rows + query_rows + offsets + lengths, dtype=torch.long, pin_memory=transfer.on_gpu)
        index = transfer.to_device(host).split([len(write), len(decode_rows), *[rows * tiles] * 3])
        write_positions, decode_index, query_index, offsets_d, lengths_d = index
        return StepIndex(
            len(write), write_positions, decode_index, query_index, rows,
            self._tiles(offsets_d, lengths_d, lengths, rows, tiles, zero_slot), prefills,
        )

    def _tiles(
        self, offsets: torch.Tensor, lengths: torch.Tensor, host_lengths: list[int], rows: int, tiles: int,
        zero_slot: int,
    ) -> list[_DecodeTile]:
        if not tiles:
            return []
        s = self.block_tokens
        blocks = [-(-max(host_lengths[t * rows : (t + 1) * rows]) // s) for t in range(tiles)]
        span = torch.arange(max(blocks) * s, device=offsets.device)
        valid = span[None, :] < lengths[:, None]  # [tiles · rows, blocks · S]
        keys = torch.where(valid, offsets[:, None] + span, zero_slot)
        # [tiles, blocks, rows, S]: each (tile, block) a contiguous index for index_select
        keys = keys.view(tiles, rows, -1, s).transpose(1, 2).contiguous()
        masked = (~valid).view(tiles, rows, -1, s).transpose(1, 2).contiguous()
        return [_DecodeTile(blocks[t], keys[t], masked[t]) for t in range(tiles)]

    def attend(self, chunks: list["Chunk"], transfer: Transfer) -> Attend:
        """The step's attention over the pool that the chunks' sequences hold their keys/values in."""
        if chunks[0].seq.kv.pool is None:
            raise ValueError("the batched attention plan needs a pooled KV cache (KVCache(pooled=True))")
        pool_k, pool_v = chunks[0].seq.kv.pool
        index = self.step_index(chunks, pool_k.shape[2] - 1, transfer)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            keys, values = pool_k[layer], pool_v[layer]  # [Hkv, pool tokens + 1, D]
            n = index.written
            keys.index_copy_(1, index.write_positions, k[:n].transpose(0, 1).to(keys.dtype))
            values.index_copy_(1, index.write_positions, v[:n].transpose(0, 1).to(values.dtype))
            q = q.float() * (q.shape[-1] ** -0.5)
            out = torch.zeros_like(q)  # the step's tile padding rows attend to nothing: zero
            if index.tiles:
                queries = q.index_select(0, index.query_rows).split(index.tile_rows)
                decoded = [decode_tile(rows, keys, values, tile) for rows, tile in zip(queries, index.tiles)]
                decoded = decoded[0] if len(decoded) == 1 else torch.cat(decoded)
                out.index_copy_(0, index.decode_rows, decoded[: len(index.decode_rows)])
            for p in index.prefills:
                c = p.chunk
                kv = c.seq.kv
                out[p.first : p.first + c.length] = causal_chunk_attention(
                    q[p.first : p.first + c.length], kv.k[layer, :, : c.end].float(), kv.v[layer, :, : c.end].float(), c.start,
                )
            return out.to(k.dtype)

        return attend


def decode_tile(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, tile: _DecodeTile) -> torch.Tensor:
    """Pre-scaled float32 query rows q [R, Hq, D] of one tile over the pool's keys/values
    [Hkv, pool tokens + 1, D] of one layer, block by block (online softmax): [R, Hq, D]."""
    r, heads, d = q.shape
    kv_heads = keys.shape[0]
    group = heads // kv_heads
    s = tile.keys.shape[-1]
    q = q.view(r, kv_heads, group, d).transpose(0, 1).reshape(kv_heads * r, group, d)
    m = q.new_full((kv_heads * r, group, 1), float("-inf"))
    l = q.new_zeros(kv_heads * r, group, 1)
    o = q.new_zeros(kv_heads * r, group, d)
    # Block 0 is exact (alpha = exp(-inf) = 0, every row has a key there); a block past a row's
    # length leaves its m, l and o as they were (module docstring): so running the tile's
    # longest row's blocks for every row changes no row.
    for j in range(tile.blocks):
        positions = tile.keys[j].view(-1)  # past a row's length: the zero slot
        k_j = keys.index_select(1, positions).view(kv_heads * r, s, d).float()
        v_j = values.index_select(1, positions).view(kv_heads * r, s, d).float()
        scores = torch.bmm(q, k_j.transpose(1, 2)).view(kv_heads, r, group, s)
        scores = scores.masked_fill(tile.masked[j][None, :, None, :], float("-inf")).view(kv_heads * r, group, s)
        m_new = torch.maximum(m, scores.amax(-1, keepdim=True))
        p = torch.exp(scores - m_new)
        alpha = torch.exp(m - m_new)
        l = l * alpha + p.sum(-1, keepdim=True)
        o = o * alpha + torch.bmm(p, v_j)
        m = m_new
    return (o / l).view(kv_heads, r, group, d).transpose(0, 1).reshape(r, heads, d)
