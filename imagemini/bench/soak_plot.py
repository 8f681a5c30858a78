"""The soak's timelines, drawn with Pillow alone, against seconds since the traffic began: RSS of
the API and engine processes and KV tokens in use (SERIES: soak.png), and any other panels of
sample keys (`series`: metrics_plot.py draws the server's /metrics this way)."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

SCALE = 2  # drawn at twice the layout size, for sharp text
WIDTH, PANEL, LEFT, TOP, GAP = 640, 170, 64, 34, 46
SERIES = (  # (panel, sample key, legend, colour, divisor)
    (0, "api_rss", "API process RSS (MiB)", (59, 111, 212), 2**20),
    (0, "engine_rss", "engine process RSS (MiB)", (212, 94, 59), 2**20),
    (1, "kv_used_tokens", "KV tokens in use", (46, 150, 90), 1),
)


def draw_timeline(samples: list[dict], traffic_s: float, title: str, series: tuple = SERIES) -> Image.Image:
    """One panel per panel number of `series` ((panel, sample key, legend, colour, divisor) each);
    a sample whose key is None leaves its point out."""
    panels = 1 + max(p for p, *_ in series)
    height = TOP + panels * PANEL + (panels - 1) * GAP + 30
    image = Image.new("RGB", (WIDTH * SCALE, height * SCALE), "white")
    draw = ImageDraw.Draw(image)
    font, bold = (ImageFont.load_default(size=s * SCALE) for s in (10, 12))

    def at(*xy: float) -> list[float]:
        return [v * SCALE for v in xy]

    draw.text(at(8, 6), title, font=bold, fill="black")
    t_max = max([s["t"] for s in samples] + [traffic_s, 1.0])
    right = WIDTH - 16
    for panel in range(panels):
        top = TOP + panel * (PANEL + GAP) + 14
        bottom = top + PANEL - 14
        shown = [(key, legend, colour, div) for p, key, legend, colour, div in series if p == panel]
        values = [s[key] / div for key, _, _, div in shown for s in samples if s.get(key) is not None]
        high = nice_ceiling(max(values + [1.0]))
        for tick in range(5):
            y = bottom - (bottom - top) * tick / 4
            draw.line(at(LEFT, y, right, y), fill=(225, 225, 225), width=SCALE)
            draw.text(at(LEFT - 4, y), f"{high * tick / 4:g}", font=font, fill=(85, 85, 85), anchor="rm")
        x_end = LEFT + (right - LEFT) * traffic_s / t_max  # traffic stops here; the rest is the idle wait
        draw.line(at(x_end, top, x_end, bottom), fill=(150, 150, 150), width=SCALE)
        for i, (key, legend, colour, div) in enumerate(shown):
            draw.rectangle(at(LEFT + i * 200, top - 14, LEFT + i * 200 + 9, top - 5), fill=colour)
            draw.text(at(LEFT + i * 200 + 13, top - 15), legend, font=font, fill="black")
            points = [at(LEFT + (right - LEFT) * s["t"] / t_max, bottom - (bottom - top) * s[key] / div / high)
                      for s in samples if s.get(key) is not None]
            if len(points) > 1:
                draw.line([v for point in points for v in point], fill=colour, width=SCALE * 2)
    axis = TOP + panels * PANEL + (panels - 1) * GAP
    for tick in range(6):
        x = LEFT + (right - LEFT) * tick / 5
        draw.text(at(x, axis + 8), f"{t_max * tick / 5:.0f} s", font=font, fill=(85, 85, 85), anchor="mm")
    return image


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten not below `value` (an axis top)."""
    power = 10.0 ** math.ceil(math.log10(value))
    for step in (0.1, 0.2, 0.25, 0.5, 1.0):
        if value <= step * power:
            return step * power
    return power
