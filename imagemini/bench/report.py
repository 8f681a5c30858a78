"""What `bench text` and `bench draw` leave behind besides their table: the figures as JSON
(`--json OUT`) and a grouped bar chart of them as PNG (beside it, or `--plot OUT`), drawn with
Pillow alone like the soak's timeline (soak_plot.py). Also the process's peak memory, which the
benchmarks read after each phase (one model is held at a time)."""

from __future__ import annotations

import argparse
import json
import resource
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .soak_plot import nice_ceiling

SCALE = 2  # drawn at twice the layout size, for sharp text
LEFT, TOP, PANEL, BOTTOM, GROUP = 64, 56, 240, 40, 150
COLOURS = [(212, 94, 59), (240, 170, 70), (59, 111, 212), (120, 160, 230), (150, 150, 150), (90, 170, 90), (160, 100, 190)]
LEGEND_ROW = 14


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", type=Path, default=None, help="write the figures here as JSON (and a PNG chart beside it)")
    p.add_argument("--plot", type=Path, default=None, help="the chart's path (default: the JSON path with .png)")


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def write_report(args: argparse.Namespace, results: dict, chart: Image.Image) -> None:
    if args.json is None and args.plot is None:
        return
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"figures: {args.json}")
    plot = args.plot or args.json.with_suffix(".png")
    plot.parent.mkdir(parents=True, exist_ok=True)
    chart.save(plot)
    print(f"chart: {plot}")


def draw_bars(title: str, unit: str, groups: dict[str, dict[str, float]]) -> Image.Image:
    """A bar per series in each group ({group label: {series: value}}), series in first-seen order."""
    series = list(dict.fromkeys(name for values in groups.values() for name in values))
    width = max(LEFT + GROUP * len(groups) + 24, 620)  # room for the title and three legend entries a line
    top = TOP + LEGEND_ROW * max(0, (len(series) + 2) // 3 - 2)  # the panel starts below the legend's lines
    image = Image.new("RGB", (width * SCALE, (top + PANEL + BOTTOM) * SCALE), "white")
    draw = ImageDraw.Draw(image)
    font, bold = (ImageFont.load_default(size=s * SCALE) for s in (10, 12))

    def at(*xy: float) -> list[float]:
        return [v * SCALE for v in xy]

    draw.text(at(8, 6), title, font=bold, fill="black")
    for i, name in enumerate(series):
        x = LEFT + (i % 3) * 160
        y = 24 + (i // 3) * LEGEND_ROW
        draw.rectangle(at(x, y, x + 9, y + 9), fill=COLOURS[i % len(COLOURS)])
        draw.text(at(x + 13, y - 1), name, font=font, fill="black")
    bottom, high = top + PANEL, nice_ceiling(max([v for values in groups.values() for v in values.values()] + [1e-9]))
    for tick in range(5):
        y = bottom - PANEL * tick / 4
        draw.line(at(LEFT, y, width - 16, y), fill=(225, 225, 225), width=SCALE)
        draw.text(at(LEFT - 4, y), f"{high * tick / 4:g}", font=font, fill=(85, 85, 85), anchor="rm")
    draw.text(at(8, top - 14), unit, font=font, fill=(85, 85, 85))
    bar = (GROUP - 20) / max(len(series), 1)
    for g, (label, values) in enumerate(groups.items()):
        left = LEFT + g * GROUP + 10
        for i, name in enumerate(series):
            if name in values:
                x = left + i * bar
                draw.rectangle(at(x, bottom - PANEL * values[name] / high, x + bar - 2, bottom), fill=COLOURS[i % len(COLOURS)])
        draw.text(at(left + (GROUP - 20) / 2, bottom + 14), label, font=font, fill=(85, 85, 85), anchor="mm")
    return image
