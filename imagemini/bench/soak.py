"""`imagemini bench soak`: mixed traffic against a real server for minutes; errors, memory, KV.

    imagemini bench soak [--model DIR] [--minutes 10] [--concurrency 16] [--out runs/soak]

Starts `imagemini serve` as a subprocess and keeps `--concurrency` clients busy, each cycling
through every kind of request (KINDS): plain text, images out, a PNG in, a PDF in, a JSON
schema, reasoning, a stream the client drops after its first chunks, and bad requests (which
must be answered 4xx). Once a second it samples the resident memory of the API process and of
its engine child (/proc), the server's GET /health (KV tokens in use, encoder cache) and GET
/metrics (metrics_plot.py). When the time is up the clients finish their requests, the server is
given time to go idle, and the KV cache must then be empty.

Written to `--out`: soak.json (errors by kind and outcome, latency percentiles per kind, RSS
growth after warm-up, the samples), soak.png (RSS of both processes and KV use over time) and
metrics.png (what /metrics showed over time: docs/metrics.png is one).
A 5xx, a transport error or an unexpected status is counted, never raised: a soak reports all.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx

from imagemini.bench.http import served_process, sse_chunk
from imagemini.bench.picture import picture_url
from imagemini.bench.metrics_plot import draw_metrics, read_figures
from imagemini.bench.soak_plot import draw_timeline

KINDS = ("text", "image_out", "image_in", "pdf_in", "structured", "reasoning", "disconnect", "bad_request")
WARM_UP_FRACTION = 0.2  # RSS growth is measured from this point of the run to its end
SCHEMA = {
    "type": "object",
    "properties": {"shape": {"type": "string", "enum": ["circle", "square", "triangle"]}, "count": {"type": "integer"}},
    "required": ["shape", "count"], "additionalProperties": False,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=Path(__file__).parents[1] / "models" / "bundled")
    p.add_argument("--minutes", type=float, default=10.0, help="how long traffic runs")
    p.add_argument("--concurrency", type=int, default=16, help="clients sending at once")
    p.add_argument("--out", type=Path, default=Path("runs/soak"), help="where soak.json and soak.png go")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--seed", type=int, default=0)


# --- what is sent -------------------------------------------------------------------------------
def minimal_pdf(text: str) -> bytes:
    """A one-page PDF showing `text` in Helvetica, its cross-reference table computed."""
    stream = f"BT /F1 18 Tf 40 100 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 200] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def bad_requests(model_id: str) -> list[tuple[dict | bytes, set[int]]]:
    """(body, the statuses it may get): each is wrong in a different way."""
    user = [{"role": "user", "content": "Hi"}]
    return [
        ({"model": model_id}, {400, 422}),
        ({"model": "no/such-model", "messages": user}, {400, 404}),
        ({"model": model_id, "messages": user, "temperature": 7}, {400, 422}),
        ({"model": model_id, "messages": user, "response_format": {"type": "json_schema"}}, {400, 422}),
        ({"model": model_id, "messages": user, "reasoning": {"effort": "huge"}}, {400, 422}),
        ({"model": model_id, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGEgcG5n"}}]}]}, {400, 422}),
        (b"{not json", {400, 422}),
    ]


def request_body(kind: str, model_id: str, n: int, pdf_url: str) -> dict:
    """The body of the `n`th request of `kind` (kinds but disconnect and bad_request)."""
    ask = {
        "text": ("Say something about shapes.", {"max_completion_tokens": 32}),
        "image_out": ("Draw a large red circle at the top left on a white background.",
                      {"modalities": ["image", "text"], "max_completion_tokens": 300}),
        "image_in": ([{"type": "image_url", "image_url": {"url": picture_url(n % 8)}},
                      {"type": "text", "text": "Describe the image."}], {"max_completion_tokens": 24}),
        "pdf_in": ([{"type": "file", "file": {"filename": "shapes.pdf", "file_data": pdf_url}},
                    {"type": "text", "text": "What does the document say?"}], {"max_completion_tokens": 24}),
        "structured": ("Describe one shape as JSON.", {"max_completion_tokens": 64, "response_format": {
            "type": "json_schema", "json_schema": {"name": "shape", "strict": True, "schema": SCHEMA}}}),
        "reasoning": ("How many corners has a square?", {"max_completion_tokens": 64, "reasoning": {"effort": "low"}}),
    }
    content, extra = ask[kind]
    return {"model": model_id, "messages": [{"role": "user", "content": content}], "seed": n, **extra}


# --- one request -------------------------------------------------------------------------------
async def send(client: httpx.AsyncClient, base: str, kind: str, model_id: str, n: int, pdf_url: str) -> str:
    """Send the `n`th request of `kind`; its outcome: ok (ok_with_image when an image came back), 5xx,
    unexpected_4xx, not_4xx (a bad request accepted), unexpected_status, bad_answer."""
    url = f"{base}/v1/chat/completions"
    if kind == "bad_request":
        body, allowed = bad_requests(model_id)[n % len(bad_requests(model_id))]
        response = await (client.post(url, content=body, headers={"Content-Type": "application/json"})
                          if isinstance(body, bytes) else client.post(url, json=body))
        return "ok" if response.status_code in allowed else _status_outcome(response.status_code, "not_4xx")
    if kind == "disconnect":
        body = {**request_body("text", model_id, n, pdf_url), "stream": True, "max_completion_tokens": 200}
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                return _status_outcome(response.status_code)
            chunks = 0
            async for line in response.aiter_lines():
                chunks += sse_chunk(line) is not None
                if chunks >= 3:
                    break  # leaving the block closes the connection mid-stream
        return "ok"
    response = await client.post(url, json=request_body(kind, model_id, n, pdf_url))
    if response.status_code != 200:
        return _status_outcome(response.status_code)
    reply = response.json()
    if not _answer_is_whole(kind, reply):
        return "bad_answer"
    return "ok_with_image" if reply["choices"][0]["message"].get("images") else "ok"


def _status_outcome(status: int, otherwise: str = "unexpected_status") -> str:
    return "5xx" if status >= 500 else "unexpected_4xx" if 400 <= status < 500 else otherwise


def _answer_is_whole(kind: str, reply: dict) -> bool:
    choice = reply["choices"][0]
    if kind == "structured" and choice["finish_reason"] == "stop":
        return isinstance(json.loads(choice["message"]["content"]), dict)
    return choice["message"] is not None


# --- monitoring --------------------------------------------------------------------------------
def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc/*/stat: works without CONFIG_PROC_CHILDREN)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def engine_child(api_pid: int) -> int | None:
    """The API process's largest child: its engine (the others are small helpers)."""
    sized = [(rss_bytes(child) or 0, child) for child in children(api_pid)]
    return max(sized)[1] if sized else None


