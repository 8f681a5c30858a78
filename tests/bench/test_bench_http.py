"""`imagemini bench http` streams real requests through a served checkpoint and times the engine
alone beside it, taking turns: every timing of every turn must run (a stream that comes back
short of its tokens raises)."""

from __future__ import annotations

import argparse

import pytest

from imagemini.bench import http


def bench_args(*argv: str) -> argparse.Namespace:
    """The options as `imagemini bench http` parses them."""
    parser = argparse.ArgumentParser()
    http.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_every_timing_runs_at_each_concurrency(tiny_checkpoint):
    args = bench_args("--model", str(tiny_checkpoint), "--dtype", "float32", "--max-tokens", "6",
                      "--concurrency", "1", "3", "--repeats", "2")
    results = http.main(args)
    assert set(results) == {1, 3}
    for row in results.values():
        assert set(row) == {"engine", "engine_as_served", "http"}
        assert all(rate > 0 for rate in row.values())


def test_the_ledger_cost_is_timed_on_and_off(tiny_checkpoint):
    args = bench_args("--model", str(tiny_checkpoint), "--dtype", "float32", "--max-tokens", "6",
                      "--concurrency", "2", "--repeats", "1", "--ledger")
    results = http.main(args)
    assert set(results) == {2} and set(results[2]) == {"off", "on", "off_p50", "on_p50"}
    assert all(0 < value < float("inf") for value in results[2].values())


def test_sse_lines_read_as_a_client_reads_them():
    chunk = http.sse_chunk('data: {"usage": {"completion_tokens": 3}}')
    assert chunk == {"usage": {"completion_tokens": 3}}
    assert http.sse_chunk("data: [DONE]") is None and http.sse_chunk("") is None


def test_replica_scaling_times_a_lone_server_and_ray(tiny_checkpoint):
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'imagemini[ray]')")
    args = bench_args("--model", str(tiny_checkpoint), "--dtype", "float32", "--max-tokens", "4",
                      "--concurrency", "2", "--requests", "3", "--repeats", "1", "--replicas", "1")
    results = http.main(args)
    assert set(results) == {"lone", "ray1"} and all(set(rows) == {2} for rows in results.values())
    for row in (results["lone"][2], results["ray1"][2]):
        assert row["tok_s"] == row["tok_s_per_replica"] > 0 and 0 < row["p50_s"] <= row["p99_s"] < float("inf")
