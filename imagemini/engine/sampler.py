"""Turning one step's logits into tokens, one row per sequence, each row by its own rules.

For each row, in this order (OpenAI's semantics; docs/design.md, "Sampler order"):
1. logprobs are the log-softmax of the *raw* model logits (before any of the below);
2. frequency/presence penalties: logit[j] -= c[j]*frequency + (c[j] > 0)*presence,
   c[j] = times token j was generated so far in this completion;
3. logit_bias is added; banned tokens go to -inf, and so do the tokens a row's mask forbids
   (structured.RowMasks: grammars, thoughts and their budgets, built by the engine per row);
4. temperature 0 is argmax; otherwise softmax(logits / T), the top_p nucleus (smallest
   set of most likely tokens whose mass reaches top_p), and one uniform draw u from the
   sequence's own generator, inverted through the cumulative distribution.

Every operation is row-wise (no reduction across rows), and the draw comes from the
sequence's private generator, so a row's token never depends on its neighbours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .sequence import Sequence, TokenLogprob
from .structured import RowMasks
from .transfer import Transfer


def apply_penalties_and_bias(
    logits: torch.Tensor, seqs: list[Sequence], masks: RowMasks | None = None, transfer: Transfer | None = None
) -> torch.Tensor:
    """Steps 2–3 on a float32 [B, V] copy of the logits. Penalties and biases are added in two
    passes, each touching an entry at most once: a token both penalised and biased gets
    (logit + penalty) + bias in that order, on any device (no accumulation order to race)."""
    transfer = transfer or Transfer(logits.device)
    out = logits.clone()
    vocab = out.shape[1]
    penalties: tuple[list, list, list] = ([], [], [])
    biases: tuple[list, list, list] = ([], [], [])
    banned_rows, banned_cols = [], []
    for row, seq in enumerate(seqs):
        p = seq.params
        if p.has_penalties:
            for token, count in seq.token_counts.items():
                _add_entry(penalties, row, token, -(count * p.frequency_penalty + p.presence_penalty))
        for token, bias in p.logit_bias.items():
            if token < vocab:
                _add_entry(biases, row, token, bias)
        for token in p.banned_token_ids:
            banned_rows.append(row)
            banned_cols.append(token)
    for rows, cols, deltas in (penalties, biases):
        if rows:
            index = (transfer.tensor(rows), transfer.tensor(cols))
            out.index_put_(index, transfer.tensor(deltas, out.dtype), accumulate=True)
    if banned_rows:
        out.index_put_((transfer.tensor(banned_rows), transfer.tensor(banned_cols)), torch.full((), float("-inf"), device=out.device))
    if masks is not None:
        masks.apply(out, transfer)
    return out


def _add_entry(entries: tuple[list, list, list], row: int, col: int, delta: float) -> None:
    entries[0].append(row)
    entries[1].append(col)
    entries[2].append(delta)


def _inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Index of the first entry whose cumulative mass exceeds u·total, per row (float64)."""
    cdf = probs.double().cumsum(-1)
    target = uniforms.double()[:, None] * cdf[:, -1:]
    index = (cdf <= target).sum(-1)
    # Never land on a zero-probability tail entry because of rounding.
    last_nonzero = (probs > 0).long().cumsum(-1).argmax(-1)
    return torch.minimum(index, last_nonzero)


def sample_rows(logits: torch.Tensor, seqs: list[Sequence], transfer: Transfer | None = None) -> torch.Tensor:
    """Step 4 on processed logits [B, V]; returns token ids [B] on the logits' device. Each row's
    uniform comes from its sequence's own generator on the host: one number a step, the same
    on any device, shipped with the step's other inputs."""
    transfer = transfer or Transfer(logits.device)
    tokens = torch.empty(len(seqs), dtype=torch.long, device=logits.device)
    greedy = [i for i, s in enumerate(seqs) if s.params.greedy]
    if greedy:
        index = transfer.tensor(greedy)
        tokens.index_copy_(0, index, logits.index_select(0, index).argmax(-1))
    for nucleus in (False, True):
        rows = [i for i, s in enumerate(seqs) if not s.params.greedy and (s.params.top_p < 1.0) == nucleus]
        if not rows:
            continue
        index = transfer.tensor(rows)
        temps = transfer.tensor([seqs[i].params.temperature for i in rows], torch.float32)[:, None]
        probs = torch.softmax(logits.index_select(0, index) / temps, dim=-1)
        uniforms = transfer.tensor([seqs[i].rng.random() for i in rows], torch.float64)
        if not nucleus:
            tokens.index_copy_(0, index, _inverse_cdf(probs, uniforms))
            continue
        top_p = transfer.tensor([seqs[i].params.top_p for i in rows], torch.float64)[:, None]
        sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
        mass_before = sorted_probs.double().cumsum(-1) - sorted_probs.double()
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
        tokens.index_copy_(0, index, order.gather(-1, _inverse_cdf(sorted_probs, uniforms)[:, None]).squeeze(-1))
    return tokens


