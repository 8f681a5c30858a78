"""The page and playground on the bundled model: a picture drawn, then edited in the next turn
with the history as the API returned it (the picture on the assistant message); the page's own
Python code run as it is against this server. Writes docs/screenshots/page.png and
playground-image.png with IMAGEMINI_WRITE_SCREENSHOTS=1 (tests/web/conftest.py)."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest
from openai import OpenAI
from PIL import Image

from imagemini.cli import BUNDLED_MODEL
from imagemini.world import SceneParseError, parse_description, parse_image

pytestmark = pytest.mark.skipif(not (BUNDLED_MODEL / "model.safetensors").exists(), reason="no bundled checkpoint in this checkout")

DRAW = "Draw a large red circle at the top left on a white background."
EDIT = "Change the circle to blue."


@pytest.fixture(scope="module")
def bundled_server(start_server):
    with start_server(BUNDLED_MODEL) as server:
        yield server


def wait_done(page) -> None:
    page.wait_for_function("() => !document.getElementById('send').disabled && document.querySelector('.turn.assistant')")


def scene_of(url: str):
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
    try:
        return parse_image(pixels)
    except SceneParseError:
        return None


def test_the_page_of_the_bundled_model(page, bundled_server, screenshot_dir):
    page.goto(bundled_server.url + "/")
    assert page.locator("h1").inner_text() == "imagemini shapes-world model (bundled)"
    assert "imagemini/bundled" in page.locator("#model").inner_text()
    assert "$2.50 per million tokens" in page.locator("#model").inner_text()
    assert page.locator("button.example").count() >= 4
    page.screenshot(path=str(screenshot_dir / "page.png"))


def test_a_drawn_picture_is_edited_in_the_next_turn(page, bundled_server, screenshot_dir):
    page.goto(bundled_server.url + "/playground")
    page.locator("details.options summary").click()
    page.fill("#seed", "0")
    page.select_option("#modalities", "image,text")
    page.fill("#prompt", DRAW)
    page.click("#send")
    wait_done(page)
    first = page.locator(".turn.assistant .pictures img").first.get_attribute("src")
    with page.expect_request("**/v1/chat/completions") as sent:
        page.fill("#prompt", EDIT)
        page.click("#send")
    page.wait_for_function("() => document.querySelectorAll('.turn.assistant .pictures img').length === 2")
    wait_done(page)
    history = sent.value.post_data_json["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    assert history[1]["images"] == [{"type": "image_url", "image_url": {"url": first}}]  # as the API returned it
    assert history[2]["content"] == EDIT
    second = page.locator(".turn.assistant .pictures img").nth(1).get_attribute("src")
    before, after = scene_of(first), scene_of(second)
    print(f"drawn {before}, edited {after}")
    assert before is not None and any(o.shape == "circle" and o.color == "red" for o in before.objects)
    page.locator("details.options summary").click()  # closed: the screenshot shows the chat
    page.locator("#chat").screenshot(path=str(screenshot_dir / "playground-image.png"))


def test_the_pages_code_runs_as_written(bundled_server, tmp_path):
    page = httpx.get(bundled_server.url + "/", timeout=30).text
    blocks = [(lang, html.unescape(code)) for lang, code in
              re.findall(r'<pre data-lang="(\w+)"><code>(.*?)</code></pre>', page, flags=re.S)]
    python = [code for lang, code in blocks if lang == "python"]
    assert len(python) == 3 and all(f'base_url="{bundled_server.url}/v1"' in code for code in python)
    for code in python:  # in order: the edit reads the picture the drawing saved
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "edited.png").size == (64, 64)
    curl = next(code for lang, code in blocks if lang == "bash")
    if shutil.which("curl"):
        done = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and '"chat.completion"' in done.stdout, done.stdout + done.stderr


def test_the_bundled_cards_prompts_work(bundled_server):
    """The page's "Prompts that work" (models/bundled/model_card.json): each drawing prompt draws
    the scene it describes, the capabilities question is answered; those that need a picture say so."""
    examples = json.loads((BUNDLED_MODEL / "model_card.json").read_text())["examples"]
    client = OpenAI(base_url=f"{bundled_server.url}/v1", api_key="unused", max_retries=0)
    for example in examples:
        if example.get("note"):
            assert "attach" in example["note"]  # a picture first: the playground cannot guess one
            continue
        message = client.chat.completions.create(
            model="imagemini/bundled", seed=0, modalities=example.get("modalities", ["text"]),
            messages=[{"role": "user", "content": example["prompt"]}],
        ).choices[0].message
        if example["prompt"].startswith("Draw "):
            wanted = parse_description(example["prompt"].removeprefix("Draw "), strict=False)
            assert scene_of(message.images[0]["image_url"]["url"]) == wanted, example["prompt"]
        else:
            assert "shapes" in message.content, (example["prompt"], message.content)
