"""Stage 2's losses (imagemini.train.lm_losses) checked against plain recomputations: the text and
image targets, the copy head's lesson, the teacher's KL and the changed-code weights."""

from __future__ import annotations

import pytest
import torch

from imagemini.models.janus import load_janus
from imagemini.train import lm_checkpoint, lm_data, lm_losses


@pytest.mark.parametrize("echo", [False, True])
@pytest.mark.parametrize("uncond_rate", [0.0, 1.0])
def test_the_loss_reads_each_target_once_in_place(monkeypatch, echo_checkpoint, plain_checkpoint, uncond_rate, echo):
    """loss_fn finds code inputs, image placeholders and targets through the Collator's flat
    position lists; here they are found again the plain way (masks over the padded batch, the
    targets of each sample from its own ids) and the two losses must agree."""
    import random

    import torch.nn.functional as F

    from imagemini.models.processor import Processor
    from imagemini.world.tasks import generate

    monkeypatch.setattr(lm_data, "UNCOND_RATE", uncond_rate)
    checkpoint = echo_checkpoint if echo else plain_checkpoint
    model, proc = load_janus(checkpoint, torch.float32), Processor.from_dir(checkpoint)
    examples = generate(random.Random(3), 10, tasks={"draw": 1.0, "edit_recolor": 1.0, "describe": 1.0, "count": 1.0})
    samples = [s for s in (lm_data.build_sample(e, proc) for e in examples) if s is not None]
    batch = lm_data.on_device(lm_data.Collator(proc, random.Random(0), grid=16)(samples), model, proc, None)
    with torch.no_grad():
        loss, parts = lm_losses.loss_fn(model, batch)

        ids, vocab = batch["ids"], model.cfg.text.vocab_size
        embeds, logits_in = plain_hidden_states(model, batch)
        text, code = [], []
        for b, sample in enumerate(samples):
            if uncond_rate and sample.drawn_images:  # the drawn image's codes alone, after its BOI
                first = (ids[b] == proc.tokenizer.special.boi).nonzero()[-1].item() + 1
                span = range(first, first + 256)
            else:
                span = range(sample.loss_from, len(sample.ids))
            for j in span:
                (code if ids[b, j] >= vocab else text).append((b, j))
        assert code and text

        def mean_loss(positions, head, offset):
            rows = torch.stack([logits_in[b, j - 1] for b, j in positions])
            return F.cross_entropy(head(rows), torch.stack([ids[b, j] for b, j in positions]) - offset)

        want_code, want_text = mean_loss(code, model.image_logits, vocab), mean_loss(text, model.text_logits, 0)
        assert parts["image"].item() == pytest.approx(want_code.item(), rel=1e-4)
        assert parts["text"].item() == pytest.approx(want_text.item(), rel=1e-4)
        want = (want_text * len(text) + want_code * len(code)) / (len(text) + len(code))
        copies = [b for b, smp in enumerate(samples) if smp.echo_image is not None and smp.drawn_images]
        if echo and not uncond_rate:  # the copy head's lesson: from each edit's own code runs
            assert copies and parts["copy"].item() == pytest.approx(copy_reference(model, ids, embeds, copies), rel=1e-4)
            want = want + lm_losses.COPY_WEIGHT * parts["copy"]
        else:
            assert "copy" not in parts
        assert loss.item() == pytest.approx(want.item(), rel=1e-4)


def plain_hidden_states(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's input embeddings and hidden states found the plain way (masks over the padded
    batch, no flat position lists), for checking loss_fn against."""
    ids, vocab = batch["ids"], model.cfg.text.vocab_size
    is_code = ids >= vocab
    embeds = model.input_embeddings(ids.clamp(max=vocab - 1), batch["pixels"])
    embeds[is_code] = model.embed_image_codes(ids[is_code] - vocab)
    return embeds, model.hidden_states(embeds, batch["mask"])


def copy_reference(model, ids, embeds, rows) -> float:
    """Mean -log(weight the copy head gives echo code i) over every row predicting drawn code i,
    with the head's weights recomputed per sample from a plain softmax."""
    import torch.nn.functional as F

    seen = {}
    b, t = ids.shape

    def attend(layer, q, k, v):
        if layer == lm_losses.COPY_LAYER:
            seen["q"], seen["k"] = q.view(b, t, *q.shape[1:]), k.view(b, t, *k.shape[1:])
        from imagemini.models.llama import padded_causal_attend
        return padded_causal_attend(b, t)(layer, q, k, v)

    model.decoder(embeds.flatten(0, 1), torch.arange(t).repeat(b), attend)
    losses = []
    for r in rows:
        codes = (ids[r] >= model.cfg.text.vocab_size).nonzero().squeeze(1).tolist()
        echo, drawn = codes[:256], codes[256:512]
        assert echo[-1] + 1 < drawn[0]  # two separate runs
        for i in range(256):
            query = drawn[i] - 1
            scores = seen["k"][r, : query + 1, lm_losses.COPY_HEAD] @ seen["q"][r, query, lm_losses.COPY_HEAD] / model.cfg.text.head_dim**0.5
            losses.append(-F.log_softmax(scores, 0)[echo[i]].item())
    return sum(losses) / len(losses)


