"""`imagemini bench soak` sends every kind of traffic through a real server, counts what went
wrong, finds the KV cache empty once the server is idle, and plots what /metrics showed."""

from __future__ import annotations

import argparse
import json

from PIL import Image

from imagemini.bench import metrics_plot, soak


def test_a_short_soak_sends_every_kind_without_server_errors_and_ends_with_the_kv_cache_empty(tiny_checkpoint, tmp_path):
    args = argparse.Namespace(model=tiny_checkpoint, minutes=0.2, concurrency=2, out=tmp_path, dtype="bfloat16", seed=0)
    summary = soak.main(args)
    assert all(summary["requests_by_kind"][kind] > 0 for kind in soak.KINDS), summary["requests_by_kind"]
    assert summary["server_errors_5xx"] == 0 and summary["transport_errors"] == 0
    assert summary["unexpected_4xx"] == 0 and summary["bad_requests_not_4xx"] == 0, summary["outcomes_by_kind"]
    assert not summary["server_crashed"]
    assert summary["idle"]["kv_empty"]
    written = json.loads((tmp_path / "soak.json").read_text())
    assert written["samples"] and all(s["api_rss"] and s["engine_rss"] for s in written["samples"])
    assert set(written["rss_growth_after_warm_up"]) == {"api", "engine"}
    assert Image.open(tmp_path / "soak.png").size[0] > 0
    assert written["samples"][-1]["generation_tokens"] > 0  # /metrics was read with each sample
    assert Image.open(tmp_path / "metrics.png").size[0] > 0


def test_metrics_rates_and_means_are_taken_between_samples():
    zero = dict.fromkeys([*metrics_plot.FIGURES, "http_4xx", "http_5xx"], 0.0)
    later = {"t": 2.0, "generation_tokens": 10.0, "ttft_sum": 1.5, "ttft_count": 3.0, "http_5xx": 1.0}
    (derived,) = metrics_plot.derive([zero | {"t": 0.0}, zero | later])
    assert (derived["generation_tps"], derived["ttft_mean"], derived["http_5xx_rate"]) == (5.0, 0.5, 0.5)
    assert derived["queue_mean"] is None  # nothing was admitted in the interval


def test_the_hand_written_pdf_is_read_back_with_its_text():
    import pypdfium2

    pdf = pypdfium2.PdfDocument(soak.minimal_pdf("Three red circles."))
    assert len(pdf) == 1 and "Three red circles." in pdf[0].get_textpage().get_text_range()


def test_percentiles_are_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert [soak.percentile(values, q) for q in (50, 90, 99)] == [50.0, 90.0, 99.0]
    assert soak.percentile([3.0], 99) == 3.0
