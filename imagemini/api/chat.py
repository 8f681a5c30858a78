"""Chat messages -> prompt token ids, through the checkpoint's own chat template.

    messages = parse_messages(request.messages, accept_images=True)   # structure checks, ImageRef/FileRef
    ... media.py resolves ImageRef/FileRef into text and InputImages ...
    ids, images = PromptEncoder(tokenizer).encode(resolved)          # one image token per image
    ids = processor.expand_images(ids)                                # BOI + N placeholders + EOI each

Each message's content becomes one string for the template (as the template expects string
contents): text parts joined with a newline (as vLLM does); an image is the image placeholder
token at its place; a file is its text (and page images), see media.py.

Roles: `image_url` and `file` parts only in `user` messages; an assistant message's `images`
(the pictures it drew, as the API returned them) are read as pictures of the next user turn. System and developer content must
be text, as OpenAI requires (an image there is a 400); assistant content is text or refusal
parts. Tool/function messages and tool calls are refused (no tool calling yet).

SPECIAL TOKENS CANNOT BE INJECTED. Everything in the messages is client text; only the
template's own text may produce special (added) tokens. The template is rendered with a
sentinel in place of each piece of client text and each image; then:
- fast path: the real text goes back in, the whole string is encoded in one call (exactly as
  before: BPE merges across the template/text borders are kept), and the token offsets are
  checked: if no added token (`<image_placeholder>`, `<begin_of_image>`, `<|User|>`, BOS, ...)
  touches client text and the image tokens are exactly at the images, that is the answer;
- otherwise the string is cut at the template's added tokens and at the images, and every
  other run (template text and client text together) is encoded by a copy of the tokenizer
  that has no added tokens, so `<image_placeholder>` typed by a user is plain text.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

from tokenizers import Tokenizer as HFTokenizer

from imagemini.models.tokenizer import Tokenizer

from .errors import APIError, bad_request, unsupported
from .media import FileRef, ImageRef, InputImage, MediaReader
from .schemas import ChatMessage, FilePart, ImageUrlPart, RefusalPart, TextPart

PART_JOINER = "\n"


@dataclass
class Message:
    """A message as the template will render it: role and content pieces, in order."""

    role: str
    parts: list[str | ImageRef | FileRef | InputImage]


# --- parsing: structure and roles --------------------------------------------------------------------
def parse_messages(messages: list[ChatMessage], accept_images: bool = True, accept_files: bool = True) -> list[Message]:
    """An assistant message's `images` (the pictures that answer drew) open the next user
    message, before its content, as if the user had sent them back: an edit is asked about the
    last picture of the conversation, and the model learnt edits with the picture in the user's
    turn (in the assistant's own turn, as its features or as its drawn codes, the bundled model
    redraws instead of editing: api/README.md). With no user message after them they open the
    last assistant message."""
    parsed = [_parse(m, i, accept_images, accept_files) for i, m in enumerate(messages)]
    carried: list[str | ImageRef] = []
    for i, (source, message) in enumerate(zip(messages, parsed)):
        if message.role == "user" and carried:
            message.parts[:0] = carried
            carried = []
        carried += [piece for ref in _drawn_images(source, f"messages[{i}]", accept_images) for piece in (ref, PART_JOINER)]
    if carried:
        last = next(m for m in reversed(parsed) if m.role == "assistant")
        last.parts[:0] = carried
    return parsed


def _drawn_images(message: ChatMessage, where: str, accept_images: bool) -> list[ImageRef]:
    if not message.images:
        return []
    param = f"{where}.images"
    if message.role != "assistant":
        raise bad_request(f"{param}: only assistant messages carry 'images' (the pictures an answer drew); "
                          "send a picture as an 'image_url' part of a user message", param=param, code="invalid_content")
    if not accept_images:
        raise unsupported(param, "images in the history (this model takes no image input)")
    return [ImageRef(image.image_url.url, image.image_url.detail, f"{param}[{k}]") for k, image in enumerate(message.images)]


def _parse(message: ChatMessage, index: int, accept_images: bool, accept_files: bool) -> Message:
    where = f"messages[{index}]"
    if message.role in ("tool", "function"):
        raise unsupported(f"{where}.role", f"role '{message.role}' (tool calling)")
    if message.tool_calls or message.function_call:
        raise unsupported(f"{where}.tool_calls" if message.tool_calls else f"{where}.function_call", "tool calling")
    if message.audio is not None:
        raise unsupported(f"{where}.audio", "audio")
    if message.content is None:
        if message.role == "assistant":
            return Message("assistant", [""])  # an assistant turn may be empty (OpenAI allows null content)
        raise bad_request(f"{where}.content: content is required for role '{message.role}'", param=f"{where}.content")
    if isinstance(message.content, str):
        return Message(message.role, [message.content])
    parts: list[str | ImageRef | FileRef] = []
    for j, part in enumerate(message.content):
        if j:
            parts.append(PART_JOINER)
        parts.append(_part(message.role, part, f"{where}.content[{j}]", accept_images, accept_files))
    return Message(message.role, parts)


def _part(role: str, part, param: str, accept_images: bool, accept_files: bool) -> str | ImageRef | FileRef:
    if isinstance(part, TextPart):
        return part.text
    if isinstance(part, RefusalPart):
        if role == "assistant":
            return part.refusal  # an earlier refusal is part of the conversation's text
        raise bad_request(f"{param}: 'refusal' parts are only allowed in assistant messages", param=param)
    if part.type == "input_audio":
        raise unsupported(param, "'input_audio' content (audio input)")
    kind = "image_url" if isinstance(part, ImageUrlPart) else "file"
    if role in ("system", "developer"):
        raise bad_request(
            f"{param}: {role} messages may only contain text parts (as in OpenAI's API); "
            f"put the {'image' if kind == 'image_url' else 'file'} in a user message",
            param=param, code="invalid_content",
        )
    if role != "user":
        raise bad_request(f"{param}: '{kind}' parts are only allowed in user messages", param=param, code="invalid_content")
    if isinstance(part, ImageUrlPart):
        if not accept_images:
            raise unsupported(param, "'image_url' content (this model takes no image input)")
        return ImageRef(part.image_url.url, part.image_url.detail, param)
    if not accept_files:
        raise unsupported(param, "'file' content (this model takes no file input)")
    assert isinstance(part, FilePart)
    return FileRef(part.file.filename, part.file.file_data, part.file.file_id, param)


def count_image_refs(messages: list[Message]) -> int:
    return sum(isinstance(p, ImageRef) for m in messages for p in m.parts)


def has_media(messages: list[Message]) -> bool:
    return any(isinstance(p, (ImageRef, FileRef)) for m in messages for p in m.parts)


def too_many_images(count: int, limit: int) -> APIError:
    return bad_request(
        f"The request holds {count} images, more than the limit of {limit} per request (IMAGEMINI_MAX_IMAGES)",
        param="messages", code="too_many_images",
    )


def resolve_messages(messages: list[Message], reader: MediaReader, max_images: int) -> list[Message]:
    """ImageRef -> InputImage, FileRef -> its text and page images (blocking: run in a thread).
    PDF page images are given only while the request stays within `max_images`."""
    refs = count_image_refs(messages)
    if refs > max_images:
        raise too_many_images(refs, max_images)
    left = max_images - refs
    out = []
    for m in messages:
        parts: list[str | InputImage] = []
        for part in m.parts:
            if isinstance(part, ImageRef):
                parts.append(reader.image(part))
            elif isinstance(part, FileRef):
                content = reader.file(part, left)
                left -= sum(isinstance(c, InputImage) for c in content)
                parts.extend(content)
            else:
                parts.append(part)
        out.append(Message(m.role, parts))
    return out


# --- encoding: the template, client text, images ------------------------------------------------------
class PromptEncoder:
    """Renders resolved messages (text and InputImages) and encodes them, injection-free."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        hf = tokenizer._tok
        self.image_id = tokenizer.special.image
        self.added = {t.content: i for i, t in hf.get_added_tokens_decoder().items()}
        self._added_re = re.compile("|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True))) if self.added else None
        spec = json.loads(hf.to_str())
        spec["added_tokens"] = []
        self._plain = HFTokenizer.from_str(json.dumps(spec))  # same normaliser, pre-tokenizer and model
        self.image_text = hf.id_to_token(self.image_id) if self.image_id is not None else None

    def encode_plain(self, text: str) -> list[int]:
        """Text with no added token recognised: `<image_placeholder>` is just characters."""
        return self._plain.encode(text, add_special_tokens=False).ids if text else []

    def encode(self, messages: list[Message], **template_options) -> tuple[list[int], list[InputImage]]:
        """Token ids (one image token per image) and the images in prompt order."""
        nonce = secrets.token_hex(8)
        pieces: list[str | InputImage] = []  # what each sentinel stands for
        rendered = []
        for m in messages:
            content = []
            for part in m.parts:
                if not isinstance(part, (str, InputImage)):
                    raise TypeError("messages must be resolved (media.py) before encoding")
                content.append(f"\ue000{nonce}:{len(pieces)}\ue001")
                pieces.append(part)
            rendered.append({"role": m.role, "content": "".join(content)})
        text = self.tokenizer.render_chat(rendered, add_generation_prompt=True, **template_options)
        # [template text, sentinel index, template text, sentinel index, ..., template text]
        split = re.split(f"\ue000{nonce}:(\\d+)\ue001", text)
        order = [int(k) for k in split[1::2]]
        if order != list(range(len(pieces))):
            raise APIError(500, "The chat template does not render message contents verbatim.", type="server_error",
                           code="internal_error")
        segments: list[tuple[str, str | InputImage]] = []  # ("template" | "client" | "image", value)
        for i, piece in enumerate(split):
            if i % 2 == 0:
                segments.append(("template", piece))
            else:
                value = pieces[int(piece)]
                segments.append(("image", value) if isinstance(value, InputImage) else ("client", value))
        images = [v for kind, v in segments if kind == "image"]
        if images and self.image_id is None:
            raise bad_request("This model's tokenizer has no image token: images cannot be sent", param="messages")
        ids = self._fast(segments, len(images))
        if ids is None:
            ids = self._careful(segments)
        if sum(t == self.image_id for t in ids) != len(images):
            raise APIError(500, "The chat template writes image tokens itself.", type="server_error", code="internal_error")
        return ids, images

    def _fast(self, segments, n_images: int) -> list[int] | None:
        text, client, image_spans = [], [], []
        at = 0
        for kind, value in segments:
            piece = self.image_text if kind == "image" else value
            if kind == "client" and piece:
                client.append((at, at + len(piece)))
            elif kind == "image":
                image_spans.append((at, at + len(piece)))
            text.append(piece)
            at += len(piece)
        encoding = self.tokenizer._tok.encode("".join(text), add_special_tokens=False)
        added_ids = set(self.added.values())
        found_images = []
        for token, (a, b) in zip(encoding.ids, encoding.offsets):
            if token not in added_ids:
                continue
            if any(a < d and c < b for c, d in client):
                return None  # client text produced (or is part of) an added token
            if token == self.image_id:
                found_images.append((a, b))
        if found_images != image_spans or len(found_images) != n_images:
            return None
        return list(encoding.ids)

    def _careful(self, segments) -> list[int]:
        ids: list[int] = []
        run: list[str] = []

        def flush() -> None:
            ids.extend(self.encode_plain("".join(run)))
            run.clear()

        for kind, value in segments:
            if kind == "image":
                flush()
                ids.append(self.image_id)
            elif kind == "client":
                run.append(value)
            else:
                at = 0
                for match in self._added_re.finditer(value) if self._added_re else ():
                    run.append(value[at : match.start()])
                    flush()
                    ids.append(self.added[match.group(0)])
                    at = match.end()
                run.append(value[at:])
        flush()
        return ids

