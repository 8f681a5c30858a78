"""The playground in Chromium against a real server on the tiny random checkpoint: text streams
in, a drawn picture is a PNG <img>, attachments reach the server, Stop frees the KV cache, and
the API's own error messages are shown. Its answers are noise; every path is real."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from mediatest import make_pdf, pattern_png
from PIL import Image
from webtest import CARD

KEY = "sk-playground"


def open_playground(page, server, **options: str) -> None:
    page.goto(server.url + "/")
    page.locator("details.options summary").click()
    for name, value in options.items():
        if name == "modalities":
            page.select_option("#modalities", value)
        else:
            page.fill(f"#{name}", value)


def send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.click("#send")


def wait_done(page) -> None:
    """Until the answer's turn has finished (Send is enabled again)."""
    page.wait_for_function("() => !document.getElementById('send').disabled && document.querySelector('.turn.assistant')")


def last_answer(page):
    return page.locator(".turn.assistant").last


def test_a_typed_prompt_streams_into_the_page(page, web_server):
    open_playground(page, web_server, seed="5", max_tokens="120")
    page.evaluate("""() => {
        window.seenLengths = new Set();
        new MutationObserver(() => {
            const text = document.querySelector('.turn.assistant .text');
            if (text) window.seenLengths.add(text.textContent.length);
        }).observe(document.getElementById('chat'), {subtree: true, childList: true, characterData: true});
    }""")
    with page.expect_request("**/v1/chat/completions") as sent:
        send(page, "Hello there")
    wait_done(page)
    body = sent.value.post_data_json
    assert body["stream"] is True and body["seed"] == 5 and body["messages"] == [{"role": "user", "content": "Hello there"}]
    shown = last_answer(page).locator(".text").inner_text()
    same = httpx.post(f"{web_server.url}/v1/chat/completions", timeout=60,
                      json={**body, "stream": False}).json()["choices"][0]["message"]["content"]
    assert shown == same.strip() and shown
    assert len([n for n in page.evaluate("[...window.seenLengths]") if 0 < n < len(same)]) >= 2, "text arrived in pieces"
    assert "prompt +" in last_answer(page).locator(".usage").inner_text() and "$" in last_answer(page).locator(".usage").inner_text()


