"""Shared fixtures: the random Janus test checkpoint (built once per test session)."""

from __future__ import annotations

import pytest

from imagemini.models import random_fixture


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    return random_fixture.build(tmp_path_factory.mktemp("tiny-janus"), size="tiny", seed=0)
