"""`imagemini bench picture` times real picture requests through the server, and `--plain` shows
what the source echo adds to the prompt."""

from __future__ import annotations

import argparse

from imagemini.bench import picture


def test_the_echo_adds_its_258_prompt_tokens_and_every_request_streams_the_asked_length(echo_checkpoint):
    args = argparse.Namespace(model=echo_checkpoint, plain=True, repeats=1, max_tokens=4, dtype="bfloat16")
    results = picture.main(args)
    assert set(results) == {"echo", "plain"}
    # BOI + the picture's 256 codes + EOI (processor.py)
    assert results["echo"]["prompt_tokens"] - results["plain"]["prompt_tokens"] == 258
    for r in results.values():
        assert r["completion_tokens"] == 4
        assert 0 < r["new_first_s"] <= r["new_total_s"] and 0 < r["again_first_s"] <= r["again_total_s"]
