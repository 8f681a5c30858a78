"""Stage 2's losses on a batch already on the device (lm_data.on_device).

    loss, parts = loss_fn(model, batch, reader, changed_weight)   # parts: device tensors, by name

- text: cross-entropy on the last assistant turn of each chat, thought included;
- image: cross-entropy on the codes of the pictures the assistant draws or edits (an edit's codes
  that differ from its echo may weigh more: changed_code_weights);
- scene: the scene reader's loss on the understanding features (lm_vision.SceneReader);
- copy: one attention head taught to look at the echo's code an edit keeps (copy_head_loss);
- teacher: KL to a teacher checkpoint's drawing, when the batch carries its log-probabilities
  (teacher_code_logprobs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imagemini.models.janus import Janus
from imagemini.models.llama import padded_causal_attend

from .lm_vision import SceneReader

AUX_WEIGHT = 0.5  # the scene reader's losses
COPY_LAYER, COPY_HEAD, COPY_WEIGHT = 1, 1, 0.1  # the head taught to look at the echo (copy_head_loss)
TEACHER_WEIGHT = 1.0  # KL to a teacher's drawing, per drawn code (teacher_code_logprobs)


def _embed(model: Janus, ids: torch.Tensor, code_slots: torch.Tensor) -> torch.Tensor:
    """[B, T] ids -> [B * T, hidden] embeddings; the flat positions in code_slots hold image codes
    (ids from the text vocabulary size up), embedded as drawn codes are."""
    vocab = model.cfg.text.vocab_size
    flat_ids = ids.flatten()
    embeds = model.embed_tokens(flat_ids.clamp(max=vocab - 1))
    if code_slots.numel():
        codes = model.embed_image_codes(flat_ids[code_slots] - vocab).to(embeds.dtype)
        embeds = embeds.index_copy(0, code_slots, codes)
    return embeds


def loss_fn(model: Janus, batch: dict, reader: SceneReader | None = None,
            changed_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy over the text and image-code targets (plus the scene reader's loss);
    an edit's codes that differ from its echo weigh `changed_weight` in the image codes' mean.
    The parts come back as tensors: reading them is the caller's choice of when to wait."""
    ids = batch["ids"]
    vocab = model.cfg.text.vocab_size
    embeds = _embed(model, ids, batch["code_slots"])
    aux = None
    if batch["pixels"] is not None:
        encoded = model.encode_images(batch["pixels"])
        if reader is not None and batch.get("scenes") is not None:
            aux = reader.loss(encoded, batch["scenes"])
        embeds = embeds.index_copy(0, batch["image_slots"], encoded.flatten(0, 1).to(embeds.dtype))
    # No attention mask: the Collator pads on the right, where causal attention already keeps the
    # padding out of every real token's view (and checking a mask would make the device report back).
    b, t = ids.shape
    causal = padded_causal_attend(b, t)
    seen: dict[str, torch.Tensor] = {}
    copy_layer = min(COPY_LAYER, model.cfg.text.num_hidden_layers - 1)  # (toy models: fewer layers)

    def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if layer == copy_layer:
            seen["q"], seen["k"] = q, k
        return causal(layer, q, k, v)

    positions = torch.arange(t, device=ids.device).repeat(b)
    hidden = model.decoder(embeds, positions, attend).view(b, t, -1)[:, :-1].flatten(0, 1)
    targets = ids[:, 1:].flatten()
    text_at, code_at = batch["text_targets"], batch["code_targets"]
    zero = hidden.new_zeros((), dtype=torch.float32)
    # A batch of unconditional drawings alone has no text target (the mean of nothing is NaN).
    text_loss = F.cross_entropy(model.text_logits(hidden[text_at]).float(), targets[text_at]) if text_at.numel() else zero
    code_logits = model.image_logits(hidden[code_at]).float()
    spans = batch.get("copy_spans")
    code_loss = zero
    if code_at.numel():
        per_code = F.cross_entropy(code_logits, targets[code_at] - vocab, reduction="none")
        if changed_weight != 1.0 and spans is not None and spans.numel():
            weights = changed_code_weights(ids, spans, model.cfg.vq.num_patches**2, changed_weight).flatten()[code_at]
            code_loss = (per_code * weights).sum() / weights.sum()
        else:
            code_loss = per_code.mean()
    n_text, n_code = text_at.numel(), code_at.numel()
    loss = (text_loss * n_text + code_loss * n_code) / max(n_text + n_code, 1)
    parts = {"text": text_loss.detach(), "image": code_loss.detach()}
    if aux is not None:
        loss = loss + AUX_WEIGHT * aux
        parts["scene"] = aux.detach()
    teacher = batch.get("teacher_logprobs")
    if teacher is not None and teacher.numel():
        student = F.log_softmax(code_logits[batch["teacher_in_code_targets"]], -1)
        kl = (teacher.exp() * (teacher - student)).sum(-1).mean()
        loss = loss + TEACHER_WEIGHT * kl
        parts["teacher"] = kl.detach()
    if spans is not None and spans.numel():
        copy = copy_head_loss(seen["q"], seen["k"], spans, b, t, model.cfg.vq.num_patches**2)
        loss = loss + COPY_WEIGHT * copy
        parts["copy"] = copy.detach()
    return loss, parts


