"""Promises of imagemini/api/README.md that no other module checks, through a real server and
the `openai` SDK: refusals, unknown fields ignored at every level, how input images are read,
prices, image-output defaults, and what each sampling parameter changes.

One server: a copy of the tiny random checkpoint whose card prices reasoning apart and whose
generation_config.json sets image sampling defaults unlike the text ones. Outputs are noise, so
tests compare requests with each other (same seed), never with expected words. The module runs
in float32 and in bfloat16 (conftest `dtype`).
"""

from __future__ import annotations

import asyncio
import io
import json

import openai
import pytest
from apitest import carded_copy, post_stream, stream_choices
from mediatest import image_part, png_bytes
from PIL import Image

MODEL_ID = "imagemini/tiny-promises"
PRICES = {"prompt": 1.0, "completion": 2.0, "internal_reasoning": 7.0}  # USD per million tokens
IMAGE_DEFAULTS = {"temperature": 0.3, "top_p": 0.6, "guidance_scale": 2.5}
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint, tmp_path_factory):
    card = {"id": MODEL_ID, "pricing_usd_per_million_tokens": PRICES}
    return carded_copy(tiny_checkpoint, tmp_path_factory.mktemp("promises") / "tiny-promises", card, IMAGE_DEFAULTS)


@pytest.fixture(scope="module")
def server(start_server, checkpoint, dtype):
    with start_server(checkpoint, "--dtype", dtype) as s:
        yield s


@pytest.fixture(scope="module")
def no_eos(tok) -> dict:
    return {str(tok.special.eos): -100}


def create(client, **fields):
    body = {"model": MODEL_ID, "messages": HI, "max_tokens": 8, **fields}
    known = set(openai.types.chat.completion_create_params.CompletionCreateParamsBase.__annotations__)
    extra = {k: body.pop(k) for k in list(body) if k not in known}
    return client.chat.completions.create(**body, extra_body=extra or None)


def tokens(completion, index: int = 0) -> list[tuple[str, float]]:
    return [(t.token, t.logprob) for t in completion.choices[index].logprobs.content]


def refused(client, **fields) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, **fields)
    return caught.value


# --- refusals ----------------------------------------------------------------------------------------
def test_response_format_with_image_output_is_a_400(client):
    for modalities in (["image"], ["image", "text"]):
        error = refused(client, modalities=modalities, response_format={"type": "json_object"}, max_tokens=80)
        assert error.body["param"] == "response_format", error.body
    create(client, modalities=["text"], response_format={"type": "json_object"})  # text output: fine


def test_reasoning_with_image_only_output_is_a_400(client):
    error = refused(client, modalities=["image"], reasoning={"effort": "low"}, max_tokens=80)
    assert (error.body["param"], error.body["code"]) == ("reasoning", "unsupported_value"), error.body
    create(client, modalities=["image", "text"], reasoning={"effort": "low"}, max_tokens=8)  # may still think


@pytest.mark.parametrize("field, value", [
    ("functions", [{"name": "f", "parameters": {}}]), ("function_call", "auto"), ("function_call", {"name": "f"}),
    ("prediction", {"type": "content", "content": "x"}), ("web_search_options", {}), ("plugins", [{"id": "web"}]),
    ("verbosity", "low"), ("min_p", 0.1), ("top_a", 0.2), ("repetition_penalty", 1.1),
])
def test_recognised_unsupported_fields_are_refused(client, field, value):
    error = refused(client, **{field: value})
    assert (error.body["param"], error.body["code"]) == (field, "unsupported_parameter")


@pytest.mark.parametrize("field, neutral", [("min_p", 0.0), ("top_a", 0.0), ("repetition_penalty", 1.0), ("top_k", 0)])
def test_neutral_values_of_sampling_extensions_pass(client, field, neutral):
    assert create(client, **{field: neutral}).choices[0].finish_reason in ("stop", "length")


