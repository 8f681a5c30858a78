"""`imagemini bench profile` on the CPU: its tables name the step's operators and its reads."""

from __future__ import annotations

import argparse

from imagemini.bench import profile


def test_profile_tables_per_concurrency(tiny_checkpoint, tmp_path):
    parser = argparse.ArgumentParser()
    profile.add_arguments(parser)
    out = tmp_path / "profile.txt"
    args = parser.parse_args(["--model", str(tiny_checkpoint), "--dtype", "float32", "--concurrency", "1", "3",
                              "--steps", "2", "--out", str(out)])
    text = profile.main(args)
    assert out.read_text().strip() == text.strip()
    assert "== c=1:" in text and "== c=3:" in text
    assert text.count("host reads 1.00 a step") == 2  # a decode step reads back once
    assert "aten::mm" in text or "aten::addmm" in text or "mkldnn" in text  # the weight matmuls show up
