"""Fixtures of the browser tests: Debian's Chromium driven by Playwright (never a downloaded
browser), a page that collects script errors and fails the test on any, and a server on a tiny
random checkpoint whose model card differs from every default (so the page can only show it by
reading the live card).

Screenshots go to docs/screenshots/ when IMAGEMINI_WRITE_SCREENSHOTS=1 (how the committed ones
were made), else to the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from webtest import CARD

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture(scope="session")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install '.[test]'")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run installs it)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class ScriptErrors:
    """Uncaught exceptions and console errors of a page; `expect` names ones a test provokes."""

    seen: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)

    def expect(self, fragment: str) -> None:
        self.expected.append(fragment)

    def unexpected(self) -> list[str]:
        return [e for e in self.seen if not any(f in e for f in self.expected)]


@pytest.fixture
def script_errors() -> ScriptErrors:
    return ScriptErrors()


@pytest.fixture
def page(browser, script_errors):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.on("pageerror", lambda exc: script_errors.seen.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: script_errors.seen.append(f"console: {msg.text}") if msg.type == "error" else None)
    yield page
    context.close()
    assert script_errors.unexpected() == []


@pytest.fixture
def screenshot_dir(tmp_path) -> Path:
    if os.environ.get("IMAGEMINI_WRITE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    return tmp_path


@pytest.fixture(scope="session")
def web_checkpoint(long_checkpoint, tmp_path_factory) -> Path:
    """The tiny 32K-context checkpoint with CARD as its model_card.json."""
    path = tmp_path_factory.mktemp("web") / "tiny-web"
    shutil.copytree(long_checkpoint, path)
    (path / "model_card.json").write_text(json.dumps(CARD))
    return path


@pytest.fixture(scope="session")
def web_server(start_server, web_checkpoint):
    with start_server(web_checkpoint) as server:
        yield server