def changed_code_weights(ids: torch.Tensor, spans: torch.Tensor, n: int, weight: float) -> torch.Tensor:
    """[B, T - 1] weights of the next-token targets: `weight` where an edit's drawn code differs
    from the echo's code at the same patch, 1 elsewhere. Those codes are what an edit is about
    (a recolour's object, a moved object's old and new place), a fifth to a third of an edit's
    codes: the rest is a copy the echo makes easy. `spans` as the copy lesson's:
    (row, first query, first key), the query before drawn code i and echo code i."""
    b, t = ids.shape
    rows, at = spans[:, :1], torch.arange(n, device=ids.device)
    queries, keys = spans[:, 1:2] + at, spans[:, 2:3] + at
    changed = ids[rows, queries + 1] != ids[rows, keys]
    weights = torch.ones(b, t - 1, device=ids.device)
    weights[rows.expand_as(queries), queries] = torch.where(changed, weight, 1.0)
    return weights


@torch.no_grad()
def teacher_code_logprobs(teacher: Janus, batch: dict) -> torch.Tensor:
    """The teacher's log-probabilities of every drawn code in the rows without an echo (drawings,
    small talk: the same tokens whatever the checkpoint), [N, codebook] in `teacher_in_code_targets`
    order. loss_fn adds KL(teacher || model) over them: a run teaching something new (the echo)
    keeps the drawing of a checkpoint that draws better than it can learn to on a CPU (every
    CPU continuation so far lost drawing in its first few hundred steps, model card)."""
    ids = batch["ids"][batch["teacher_rows"]]
    embeds = _embed(teacher, ids, batch["teacher_code_slots"])
    embeds = embeds.view(*ids.shape, embeds.shape[-1])  # (not -1: a batch may have no such row)
    hidden = teacher.hidden_states(embeds)[:, :-1].flatten(0, 1)[batch["teacher_targets"]]
    return F.log_softmax(teacher.image_logits(hidden).float(), -1)


def copy_head_loss(q: torch.Tensor, k: torch.Tensor, spans: torch.Tensor, b: int, t: int, n: int) -> torch.Tensor:
    """Cross-entropy of one attention head's weights (head COPY_HEAD of layer COPY_LAYER) against
    the echo's code at the same grid index, for every row that predicts a drawn code of an edit.

    Keeping a patch an edit leaves alone is then a copy from the source echo (processor.py), a
    fixed number of tokens back. Left to find that offset from the token loss alone, the model did
    not within 1,000 CPU steps (the kept patches' loss stayed where drawing from the understanding
    features left it); this lesson points one head there (head 1 of layer 1: of the 16 the one
    already nearest to it on that state, 4.6 nats against 9-24), and it learns it within 100 steps.
    The network and inference are unchanged.
    """
    heads, d = q.shape[1], q.shape[2]
    head = min(COPY_HEAD, heads - 1)
    q = q.view(b, t, heads, d)[:, :, head]
    k = k.view(b, t, k.shape[1], d)[:, :, head * k.shape[1] // heads]
    grid = torch.arange(n, device=q.device)
    rows, queries, keys = spans[:, 0], spans[:, 1:2] + grid, spans[:, 2:3] + grid  # [S], [S, n], [S, n]
    scores = (q[rows[:, None], queries].float() @ k[rows].float().transpose(1, 2)) * d**-0.5  # [S, n, t]
    future = torch.arange(t, device=q.device)[None, None, :] > queries[..., None]
    scores = scores.masked_fill(future, float("-inf"))
    return F.cross_entropy(scores.flatten(0, 1), keys.flatten())