def test_a_drawn_picture_is_a_png_image_at_400_px(browser, web_server, script_errors):
    context = browser.new_context(viewport={"width": 400, "height": 800})
    page = context.new_page()
    page.on("pageerror", lambda exc: script_errors.seen.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: script_errors.seen.append(f"console: {msg.text}") if msg.type == "error" else None)
    open_playground(page, web_server, seed="3", modalities="image", max_tokens="70")  # room for one picture
    send(page, "Draw something.")
    wait_done(page)
    picture = last_answer(page).locator(".pictures img")
    assert picture.count() == 1
    src = picture.get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    png = base64.b64decode(src.split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(io.BytesIO(png)).size == (64, 64)
    assert last_answer(page).locator(".pictures a[download$='.png']").get_attribute("href") == src
    assert "image" in last_answer(page).locator(".usage").inner_text()
    assert page.evaluate("document.documentElement.scrollWidth") <= 400
    picture.click()
    assert page.locator("#viewer").is_visible() and page.locator("#viewer-image").get_attribute("src") == src
    page.locator("#viewer button").click()
    assert not page.locator("#viewer").is_visible()
    context.close()
    assert script_errors.unexpected() == []


def test_previews_show_in_place_of_the_picture_until_it_is_done(page, web_server):
    open_playground(page, web_server, seed="3", modalities="image", max_tokens="70")
    page.evaluate("""() => {
        // What the picture's place was given, in order ("preview URL" / "picture URL"), read from
        // the mutation records: a preview replaced within one batch still shows in them.
        window.shown = [];
        new MutationObserver((records) => {
            for (const record of records) {
                const nodes = record.type === 'attributes' ? [record.target] : [...record.addedNodes];
                const imgs = nodes.filter((n) => n.nodeType === 1)
                    .flatMap((n) => [...(n.matches('img') ? [n] : []), ...n.querySelectorAll('img')]);
                for (const img of imgs) {
                    if (!img.closest('.picture') || !img.getAttribute('src')) continue;
                    const seen = (img.closest('.preview') ? 'preview ' : 'picture ') + img.getAttribute('src');
                    if (!window.shown.includes(seen)) window.shown.push(seen);
                }
            }
        }).observe(document.getElementById('chat'), {subtree: true, childList: true, attributes: true,
                                                      attributeFilter: ['src']});
    }""")
    with page.expect_request("**/v1/chat/completions") as sent:
        send(page, "Draw something.")
    wait_done(page)
    assert sent.value.post_data_json["image_config"] == {"partial_images": 3}
    assert last_answer(page).get_attribute("data-preview-renders") == "3"
    kinds = [seen.split(" ")[0] for seen in page.evaluate("window.shown")]
    assert "preview" in kinds and kinds[-1] == "picture" and kinds.index("picture") > kinds.index("preview")
    assert all(seen.split(" ")[1].startswith("data:image/png;base64,") for seen in page.evaluate("window.shown"))
    assert last_answer(page).locator(".pictures img").count() == 1
    assert last_answer(page).locator(".pictures .preview").count() == 0


def test_an_attached_image_and_pdf_reach_the_server(page, web_server):
    picture, pdf = pattern_png(7), make_pdf(["The quarterly report."])
    open_playground(page, web_server, max_tokens="4")
    page.set_input_files("#attach", files=[
        {"name": "shapes.png", "mimeType": "image/png", "buffer": picture},
        {"name": "report.pdf", "mimeType": "application/pdf", "buffer": pdf},
    ])
    page.wait_for_selector("#attachments .chip >> nth=1")  # both read (FileReader is asynchronous)
    assert page.locator("#attachments .chip").count() == 2
    misses = web_server.health()["encoder_cache"]["misses"]
    with page.expect_request("**/v1/chat/completions") as sent:
        send(page, "What is this?")
    wait_done(page)
    image_part, file_part, text_part = sent.value.post_data_json["messages"][0]["content"]
    assert base64.b64decode(image_part["image_url"]["url"].split(",", 1)[1]) == picture
    assert file_part["file"]["filename"] == "report.pdf"
    assert base64.b64decode(file_part["file"]["file_data"].split(",", 1)[1]) == pdf
    assert text_part == {"type": "text", "text": "What is this?"}
    assert web_server.health()["encoder_cache"]["misses"] > misses  # the server encoded the picture
    assert last_answer(page).locator(".usage").count() == 1


def test_a_dropped_image_is_attached(page, web_server):
    picture = pattern_png(8)
    open_playground(page, web_server, max_tokens="4")
    transfer = page.evaluate_handle("""(b64) => {
        const transfer = new DataTransfer();
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        transfer.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
        return transfer;
    }""", base64.b64encode(picture).decode())
    page.dispatch_event("#composer", "drop", {"dataTransfer": transfer})
    page.wait_for_selector("#attachments .chip")
    with page.expect_request("**/v1/chat/completions") as sent:
        send(page, "And this?")
    wait_done(page)
    url = sent.value.post_data_json["messages"][0]["content"][0]["image_url"]["url"]
    assert base64.b64decode(url.split(",", 1)[1]) == picture


def test_stop_aborts_and_the_server_frees_the_kv_cache(page, web_server):
    open_playground(page, web_server, temperature="0", max_tokens="20000")
    send(page, "Tell me a long story.")
    page.wait_for_function("() => (document.querySelector('.turn.assistant .text') || {textContent: ''}).textContent.length > 20")
    busy = web_server.health()
    assert busy["pending"] == 1 and busy["kv_cache"]["used_tokens"] > 0
    page.click("#stop")
    idle = web_server.wait_idle()
    assert idle["pending"] == idle["running"] == 0 and idle["kv_cache"]["used_tokens"] == 0
    wait_done(page)
    assert last_answer(page).locator(".status").inner_text() == "stopped"
    assert last_answer(page).locator(".usage").count() == 0  # the stream never finished


def test_the_apis_error_message_is_shown(page, web_server, script_errors):
    script_errors.expect("status of 400")  # the browser logs the refused request it was asked to make
    schema = '{"type": "object", "properties": {"a": {"type": "nonsense"}}}'
    open_playground(page, web_server, schema=schema)
    with page.expect_request("**/v1/chat/completions") as sent:
        send(page, "Hi")
    wait_done(page)
    expected = httpx.post(f"{web_server.url}/v1/chat/completions", json=sent.value.post_data_json, timeout=30)
    assert expected.status_code == 400
    assert last_answer(page).locator(".error-message").inner_text() == expected.json()["error"]["message"]


@pytest.fixture(scope="module")
def keyed_server(start_server, web_checkpoint):
    with start_server(web_checkpoint, "--api-key", KEY) as server:
        yield server


def test_the_api_key_is_sent_and_kept_in_this_browser(page, keyed_server, script_errors):
    script_errors.expect("status of 401")  # the browser logs the refused request it was asked to make
    open_playground(page, keyed_server, max_tokens="4")
    send(page, "Hi")
    wait_done(page)
    assert last_answer(page).locator(".error-message").inner_text() == "Missing API key: send 'Authorization: Bearer <key>'."
    page.fill("#api-key", KEY)
    with page.expect_request("**/v1/chat/completions") as sent:
        send(page, "Hi again")
    wait_done(page)
    assert sent.value.headers["authorization"] == f"Bearer {KEY}"
    assert last_answer(page).locator(".usage").count() == 1
    assert page.evaluate("localStorage.getItem('imagemini.apiKey')") == KEY
    page.reload()
    assert page.input_value("#api-key") == KEY
    assert page.locator("h1").inner_text() == CARD["name"]


def test_reasoning_shows_in_a_collapsed_block(page, web_server):
    open_playground(page, web_server, seed="2", max_tokens="80")
    page.select_option("#effort", "low")
    with page.expect_request("**/v1/chat/completions") as sent:
        send(page, "How many circles are there?")
    wait_done(page)
    assert sent.value.post_data_json["reasoning"] == {"effort": "low"}
    block = last_answer(page).locator("details.reasoning")
    assert block.count() == 1 and block.get_attribute("open") is None
    block.locator("summary").click()
    assert block.locator(".text").inner_text().strip()
    assert "reasoning" in last_answer(page).locator(".usage").inner_text()
