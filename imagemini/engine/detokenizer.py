"""Incremental detokenization and stop strings.

Tokens arrive one at a time; text leaves only in whole UTF-8 characters (an incremental
decoder holds back a partial multi-byte character), and never includes anything that might
still turn out to be the start of a stop string: that tail is held until it either
completes a stop (then it is cut, with everything after it) or stops matching (then it
is released). Stop strings are matched on text, so they are caught across token borders.
"""

from __future__ import annotations

import codecs

from imagemini.models.tokenizer import Tokenizer


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = ()) -> None:
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = stop
        self._longest_stop = max((len(s) for s in stop), default=0)
        self.text = ""  # all text so far (cut at a stop string once one is found)
        self._emitted = 0  # chars of self.text already handed out
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; return the text that can be released now."""
        if self.stopped:
            return ""
        if token_id not in self._tokenizer.special_ids:
            search_from = max(self._emitted, len(self.text) - self._longest_stop + 1, 0)
            self.text += self._utf8.decode(self._tokenizer.token_bytes(token_id))
            if self._stop and self._cut_at_stop(search_from):
                return self._release(len(self.text))
        return self._release(len(self.text) - self._held_back())

    def finish(self) -> str:
        """The sequence ended: release whatever was held (an unfinished stop prefix is text)."""
        if not self.stopped:
            self.text += self._utf8.decode(b"", final=True)
        return self._release(len(self.text))

    def _cut_at_stop(self, search_from: int) -> bool:
        hits = [i for i in (self.text.find(s, search_from) for s in self._stop) if i >= 0]
        if not hits:
            return False
        self.text = self.text[: min(hits)]
        self.stopped = True
        return True

    def _held_back(self) -> int:
        """Length of the longest tail of unreleased text that starts some stop string."""
        pending = self.text[self._emitted :]
        for n in range(min(len(pending), self._longest_stop - 1), 0, -1):
            tail = pending[-n:]
            if any(s.startswith(tail) for s in self._stop):
                return n
        return 0

    def _release(self, upto: int) -> str:
        upto = max(upto, self._emitted)
        out = self.text[self._emitted : upto]
        self._emitted = upto
        return out
