"""Image output inside a sequence: begin-of-image switches to image codes sampled from the
generation head with classifier-free guidance, end-of-image switches back to text."""

from __future__ import annotations

import pytest
import torch

from imagemini.engine.engine import Engine, EngineConfig
from imagemini.engine.params import SamplingParams


def make(path, dtype="float32") -> Engine:
    return Engine.from_checkpoint(path, EngineConfig(dtype=dtype))


def draw_prompt(engine: Engine, text: str = "Draw a red circle") -> list[int]:
    tok = engine.tokenizer
    return tok.encode(tok.render_chat([{"role": "user", "content": text}])) + [tok.special.boi]


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return make(tiny_checkpoint)


@torch.no_grad()
def test_greedy_guided_codes_match_transformers(engine, tiny_checkpoint):
    transformers = pytest.importorskip("transformers")
    ref = transformers.JanusForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    n = engine.num_image_tokens
    for text in ["Draw a red circle", "A small blue cross at the top"]:
        prompt = draw_prompt(engine, text)
        ours = engine.generate([prompt], SamplingParams(max_tokens=n + 1, temperature=0, image_output=True))[0]
        theirs = ref.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            generation_mode="image", do_sample=False, guidance_scale=5.0,
        )
        assert ours["images"] == [theirs[0].tolist()]


def test_decoded_image_has_the_checkpoint_resolution(engine):
    n = engine.num_image_tokens
    codes = engine.generate([draw_prompt(engine)], SamplingParams(max_tokens=n + 1, seed=3, image_output=True))[0]["images"][0]
    pixels = engine.model.decode_image_pixels(codes)
    side = engine.model.cfg.image_resolution
    assert pixels.shape == (side, side, 3) and pixels.dtype == torch.uint8


def test_guidance_changes_the_codes(engine):
    n, prompt = engine.num_image_tokens, draw_prompt(engine)
    guided = engine.generate([prompt], SamplingParams(max_tokens=n + 1, seed=9, image_output=True, guidance_scale=5.0))
    plain = engine.generate([prompt], SamplingParams(max_tokens=n + 1, seed=9, image_output=True, guidance_scale=1.0))
    assert guided[0]["images"][0] != plain[0]["images"][0]


def test_image_needs_room_for_every_code(engine):
    tok = engine.tokenizer
    prompt = draw_prompt(engine)[:-1]
    force_boi = {tok.special.boi: 100.0}
    out = engine.generate([prompt], SamplingParams(max_tokens=10, logit_bias=force_boi, image_output=True, seed=1))[0]
    assert out["finish_reason"] == "length" and out["images"] == []
    assert engine.kv_cache.used_tokens == 0


def test_text_only_requests_never_open_an_image(engine):
    tok = engine.tokenizer
    prompt = draw_prompt(engine)[:-1]
    params = SamplingParams(max_tokens=20, logit_bias={tok.special.boi: 100.0}, banned_token_ids=(tok.special.boi,), seed=2)
    out = engine.generate([prompt], params)[0]
    assert tok.special.boi not in out["token_ids"] and out["images"] == []


def test_several_images_and_text_in_one_answer(engine):
    tok, n = engine.tokenizer, engine.num_image_tokens
    prompt = draw_prompt(engine)[:-1]
    params = SamplingParams(max_tokens=2 * (n + 2) + 3, logit_bias={tok.special.boi: 100.0}, image_output=True, seed=4)
    out = engine.generate([prompt], params)[0]
    assert len(out["images"]) == 2 and all(len(codes) == n for codes in out["images"])
    assert out["token_ids"].count(tok.special.boi) == 2


def test_seeded_images_are_identical_alone_and_under_load(tiny_checkpoint):
    engine = make(tiny_checkpoint, dtype="bfloat16")
    n = engine.num_image_tokens
    prompts = [draw_prompt(engine, t) for t in ["Draw a red circle", "Make a big green square", "A cross"]]
    image_params = [SamplingParams(max_tokens=n + 1, temperature=1.0, top_p=0.9, seed=s, image_output=True) for s in (1, 2, 3)]
    alone = [engine.generate([p], sp)[0]["images"] for p, sp in zip(prompts, image_params)]
    text_prompt = prompts[0][:-1]
    load = [(text_prompt, SamplingParams(max_tokens=40, seed=10 + i)) for i in range(5)]
    together = engine.generate(prompts + [p for p, _ in load], image_params + [sp for _, sp in load])
    assert [r["images"] for r in together[:3]] == alone
    assert len({tuple(a[0]) for a in alone}) == 3


def test_previews_are_each_pictures_first_codes_and_change_nothing(engine):
    """partial_images: evenly spaced copies of the codes drawn so far, per picture, in order; the
    answer is the same as without them."""
    tok, n = engine.tokenizer, engine.num_image_tokens
    prompt = draw_prompt(engine)[:-1]
    base = dict(max_tokens=2 * (n + 2) + 3, logit_bias={tok.special.boi: 100.0}, image_output=True, seed=4)
    plain = engine.generate([prompt], SamplingParams(**base))[0]
    request_id = engine.add_request(prompt, SamplingParams(**base, partial_images=3))
    previews, images, token_ids = [], [], []
    while engine.has_work():
        for out in engine.step():
            assert out.request_id == request_id
            previews += out.image_previews
            images += out.images
            token_ids += out.token_ids
    assert images == plain["images"] and token_ids == plain["token_ids"] and len(images) == 2
    assert [(p.picture, p.number) for p in previews] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    for p in previews:
        assert p.codes == images[p.picture][: n * (p.number + 1) // 4]


def test_partial_images_is_zero_to_three():
    with pytest.raises(ValueError, match="partial_images"):
        SamplingParams(partial_images=4)
