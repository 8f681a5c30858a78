"""Reading GET /metrics in tests: every sample by name and labels, and what moved between two reads.

    before = scrape(server)                      # every sample labelled with the lone server's replica
    samples_of(response.text, replica)           # a /metrics body of the replica named
    ...                                          # requests
    moved(before, scrape(server), "imagemini:request_success_total", finished_reason="length")
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from imagemini.api.metrics import IDENTITY_LABELS, LONE_REPLICA

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of the server's /metrics, keyed by (name, labels other than model_name and replica)."""
    response = httpx.get(f"{server.url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples_of(response.text, LONE_REPLICA)


def samples_of(text: str, replica: str) -> Samples:
    """The samples of a /metrics body, each checked to carry a model_name and `replica`."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.labels.get("model_name"), f"{sample.name} has no model_name"
            assert sample.labels.get("replica") == replica, f"{sample.name} of replica {sample.labels.get('replica')}"
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in IDENTITY_LABELS))
            samples[(sample.name, labels)] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)
