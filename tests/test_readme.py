"""README.md's Python examples, run as written (in order, in one working directory: the edit reads
the picture the drawing saved) against a real server on the bundled model; only the address
changes, to this test server's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from imagemini.cli import BUNDLED_MODEL

README = Path(__file__).resolve().parents[1] / "README.md"
ADDRESS = "127.0.0.1:8000"

pytestmark = pytest.mark.skipif(not (BUNDLED_MODEL / "model.safetensors").exists(), reason="no bundled checkpoint in this checkout")


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_the_four_examples():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 4 and all(ADDRESS in block for block in blocks)


def test_every_python_example_runs(start_server, tmp_path):
    blocks = python_blocks(README.read_text())
    with start_server(BUNDLED_MODEL) as server:
        address = server.url.removeprefix("http://")
        for number, block in enumerate(blocks, 1):
            done = subprocess.run([sys.executable, "-c", block.replace(ADDRESS, address)], cwd=tmp_path,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"README python block {number}:\n{block}\n{done.stderr}"
    assert (tmp_path / "picture.png").exists() and (tmp_path / "edited.png").exists()
