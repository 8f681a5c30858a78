"""The bundled model's chat format (imagemini.models.chat_format) is the one its checkpoint ships:
the same tokenizer_config.json, the special tokens at ids 0-7 and each role marker one token; the
random test fixture is built with it too."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from imagemini.cli import BUNDLED_MODEL
from imagemini.models.chat_format import ROLE_TOKENS, SPECIAL_TOKENS, tokenizer_config


@pytest.mark.skipif(not (BUNDLED_MODEL / "tokenizer.json").exists(), reason="no bundled checkpoint in this checkout")
def test_the_bundled_checkpoint_ships_this_format():
    assert json.loads((BUNDLED_MODEL / "tokenizer_config.json").read_text()) == tokenizer_config()
    tok = Tokenizer.from_file(str(BUNDLED_MODEL / "tokenizer.json"))
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    for role in ROLE_TOKENS:
        assert tok.encode(role).ids == [tok.token_to_id(role)]


def test_the_random_fixture_is_built_with_this_format(tiny_checkpoint):
    assert json.loads((tiny_checkpoint / "tokenizer_config.json").read_text()) == tokenizer_config()
    tok = Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json"))
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
