"""The lines `bench text` and `bench draw` print beside their table when a run has device
figures (device.py, ceiling.py): the memory bandwidth and the decode limit it sets, each side's
share of that limit, throughput at each concurrency against the lowest, the attention plans
side by side, synchronisations a step and peak device memory. Also the progress line each
phase prints as it ends, so a run cut short still shows what it measured.

A run without any of them (a CPU run without `--bandwidth`, while the engine does not count its
host reads) prints nothing more than before.
"""

from __future__ import annotations

import torch

from .device import is_cuda

SIDES = {"ours": "ours", "untiled": "untiled", "other_attention": "other attn",
         "hf_sequential": "hf seq", "hf_batched": "hf batch", "ceiling": "weight pass"}


def progress(what: str, rates: dict[int, float], unit: str) -> None:
    print(f"  {what}: " + ", ".join(f"c={c} {v:.4g} {unit}" for c, v in rates.items()), flush=True)


def weights_device(model: torch.nn.Module) -> str:
    """Where a model's weights are: the progress lines show that an engine ran where it was asked to."""
    return str(next(model.parameters()).device)


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if is_cuda(device) else "cpu"


def device_note(device: str) -> str:
    """What the header line adds on a GPU: the device and the torch and CUDA versions."""
    if not is_cuda(device):
        return ""
    return f"  device {device} ({device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda})"


def device_figures(phases: dict[str, dict], bandwidth: dict | None, weights: int | None) -> dict:
    """The JSON's device keys, each only where the run has it: "bandwidth" (with the weight
    bytes a step reads), "sync_debug" and "peak_gpu_gib" of each phase."""
    figures: dict = {}
    if bandwidth is not None:
        figures["bandwidth"] = {**bandwidth, "weight_bytes": weights}
    syncs = {k: v["sync_debug"] for k, v in phases.items() if "sync_debug" in v}
    if syncs:
        figures["sync_debug"] = syncs
    peaks = {f"after {k}": v["peak_gpu_gib"] for k, v in phases.items() if v.get("peak_gpu_gib") is not None}
    if peaks:
        figures["peak_gpu_gib"] = peaks
    return figures


def print_bandwidth(results: dict, limit: dict, unit: str) -> None:
    bw = results["bandwidth"]
    print(f"memory bandwidth: {bw['copy_gb_s']:.0f} GB/s copying, {bw['read_gb_s']:.0f} GB/s reading"
          f" ({bw['bytes'] / 1e9:.1f} GB); weights a step reads: {bw['weight_bytes'] / 1e9:.2f} GB,"
          f" {limit['pass_ms']:.2f} ms at {bw['gb_s']:.0f} GB/s -> decode limit {limit[unit]:.4g} {unit.replace('_per_s', '/s')}"
          f" at c={limit['concurrency']}")


def print_shares(rows: list[dict], shares: str, note: str) -> None:
    """A table of each side's share of a bound, per concurrency."""
    sides = [k for k in SIDES if k in rows[0][shares]]
    print(note)
    print(f"{'concurrency':>11} " + " ".join(f"{SIDES[k]:>11}" for k in sides))
    for r in rows:
        print(f"{r['concurrency']:>11} " + " ".join(f"{r[shares][k]:>11.1%}" for k in sides))


def print_scaling(rows: list[dict], rates: str, sides: tuple[str, ...]) -> None:
    """Each side's throughput at every concurrency against its own at the lowest one."""
    base = rows[0]
    for r in rows[1:]:
        ratios = "  ".join(f"{SIDES[k]} {r[rates][k] / base[rates][k]:.2f}x" for k in sides if k in r[rates])
        print(f"c={r['concurrency']} vs c={base['concurrency']}: {ratios}")


def print_syncs(rows: list[dict], results: dict) -> None:
    reads = {k: [(r["concurrency"], r["host_reads_per_step"].get(k)) for r in rows] for k in rows[0].get("host_reads_per_step", {})}
    known = {k: v for k, v in reads.items() if any(x is not None for _, x in v)}
    if known:
        print("host reads a step (the engine's count, timed runs): " + "  ".join(
            f"{SIDES[k]} " + " ".join(f"c={c} {x:.2f}" if x is not None else f"c={c} -" for c, x in v) for k, v in known.items()))
    for name, sync in results.get("sync_debug", {}).items():
        if sync is None or sync.get("syncs") is None:
            print(f"synchronising CUDA calls a step, {name}: not counted (torch's sync debug mode gave no warning)")
        else:
            print(f"synchronising CUDA calls a step, {name} (sync debug mode, {sync['steps']} steps at c={sync['concurrency']}):"
                  f" {sync['syncs_per_step']:.2f}")
    if "peak_gpu_gib" in results:
        print("peak GPU GiB: " + "  ".join(f"{k} {v}" for k, v in results["peak_gpu_gib"].items()))


def print_text(results: dict) -> None:
    """`bench text`'s device lines."""
    rows = results["decode"]
    if "bandwidth" in results:
        print_bandwidth(results, {**rows[0]["bandwidth_limit"], "concurrency": rows[0]["concurrency"]}, "tokens_per_s")
        print_shares(rows, "share_of_bandwidth_limit", "share of the decode limit (weight bytes / bandwidth) at each side's rows a step:")
    if len(rows) > 1 and (results["device"] != "cpu" or "bandwidth" in results):
        print_scaling(rows, "tokens_per_s", ("ours", "untiled", "other_attention", "hf_batched"))
    if "attention" in results:
        plans = results["attention"]
        print(f"attention {plans['default']} (the default) over {plans['other']}: "
              + "  ".join(f"c={r['concurrency']} {r['default_over_other_attention']:.2f}x" for r in rows))
    print_syncs(rows, results)


def print_draw(results: dict) -> None:
    """`bench draw`'s device lines."""
    rows = results["images"]
    if "bandwidth" in results:
        print_bandwidth(results, {**rows[0]["bandwidth_limit"], "concurrency": rows[0]["concurrency"]}, "images_per_s")
        print_shares(rows, "share_of_bandwidth_limit", "share of the decode limit (codes x weight bytes / bandwidth an image):")
    if len(rows) > 1 and (results["device"] != "cpu" or "bandwidth" in results):
        print_scaling(rows, "images_per_s", ("ours", "hf_batched"))
    print_syncs(rows, results)
