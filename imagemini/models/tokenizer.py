"""The checkpoint's own tokenizer and chat template.

    tok = Tokenizer.from_dir("models/bundled")
    ids = tok.encode(tok.render_chat(messages, add_generation_prompt=True))
    tok.token_bytes(ids[0])   # exact bytes of one token (for logprobs and UTF-8-safe streaming)

`tokenizer.json` is read with the `tokenizers` library; the chat template (from
`tokenizer_config.json`, else `chat_template.jinja`) is rendered with a sandboxed jinja2.
Special tokens follow Janus: BOS/EOS/pad, `<image_placeholder>`, `<begin_of_image>`,
`<end_of_image>`, and optional thinking delimiters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode table used by byte-level BPE."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = visible[:]
    extra = 0
    for b in range(256):
        if b not in visible:
            visible.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(visible, chars)}


@dataclass(frozen=True)
class SpecialTokens:
    bos: int
    eos: int
    pad: int
    image: int | None
    boi: int | None
    eoi: int | None
    think_start: int | None
    think_end: int | None


class Tokenizer:
    def __init__(self, tokenizer: HFTokenizer, config: dict[str, Any], chat_template: str) -> None:
        self._tok = tokenizer
        self.config = config
        # One past the largest id: a tokenizer's ids may leave gaps (ids with no token), which
        # get_vocab_size's count of tokens would not cover.
        ids = set(tokenizer.get_vocab(with_added_tokens=True).values())
        self.vocab_size = max(ids) + 1
        self.no_token_ids = frozenset(range(self.vocab_size)) - ids
        self._template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(chat_template)
        self.chat_template = chat_template

        def token_id(key: str, default: str | None = None) -> int | None:
            value = config.get(key) or (config.get("extra_special_tokens") or {}).get(key) or default
            if isinstance(value, dict):
                value = value.get("content")
            return None if value is None else tokenizer.token_to_id(value)

        bos, eos = token_id("bos_token"), token_id("eos_token")
        if bos is None or eos is None:
            raise ValueError("tokenizer_config.json must name bos_token and eos_token present in tokenizer.json")
        self.special = SpecialTokens(
            bos=bos,
            eos=eos,
            pad=token_id("pad_token") if token_id("pad_token") is not None else eos,
            image=token_id("image_token", "<image_placeholder>"),
            boi=token_id("boi_token", "<begin_of_image>"),
            eoi=token_id("eoi_token", "<end_of_image>"),
            think_start=token_id("think_start_token", "<think>"),
            think_end=token_id("think_end_token", "</think>"),
        )
        self.special_ids = frozenset(
            i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special
        )
        self._bytes = self._build_token_bytes()

    @classmethod
    def from_dir(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        config = json.loads((path / "tokenizer_config.json").read_text())
        template = config.get("chat_template")
        if template is None and (path / "chat_template.jinja").exists():
            template = (path / "chat_template.jinja").read_text()
        if not template:
            raise ValueError(f"{path}: no chat template (tokenizer_config.json or chat_template.jinja)")
        return cls(HFTokenizer.from_file(str(path / "tokenizer.json")), config, template)

    # --- text <-> ids -------------------------------------------------------------------
    def token_id(self, token: str) -> int | None:
        """The id of a whole token of the vocabulary (None when it has none)."""
        return self._tok.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        data = b"".join(self._bytes[i] for i in ids if not (skip_special and i in self.special_ids))
        return data.decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def token_text(self, token_id: int) -> str:
        return self._bytes[token_id].decode("utf-8", errors="replace")

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **options: Any) -> str:
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self._tok.id_to_token(self.special.bos),
            eos_token=self._tok.id_to_token(self.special.eos),
            **options,
        )

    # --- internals ----------------------------------------------------------------------
    def _build_token_bytes(self) -> list[bytes]:
        spec = json.loads(self._tok.to_str())
        decoder = (spec.get("decoder") or {}).get("type")
        added = {i: t.content for i, t in self._tok.get_added_tokens_decoder().items()}
        table = _byte_decoder()
        out: list[bytes] = []
        for i in range(self.vocab_size):
            piece = self._tok.id_to_token(i)
            if i in added or piece is None:
                out.append((added.get(i) or "").encode())
            elif decoder == "ByteLevel":
                out.append(bytes(table[c] for c in piece))
            elif decoder == "Sequence":  # sentencepiece-style: ▁ is a space, <0xNN> a raw byte
                if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                    out.append(bytes([int(piece[3:5], 16)]))
                else:
                    out.append(piece.replace("▁", " ").encode())
            else:
                raise ValueError(f"unsupported tokenizer decoder {decoder!r}")
        return out
