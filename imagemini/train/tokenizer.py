"""The bundled model's text tokenizer: a byte-level BPE trained on the task chats.

    import random
    from imagemini.world.chat import render_text
    from imagemini.world.tasks import generate
    from imagemini.train.tokenizer import train_tokenizer, save_tokenizer_files

    tok = train_tokenizer(render_text(ex) for ex in generate(random.Random(0), 20_000))
    save_tokenizer_files(tok, "checkpoint_dir", max_length=1024)   # tokenizer.json + tokenizer_config.json

Vocabulary, in id order: the bundled model's special tokens (``chat_format.SPECIAL_TOKENS``:
BOS, EOS, pad, ``<image_placeholder>``, ``<begin_of_image>``, ``<end_of_image>``, ``<think>``,
``</think>``; ids 0-7, special), the 256 byte symbols, the learned merges, and last the chat
role markers ``<|User|>`` and ``<|Assistant|>`` (``chat_format.ROLE_TOKENS``) as added *non-special*
tokens (one id each, kept by decode: they are text the template writes, not control tokens).
``vocab_size`` counts all of them. Training text is cut at every special and role token first, as
encoding cuts it, so no merge is spent on them. The config and chat template are the bundled
model's (``chat_format.tokenizer_config``), so ``imagemini.models.tokenizer.Tokenizer.from_dir``
and ``PreTrainedTokenizerFast`` load the files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from imagemini.models.chat_format import ROLE_TOKENS, SPECIAL_TOKENS, tokenizer_config

_CUT = re.compile("|".join(re.escape(t) for t in (*SPECIAL_TOKENS, *ROLE_TOKENS)))
_MIN_VOCAB = len(SPECIAL_TOKENS) + len(ROLE_TOKENS) + 256


def _pieces(texts: Iterable[str]) -> Iterator[str]:
    """The texts cut at special and role tokens (BPE merges never cross them)."""
    for text in texts:
        for piece in _CUT.split(text):
            if piece:
                yield piece


def train_tokenizer(examples_text: Iterable[str], vocab_size: int = 2048) -> Tokenizer:
    """Byte-level BPE with ``vocab_size`` ids in all (fewer if the text runs out of pairs to merge)."""
    if vocab_size < _MIN_VOCAB:
        raise ValueError(f"vocab_size must be >= {_MIN_VOCAB} (special tokens, role tokens, 256 bytes), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(ROLE_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_pieces(examples_text), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ROLE_TOKENS])
    return tok


def save_tokenizer_files(tok: Tokenizer, out_dir: str | Path, max_length: int) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (chat template included) into ``out_dir``."""
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    missing = [t for t in (*SPECIAL_TOKENS, *ROLE_TOKENS) if tok.token_to_id(t) is None]
    if missing:
        raise ValueError(f"tokenizer lacks {missing}; build it with train_tokenizer")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {**tokenizer_config(), "model_max_length": max_length}
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return out
