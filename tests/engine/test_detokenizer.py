"""Incremental detokenization: whole UTF-8 characters only, stop strings across tokens,
nothing that could start a stop string is released early."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagemini.engine.detokenizer import IncrementalDetokenizer
from imagemini.models.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(tiny_checkpoint) -> Tokenizer:
    return Tokenizer.from_dir(tiny_checkpoint)


def stream(tok: Tokenizer, ids: list[int], stop=()) -> tuple[list[str], IncrementalDetokenizer]:
    d = IncrementalDetokenizer(tok, tuple(stop))
    pieces = [d.push(i) for i in ids]
    pieces.append(d.finish())
    return pieces, d


def test_multibyte_characters_are_never_split(tok):
    text = "形状 ✓ 🙂 Ünïcödé"
    ids = tok.encode(text)
    assert any(len(tok.token_bytes(i).decode("utf-8", errors="ignore")) == 0 for i in ids), "needs split chars"
    pieces, _ = stream(tok, ids)
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_stop_string_split_across_tokens_is_caught_and_cut(tok):
    text = "A large red circle at the top left."
    ids = tok.encode(text)
    stop = "circle at"
    # the stop string must really straddle token borders for this test to mean anything
    borders = set()
    pos = 0
    for i in ids:
        pos += len(tok.token_text(i))
        borders.add(pos)
    start = text.index(stop)
    assert any(start < b < start + len(stop) for b in borders)
    pieces, d = stream(tok, ids, [stop])
    assert "".join(pieces) == "A large red "
    assert d.stopped


def test_partial_stop_is_held_then_released(tok):
    ids = tok.encode("the top left")
    pieces, d = stream(tok, ids, ["top right"])
    assert "".join(pieces) == "the top left" and not d.stopped
    # "top" was held back while it could still become "top right"
    released_before_left = "".join(pieces[: len(tok.encode("the top"))])
    assert "top" not in released_before_left


@settings(max_examples=60, deadline=None)
@given(text=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40), data=st.data())
def test_stream_equals_whole_text_and_never_leaks_a_stop(tok, text, data):
    ids = tok.encode(text)
    stop = data.draw(st.sampled_from(["", text[1:4], "ab", "\n"]))
    stops = [stop] if stop else []
    pieces, d = stream(tok, ids, stops)
    whole = "".join(pieces)
    expected = tok.decode(ids)
    if stops and stop in expected:
        expected = expected[: expected.index(stop)]
    assert whole == expected
    for s in stops:
        assert s not in whole
