"""What `bench text` / `bench draw` add for a GPU, checked on the CPU: the `--device` option, the
bandwidth measurement and the decode limit it sets, the synchronisation fields of the figures,
the engine's step pass (warm-up and sync debug pass), the headline summary, and the fixture's
CPU draw staying what it was."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from torch import nn

from imagemini.bench import draw, summary, text
from imagemini.bench.ceiling import decode_limit, memory_bandwidth, weight_bytes
from imagemini.bench.device import engine_steps, per_step
from imagemini.bench.report import LEGEND_ROW, draw_bars
from imagemini.engine.engine import Engine, EngineConfig
from imagemini.engine.params import SamplingParams
from imagemini.models import random_fixture
from imagemini.models.config import JanusConfig


def _parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("module", [text, draw])
def test_the_device_option_takes_cpu_and_cuda_and_refuses_the_rest(module, capsys):
    assert _parse(module, []).device == "cpu" and _parse(module, []).bandwidth is None
    args = _parse(module, ["--device", "cpu", "--dtype", "float16", "--no-bandwidth"])
    assert (args.device, args.dtype, args.bandwidth) == ("cpu", "float16", False)
    if torch.cuda.is_available():
        assert _parse(module, ["--device", "cuda:0"]).device == "cuda:0"
    else:  # a GPU this machine lacks is refused when the options are read, saying so
        with pytest.raises(SystemExit):
            _parse(module, ["--device", "cuda:1"])
        assert "sees no CUDA GPU" in capsys.readouterr().err
    for wrong in ["tpu", "cuda:x"]:
        with pytest.raises(SystemExit):
            _parse(module, ["--device", wrong])


def test_the_bandwidth_is_measured_on_the_cpu_and_sets_the_decode_limit():
    bw = memory_bandwidth("cpu", nbytes=16 << 20, repeats=2)
    assert bw["bytes"] == 16 << 20
    assert bw["copy_gb_s"] > 0 and bw["read_gb_s"] > 0 and bw["gb_s"] == max(bw["copy_gb_s"], bw["read_gb_s"])
    assert decode_limit(10**9, 2.0, 4) == {"rows": 4, "pass_ms": 500.0, "tokens_per_s": 8.0}


def test_a_step_reads_every_weight_and_bias_once():
    linears = [nn.Linear(64, 128, bias=False).to(torch.bfloat16), nn.Linear(128, 64).to(torch.bfloat16)]
    assert weight_bytes(linears) == 2 * (64 * 128 + 128 * 64 + 64)


def test_host_reads_per_step_are_deltas_and_unknown_without_counts():
    assert per_step((10, 5), (30, 15)) == 2.0
    assert per_step((None, None), (None, None)) is None
    assert per_step((10, 5), (12, 5)) is None  # no step ran


def test_decode_rows_give_shares_of_the_bandwidth_limit_and_the_sync_fields():
    args = argparse.Namespace(concurrency=[1, 4])
    ceilings = {1: {"rows": 1, "pass_ms": 100.0, "tokens_per_s": 10.0}, 4: {"rows": 4, "pass_ms": 100.0, "tokens_per_s": 40.0}}
    limits = {1: decode_limit(10**9, 20.0, 1), 4: decode_limit(10**9, 20.0, 4)}  # 20 and 80 tokens/s
    ours = {"tokens_per_s": {1: 9.0, 4: 30.0}, "host_reads_per_step": {1: 2.0, 4: 2.0}}
    untiled = {"tokens_per_s": {1: 9.5, 4: 32.0}}
    other = {"tokens_per_s": {1: 8.0, 4: 20.0}, "host_reads_per_step": {1: None, 4: None}}
    hf = {"sequential": {1: 7.0, 4: 7.0}, "batched": {4: 20.0}, "ceilings": ceilings, "limits": limits}
    one, four = text.decode_rows(args, ours, untiled, hf, other)
    assert four["share_of_bandwidth_limit"] == pytest.approx(
        {"ours": 30 / 80, "untiled": 32 / 80, "other_attention": 20 / 80, "hf_sequential": 7 / 20, "hf_batched": 20 / 80,
         "ceiling": 40 / 80})
    assert four["host_reads_per_step"] == {"ours": 2.0, "untiled": None, "other_attention": None}
    assert four["default_over_other_attention"] == pytest.approx(1.5)
    assert one["bandwidth_limit"]["tokens_per_s"] == pytest.approx(20.0)


def test_image_rows_compare_one_at_a_time_with_one_images_limit():
    args = argparse.Namespace(concurrency=[1, 4])
    limit = {c: {"images_per_s": 0.5 * c} for c in (1, 4)}
    ceilings = {c: {"images_per_s": 0.4 * c} for c in (1, 4)}
    ours = {"images_per_s": {1: 0.3, 4: 1.0}, "host_reads_per_step": {1: None, 4: None}}
    hf = {"sequential": {1: 0.2, 4: 0.2}, "batched": {1: 0.2, 4: 0.6}, "ceilings": ceilings, "limits": limit}
    _, four = draw.image_rows(args, ours, hf)
    assert four["share_of_bandwidth_limit"] == pytest.approx({"ours": 0.5, "hf_sequential": 0.4, "hf_batched": 0.3, "ceiling": 0.8})
    assert four["host_reads_per_step"] == {"ours": None}


def test_the_step_pass_runs_its_steps_then_leaves_the_engine_idle(tiny_checkpoint):
    engine = Engine.from_checkpoint(tiny_checkpoint, EngineConfig(dtype="float32"))
    prompts = text.chat_prompts(engine.tokenizer, 2)
    passed = engine_steps(engine, prompts, SamplingParams(max_tokens=20), steps=3, count=True, skip=1)
    assert passed["steps"] == 3 and passed["after_steps"] == 1
    assert passed["syncs"] is None and passed["syncs_per_step"] is None  # counted on CUDA only
    assert not engine.has_work()
    assert len(engine.generate(prompts[:1], SamplingParams(max_tokens=3))[0]["token_ids"]) == 3


def test_bench_text_writes_device_fields_and_the_summary_reads_them(tiny_checkpoint, tmp_path):
    args = _parse(text, ["--model", str(tiny_checkpoint), "--dtype", "float32", "--concurrency", "1", "2", "--max-tokens", "3",
                         "--ttft-tokens", "16", "--bandwidth", "--compare-attention", "--json", str(tmp_path / "text-tiny.json")])
    text.main(args)
    assert torch.is_grad_enabled(), "the bench turned autograd off for the rest of the process"
    results = json.loads((tmp_path / "text-tiny.json").read_text())
    assert results["device"] == "cpu" and results["bandwidth"]["gb_s"] > 0 and results["bandwidth"]["weight_bytes"] > 0
    assert results["attention"] == {"default": "per_sequence", "other": "batched"}
    for row in results["decode"]:
        assert set(row["host_reads_per_step"]) == {"ours", "untiled", "other_attention"}
        assert set(row["share_of_bandwidth_limit"]) == {"ours", "untiled", "other_attention", "hf_sequential", "hf_batched", "ceiling"}
    (tmp_path / "phases.tsv").write_text("text-7b\t0\t12\t200\n")
    summary.main([str(tmp_path)])
    headline = json.loads((tmp_path / "summary.json").read_text())
    rates = {int(c): f["ours_tok_s"] for c, f in headline["text"]["text-tiny"]["concurrency"].items()}
    assert headline["text"]["text-tiny"]["ours_high_over_low_concurrency"] == pytest.approx(rates[2] / rates[1])
    assert headline["phases"] == [{"phase": "text-7b", "exit": "0", "seconds": 12, "limit_s": 200}]


def test_the_fixture_draws_on_the_cpu_as_before_and_small_sizes_only_there(tmp_path):
    tok = random_fixture.build_tokenizer(random_fixture.SIZES["tiny"]["vocab"])
    cfg = JanusConfig.from_dict(random_fixture.janus_config("tiny", tok.get_vocab_size(with_added_tokens=True), tok))
    shapes, make = random_fixture._streamed_weights(cfg, seed=0)
    name = next(k for k, (shape, _) in shapes.items() if len(shape) == 2 and not k.endswith("quantize.embedding.weight"))
    expected = torch.empty(shapes[name][0]).normal_(0.0, 0.02, generator=torch.Generator().manual_seed(0))
    assert torch.equal(make(name), expected.to(torch.bfloat16))
    with pytest.raises(ValueError, match="built on the CPU"):
        random_fixture.build(tmp_path, size="tiny", device="cuda")


def test_the_chart_makes_room_for_a_third_legend_line():
    five = draw_bars("t", "u", {"c=1": {str(i): 1.0 for i in range(5)}})
    seven = draw_bars("t", "u", {"c=1": {str(i): 1.0 for i in range(7)}})
    assert seven.height - five.height == LEGEND_ROW * 2  # drawn at twice the layout size