def _logprob_tensors(raw_logits: torch.Tensor, tokens: torch.Tensor, seqs: list[Sequence], transfer: Transfer):
    """Step 1 on the device for the rows that asked for logprobs: (their rows, chosen [W], top
    values [W, k], top ids [W, k]), or None when no row asked."""
    wanted = [i for i, s in enumerate(seqs) if s.params.logprobs]
    if not wanted:
        return None
    index = transfer.tensor(wanted)
    logprobs = torch.log_softmax(raw_logits.index_select(0, index).float(), dim=-1)
    k = max(seqs[i].params.top_logprobs for i in wanted)
    chosen = logprobs.gather(-1, tokens.index_select(0, index)[:, None]).squeeze(-1)
    top_values, top_ids = logprobs.topk(k, dim=-1) if k else (logprobs[:, :0], index[:, None][:, :0])
    return wanted, chosen, top_values, top_ids


@dataclass
class Drawn:
    """A step's sampled tokens, still on the device, with the tensors their logprobs are read
    from: the engine reads these and anything else the step needs in one `Transfer.read`."""

    seqs: list[Sequence]
    tokens: torch.Tensor
    logprobs: tuple | None  # _logprob_tensors' (rows, chosen, top values, top ids)

    def tensors(self) -> list[torch.Tensor]:
        return [self.tokens, *(self.logprobs[1:] if self.logprobs else ())]

    def entries(self, host: list) -> tuple[list[int], list[TokenLogprob | None]]:
        """From `tensors()` read to the host: the tokens and each row's logprob entry (or None)."""
        tokens = host[0]
        result: list[TokenLogprob | None] = [None] * len(self.seqs)
        if self.logprobs is not None:
            chosen, top_values, top_ids = host[1:4]
            for j, i in enumerate(self.logprobs[0]):
                n = self.seqs[i].params.top_logprobs
                result[i] = TokenLogprob(tokens[i], chosen[j], list(zip(top_ids[j][:n], top_values[j][:n])))
        return tokens, result


def draw(
    raw_logits: torch.Tensor,
    seqs: list[Sequence],
    masks: RowMasks | None = None,
    settle: Callable[[list[int]], list[int]] | None = None,
    transfer: Transfer | None = None,
) -> Drawn:
    """Steps 1–4. `settle` may replace sampled tokens (each row by its own state: engine.py's
    budget for structured answers) before their logprobs are taken; it needs the tokens on the
    host, so it costs one read of its own."""
    transfer = transfer or Transfer(raw_logits.device)
    raw_logits = raw_logits.float()
    tokens = sample_rows(apply_penalties_and_bias(raw_logits, seqs, masks, transfer), seqs, transfer)
    if settle is not None:
        (host_tokens,) = transfer.read(tokens)
        tokens = transfer.tensor(settle(host_tokens))
    return Drawn(seqs, tokens, _logprob_tensors(raw_logits, tokens, seqs, transfer))


def sample(
    raw_logits: torch.Tensor,
    seqs: list[Sequence],
    masks: RowMasks | None = None,
    settle: Callable[[list[int]], list[int]] | None = None,
    transfer: Transfer | None = None,
) -> tuple[list[int], list[TokenLogprob | None]]:
    """`draw`, then its tokens and logprobs read to the host."""
    transfer = transfer or Transfer(raw_logits.device)
    drawn = draw(raw_logits, seqs, masks, settle, transfer)
    return drawn.entries(transfer.read(*drawn.tensors()))
