"""The chat text of task examples: the prompt and completion split the rendered chat at the
generation prompt (thinking on and off), and images render as the marker or a given text."""

from __future__ import annotations

import random

from imagemini.models.chat_format import SPECIAL_TOKENS
from imagemini.world.chat import IMAGE_MARKER, ImageRef, prompt_and_completion, render_text
from imagemini.world.tasks import generate

BOS, EOS = SPECIAL_TOKENS[0], SPECIAL_TOKENS[1]


def images(example) -> list[ImageRef]:
    return [p for t in example.turns for p in t.parts if isinstance(p, ImageRef)]


def test_prompt_and_completion_split_the_rendered_chat():
    for ex in generate(random.Random(1234), 400):
        text = render_text(ex)
        prompt, completion = prompt_and_completion(ex)
        assert prompt + completion == text and text.startswith(BOS) and completion.endswith(EOS)
        assert "ImageRef" not in text and text.count(IMAGE_MARKER) == len(images(ex))
        final = ex.turns[-1].parts
        if ex.thinking:
            assert prompt.endswith("<|Assistant|>: <think>")
            assert completion == f"{final[0]}</think> {final[1]}{EOS}"
        else:
            assert prompt.endswith("<|Assistant|>:") and "<think>" not in text
            body = IMAGE_MARKER if isinstance(final[0], ImageRef) else final[0]
            assert completion == f" {body}{EOS}"


def test_custom_image_text():
    (ex,) = generate(random.Random(0), 1, tasks={"edit_recolor": 1.0})
    text = render_text(ex, image=lambda ref: f"<img {len(ref.scene.objects)}>")
    assert text.count("<img ") == 2 and IMAGE_MARKER not in text