# --- unknown fields are ignored at every level -----------------------------------------------------------
def test_unknown_fields_are_ignored_at_every_level(server, sdk, no_eos):
    picture = png_bytes("blue")
    plain = dict(
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}, image_part(picture)]}],
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}},
        image_config={"guidance_scale": 3.0}, stream_options=None, seed=3, logprobs=True, max_tokens=6,
    )
    odd = json.loads(json.dumps(plain))
    odd["messages"][0] |= {"weight": 2, "cache_control": {"type": "ephemeral"}}
    odd["messages"][0]["content"][0] |= {"cache_control": {"type": "ephemeral"}}
    odd["messages"][0]["content"][1] |= {"x": 1}
    odd["messages"][0]["content"][1]["image_url"] |= {"format": "png", "y": [1]}
    odd["response_format"] |= {"extra": True}
    odd["response_format"]["json_schema"] |= {"other": {}}
    odd["image_config"] |= {"quality": "hd"}
    odd |= {"provider": {"sort": "price"}, "transforms": []}
    client = sdk(server)
    a = create(client, **plain)
    raw = client.chat.completions.with_raw_response.create(model=MODEL_ID, **{
        k: v for k, v in odd.items() if k not in ("provider", "transforms", "image_config")
    }, extra_body={"provider": odd["provider"], "transforms": [], "image_config": odd["image_config"]})
    b = raw.parse()
    assert tokens(a) == tokens(b) and a.choices[0].message.content == b.choices[0].message.content
    assert raw.headers["x-imagemini-ignored-fields"] == "provider,transforms"  # top-level names only
    thinking = create(client, reasoning={"max_tokens": 3, "colour": "blue"}, seed=1, logprobs=True, logit_bias=no_eos)
    assert tokens(thinking) == tokens(create(client, reasoning={"max_tokens": 3}, seed=1, logprobs=True, logit_bias=no_eos))


# --- input images ---------------------------------------------------------------------------------------
def looked_at(client, data: bytes, mime: str = "image/png") -> list[tuple[str, float]]:
    """What the model says about one image, greedily (its logprobs show the encoder's output)."""
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image_part(data, mime)]}]
    return tokens(create(client, messages=messages, temperature=0, logprobs=True, max_tokens=3))


def encoded(image: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def test_transparency_is_composited_on_white(client):
    clear_red = encoded(Image.new("RGBA", (32, 32), (255, 0, 0, 0)), "PNG")
    white, black, red = (png_bytes(c) for c in ("white", "black", "red"))
    assert looked_at(client, white) != looked_at(client, black) != looked_at(client, red)  # the model can tell
    assert looked_at(client, clear_red) == looked_at(client, white)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_the_first_frame_of_an_animation_is_read(client, fmt):
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    animated = encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
    assert len(animated) > 0 and Image.open(io.BytesIO(animated)).n_frames == 2
    assert looked_at(client, animated, f"image/{fmt.lower()}") == looked_at(client, png_bytes("red"))
    assert looked_at(client, animated, f"image/{fmt.lower()}") != looked_at(client, png_bytes("blue"))


def test_a_wrong_declared_image_type_is_read_by_its_content(client):
    picture = encoded(Image.new("RGB", (32, 32), "green"), "PNG")
    assert looked_at(client, picture, "image/jpeg") == looked_at(client, picture, "image/png")


# --- prices and defaults -------------------------------------------------------------------------------
def test_reasoning_tokens_are_priced_at_internal_reasoning(client, tok):
    out = create(client, reasoning={"max_tokens": 5}, max_tokens=12, seed=2,
                 logit_bias={str(tok.special.think_end): -100, str(tok.special.eos): -100})
    usage = out.usage
    thought = usage.completion_tokens_details.reasoning_tokens
    assert thought == 5 and usage.completion_tokens == 12
    expected = (usage.prompt_tokens * PRICES["prompt"] + (12 - thought) * PRICES["completion"]
                + thought * PRICES["internal_reasoning"]) / 1e6
    assert usage.cost == pytest.approx(expected, rel=1e-12)
    assert client.models.retrieve(MODEL_ID).pricing["internal_reasoning"] == "0.000007"


def pictures(client, tok, **fields) -> bytes:
    out = create(client, messages=[{"role": "user", "content": "Draw a red circle."}], modalities=["image"], seed=4,
                 max_tokens=None, logit_bias={str(tok.special.eos): 100}, **fields)
    return json.dumps(out.choices[0].message.model_extra["images"]).encode()


def test_image_output_defaults_come_from_generation_config(client, tok):
    default = pictures(client, tok)
    assert default == pictures(client, tok, temperature=0.3, top_p=0.6, image_config={"guidance_scale": 2.5})
    assert default != pictures(client, tok, temperature=1.0, top_p=1.0, image_config={"guidance_scale": 2.5})
    assert default != pictures(client, tok, temperature=0.3, top_p=0.6, image_config={"guidance_scale": 5.0})
    # text requests keep temperature 1: the same seed samples differently from 0.3
    text = dict(seed=9, logprobs=True, max_tokens=12)
    assert tokens(create(client, **text)) == tokens(create(client, temperature=1.0, **text))


# --- sampling parameters do what they say --------------------------------------------------------------
def test_temperature_zero_is_greedy_whatever_the_seed(client, no_eos):
    a, b = (create(client, temperature=0, seed=s, logprobs=True, top_logprobs=3, max_tokens=12, logit_bias=no_eos)
            for s in (1, 2))
    assert tokens(a) == tokens(b)
    for entry in a.choices[0].logprobs.content:  # each token is the most likely one
        assert entry.logprob == max(t.logprob for t in entry.top_logprobs)


def test_top_p_near_zero_is_greedy(client, no_eos):
    greedy = create(client, temperature=0, logprobs=True, max_tokens=12, logit_bias=no_eos)
    for seed in (1, 2):
        nucleus = create(client, temperature=1.5, top_p=1e-6, seed=seed, logprobs=True, max_tokens=12, logit_bias=no_eos)
        assert tokens(nucleus) == tokens(greedy)
    sampled = create(client, temperature=1.5, seed=1, logprobs=True, max_tokens=12, logit_bias=no_eos)
    assert tokens(sampled) != tokens(greedy)  # the comparison can fail


def test_logit_bias_bans_a_token(client, tok, no_eos):
    greedy = create(client, temperature=0, logprobs=True, max_tokens=8, logit_bias=no_eos)
    first = greedy.choices[0].logprobs.content[0].token
    (first_id,) = [i for i in range(tok.vocab_size) if tok.token_text(i) == first]
    banned = create(client, temperature=0, logprobs=True, max_tokens=8, logit_bias=no_eos | {str(first_id): -100})
    assert first in [t.token for t in greedy.choices[0].logprobs.content]
    assert first not in [t.token for t in banned.choices[0].logprobs.content]


def test_frequency_penalty_lowers_repeats(client, no_eos):
    def repeats(**fields) -> int:
        out = create(client, seed=5, temperature=0.7, logprobs=True, max_tokens=48, logit_bias=no_eos, **fields)
        generated = [t.token for t in out.choices[0].logprobs.content]
        return len(generated) - len(set(generated))

    assert repeats(frequency_penalty=2.0) < repeats()


def test_text_seeds_hold_under_16_concurrent_mixed_requests(server, client, http, async_sdk, no_eos):
    requests = [dict(seed=s, temperature=1.0, logprobs=True, max_tokens=6 + s % 5, logit_bias=no_eos,
                     messages=[{"role": "user", "content": f"Tell me about shape {s}."}]) for s in range(16)]
    alone = [create(client, **r) for r in requests]

    async def together() -> list:
        async with async_sdk(server) as aclient:
            async def one(i: int, r: dict):
                body = {"model": MODEL_ID, **r}
                if i % 2:
                    return await asyncio.to_thread(post_stream, http, server.url, body)
                return await aclient.chat.completions.create(**body)
            return await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))

    for i, (solo, mixed) in enumerate(zip(alone, asyncio.run(together()))):
        if i % 2:
            streamed = stream_choices(mixed)[0]
            assert streamed["content"] == solo.choices[0].message.content
            assert [(t["token"], t["logprob"]) for t in streamed["logprobs"]] == tokens(solo)
        else:
            assert mixed.choices[0].message.content == solo.choices[0].message.content and tokens(mixed) == tokens(solo)


