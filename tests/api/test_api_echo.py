"""The source echo (processor.py): a checkpoint with echo.json gets its prompt's last picture
again as VQ codes just before the reply. The prompt the server builds for a chat must be, token
for token, the prompt the model was trained on for that chat (train/lm.py: build_sample, its
code slots filled as `on_device` fills them)."""

from __future__ import annotations

import base64
import io
import random
import shutil

import numpy as np
import pytest
import torch

from imagemini.api.chat import PromptEncoder, parse_messages, resolve_messages
from imagemini.api.encoder import EncoderCache, VisionEncoder
from imagemini.api.media import MediaReader
from imagemini.api.routes import parse_chat_request
from imagemini.api.settings import ServerSettings
from imagemini.models.janus import load_janus
from imagemini.models.processor import EchoConfig, Processor
from imagemini.train.lm_checkpoint import ECHO_BEFORE
from imagemini.train.lm_data import build_sample
from imagemini.train.lm_vision import render_ref
from imagemini.train.vq_images import to_pixels
from imagemini.world.chat import Example, ImageRef
from imagemini.world.tasks import generate


def _data_url(ref: ImageRef) -> str:
    buffer = io.BytesIO()
    render_ref(ref).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _openai_messages(example: Example) -> list[dict]:
    return [{"role": t.role, "content": [
        {"type": "image_url", "image_url": {"url": _data_url(p)}} if isinstance(p, ImageRef) else {"type": "text", "text": p}
        for p in t.parts]} for t in example.turns[:-1]]


def _served_prompt(messages: list[dict], proc: Processor, vision: VisionEncoder, thinking: bool = False) -> list[int]:
    """What the server builds for OpenAI-shaped messages, up to the reply (routes.py: parse,
    resolve, template, images, then the echo)."""
    chat = parse_chat_request({"model": "m", "messages": messages})
    resolved = resolve_messages(parse_messages(chat.messages), MediaReader(ServerSettings()), 8)
    ids, images = PromptEncoder(proc.tokenizer).encode(resolved, thinking=thinking)
    return vision.with_echo(proc.expand_images(ids), images)


def _served_ids(example: Example, proc: Processor, vision: VisionEncoder) -> list[int]:
    return _served_prompt(_openai_messages(example), proc, vision, example.thinking)


def _trained_ids(example: Example, proc: Processor, model) -> list[int]:
    """The training prompt, its echo slots filled as `on_device` fills them."""
    sample = build_sample(example, proc)
    ids = sample.ids[: sample.loss_from]
    if sample.echo_image is None:
        assert -1 not in ids
        return ids
    codes = model.encode_image_codes(to_pixels(np.array(render_ref(sample.echo_image))[None]))[0]
    mapped = torch.tensor(proc.echo.code_map)[codes] + model.cfg.text.vocab_size
    first = ids.index(-1)
    assert ids[first : first + len(mapped)] == [-1] * len(mapped)
    return ids[:first] + mapped.tolist() + ids[first + len(mapped) :]


@pytest.mark.parametrize("tasks", [
    {"edit_recolor": 1, "edit_remove": 1, "edit_add": 1, "edit_move": 1},
    {"count": 1, "color_of": 1, "describe": 1, "reason_count": 1, "reason_compare": 1},
    {"draw": 1, "smalltalk_greet": 1},
])
def test_the_served_prompt_is_the_trained_prompt(echo_checkpoint, tasks):
    model = load_janus(echo_checkpoint, torch.float32)
    proc = Processor.from_dir(echo_checkpoint)
    vision = VisionEncoder(model, proc, EncoderCache(1 << 20))
    examples = generate(random.Random(11), 12, tasks=tasks)
    echoed = 0
    with torch.inference_mode():
        for example in examples:
            served, trained = _served_ids(example, proc, vision), _trained_ids(example, proc, model)
            assert served == trained, example.task
            echoed += any(t >= model.cfg.text.vocab_size for t in served)
    has_picture = [any(isinstance(p, ImageRef) for t in e.turns[:-1] for p in t.parts) for e in examples]
    assert echoed == sum(has_picture)  # every chat with a picture, and only those


