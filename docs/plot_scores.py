"""Draw the bundled model's evaluation scores as a bar chart, from the committed reports.

    python docs/plot_scores.py      # reads docs/eval/n300/report.json and docs/eval/train/report.json,
                                    # writes docs/scores.png

Run it again after `imagemini eval` rewrites either report. Needs only Pillow (a dependency of
imagemini already).
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

DOCS = Path(__file__).parent
SERIES = (  # (legend, report, colour)
    ("held-out chats (n = 300 per task)", DOCS / "eval" / "n300" / "report.json", (59, 111, 212)),
    ("training-split chats (n = 100 per task)", DOCS / "eval" / "train" / "report.json", (184, 199, 232)),
)
METRICS = (  # (label, key in report["scores"])
    ("GenEval overall", "geneval_overall"),
    ("GenEval: single object", "single_object"),
    ("GenEval: two objects", "two_objects"),
    ("GenEval: counting", "counting"),
    ("GenEval: colours", "colours"),
    ("GenEval: position", "position"),
    ("GenEval: colour attribution", "colour_attribution"),
    ("Drawing, exact scene", "draw_exact"),
    ("Edit, exact scene", "edit_exact"),
    ("VQA", "vqa"),
    ("Caption, exact", "caption"),
    ("JSON description, exact", "json"),
    ("Reasoning, thinking on", "reasoning_thinking"),
    ("Small talk", "smalltalk"),
)
SCALE = 2  # drawn at twice the layout size, for sharp text
LABEL_WIDTH, BAR_WIDTH, BAR_HEIGHT, GAP, TOP = 190, 400, 10, 9, 52


def render(scores: list[dict[str, float]]) -> Image.Image:
    """One group of bars per metric, one bar per series; values are fractions in [0, 1]."""
    group = BAR_HEIGHT * len(SERIES) + GAP
    width, height = LABEL_WIDTH + BAR_WIDTH + 50, TOP + group * len(METRICS) + 22
    image = Image.new("RGB", (width * SCALE, height * SCALE), "white")
    draw = ImageDraw.Draw(image)
    font, small, bold = (ImageFont.load_default(size=s * SCALE) for s in (11, 9, 13))

    def at(*xy: float) -> list[float]:
        return [v * SCALE for v in xy]

    draw.text(at(8, 6), "imagemini/bundled: evaluation scores, % of chats judged right", font=bold, fill="black")
    for i, (legend, _, colour) in enumerate(SERIES):
        x = 8 + i * 240
        draw.rectangle(at(x, 28, x + 10, 38), fill=colour)
        draw.text(at(x + 15, 27), legend, font=font, fill="black")
    for tick in range(0, 101, 25):
        x = LABEL_WIDTH + BAR_WIDTH * tick / 100
        draw.line(at(x, TOP - 4, x, height - 20), fill=(221, 221, 221), width=SCALE)
        draw.text(at(x, height - 10), f"{tick}%", font=small, fill=(85, 85, 85), anchor="mm")
    for m, (label, key) in enumerate(METRICS):
        y = TOP + m * group
        draw.text(at(LABEL_WIDTH - 8, y + BAR_HEIGHT), label, font=font, fill="black", anchor="rm")
        for s, (_, _, colour) in enumerate(SERIES):
            value, top = scores[s][key], y + s * BAR_HEIGHT
            draw.rectangle(at(LABEL_WIDTH, top, LABEL_WIDTH + BAR_WIDTH * value, top + BAR_HEIGHT - 1), fill=colour)
            draw.text(at(LABEL_WIDTH + BAR_WIDTH * value + 4, top + BAR_HEIGHT / 2), f"{100 * value:.1f}",
                      font=small, fill=(51, 51, 51), anchor="lm")
    return image


def main() -> None:
    scores = [json.loads(path.read_text())["scores"] for _, path, _ in SERIES]
    render(scores).save(DOCS / "scores.png", optimize=True)


if __name__ == "__main__":
    main()
