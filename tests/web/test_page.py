"""The model page at / : made from the live server (a card unlike any default shows), escaped,
readable without JavaScript and at 400 px, and its parameter table made from the request schema."""

from __future__ import annotations

import html
import re

import httpx
import pytest
from webtest import CARD

from imagemini.api.model_card import REASONING_PARAMETERS, SUPPORTED_PARAMETERS
from imagemini.web.parameters import EFFECTS, MISSING_EFFECT, parameter_rows

LIVE = {"default_max_tokens": 4096, "image_temperature": "1", "image_top_p": "1", "guidance_scale": "5",
        "default_effort": "medium"}


def get(server, path: str) -> httpx.Response:
    return httpx.get(server.url + path, timeout=30)


def test_the_page_is_the_live_card_escaped(web_server):
    response = get(web_server, "/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    body = response.text
    assert html.escape(CARD["name"]) in body and CARD["name"] not in body
    assert html.escape(CARD["description"]) in body and "<script>alert" not in body
    assert "<code>imagemini/tiny-web</code>" in body
    for price in ("$7.25 per million tokens", "$3.50 per million tokens", "$11.00 per million tokens"):
        assert price in body
    assert "Draw &lt;something&gt;." in body  # the card's example prompt
    assert f'base_url="{web_server.url}/v1"' in html.unescape(body)  # the code speaks to this server
    assert "default-src 'self'" in response.headers["content-security-policy"]


def test_the_playground_alone_and_the_assets(web_server):
    playground = get(web_server, "/playground").text
    assert 'id="composer"' in playground and 'id="parameters"' not in playground
    for name, kind in (("style.css", "text/css"), ("playground.js", "text/javascript")):
        asset = get(web_server, f"/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
    missing = get(web_server, "/static/../routes.py")
    assert missing.status_code == 404


def test_every_supported_parameter_has_a_row_that_says_what_it_does():
    supported = sorted([*SUPPORTED_PARAMETERS, "image_config", *REASONING_PARAMETERS])
    rows = parameter_rows(supported, LIVE)
    names = [r.name for r in rows]
    assert set(supported) <= set(names)
    assert {"model", "messages", "stream", "reasoning.effort", "image_config.guidance_scale"} <= set(names)
    assert [r.name for r in rows if r.effect == MISSING_EFFECT] == []
    assert set(EFFECTS) <= set(names), "an effect documented for a field the table no longer shows"


def test_types_and_ranges_come_from_the_schema():
    rows = {r.name: r for r in parameter_rows([*SUPPORTED_PARAMETERS, "image_config"], LIVE)}
    assert (rows["temperature"].type, rows["temperature"].range) == ("number", "[0, 2]")
    assert (rows["top_p"].type, rows["top_p"].range) == ("number", "(0, 1]")
    assert rows["n"].range == "[1, 16]"
    assert rows["stop"].type == "string or array of string" and rows["stop"].range == "length ≤ 4"
    assert rows["modalities"].range == 'one of "text", "image"; length ≥ 1'
    assert rows["image_config.guidance_scale"].range == "[1, 20]"
    assert rows["response_format"].range == "type text | json_object | json_schema"


def test_the_card_part_reads_without_javascript(browser, web_server, script_errors):
    context = browser.new_context(java_script_enabled=False, viewport={"width": 800, "height": 900})
    page = context.new_page()
    page.goto(web_server.url + "/")
    assert page.locator("h1").inner_text() == CARD["name"]
    assert "$7.25 per million tokens" in page.locator("#model").inner_text()
    assert page.locator("#parameters tbody tr").count() > 10
    context.close()


def test_the_browser_shows_the_live_card(page, web_server, screenshot_dir):
    page.goto(web_server.url + "/")
    assert page.locator("h1").inner_text() == CARD["name"]
    model = page.locator("#model").inner_text()
    assert "$7.25 per million tokens" in model and "32,768 tokens" in model
    assert "text, image, file" in model
    temperature = page.locator("#parameters tr", has=page.locator("code", has_text=re.compile("^temperature$")))
    assert "[0, 2]" in temperature.inner_text()
    page.screenshot(path=str(screenshot_dir / "page-tiny.png"))


@pytest.mark.parametrize("path", ["/", "/playground"])
def test_400_px_wide_does_not_scroll_sideways(browser, web_server, path):
    context = browser.new_context(viewport={"width": 400, "height": 800})
    page = context.new_page()
    page.goto(web_server.url + path)
    page.locator("details.options summary").click()  # the options open too
    assert page.evaluate("document.documentElement.scrollWidth") <= 400
    context.close()


def test_serve_says_where_the_page_is(web_server):
    assert f"model page and playground at {web_server.url}/" in web_server.log()