def test_the_teacher_scores_the_drawn_codes_of_rows_without_an_echo(echo_checkpoint, plain_checkpoint):
    """KL(teacher || model) over every drawn code of a row with no picture (so no echo): here the
    teacher reads each such sample alone, unpadded, and the model's own distributions come from a
    plain per-sample pass; rows with an echo (edits) are left out, their codes counted nowhere."""
    import random

    import torch.nn.functional as F

    from imagemini.models.processor import Processor
    from imagemini.world.tasks import generate

    model, proc = load_janus(echo_checkpoint, torch.float32), Processor.from_dir(echo_checkpoint)
    teacher = lm_checkpoint.load_teacher(plain_checkpoint, echo_checkpoint, model)
    torch.manual_seed(0)
    with torch.no_grad():  # a teacher that differs from the model (the bundled one is the same weights)
        for p in teacher.model.generation_head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    examples = generate(random.Random(4), 10, tasks={"draw": 1.0, "edit_add": 1.0, "describe": 1.0})
    samples = [s for s in (lm_data.build_sample(e, proc) for e in examples) if s is not None]
    assert any(s.echo_image is None and s.drawn_images for s in samples) and any(s.echo_image for s in samples)
    batch = lm_data.on_device(lm_data.Collator(proc, random.Random(1), grid=16)(samples), model, proc, None)
    with torch.no_grad():
        base, _ = lm_losses.loss_fn(model, batch)
        batch["teacher_logprobs"] = lm_losses.teacher_code_logprobs(teacher, batch)
        loss, parts = lm_losses.loss_fn(model, batch)

        vocab, kls = model.cfg.text.vocab_size, []
        for r, sample in enumerate(samples):
            ids = batch["ids"][r, : len(sample.ids)][None]
            drawn = (ids[0] >= vocab).nonzero().squeeze(1)
            if sample.echo_image is not None or not drawn.numel():
                continue  # an unconditional drawing (its prompt padded out) is scored as it stands

            def logprobs(net):
                embeds = net.input_embeddings(ids)
                return F.log_softmax(net.image_logits(net.hidden_states(embeds)[0, drawn - 1]).float(), -1)

            want, got = logprobs(teacher), logprobs(model)
            kls += (want.exp() * (want - got)).sum(-1).tolist()
    plain_codes = sum(256 * len(s.drawn_images) for s in samples if s.echo_image is None)
    assert batch["teacher_logprobs"].shape[0] == plain_codes == len(kls)
    assert parts["teacher"].item() == pytest.approx(sum(kls) / len(kls), rel=1e-4) and parts["teacher"] > 0
    assert loss.item() == pytest.approx(base.item() + lm_losses.TEACHER_WEIGHT * parts["teacher"].item(), rel=1e-5)


def test_an_edits_changed_codes_weigh_changed_weight_in_the_image_loss(monkeypatch, echo_checkpoint):
    """With --changed-weight w, the image loss is the mean over every code target with weight w on
    each drawn code of an edit that differs from the echo's code at the same patch (1 elsewhere,
    drawings included); recomputed here per sample from its own code runs."""
    import random

    import torch.nn.functional as F

    from imagemini.models.processor import Processor
    from imagemini.world.tasks import generate

    monkeypatch.setattr(lm_data, "UNCOND_RATE", 0.0)
    model, proc = load_janus(echo_checkpoint, torch.float32), Processor.from_dir(echo_checkpoint)
    examples = generate(random.Random(8), 8, tasks={"draw": 1.0, "edit_recolor": 1.0, "edit_move": 1.0})
    samples = [s for s in (lm_data.build_sample(e, proc) for e in examples) if s is not None]
    batch = lm_data.on_device(lm_data.Collator(proc, random.Random(0), grid=16)(samples), model, proc, None)
    ids, vocab = batch["ids"], model.cfg.text.vocab_size
    with torch.no_grad():
        _, plain = lm_losses.loss_fn(model, batch)
        _, same = lm_losses.loss_fn(model, batch, changed_weight=1.0)
        _, weighted = lm_losses.loss_fn(model, batch, changed_weight=3.0)

        is_code = ids >= vocab
        _, hidden = plain_hidden_states(model, batch)
        losses, weights, changed_codes, edit_codes = [], [], 0, 0
        for b, sample in enumerate(samples):
            codes = is_code[b].nonzero().squeeze(1)
            echo, drawn = (codes[:256], codes[256:]) if sample.echo_image is not None else (None, codes)
            logits = model.image_logits(hidden[b, drawn - 1])
            losses += F.cross_entropy(logits, ids[b, drawn] - vocab, reduction="none").tolist()
            if echo is None:
                weights += [1.0] * len(drawn)
                continue
            changed = (ids[b, drawn] != ids[b, echo]).tolist()
            weights += [3.0 if c else 1.0 for c in changed]
            changed_codes, edit_codes = changed_codes + sum(changed), edit_codes + len(changed)
    assert 0 < changed_codes < edit_codes  # an edit changes some patches and keeps others
    assert same["image"].item() == plain["image"].item()
    assert plain["image"].item() == pytest.approx(sum(losses) / len(losses), rel=1e-4)
    want = sum(w * x for w, x in zip(weights, losses)) / sum(weights)
    assert weighted["image"].item() == pytest.approx(want, rel=1e-4)
    assert weighted["image"].item() != pytest.approx(plain["image"].item(), rel=1e-3)
