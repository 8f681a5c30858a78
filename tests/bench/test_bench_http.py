"""`imagemini bench http` streams real requests through a served checkpoint and times the engine
alone beside it, taking turns: every timing of every turn must run (a stream that comes back
short of its tokens raises)."""

from __future__ import annotations

import argparse

from imagemini.bench import http


def test_every_timing_runs_at_each_concurrency(tiny_checkpoint):
    args = argparse.Namespace(model=tiny_checkpoint, dtype="float32", max_tokens=6, concurrency=[1, 3], repeats=2,
                              engine_threads=None)
    results = http.main(args)
    assert set(results) == {1, 3}
    for row in results.values():
        assert set(row) == {"engine", "engine_as_served", "http"}
        assert all(rate > 0 for rate in row.values())


def test_sse_lines_read_as_a_client_reads_them():
    chunk = http.sse_chunk('data: {"usage": {"completion_tokens": 3}}')
    assert chunk == {"usage": {"completion_tokens": 3}}
    assert http.sse_chunk("data: [DONE]") is None and http.sse_chunk("") is None
