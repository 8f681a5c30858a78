"""Closing a structured answer within its token budget: the answer always parses, even when cut.

    closer = Closer(ll_tokenizer)                 # one per tokenizer (GrammarCompiler.closer)
    closer.closing(matcher)                       # tokens from here to a complete value, or None

A grammar-constrained answer cut by `max_tokens` would be a truncated value (an open string,
array, object). Instead, every step, the engine checks that the answer can still be completed
in the tokens it has left: a sampled token after which the shortest closing found no longer
fits is replaced by the first token of the closing held for the current position
(GrammarMatcher.settle). The model writes freely while the budget is loose and is steered onto
the closing as it runs out; the closing of the empty answer, compared with the budget up front,
is the minimum the API asks for (api/response_format.py).

After a token that does not follow the held closing, the held closing is tried again first (inside
a string or a number it still closes the answer), so a new greedy walk is mostly needed only
where the structure changed.

The closing is found greedily over single-byte tokens, preferring what ends structures: at each
position the first byte the grammar allows in an order of preference (a closing quote, bracket or
brace; then `1` and `0`, which make the shortest numbers; then separators, empty containers,
letters — keys and enum values are mostly forced by the grammar). The bytes are then encoded
with the tokenizer (fewer tokens) when the grammar takes that encoding. It is short, not always
the shortest: an enum takes its first allowed value, not its shortest. It depends on the
matcher's state only, so the seed guarantee holds.
"""

from __future__ import annotations

import string

import llguidance


def _order(*preferred: bytes) -> bytes:
    """The preferred bytes first, then every other byte (printable, whitespace, UTF-8, control)."""
    head = b"".join(preferred)
    tail = bytes(range(0x21, 0x7F)) + b" \n" + bytes(range(0x80, 0x100)) + bytes(range(0x20))
    return head + bytes(b for b in dict.fromkeys(tail) if b not in head)


_LOWER, _UPPER = string.ascii_lowercase.encode(), string.ascii_uppercase.encode()
# Between values: end what is open (brace, bracket, quote), separate, then the shortest values:
# `1` before `0`, as `0.` opens an endless fraction under an exclusive minimum of 0.
STRUCTURE_ORDER = _order(b'}]",:10', string.digits[2:].encode(), b"[{-.", _LOWER, _UPPER)
# Inside a string that takes letters: close it, else letters rather than punctuation.
TEXT_ORDER = _order(b'"', _LOWER, string.digits.encode(), _UPPER, b'}],:')
# The second try, for strings whose format needs punctuation to end (e-mail, hostname, URI).
PUNCTUATION_ORDER = _order(b'"}],:@.-_/', _LOWER, string.digits.encode(), _UPPER)

# A closing longer than this many bytes is not looked for (deeply nested required structure, or
# a grammar the greedy walk cannot finish): the answer is then not steered. So with more tokens
# left than this, every closing that can be found fits: the engine checks only the last ones.
MAX_CLOSING_BYTES = 384


class Closer:
    """Finds closings for the grammars of one tokenizer."""

    def __init__(self, tokenizer: llguidance.LLTokenizer) -> None:
        self._tokenizer = tokenizer
        self._token_of: dict[int, int] = {}  # byte -> its single-byte token
        for b in range(256):
            ids = tokenizer.tokenize_bytes(bytes([b]))
            if len(ids) == 1:
                self._token_of[b] = ids[0]
        self._letter = self._token_of.get(ord("a"))

    def closing(self, matcher: llguidance.LLMatcher) -> list[int] | None:
        """Tokens that take `matcher` to an accepting state ([] if it is in one); None if neither
        greedy walk finds one within MAX_CLOSING_BYTES. The matcher is left as it was."""
        if matcher.is_accepting():
            return []
        taken = self._walk(matcher, text_aware=True) or self._walk(matcher, text_aware=False)
        if taken is None:
            return None
        encoded = self._tokenizer.tokenize_bytes(taken)
        if len(encoded) < len(taken) and matcher.validate_tokens(encoded) == len(encoded):
            return encoded
        return [self._token_of[b] for b in taken]

    def _walk(self, matcher: llguidance.LLMatcher, text_aware: bool) -> bytes | None:
        """Bytes to an accepting state, each the first the grammar allows in its order."""
        taken = bytearray()
        try:
            while not matcher.is_accepting():
                if len(taken) >= MAX_CLOSING_BYTES or matcher.is_stopped():
                    return None
                if not text_aware:
                    order = PUNCTUATION_ORDER
                elif self._letter is not None and matcher.validate_tokens([self._letter]) == 1:
                    order = TEXT_ORDER
                else:
                    order = STRUCTURE_ORDER
                byte = self._first_allowed(matcher, order)
                if byte is None:
                    return None
                matcher.consume_token(self._token_of[byte])
                taken.append(byte)
            return bytes(taken)
        finally:
            if taken:
                matcher.rollback(len(taken))

    def _first_allowed(self, matcher: llguidance.LLMatcher, order: bytes) -> int | None:
        for byte in order:
            token = self._token_of.get(byte)
            if token is not None and matcher.validate_tokens([token]) == 1:
                return byte
        return None
