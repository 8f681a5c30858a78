"""The headline figures of a folder of `bench text` / `bench draw` results, in one table and one
JSON: what scripts/gpu-check leaves after each of its phases, so a run cut short still says
what it measured.

    python -m imagemini.bench.summary DIR      # reads DIR/text-*.json, DIR/draw-*.json, DIR/phases.tsv,
                                               # DIR/tests.log; writes DIR/summary.json

Per text run and concurrency: our tokens/s, transformers' (one at a time, batched), ours over
batched, each one's share of the decode limit (weight bytes / measured bandwidth) where the run
measured it, the cost of the row tiles (the seed guarantee) and the default attention plan over
the other; our throughput at the highest concurrency over the lowest. Per draw run likewise in
images/s. Then synchronisations a step, each phase's exit status and seconds, and the tests'
closing line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _text(run: dict) -> dict:
    rows = run["decode"]
    by_c = {}
    for r in rows:
        t = r["tokens_per_s"]
        by_c[r["concurrency"]] = {
            "ours_tok_s": t["ours"], "hf_sequential_tok_s": t["hf_sequential"], "hf_batched_tok_s": t["hf_batched"],
            "ours_over_hf_batched": t["ours"] / t["hf_batched"], "ours_over_hf_sequential": t["ours"] / t["hf_sequential"],
            "share_of_bandwidth_limit": r.get("share_of_bandwidth_limit"), "share_of_ceiling": r["share_of_ceiling"],
            "tile_cost": r["tile_cost"], "default_over_other_attention": r.get("default_over_other_attention"),
        }
    low, high = rows[0], rows[-1]
    return {"checkpoint": Path(run["checkpoint"]).name, "device": run.get("device"), "dtype": run["dtype"],
            "max_tokens": run["max_tokens"], "concurrency": by_c,
            "ours_high_over_low_concurrency": high["tokens_per_s"]["ours"] / low["tokens_per_s"]["ours"],
            "time_to_first_token": run["time_to_first_token"], "attention": run.get("attention"),
            "syncs_per_step": _syncs(run), "bandwidth": run.get("bandwidth")}


def _draw(run: dict) -> dict:
    rows = run["images"]
    by_c = {}
    for r in rows:
        i = r["images_per_s"]
        by_c[r["concurrency"]] = {
            "ours_img_s": i["ours"], "hf_sequential_img_s": i["hf_sequential"], "hf_batched_img_s": i["hf_batched"],
            "ours_over_hf_batched": i["ours"] / i["hf_batched"], "ours_over_hf_sequential": i["ours"] / i["hf_sequential"],
            "share_of_bandwidth_limit": r.get("share_of_bandwidth_limit"), "ours_share_of_ceiling": r["ours_share_of_ceiling"],
        }
    low, high = rows[0], rows[-1]
    return {"checkpoint": Path(run["checkpoint"]).name, "device": run.get("device"), "dtype": run["dtype"],
            "codes_per_image": run["codes_per_image"], "concurrency": by_c,
            "ours_high_over_low_concurrency": high["images_per_s"]["ours"] / low["images_per_s"]["ours"],
            "syncs_per_step": _syncs(run), "bandwidth": run.get("bandwidth")}


def _syncs(run: dict) -> dict:
    """Per phase: synchronising CUDA calls a step (sync debug pass), else the engine's host reads."""
    rows = run.get("decode") or run.get("images")
    out = {name: (s or {}).get("syncs_per_step") for name, s in run.get("sync_debug", {}).items()}
    for side in rows[0].get("host_reads_per_step", {}):
        reads = {r["concurrency"]: r["host_reads_per_step"][side] for r in rows}
        if any(v is not None for v in reads.values()):
            out[f"{side} host reads"] = reads
    return out


def _phases(folder: Path) -> list[dict]:
    path = folder / "phases.tsv"
    if not path.exists():
        return []
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    return [{"phase": r[0], "exit": r[1], "seconds": int(r[2]), "limit_s": int(r[3])} for r in rows if len(r) == 4]


def _tests(folder: Path) -> str | None:
    """pytest's closing line, e.g. '12 passed, 1 failed in 30.1s'."""
    path = folder / "tests.log"
    if not path.exists():
        return None
    lines = [line.strip("= \n") for line in path.read_text(errors="replace").splitlines() if line.strip("= \n")]
    closing = [line for line in lines if " in " in line and any(w in line for w in ("passed", "failed", "error", "collected", "tests"))]
    return closing[-1] if closing else (lines[-1] if lines else None)


def summarise(folder: Path) -> dict:
    summary = {"phases": _phases(folder), "tests": _tests(folder), "text": {}, "draw": {}}
    for kind, reader in (("text", _text), ("draw", _draw)):
        for path in sorted(folder.glob(f"{kind}-*.json")):
            summary[kind][path.stem] = reader(json.loads(path.read_text()))
    return summary


def _pct(shares: dict | None, key: str) -> str:
    return f"{shares[key]:.0%}" if shares and key in shares else "-"


def print_summary(summary: dict) -> None:
    print(f"tests: {summary['tests']}")
    for p in summary["phases"]:
        print(f"phase {p['phase']:<12} exit {p['exit']:<8} {p['seconds']:>4} s (limit {p['limit_s']} s)")
    for name, run in summary["text"].items():
        print(f"{name} ({run['checkpoint']}, {run['device']}, {run['dtype']}, {run['max_tokens']} tokens): "
              f"ours at the highest concurrency / the lowest {run['ours_high_over_low_concurrency']:.2f}x")
        for c, f in run["concurrency"].items():
            bw = f["share_of_bandwidth_limit"]
            print(f"  c={c}: ours {f['ours_tok_s']:.1f} tok/s ({_pct(bw, 'ours')} of the limit), hf seq {f['hf_sequential_tok_s']:.1f}"
                  f" ({_pct(bw, 'hf_sequential')}), hf batched {f['hf_batched_tok_s']:.1f} ({_pct(bw, 'hf_batched')});"
                  f" ours/batched {f['ours_over_hf_batched']:.2f}x; tile cost {f['tile_cost']:.0%}"
                  + (f"; default/other attention {f['default_over_other_attention']:.2f}x" if f["default_over_other_attention"] else ""))
        print(f"  syncs a step: {run['syncs_per_step']}")
    for name, run in summary["draw"].items():
        print(f"{name} ({run['checkpoint']}, {run['device']}, {run['codes_per_image']} codes): "
              f"ours at the highest concurrency / the lowest {run['ours_high_over_low_concurrency']:.2f}x")
        for c, f in run["concurrency"].items():
            bw = f["share_of_bandwidth_limit"]
            print(f"  c={c}: ours {f['ours_img_s']:.3f} img/s ({_pct(bw, 'ours')} of the limit), hf seq {f['hf_sequential_img_s']:.3f},"
                  f" hf batched {f['hf_batched_img_s']:.3f}; ours/seq {f['ours_over_hf_sequential']:.2f}x,"
                  f" ours/batched {f['ours_over_hf_batched']:.2f}x")
        print(f"  syncs a step: {run['syncs_per_step']}")


def main(argv: list[str] | None = None) -> None:
    (folder,) = argv if argv is not None else sys.argv[1:]
    summary = summarise(Path(folder))
    (Path(folder) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary)


if __name__ == "__main__":
    main()
