"""The bundled model's chat format: its special tokens, role markers and chat template.

    from imagemini.models.chat_format import CHAT_TEMPLATE, SPECIAL_TOKENS, tokenizer_config

    json.dumps(tokenizer_config())   # the tokenizer_config.json a checkpoint of this format ships

The special tokens are Janus's (BOS, EOS, pad, ``<image_placeholder>``, ``<begin_of_image>``,
``<end_of_image>``) plus the thinking delimiters; a tokenizer of this format gives them ids 0-7 in
this order. The role markers ``<|User|>`` and ``<|Assistant|>`` are text the template writes, not
control tokens. The template (``chat_template.jinja`` beside this file) documents the rendered
text. The bundled checkpoint's ``tokenizer_config.json`` is ``tokenizer_config()``; the training
recipe (``imagemini.train.tokenizer``) and the random test fixture build theirs from here.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS: list[str] = [
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜▁pad▁｜>",
    "<image_placeholder>",
    "<begin_of_image>",
    "<end_of_image>",
    "<think>",
    "</think>",
]
ROLE_TOKENS: tuple[str, ...] = ("<|User|>", "<|Assistant|>")
CHAT_TEMPLATE: str = (Path(__file__).parent / "chat_template.jinja").read_text()


def tokenizer_config() -> dict:
    """``tokenizer_config.json`` of this format (``model_max_length`` 1024, the bundled model's)."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[1],
        "pad_token": SPECIAL_TOKENS[2],
        "extra_special_tokens": {
            "image_token": "<image_placeholder>",
            "boi_token": "<begin_of_image>",
            "eoi_token": "<end_of_image>",
        },
        "think_start_token": "<think>",
        "think_end_token": "</think>",
        "model_max_length": 1024,
        "chat_template": CHAT_TEMPLATE,
    }