# --- logprobs: one entry per generated token with text ----------------------------------------------------
def entries_expected(choice, usage, ended_by_eos: bool) -> int:
    """completion_tokens less the tokens README says have no entry: the thought, each image's
    codes and end-of-image, and the end-of-sequence token that stopped the choice."""
    images = len((choice.message.model_extra or {}).get("images") or [])
    details = usage.completion_tokens_details
    return usage.completion_tokens - details.reasoning_tokens - details.image_tokens - images - int(ended_by_eos)


@pytest.mark.parametrize("case", ["length", "eos", "stop string", "thought", "image"])
def test_logprobs_have_one_entry_per_token_with_text(client, tok, case):
    eos, think_end, boi = (str(t) for t in (tok.special.eos, tok.special.think_end, tok.special.boi))
    fields = {
        "length": dict(logit_bias={eos: -100}, max_tokens=20),
        "eos": dict(logit_bias={eos: 8}, max_tokens=20),
        "stop string": dict(logit_bias={eos: -100}, max_tokens=20, temperature=0),
        "thought": dict(logit_bias={think_end: -100, eos: -100}, reasoning={"max_tokens": 6}, max_tokens=20),
        "image": dict(logit_bias={boi: 100}, modalities=["image", "text"], max_tokens=80),
    }[case]
    if case == "stop string":
        free = create(client, **fields).choices[0].message.content
        fields["stop"] = free[4:7]
    out = create(client, seed=11, logprobs=True, **fields)
    choice = out.choices[0]
    ended_by_eos = case == "eos"
    assert choice.finish_reason == ("stop" if case in ("eos", "stop string") else "length")
    assert len(choice.logprobs.content) == entries_expected(choice, out.usage, ended_by_eos)
    if case == "eos":
        assert out.usage.completion_tokens < 20  # the EOS token ended it and counts as a completion token
    if case == "image":
        assert out.usage.completion_tokens_details.image_tokens > 0
