"""`imagemini bench draw --partial-images P` times pictures through a served checkpoint with and
without previews, taking turns: a stream that brings the wrong number of previews, or no
picture, raises."""

from __future__ import annotations

import argparse

from imagemini.bench import draw


def test_pictures_are_timed_with_and_without_previews(tiny_checkpoint):
    parser = argparse.ArgumentParser()
    draw.add_arguments(parser)
    args = parser.parse_args(["--model", str(tiny_checkpoint), "--dtype", "float32", "--partial-images", "2",
                              "--concurrency", "1", "2", "--repeats", "1"])
    results = draw.main(args)
    assert set(results) == {1, 2}
    for row in results.values():
        assert set(row) == {"wall_0", "wall_2", "cpu_0", "cpu_2"}
        assert all(0 < value < float("inf") for value in row.values())
