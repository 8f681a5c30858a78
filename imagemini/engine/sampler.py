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

import torch

from .sequence import Sequence, TokenLogprob
from .structured import RowMasks


def apply_penalties_and_bias(logits: torch.Tensor, seqs: list[Sequence], masks: RowMasks | None = None) -> torch.Tensor:
    """Steps 2–3 on a float32 [B, V] copy of the logits."""
    out = logits.clone()
    rows, cols, deltas = [], [], []
    banned_rows, banned_cols = [], []
    vocab = out.shape[1]
    for row, seq in enumerate(seqs):
        p = seq.params
        if p.has_penalties:
            for token, count in seq.token_counts.items():
                rows.append(row)
                cols.append(token)
                deltas.append(-(count * p.frequency_penalty + p.presence_penalty))
        for token, bias in p.logit_bias.items():
            if token < vocab:
                rows.append(row)
                cols.append(token)
                deltas.append(bias)
        for token in p.banned_token_ids:
            banned_rows.append(row)
            banned_cols.append(token)
    if rows:
        out.index_put_((torch.tensor(rows), torch.tensor(cols)), torch.tensor(deltas, dtype=out.dtype), accumulate=True)
    if banned_rows:
        out[torch.tensor(banned_rows), torch.tensor(banned_cols)] = float("-inf")
    if masks is not None:
        masks.apply(out)
    return out


def _inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Index of the first entry whose cumulative mass exceeds u·total, per row (float64)."""
    cdf = probs.double().cumsum(-1)
    target = uniforms.double()[:, None] * cdf[:, -1:]
    index = (cdf <= target).sum(-1)
    # Never land on a zero-probability tail entry because of rounding.
    last_nonzero = (probs > 0).long().cumsum(-1).argmax(-1)
    return torch.minimum(index, last_nonzero)


def sample_rows(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Step 4 on processed logits [B, V]; returns token ids [B]."""
    tokens = torch.empty(len(seqs), dtype=torch.long)
    greedy = [i for i, s in enumerate(seqs) if s.params.greedy]
    if greedy:
        tokens[greedy] = logits[greedy].argmax(-1)
    for nucleus in (False, True):
        rows = [i for i, s in enumerate(seqs) if not s.params.greedy and (s.params.top_p < 1.0) == nucleus]
        if not rows:
            continue
        temps = torch.tensor([seqs[i].params.temperature for i in rows], dtype=torch.float32)[:, None]
        probs = torch.softmax(logits[rows] / temps, dim=-1)
        uniforms = torch.tensor([seqs[i].rng.random() for i in rows], dtype=torch.float64)
        if not nucleus:
            tokens[rows] = _inverse_cdf(probs, uniforms)
            continue
        top_p = torch.tensor([seqs[i].params.top_p for i in rows], dtype=torch.float64)[:, None]
        sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
        mass_before = sorted_probs.double().cumsum(-1) - sorted_probs.double()
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
        tokens[rows] = order.gather(-1, _inverse_cdf(sorted_probs, uniforms)[:, None]).squeeze(-1)
    return tokens


def token_logprobs(raw_logits: torch.Tensor, tokens: torch.Tensor, seqs: list[Sequence]) -> list[TokenLogprob | None]:
    """Step 1 for the rows that asked for logprobs (None for the others)."""
    wanted = [i for i, s in enumerate(seqs) if s.params.logprobs]
    result: list[TokenLogprob | None] = [None] * len(seqs)
    if not wanted:
        return result
    logprobs = torch.log_softmax(raw_logits[wanted].float(), dim=-1)
    k = max(seqs[i].params.top_logprobs for i in wanted)
    top_values, top_ids = logprobs.topk(k, dim=-1) if k else (None, None)
    chosen = logprobs.gather(-1, tokens[wanted][:, None]).squeeze(-1).tolist()
    for j, i in enumerate(wanted):
        n = seqs[i].params.top_logprobs
        top = list(zip(top_ids[j, :n].tolist(), top_values[j, :n].tolist())) if n else []
        result[i] = TokenLogprob(int(tokens[i]), chosen[j], top)
    return result


def sample(
    raw_logits: torch.Tensor,
    seqs: list[Sequence],
    masks: RowMasks | None = None,
    settle: Callable[[list[int]], list[int]] | None = None,
) -> tuple[list[int], list[TokenLogprob | None]]:
    """`settle` may replace sampled tokens (each row by its own state: engine.py's budget for
    structured answers) before their logprobs are read."""
    raw_logits = raw_logits.float()
    tokens = sample_rows(apply_penalties_and_bias(raw_logits, seqs, masks), seqs)
    if settle is not None:
        tokens = torch.tensor(settle(tokens.tolist()), dtype=torch.long)
    return tokens.tolist(), token_logprobs(raw_logits, tokens, seqs)
