"""Shared fixtures: the random Janus test checkpoint (built once per test session), the bundled
checkpoint with a source echo and without one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from imagemini.models import random_fixture
from imagemini.models.processor import ECHO_FILE, EchoConfig

BUNDLED = Path(random_fixture.__file__).parent / "bundled"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    return random_fixture.build(tmp_path_factory.mktemp("tiny-janus"), size="tiny", seed=0)


def _bundled_copy(out: Path, with_echo: bool) -> Path:
    for f in BUNDLED.iterdir():
        if f.is_file() and (with_echo or f.name != ECHO_FILE):
            shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def echo_checkpoint(tmp_path_factory) -> Path:
    """The bundled checkpoint with an echo.json whose map is not the identity (so a missing
    mapping shows): its own, or one made up for a bundled checkpoint without."""
    out = _bundled_copy(tmp_path_factory.mktemp("echo-ckpt"), with_echo=True)
    if not (out / ECHO_FILE).exists():
        size = json.loads((out / "config.json").read_text())["vq_config"]["num_embeddings"]
        EchoConfig("<|Assistant|>", tuple((c * 7 + 3) % size for c in range(size))).save(out)
    return out


@pytest.fixture(scope="session")
def plain_checkpoint(tmp_path_factory) -> Path:
    """The bundled weights as a plain Janus checkpoint: no echo.json, so no source echo."""
    return _bundled_copy(tmp_path_factory.mktemp("plain-ckpt"), with_echo=False)
