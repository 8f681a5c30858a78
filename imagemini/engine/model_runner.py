"""One forward pass over every sequence that has work this step.

The rows of all sequences (a prompt chunk, or the one new token of a decoding sequence)
are stacked into one [N, hidden] matrix, so every weight matmul runs once per step for the
whole batch, in fixed row tiles (models/layers.py). Attention is the only per-sequence part:
each sequence writes its new keys/values into its own cache and attends over exactly its
own tokens, so its arithmetic is the same whether it runs alone or beside fifteen others.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imagemini.models.janus import Janus
from imagemini.models.layers import set_row_tile

from .sequence import Sequence


@dataclass
class Chunk:
    seq: Sequence
    start: int  # position of the first row
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


def _decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """One pre-scaled float32 query row q [1, Hq, D] over float32 keys/values [Hkv, L, D]:
    plain matmuls beat the fused kernel's set-up cost at this size."""
    heads, kv_heads, d = q.shape[1], keys.shape[0], q.shape[2]
    scores = torch.matmul(q.view(kv_heads, heads // kv_heads, d), keys.transpose(1, 2))
    return torch.matmul(torch.softmax(scores, dim=-1), values).view(1, heads, d)


class ModelRunner:
    def __init__(self, model: Janus, row_tile: int = 8) -> None:
        self.model = model
        self.row_tile = row_tile
        model.model.language_model.fuse()
        set_row_tile(model, row_tile)
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
        ids = torch.tensor(ids)
        vocab = self.model.cfg.text.vocab_size
        codes = ids >= vocab
        embeds = self.model.embed_tokens(ids.clamp(max=vocab - 1))
        if codes.any():
            embeds[codes] = self.model.embed_image_codes(ids[codes] - vocab).to(embeds.dtype)
        for offset, rows in parts:
            embeds[offset : offset + rows.shape[0]] = rows.to(embeds.dtype)
        return embeds

    def _attend(self, chunks: list[Chunk]):
        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            # New keys/values of every chunk into its sequence's cache, in one call.
            destinations, sources, offset = [], [], 0
            for c in chunks:
                rows = slice(offset, offset + c.length)
                offset += c.length
                destinations += [c.seq.kv.k[layer][:, c.start : c.end], c.seq.kv.v[layer][:, c.start : c.end]]
                sources += [k[rows].transpose(0, 1), v[rows].transpose(0, 1)]
            torch._foreach_copy_(destinations, sources)
            # Attention per sequence over exactly its own tokens (float32, query pre-scaled).
            q = q.float() * (q.shape[-1] ** -0.5)
            outputs, offset = [], 0
            for c in chunks:
                query = q[offset : offset + c.length]
                offset += c.length
                keys, values = c.seq.kv.k[layer][:, : c.end], c.seq.kv.v[layer][:, : c.end]
                if c.length == 1:
                    outputs.append(_decode_attention(query, keys, values))
                    continue
                mask = torch.arange(c.end)[None, :] <= torch.arange(c.start, c.end)[:, None]
                out = F.scaled_dot_product_attention(
                    query.transpose(0, 1)[None], keys[None], values[None], attn_mask=mask, scale=1.0,
                    enable_gqa=query.shape[1] != keys.shape[0],
                )
                outputs.append(out[0].transpose(0, 1))
            if offset < q.shape[0]:  # tile padding rows: attend to nothing, stay zero
                outputs.append(q.new_zeros(q.shape[0] - offset, *q.shape[1:]))
            return torch.cat(outputs).to(k.dtype)

        return attend

    @torch.inference_mode()
    def forward(self, chunks: list[Chunk]) -> torch.Tensor:
        """Run the chunks; return the final hidden state of each chunk's last row [len(chunks), hidden]."""
        embeds = self._embeddings(chunks)
        positions = torch.cat([torch.arange(c.start, c.end) for c in chunks])
        # Pad the rows once to whole tiles, so every matmul below takes its one-tile fast path.
        padding = -embeds.shape[0] % self.row_tile
        if padding:
            embeds = F.pad(embeds, (0, 0, 0, padding))
            positions = F.pad(positions, (0, padding))
        hidden = self.model.decoder(embeds, positions, self._attend(chunks))
        last_rows = torch.tensor([0] + [c.length for c in chunks]).cumsum(0)[1:] - 1
        return hidden[last_rows]

    @torch.inference_mode()
    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.text_logits(hidden).float()

    @torch.inference_mode()
    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.image_logits(hidden).float()
