"""Tokenizer tests: BPE trained on the task chats round-trips text, keeps special and role tokens
whole, splits prompt/completion on a token boundary, and saves files that both our Tokenizer and
transformers load with the chat template rendering the documented format (thinking on and off)."""

from __future__ import annotations

import json
import random

import pytest

from imagemini.models.chat_format import ROLE_TOKENS, SPECIAL_TOKENS, tokenizer_config
from imagemini.models.tokenizer import Tokenizer as ChatTokenizer
from imagemini.train.tokenizer import save_tokenizer_files, train_tokenizer
from imagemini.world.chat import prompt_and_completion, render_text
from imagemini.world.tasks import generate

BOS, EOS = SPECIAL_TOKENS[0], SPECIAL_TOKENS[1]
UNSEEN = [
    "Ünïcödé → 形状 ✓ 🙂",
    "  two  spaces,\ttabs\t\tand\r\nnewlines\n\n\n",
    "Draw a hexagon!!! <|User|> <think> not really </think> <image_placeholder><end_of_image>",
    "",
]


@pytest.fixture(scope="module")
def examples():
    return generate(random.Random(7), 2000)


@pytest.fixture(scope="module")
def tok(examples):
    return train_tokenizer((render_text(ex) for ex in examples), vocab_size=1024)


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    return save_tokenizer_files(tok, tmp_path_factory.mktemp("tok"), max_length=777)


def test_vocabulary_layout(tok):
    vocab = tok.get_vocab(with_added_tokens=True)
    assert 300 < tok.get_vocab_size(with_added_tokens=True) <= 1024
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    added = tok.get_added_tokens_decoder()
    assert {added[i].content for i in range(len(SPECIAL_TOKENS))} == set(SPECIAL_TOKENS)
    assert all(added[i].special for i in range(len(SPECIAL_TOKENS)))
    roles = [tok.token_to_id(t) for t in ROLE_TOKENS]
    assert roles == [len(vocab) - 2, len(vocab) - 1] and not any(added[i].special for i in roles)
    learned = [t for t in vocab if t not in SPECIAL_TOKENS and t not in ROLE_TOKENS]
    assert not any(s in t for t in learned for s in ("User|", "Assistant|", "placeholder", "think>", "▁"))
    # Whole task words are single tokens.
    for word in (" circle", " triangle", " background", " describe", " purple"):
        assert len(tok.encode(word).ids) == 1, word


def test_vocab_size_is_an_upper_bound_and_too_small_raises():
    text = ["a b c d e f " * 20]
    assert train_tokenizer(text, vocab_size=300).get_vocab_size(with_added_tokens=True) <= 300
    with pytest.raises(ValueError):
        train_tokenizer(text, vocab_size=200)


def test_special_and_role_tokens_are_single_ids(tok):
    for t in (*SPECIAL_TOKENS, *ROLE_TOKENS):
        assert tok.encode(t).ids == [tok.token_to_id(t)]
        ids = tok.encode(f"x{t}y").ids
        assert tok.token_to_id(t) in ids and len(ids) == 3


def test_round_trip(tok, saved, examples):
    ours = ChatTokenizer.from_dir(saved)
    for text in [render_text(ex) for ex in examples[:300]] + UNSEEN:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == text
        assert ours.encode(text) == ids and ours.decode(ids, skip_special=False) == text


def test_prompt_and_completion_split_on_a_token_boundary(tok, examples):
    for ex in examples[:300]:
        prompt, completion = prompt_and_completion(ex)
        assert tok.encode(prompt).ids + tok.encode(completion).ids == tok.encode(prompt + completion).ids


MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "<image_placeholder>\nHow many circles are there?"},
    {"role": "assistant", "content": "2."},
    {"role": "user", "content": "Which is bigger, the circle or the square?"},
]
NO_THINKING = (  # the template's output before thinking support: must not change
    f"{BOS}Be brief.\n\n<|User|>: <image_placeholder>\nHow many circles are there?\n\n"
    f"<|Assistant|>: 2.{EOS}<|User|>: Which is bigger, the circle or the square?\n\n<|Assistant|>:"
)


def test_saved_config_and_chat_template(saved):
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert set(config) == set(tokenizer_config()) and config["model_max_length"] == 777
    chat = ChatTokenizer.from_dir(saved)
    assert chat.special.think_start == 6 and chat.special.think_end == 7
    assert chat.render_chat(MESSAGES) == NO_THINKING
    assert chat.render_chat(MESSAGES, thinking=False) == NO_THINKING
    assert chat.render_chat(MESSAGES, thinking=True) == NO_THINKING + " <think>"
    assert chat.render_chat(MESSAGES[:3], add_generation_prompt=False) == NO_THINKING.split("<|User|>: Which")[0]
    thought = "The circle is small and the square is large."
    answered = [*MESSAGES, {"role": "assistant", "content": "The square.", "reasoning": thought}]
    full = chat.render_chat(answered, add_generation_prompt=False)
    assert full == NO_THINKING + f" <think>{thought}</think> The square.{EOS}"
    other = [*MESSAGES, {"role": "assistant", "content": "The square.", "reasoning_content": "R"}]
    assert chat.render_chat(other, add_generation_prompt=False).endswith(f"<|Assistant|>: <think>R</think> The square.{EOS}")
    empty = [*MESSAGES, {"role": "assistant", "content": "The square.", "reasoning": ""}]
    assert chat.render_chat(empty, add_generation_prompt=False) == NO_THINKING + f" The square.{EOS}"


def test_transformers_loads_the_files(saved):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(saved))
    chat = ChatTokenizer.from_dir(saved)
    assert (hf.bos_token, hf.eos_token, hf.pad_token) == tuple(SPECIAL_TOKENS[:3])
    for thinking in (False, True):
        text = hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True, thinking=thinking)
        assert text == chat.render_chat(MESSAGES, thinking=thinking)
        assert hf(text, add_special_tokens=False)["input_ids"] == chat.encode(text)
