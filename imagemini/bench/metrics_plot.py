"""What an operator watches on GET /metrics, read during a soak and drawn as metrics.png: requests
running and waiting, KV-cache use, tokens per second, mean time to first token and queue time,
and error answers per second, against seconds since the traffic began.

    figures = read_figures(metrics_text)        # a sample's cumulative figures (soak.py, once a second)
    draw_metrics(samples, traffic_s, title).save("metrics.png")

Rates and means are taken between consecutive samples, as Grafana's rate() does between scrapes
(docs/grafana/imagemini.json holds the same panels as a dashboard).
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from PIL import Image

from imagemini.bench.soak_plot import draw_timeline

PREFIX = "imagemini:"
FIGURES = {  # sample key <- metric sample name (all summed over their labels but the status class)
    "requests_running": "num_requests_running",
    "requests_waiting": "num_requests_waiting",
    "kv_perc": "kv_cache_usage_perc",
    "prompt_tokens": "prompt_tokens_total",
    "generation_tokens": "generation_tokens_total",
    "ttft_sum": "time_to_first_token_seconds_sum",
    "ttft_count": "time_to_first_token_seconds_count",
    "queue_sum": "request_queue_time_seconds_sum",
    "queue_count": "request_queue_time_seconds_count",
}
SERIES = (  # (panel, sample key, legend, colour, divisor), keys derived in `derive`
    (0, "requests_running", "requests running", (59, 111, 212), 1),
    (0, "requests_waiting", "requests waiting", (212, 94, 59), 1),
    (1, "kv_perc", "KV cache in use (%)", (46, 150, 90), 0.01),
    (2, "generation_tps", "generated tokens/s", (59, 111, 212), 1),
    (2, "prompt_tps", "prompt tokens/s", (150, 150, 150), 1),
    (3, "ttft_mean", "mean time to first token (s)", (59, 111, 212), 1),
    (3, "queue_mean", "mean queue time (s)", (212, 94, 59), 1),
    (4, "http_4xx_rate", "4xx answers/s", (200, 150, 40), 1),
    (4, "http_5xx_rate", "5xx answers/s", (200, 40, 40), 1),
)


def read_figures(text: str) -> dict[str, float]:
    """The cumulative figures of one /metrics reading, by FIGURES' keys, plus http_4xx, http_5xx."""
    wanted = {PREFIX + name: key for key, name in FIGURES.items()}
    figures = dict.fromkeys([*FIGURES, "http_4xx", "http_5xx"], 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                figures[wanted[sample.name]] += sample.value
            elif sample.name == PREFIX + "http_responses_total" and sample.labels["code"][0] in "45":
                figures[f"http_{sample.labels['code'][0]}xx"] += sample.value
    return figures


def derive(samples: list[dict]) -> list[dict]:
    """Each sample with the rates and means over the interval that ends at it."""
    out = []
    for before, now in zip(samples, samples[1:]):
        if "generation_tokens" not in before or "generation_tokens" not in now:
            continue  # a reading that failed
        seconds = max(now["t"] - before["t"], 1e-9)

        def rate(key: str) -> float:
            return (now[key] - before[key]) / seconds

        def mean(name: str) -> float | None:
            count = now[f"{name}_count"] - before[f"{name}_count"]
            return (now[f"{name}_sum"] - before[f"{name}_sum"]) / count if count else None

        out.append(now | {
            "generation_tps": rate("generation_tokens"), "prompt_tps": rate("prompt_tokens"),
            "ttft_mean": mean("ttft"), "queue_mean": mean("queue"),
            "http_4xx_rate": rate("http_4xx"), "http_5xx_rate": rate("http_5xx"),
        })
    return out


def draw_metrics(samples: list[dict], traffic_s: float, title: str) -> Image.Image:
    return draw_timeline(derive(samples), traffic_s, title, SERIES)