async def sample(client: httpx.AsyncClient, base: str, api_pid: int, engine_pid: int | None, start: float) -> dict:
    try:
        health = (await client.get(f"{base}/health", timeout=10)).json()
    except (httpx.HTTPError, ValueError):
        health = {}
    try:
        figures = read_figures((await client.get(f"{base}/metrics", timeout=10)).text)
    except (httpx.HTTPError, ValueError):
        figures = {}
    encoder = health.get("encoder_cache") or {}
    return figures | {
        "t": round(time.monotonic() - start, 2),
        "api_rss": rss_bytes(api_pid), "engine_rss": rss_bytes(engine_pid) if engine_pid else None,
        "kv_used_tokens": (health.get("kv_cache") or {}).get("used_tokens"),
        "kv_budget_tokens": (health.get("kv_cache") or {}).get("budget_tokens"),
        "encoder_entries": encoder.get("entries"), "encoder_bytes": encoder.get("bytes"),
        "pending": health.get("pending"), "running": health.get("running"), "status": health.get("status"),
    }


# --- the run -----------------------------------------------------------------------------------
async def traffic(base: str, model_id: str, api_pid: int, seconds: float, concurrency: int, seed: int) -> dict:
    """Run the clients for `seconds`, sampling once a second; then wait for the server to go idle."""
    results: list[dict] = []  # {"kind", "outcome", "latency_s", "t"}
    samples: list[dict] = []
    pdf_url = "data:application/pdf;base64," + base64.b64encode(minimal_pdf("Three red circles.")).decode()
    engine_pid = engine_child(api_pid)
    start = time.monotonic()
    deadline = start + seconds
    limits = httpx.Limits(max_connections=concurrency + 2)

    async def client_loop(worker: int, client: httpx.AsyncClient) -> None:
        n = seed * 100_000 + worker * 10_000
        while time.monotonic() < deadline:
            kind = KINDS[(worker + n) % len(KINDS)]
            began = time.monotonic()
            try:
                outcome = await send(client, base, kind, model_id, n, pdf_url)
            except httpx.TransportError as exc:
                outcome = f"transport:{type(exc).__name__}"
            results.append({"kind": kind, "outcome": outcome, "latency_s": time.monotonic() - began,
                            "t": round(began - start, 2)})
            n += 1

    async def monitor(client: httpx.AsyncClient, until: asyncio.Event) -> None:
        while not until.is_set():
            samples.append(await sample(client, base, api_pid, engine_pid, start))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(until.wait(), 1.0)

    async with httpx.AsyncClient(timeout=600, limits=limits) as client, httpx.AsyncClient(timeout=30) as watch:
        stop = asyncio.Event()
        watcher = asyncio.create_task(monitor(watch, stop))
        await asyncio.gather(*(client_loop(w, client) for w in range(concurrency)))
        traffic_end = time.monotonic() - start
        idle = await wait_idle(watch, base)
        stop.set()
        await watcher
    return {"results": results, "samples": samples, "traffic_s": traffic_end, "idle": idle, "engine_pid": engine_pid}


