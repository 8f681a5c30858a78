"""Chat messages -> prompt token ids, through the checkpoint's own chat template.

    ids = prompt_ids(request.messages, engine.tokenizer)

Text only for now: each message's content becomes one string (text parts joined with a
newline, as vLLM does) because the template expects string contents. Image, file and audio
parts, and tool/function messages, are refused with a 400 naming the exact part, until the
issues that implement them land.
"""

from __future__ import annotations

from imagemini.models.tokenizer import Tokenizer

from .errors import bad_request, unsupported
from .schemas import ChatMessage, RefusalPart, TextPart

PART_JOINER = "\n"


def message_text(message: ChatMessage, index: int) -> str:
    """The message as the string the template renders; raises APIError for what text-only mode refuses."""
    where = f"messages[{index}]"
    if message.role in ("tool", "function"):
        raise unsupported(f"{where}.role", f"role '{message.role}' (tool calling)")
    if message.tool_calls or message.function_call:
        raise unsupported(f"{where}.tool_calls" if message.tool_calls else f"{where}.function_call", "tool calling")
    if message.audio is not None:
        raise unsupported(f"{where}.audio", "audio")
    if message.content is None:
        if message.role == "assistant":
            return ""  # an assistant turn may be empty (OpenAI allows null content there)
        raise bad_request(f"{where}.content: content is required for role '{message.role}'", param=f"{where}.content")
    if isinstance(message.content, str):
        return message.content
    return PART_JOINER.join(_part_text(message, index, j) for j in range(len(message.content)))


def _part_text(message: ChatMessage, index: int, j: int) -> str:
    part = message.content[j]
    param = f"messages[{index}].content[{j}]"
    if isinstance(part, TextPart):
        return part.text
    if isinstance(part, RefusalPart) and message.role == "assistant":
        return part.refusal  # an earlier refusal is part of the conversation's text
    if part.type in ("image_url", "file", "input_audio"):
        raise unsupported(param, f"'{part.type}' content ({_what(part.type)} input)")
    raise bad_request(f"{param}: '{part.type}' parts are only allowed in assistant messages", param=param)


def _what(part_type: str) -> str:
    return {"image_url": "image", "file": "file", "input_audio": "audio"}[part_type]


def prompt_ids(messages: list[ChatMessage], tokenizer: Tokenizer) -> list[int]:
    rendered = [{"role": m.role, "content": message_text(m, i)} for i, m in enumerate(messages)]
    return tokenizer.encode(tokenizer.render_chat(rendered, add_generation_prompt=True))
