"""Weight files: a sharded checkpoint (model.safetensors.index.json) loads exactly as the same
weights in one file, and a foreign or partial one is refused."""

from __future__ import annotations

import json

import pytest
import torch

from imagemini.models import random_fixture
from imagemini.models.janus import load_janus
from imagemini.models.weights import INDEX_FILE, SINGLE_FILE, weight_files


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return random_fixture.build(tmp_path_factory.mktemp("tiny-sharded"), size="tiny", shard_bytes=100_000)


def test_shards_and_their_index_follow_the_published_layout(sharded):
    index = json.loads((sharded / INDEX_FILE).read_text())
    files = weight_files(sharded)
    assert not (sharded / SINGLE_FILE).exists() and len(files) > 2
    assert [f.name for f in files] == [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]
    assert set(index["weight_map"].values()) == {f.name for f in files}
    assert index["metadata"]["total_size"] == sum(p.numel() * 4 for p in load_janus(sharded).state_dict().values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_sharded_checkpoint_loads_as_the_single_file_one(tiny_checkpoint, sharded, dtype):
    single, split = load_janus(tiny_checkpoint, dtype).state_dict(), load_janus(sharded, dtype).state_dict()
    assert single.keys() == split.keys()
    for name, tensor in single.items():
        assert split[name].dtype == dtype and torch.equal(split[name], tensor), name


def test_a_tensor_the_network_lacks_is_refused(sharded, tmp_path):
    from safetensors.torch import save_file

    for f in sharded.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    save_file({"model.extra.weight": torch.zeros(2)}, str(tmp_path / "extra.safetensors"))
    index["weight_map"]["model.extra.weight"] = "extra.safetensors"
    (tmp_path / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ValueError, match="unexpected tensor 'model.extra.weight'"):
        load_janus(tmp_path)


def test_a_missing_shard_entry_is_refused(sharded, tmp_path):
    for f in sharded.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    first = weight_files(tmp_path)[0].name
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != first}
    (tmp_path / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ValueError, match="missing tensors"):
        load_janus(tmp_path)