async def wait_idle(client: httpx.AsyncClient, base: str, patience_s: float = 60.0) -> dict:
    """Poll /health until nothing is pending and no KV is held (or `patience_s` passes): the last reading."""
    began = time.monotonic()
    while True:
        health = (await client.get(f"{base}/health")).json()
        if (health["pending"] == 0 and health["kv_cache"]["used_tokens"] == 0) or time.monotonic() - began > patience_s:
            return {"after_s": round(time.monotonic() - began, 2), "health": health}
        await asyncio.sleep(0.5)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize(run: dict, seconds: float) -> dict:
    outcomes: dict[str, Counter] = defaultdict(Counter)
    latencies: dict[str, list[float]] = defaultdict(list)
    for r in run["results"]:
        outcomes[r["kind"]][r["outcome"]] += 1
        if r["outcome"].startswith("ok"):
            latencies[r["kind"]].append(r["latency_s"])
    every = Counter(r["outcome"] for r in run["results"])
    transport = sum(n for outcome, n in every.items() if outcome.startswith("transport"))
    idle_health = run["idle"]["health"]
    return {
        "requests": len(run["results"]),
        "requests_by_kind": {kind: sum(outcomes[kind].values()) for kind in KINDS},
        "outcomes_by_kind": {kind: dict(outcomes[kind]) for kind in KINDS},
        "server_errors_5xx": every["5xx"], "transport_errors": transport,
        "unexpected_4xx": every["unexpected_4xx"], "bad_requests_not_4xx": every["not_4xx"],
        "other_errors": every["unexpected_status"] + every["bad_answer"],
        "latency_s": {kind: {f"p{q}": round(percentile(v, q), 4) for q in (50, 90, 99)}
                      for kind, v in latencies.items() if v},
        "idle": {"after_s": run["idle"]["after_s"], "pending": idle_health["pending"],
                 "kv_used_tokens": idle_health["kv_cache"]["used_tokens"], "kv_empty": idle_health["kv_cache"]["used_tokens"] == 0,
                 "encoder_cache": idle_health.get("encoder_cache")},
        "rss_growth_after_warm_up": rss_growth(run["samples"], seconds),
    }


def rss_growth(samples: list[dict], seconds: float) -> dict:
    """Per process: RSS at WARM_UP_FRACTION of the traffic and at its end, and the growth in %."""
    during = [s for s in samples if s["t"] <= seconds]
    warm = min(during, key=lambda s: abs(s["t"] - WARM_UP_FRACTION * seconds))
    out = {}
    for process in ("api", "engine"):
        before, after = warm[f"{process}_rss"], during[-1][f"{process}_rss"]
        out[process] = {"warm_t": warm["t"], "warm_bytes": before, "end_t": during[-1]["t"], "end_bytes": after,
                        "growth_pct": round(100 * (after - before) / before, 2) if before and after else None}
    return out


def main(args: argparse.Namespace) -> dict:
    """Run the soak; print a summary, write soak.json and soak.png to args.out, return the summary."""
    args.out.mkdir(parents=True, exist_ok=True)
    seconds = args.minutes * 60
    with served_process(args.model, args.dtype, log=args.out / "server.log") as (base, model_id, server):
        run = asyncio.run(traffic(base, model_id, server.pid, seconds, args.concurrency, args.seed))
        crashed = server.poll() is not None
    summary = {"model": str(args.model), "minutes": args.minutes, "concurrency": args.concurrency,
               "server_crashed": crashed, **summarize(run, seconds)}
    (args.out / "soak.json").write_text(json.dumps({**summary, "samples": run["samples"]}, indent=1))
    title = f"{model_id}, {args.concurrency} clients, {args.minutes:g} min"
    draw_timeline(run["samples"], run["traffic_s"], f"soak: {title}").save(args.out / "soak.png", optimize=True)
    draw_metrics(run["samples"], run["traffic_s"], f"/metrics during a soak: {title}").save(
        args.out / "metrics.png", optimize=True)
    print_summary(summary)
    return summary


def print_summary(summary: dict) -> None:
    print(f"{summary['requests']} requests, {summary['concurrency']} clients, {summary['minutes']:g} min  "
          f"5xx {summary['server_errors_5xx']}  transport {summary['transport_errors']}  "
          f"unexpected 4xx {summary['unexpected_4xx']}  bad requests not 4xx {summary['bad_requests_not_4xx']}  "
          f"other {summary['other_errors']}  crashed {summary['server_crashed']}")
    print(f"{'kind':>12} {'sent':>6} {'p50 s':>8} {'p90 s':>8} {'p99 s':>8}  outcomes")
    for kind in KINDS:
        lat = summary["latency_s"].get(kind, {})
        print(f"{kind:>12} {summary['requests_by_kind'][kind]:>6} " + " ".join(
            f"{lat.get(q, float('nan')):>8.3f}" for q in ("p50", "p90", "p99")) + f"  {summary['outcomes_by_kind'][kind]}")
    for process, g in summary["rss_growth_after_warm_up"].items():
        print(f"{process} RSS {g['warm_bytes'] / 2**20:.0f} MiB at {g['warm_t']:.0f} s -> "
              f"{g['end_bytes'] / 2**20:.0f} MiB at {g['end_t']:.0f} s: {g['growth_pct']:+.2f}%")
    idle = summary["idle"]
    print(f"idle after {idle['after_s']} s: KV tokens in use {idle['kv_used_tokens']} "
          f"({'empty' if idle['kv_empty'] else 'NOT EMPTY'}), pending {idle['pending']}", flush=True)
