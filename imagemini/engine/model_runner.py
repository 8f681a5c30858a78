"""One forward pass over every sequence that has work this step.

The rows of all sequences (a prompt chunk, or the one new token of a decoding sequence)
are stacked into one [N, hidden] matrix, so every weight matmul runs once per step for the
whole batch, in fixed row tiles (models/layers.py). Attention is the only per-sequence part:
each sequence writes its new keys/values into its own cache and attends over exactly its
own tokens, so its arithmetic is the same whether it runs alone or beside fifteen others.

Two attention plans, each with its own KV layout (kv_cache.py):
- "per_sequence": a Python loop over sequences, each over its own allocation. (A guided image's
  conditional and unconditional rows always run together, so they attend as one batched pair:
  still nothing else in the step changes their arithmetic.) The CPU's default.
- "batched" (attention.py): all decode rows of a step together over one shared pool, in tensor
  ops counted by row tiles and key blocks, never by sequences, and batch-invariant by
  construction; prefill chunks per chunk. The GPU's default, where a loop over sequences would
  launch kernels per sequence per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imagemini.models.janus import Janus
from imagemini.models.layers import set_row_tile, short_blocks_exact

from .attention import BatchedAttention, causal_chunk_attention
from .sequence import Sequence
from .transfer import Transfer


@dataclass
class Chunk:
    seq: Sequence
    start: int  # position of the first row
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


def _decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """B pre-scaled float32 query rows q [B, Hq, D], one per sequence, over float32 keys/values
    [B·Hkv, L, D] of B sequences of one length: plain batched matmuls beat the fused kernel's
    set-up cost at this size. `bmm` is what `matmul` calls for these shapes, without its
    broadcasting steps (this runs once per sequence per layer per step)."""
    b, heads, d = q.shape
    kv_heads = keys.shape[0] // b
    scores = torch.bmm(q.view(b * kv_heads, heads // kv_heads, d), keys.transpose(1, 2))
    return torch.bmm(torch.softmax(scores, dim=-1), values).view(b, heads, d)


def _is_guided_pair(c: Chunk, partner: Chunk) -> bool:
    """A decoding image row and its unconditional partner's row: always scheduled together, with
    contexts of one length, so attending to both at once depends on nothing else in the batch."""
    return (c.length == 1 and partner.length == 1 and partner.seq is c.seq.cfg_partner
            and partner.end == c.end and c.seq.kv.pair is not None)


@dataclass
class _Group:
    """One chunk's rows (or a guided pair's two rows) in a step, with its cache views per layer,
    made once per step: where its new keys/values go, and the keys/values it attends to."""

    chunk: Chunk
    first: int  # its first row in the step's batch
    rows: int
    paired: bool
    write_k: tuple[torch.Tensor, ...]
    write_v: tuple[torch.Tensor, ...]
    read_k: tuple[torch.Tensor, ...]
    read_v: tuple[torch.Tensor, ...]


def _plan(chunks: list[Chunk]) -> list[_Group]:
    plan: list[_Group] = []
    i = first = 0
    while i < len(chunks):
        c = chunks[i]
        if i + 1 < len(chunks) and _is_guided_pair(c, chunks[i + 1]):
            k, v = c.seq.kv.pair  # [layers, 2, Hkv, capacity, D]
            plan.append(_Group(
                c, first, 2, True,
                k[:, :, :, c.start : c.end].unbind(0), v[:, :, :, c.start : c.end].unbind(0),
                k[:, :, :, : c.end].flatten(1, 2).unbind(0), v[:, :, :, : c.end].flatten(1, 2).unbind(0),
            ))
            i, first = i + 2, first + 2
        else:
            k, v = c.seq.kv.k, c.seq.kv.v  # [layers, Hkv, capacity, D]
            plan.append(_Group(
                c, first, c.length, False,
                k[:, :, c.start : c.end].unbind(0), v[:, :, c.start : c.end].unbind(0),
                k[:, :, : c.end].unbind(0), v[:, :, : c.end].unbind(0),
            ))
            i, first = i + 1, first + c.length
    return plan


class ModelRunner:
    def __init__(
        self, model: Janus, row_tile: int | None, attention: str = "per_sequence", transfer: Transfer | None = None,
        attention_rows: int | None | str = "row_tile",
    ) -> None:
        """`attention`: "per_sequence" or "batched" (the KV cache must then be pooled); `transfer`:
        how step inputs reach the model's device; `attention_rows`: the batched plan's decode tile
        (attention.py), "row_tile" for the row tile."""
        if attention not in ("per_sequence", "batched"):
            raise ValueError(f"unknown attention plan {attention!r}")
        self.model = model
        self.row_tile = row_tile
        self.transfer = transfer or Transfer(model.device)
        tile_rows = row_tile if attention_rows == "row_tile" else attention_rows
        self.batched = BatchedAttention(tile_rows) if attention == "batched" else None
        model.model.language_model.fuse()
        set_row_tile(model, row_tile, keep_plain_weights=False)  # nothing reads them after packing
        # Pad a step's rows to whole tiles once, so that every matmul takes its one-block path,
        # unless short blocks are exact anyway (then padding rows would only add work).
        self.pad_to = row_tile if row_tile and not short_blocks_exact(model) else None
        self.dtype = next(model.parameters()).dtype

    def _embeddings(self, chunks: list[Chunk]) -> torch.Tensor:
        """Input rows: token embeddings, image-code embeddings (ids above the text vocabulary),
        or precomputed prompt rows (prompts holding images)."""
        ids, parts = [], []
        for c in chunks:
            if c.seq.prompt_embeds is not None and c.start < len(c.seq.prompt_ids):
                parts.append((len(ids), c.seq.prompt_embeds[c.start : c.end]))
                ids.extend([0] * c.length)  # placeholder rows, overwritten below
            else:
                ids.extend(c.seq.token_at(p) for p in range(c.start, c.end))
        vocab = self.model.cfg.text.vocab_size
        code_rows = [i for i, t in enumerate(ids) if t >= vocab]
        ids = self.transfer.tensor(ids)
        if len(code_rows) == len(ids):  # a step of image rows only
            return self._whole_tiles(self.model.embed_image_codes, ids - vocab).to(self.dtype)
        embeds = self.model.embed_tokens(ids.clamp(max=vocab - 1))
        if code_rows:
            rows = self.transfer.tensor(code_rows)
            embeds[rows] = self.model.embed_image_codes(ids[rows] - vocab).to(embeds.dtype)
        for offset, rows in parts:
            embeds[offset : offset + rows.shape[0]] = self.transfer.to_device(rows).to(embeds.dtype)
        return embeds

    def _attend(self, chunks: list[Chunk]):
        if self.batched is not None:
            return self.batched.attend(chunks, self.transfer)
        plan = _plan(chunks)
        rows = sum(g.rows for g in plan)
        any_pair = any(g.paired for g in plan)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            # New keys/values of every group into its cache, in one call.
            if any_pair:  # [N, Hkv, 1, D]: a pair's rows as its cache holds them
                k_rows, v_rows = k[:, :, None], v[:, :, None]
            destinations, sources = [], []
            for g in plan:
                destinations += [g.write_k[layer], g.write_v[layer]]
                if g.paired:
                    sources += [k_rows[g.first : g.first + 2], v_rows[g.first : g.first + 2]]
                else:
                    sources += [k[g.first : g.first + g.rows].transpose(0, 1), v[g.first : g.first + g.rows].transpose(0, 1)]
            torch._foreach_copy_(destinations, sources)
            # Attention per sequence (per guided pair) over exactly its own tokens (float32, query pre-scaled).
            q = q.float() * (q.shape[-1] ** -0.5)
            outputs = []
            for g in plan:
                query, keys, values = q[g.first : g.first + g.rows], g.read_k[layer], g.read_v[layer]
                if g.paired or g.rows == 1:
                    outputs.append(_decode_attention(query, keys, values))
                    continue
                outputs.append(causal_chunk_attention(query, keys, values, g.chunk.start))
            if rows < q.shape[0]:  # tile padding rows: attend to nothing, stay zero
                outputs.append(q.new_zeros(q.shape[0] - rows, *q.shape[1:]))
            return (outputs[0] if len(outputs) == 1 else torch.cat(outputs)).to(k.dtype)

        return attend

    @torch.inference_mode()
    def forward(self, chunks: list[Chunk]) -> torch.Tensor:
        """Run the chunks; return the final hidden state of each chunk's last row [len(chunks), hidden]."""
        embeds = self._embeddings(chunks)
        positions = self.transfer.tensor([p for c in chunks for p in range(c.start, c.end)])
        padding = -embeds.shape[0] % self.pad_to if self.pad_to else 0
        if padding:
            embeds = F.pad(embeds, (0, 0, 0, padding))
            positions = F.pad(positions, (0, padding))
        hidden = self.model.decoder(embeds, positions, self._attend(chunks))
        last_rows = self.transfer.tensor([0] + [c.length for c in chunks]).cumsum(0)[1:] - 1
        return hidden[last_rows]

    @torch.inference_mode()
    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._whole_tiles(self.model.text_logits, hidden).float()

    @torch.inference_mode()
    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._whole_tiles(self.model.image_logits, hidden).float()

    def _whole_tiles(self, network, rows: torch.Tensor) -> torch.Tensor:
        """`network` (row-wise: embeddings, MLPs) on `rows` padded once to whole tiles where padding
        is needed, so each of its matmuls takes the one-block path instead of padding and cutting again."""
        n = rows.shape[0]
        padding = -n % self.pad_to if self.pad_to else 0
        if not padding:
            return network(rows)
        pad = (0, padding) if rows.dim() == 1 else (0, 0, 0, padding)
        return network(F.pad(rows, pad))[:n]
