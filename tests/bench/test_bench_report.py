"""`bench text` / `bench draw` outputs: the ceiling pass, each figure's share of the ceiling at the
rows its steps carry, and the JSON and chart written with `--json`."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from PIL import Image
from torch import nn

from imagemini.bench.ceiling import ceiling
from imagemini.bench.report import draw_bars, write_report
from imagemini.bench.text import decode_rows


def test_the_ceiling_is_rows_over_one_pass():
    linears = [nn.Linear(64, 128, bias=False).to(torch.bfloat16), nn.Linear(128, 64).to(torch.bfloat16)]
    bound = ceiling(linears, 8)
    assert bound["rows"] == 8 and bound["pass_ms"] > 0
    assert bound["tokens_per_s"] == pytest.approx(8 / (bound["pass_ms"] / 1e3), rel=1e-2)


def test_each_side_is_compared_with_the_ceiling_at_its_own_step_rows():
    args = argparse.Namespace(concurrency=[1, 4])
    ceilings = {1: {"rows": 1, "pass_ms": 100.0, "tokens_per_s": 10.0}, 4: {"rows": 4, "pass_ms": 100.0, "tokens_per_s": 40.0}}
    ours = {"tokens_per_s": {1: 9.0, 4: 30.0}}
    untiled = {"tokens_per_s": {1: 9.5, 4: 32.0}}
    hf = {"sequential": {1: 7.0, 4: 7.0}, "batched": {4: 20.0}, "ceilings": ceilings}
    one, four = decode_rows(args, ours, untiled, hf)
    assert one["tokens_per_s"]["hf_batched"] == 7.0  # one request: batched is the sequential run
    assert four["share_of_ceiling"] == pytest.approx({"ours": 0.75, "untiled": 0.8, "hf_sequential": 0.7, "hf_batched": 0.5})
    assert four["tile_cost"] == pytest.approx(1 - 30 / 32)


def test_the_figures_go_to_json_and_a_chart_beside_it(tmp_path):
    args = argparse.Namespace(json=tmp_path / "text.json", plot=None)
    results = {"bench": "text", "decode": [{"concurrency": 1}]}
    chart = draw_bars("title", "tokens/s", {"c=1": {"ours": 9.0, "ceiling": 10.0}, "c=4": {"ours": 30.0, "ceiling": 40.0}})
    write_report(args, results, chart)
    assert json.loads(args.json.read_text()) == results
    with Image.open(tmp_path / "text.png") as png:
        assert png.size == chart.size and png.getpixel((0, 0)) == (255, 255, 255)
