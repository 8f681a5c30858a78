"""A chat of the shapes world and its text: what the task generator makes and training reads.

    from imagemini.world.chat import prompt_and_completion, render_text

    text = render_text(example)                        # the whole chat (tokenizer training)
    prompt, completion = prompt_and_completion(example)  # loss on `completion` only

An :class:`Example` is one chat plus its ground truth. Images are :class:`ImageRef` (a scene and its
fixed jitter); whoever consumes an example renders them at the model's resolution with
``render(ref.scene, size, offsets=ref.offsets)``. A turn's parts are joined with "\\n" (as
api/chat.py joins text parts) when rendered, and the text is the bundled model's chat template
(``imagemini.models.chat_format``) applied exactly as ``Tokenizer.render_chat`` applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from imagemini.models.chat_format import CHAT_TEMPLATE, SPECIAL_TOKENS

from .scene import Scene


@dataclass(frozen=True)
class ImageRef:
    """An image in a chat: ``render(scene, size, offsets=offsets)``."""

    scene: Scene
    offsets: tuple


@dataclass(frozen=True)
class Turn:
    role: str  # "system" | "user" | "assistant"
    parts: tuple  # of str and ImageRef, in order


@dataclass(frozen=True)
class Example:
    """One chat (optional system turn, optional earlier turn, a user turn, the assistant turn trained
    on) plus its ground truth."""

    task: str
    turns: tuple[Turn, ...]  # ends with the assistant turn trained on
    thinking: bool  # last assistant turn: parts[0] is the thought, parts[1] the answer
    answer: Any  # expected text, target Scene (draw/edit_*) or JSON dict (describe_json)
    split: str  # "train" | "heldout"
    heldout_phrasing: bool = False  # the user's wording is held out (phrasings.py, language.py)
    said: Any = None  # worded by the grammar: its language.Said (frame, held-out synonyms); None: a template
    request: Any = None  # a drawing worded by the grammar: the language.DrawRequest it states

    @property
    def grammar(self) -> bool:
        return self.said is not None


#: Rendered in place of an image by render_text (the tokenizer needs no image tokens).
IMAGE_MARKER = "<image_placeholder>"
PART_JOINER = "\n"

ImageText = str | Callable[[ImageRef], str]


def chat_messages(example: Example, image: ImageText = IMAGE_MARKER) -> list[dict[str, str]]:
    """Template-ready messages: parts joined with "\\n", images replaced by ``image`` (a string or a
    function of the ImageRef); the last assistant turn of a thinking example carries ``reasoning``."""
    messages = []
    last = len(example.turns) - 1
    for i, turn in enumerate(example.turns):
        parts = [p if isinstance(p, str) else (image if isinstance(image, str) else image(p)) for p in turn.parts]
        if i == last and example.thinking:
            messages.append({"role": turn.role, "reasoning": parts[0], "content": PART_JOINER.join(parts[1:])})
        else:
            messages.append({"role": turn.role, "content": PART_JOINER.join(parts)})
    return messages


@lru_cache(maxsize=1)
def _template() -> tuple[Any, str, str]:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # as models/tokenizer.py
    return env.from_string(CHAT_TEMPLATE), SPECIAL_TOKENS[0], SPECIAL_TOKENS[1]


def render_messages(messages: list[dict[str, str]], add_generation_prompt: bool = False, **options: Any) -> str:
    """The chat template applied exactly as ``Tokenizer.render_chat`` applies it."""
    template, bos, eos = _template()
    return template.render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos, **options
    )


def render_text(example: Example, image: ImageText = IMAGE_MARKER) -> str:
    """The whole chat as text (tokenizer training): images replaced by ``image``."""
    return render_messages(chat_messages(example, image))


def prompt_and_completion(example: Example, image: ImageText = IMAGE_MARKER) -> tuple[str, str]:
    """(prompt, completion) with prompt + completion == render_text(example).

    The prompt is what a server renders for the chat so far (generation prompt with
    ``thinking=example.thinking``, so a thinking prompt ends with "<think>"); the completion is
    what the model must produce, the span the loss is computed on.
    """
    messages = chat_messages(example, image)
    full = render_messages(messages)
    prompt = render_messages(messages[:-1], add_generation_prompt=True, thinking=example.thinking)
    if not full.startswith(prompt):  # pragma: no cover - guarded by tests
        raise ValueError("chat template: the generation prompt is not a prefix of the rendered chat")
    return prompt, full[len(prompt):]