def test_the_echo_sits_a_fixed_distance_before_the_drawn_image(echo_checkpoint):
    """Whatever the wording, system prompt or context: the reply's k-th drawn code comes a constant
    number of tokens after the echo's k-th code (what makes keeping a patch a copy)."""
    proc = Processor.from_dir(echo_checkpoint)
    distances = set()
    for example in generate(random.Random(2), 40, tasks={"edit_recolor": 1, "edit_move": 1, "edit_add": 1}):
        ids = build_sample(example, proc).ids
        echo = ids.index(-1)
        drawn = ids.index(-1, echo + 256)
        assert ids[echo : echo + 256] == [-1] * 256 and ids[drawn : drawn + 256] == [-1] * 256
        distances.add(drawn - echo)
    assert len(distances) == 1


def test_echo_placement_and_checks(echo_checkpoint, plain_checkpoint):
    proc = Processor.from_dir(echo_checkpoint)
    tok, s = proc.tokenizer, proc.tokenizer.special
    assistant = tok.token_id(ECHO_BEFORE)
    ids = [s.bos, 10, assistant, 11, 12, assistant, 13]
    assert proc.with_echo(ids, [900, 901]) == [s.bos, 10, assistant, 11, 12, s.boi, 900, 901, s.eoi, assistant, 13]
    with pytest.raises(ValueError, match="nowhere"):
        proc.with_echo([s.bos, 10], [900])
    assert Processor.from_dir(plain_checkpoint).with_echo(ids, [900]) == ids  # no echo.json: plain Janus prompts
    bad = echo_checkpoint.parent / "bad-echo"
    shutil.copytree(echo_checkpoint, bad, dirs_exist_ok=True)
    EchoConfig("<no such token>", proc.echo.code_map).save(bad)
    with pytest.raises(ValueError, match="not a token"):
        Processor.from_dir(bad)
    EchoConfig(ECHO_BEFORE, proc.echo.code_map[:10]).save(bad)
    with pytest.raises(ValueError, match="codes mapped"):
        Processor.from_dir(bad)


def test_the_server_echoes_and_counts_the_echo_in_usage(echo_checkpoint, start_server, sdk):
    """Through the real server and the SDK: an edit request on an echo checkpoint is answered with
    a picture, and prompt_tokens counts exactly the prompt built above, the echo's codes included."""
    example = generate(random.Random(4), 1, tasks={"edit_recolor": 1})[0]
    messages = _openai_messages(example)
    model = load_janus(echo_checkpoint, torch.float32)
    proc = Processor.from_dir(echo_checkpoint)
    with torch.inference_mode():
        ids = _served_prompt(messages, proc, VisionEncoder(model, proc, EncoderCache(1 << 20)))
    assert sum(t >= model.cfg.text.vocab_size for t in ids) == model.cfg.vq.num_patches**2
    with start_server(echo_checkpoint) as server:
        client = sdk(server)
        model_id = client.models.list().data[0].id
        reply = client.chat.completions.create(model=model_id, messages=messages, modalities=["image"], seed=0,
                                               max_tokens=300)
    opens_picture = len(proc.tokenizer.encode(" ")) + 1  # image output only: the server writes " " BOI itself
    assert reply.usage.prompt_tokens == len(ids) + opens_picture
    assert reply.choices[0].message.model_extra["images"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_a_new_picture_is_decoded_once_for_its_features_and_its_echo(echo_checkpoint):
    model = load_janus(echo_checkpoint, torch.float32)
    proc = Processor.from_dir(echo_checkpoint)
    vision = VisionEncoder(model, proc, EncoderCache(1 << 20))
    loads = []
    example = generate(random.Random(3), 1, tasks={"edit_recolor": 1})[0]
    chat = parse_chat_request({"model": "m", "messages": _openai_messages(example)})
    resolved = resolve_messages(parse_messages(chat.messages), MediaReader(ServerSettings()), 8)
    ids, images = PromptEncoder(proc.tokenizer).encode(resolved, thinking=False)
    image = images[-1]
    counted = type(image)(image.key, image.param, lambda: loads.append(1) or image.load())
    with torch.inference_mode():
        ids = vision.with_echo(proc.expand_images(ids), [counted])
        vision.prompt_embeds(ids, [counted])
    assert len(loads) == 1
    assert vision.cache.stats()["misses"] == 2  # the features and the echo: two results, one decode
    # another picture of the same content is found in the cache; a different one is decoded anew
    other = type(image)(image.key + "x", image.param, lambda: loads.append(1) or image.load())
    with torch.inference_mode():
        vision.prompt_embeds(ids, [other])
    assert len(loads) == 2
