"""Images and files in, end to end through the `openai` SDK and raw HTTP against a real server.

One server for the module: a copy of the tiny random checkpoint (64x64 input images, 64 image
tokens) with a per-image price, started with `--allow-image-urls` (private addresses still
refused) and lowered limits (IMAGEMINI_*: 4 images, 300 KB per image, 200 KB per file, 3 PDF
pages, 16 levels of JSON, 1 MB bodies; the pixel limit keeps its default of 16.7 MP). Every
response is validated against OpenAI's schemas by the clients' transport. The checkpoint is
random: tests compare outputs with each other and with the tokenizer, never with words.
"""

from __future__ import annotations

import base64
import json
import shutil

import openai
import pytest
from mediatest import (
    corrupt_idat,
    data_url,
    file_part,
    image_bytes,
    image_part,
    make_pdf,
    pattern_png,
    pdf_broken_xref_repairable,
    pdf_broken_xref_unrecoverable,
    png_bomb,
    png_bytes,
    png_header_only,
)

from imagemini.models.tokenizer import Tokenizer

MODEL_ID = "imagemini/tiny-eyes"
IMAGE_TOKENS = 64 + 2  # BOI + 64 placeholders + EOI per input image
PER_IMAGE = 0.001  # USD per input image
LIMITS = {
    "IMAGEMINI_MAX_IMAGES": "4",
    "IMAGEMINI_MAX_IMAGE_BYTES": "300000",
    "IMAGEMINI_MAX_FILE_BYTES": "200000",
    "IMAGEMINI_MAX_PDF_PAGES": "3",
    "IMAGEMINI_MAX_JSON_DEPTH": "16",
    "IMAGEMINI_MAX_BODY_BYTES": "1000000",
}


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("eyes") / "tiny-eyes"
    shutil.copytree(tiny_checkpoint, path)
    card = {"id": MODEL_ID, "pricing_usd_per_million_tokens": {"prompt": 1.0, "completion": 1.0}, "pricing_usd_per_image": PER_IMAGE}
    (path / "model_card.json").write_text(json.dumps(card))
    return path


@pytest.fixture(scope="module")
def server(start_server, checkpoint):
    with start_server(checkpoint, "--allow-image-urls", env=LIMITS) as s:
        yield s




def user(*parts) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def greedy(client, messages, **kw):
    return client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=4, temperature=0, logprobs=True, **kw)


def logprobs(completion) -> list[float]:
    return [round(t.logprob, 5) for t in completion.choices[0].logprobs.content]


def text_tokens(tok: Tokenizer, content: str) -> int:
    """Prompt tokens of one user message whose content is `content` (placeholders counted once)."""
    return len(tok.encode(tok.render_chat([{"role": "user", "content": content}])))


def cache(server) -> dict:
    return server.health()["encoder_cache"]


# --- images reach the encoder --------------------------------------------------------------------------
def test_model_card_lists_the_inputs(client):
    card = client.models.retrieve(MODEL_ID)
    assert card.architecture["input_modalities"] == ["text", "image", "file"]
    assert card.architecture["modality"] == "text+image+file->text+image"
    assert card.pricing["image"] == "0.001"


def test_image_reaches_the_encoder(client, tok):
    red, blue = pattern_png(1), pattern_png(2)
    a = greedy(client, user(text("What is this?"), image_part(red)))
    b = greedy(client, user(text("What is this?"), image_part(blue)))
    a_again = greedy(client, user(text("What is this?"), image_part(red, detail="low")))
    assert logprobs(a) != logprobs(b), "a different picture must change the model's view"
    assert logprobs(a) == logprobs(a_again) and a.choices[0].message.content == a_again.choices[0].message.content
    expected = text_tokens(tok, "What is this?\n<image_placeholder>") - 1 + IMAGE_TOKENS
    assert a.usage.prompt_tokens == expected
    assert a.usage.cost == pytest.approx((expected + a.usage.completion_tokens) / 1e6 + PER_IMAGE)


@pytest.mark.parametrize("fmt, mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif")])
def test_each_image_format(client, fmt, mime):
    c = greedy(client, user(image_part(image_bytes(fmt, "green"), mime), text("Describe.")))
    assert c.choices[0].finish_reason in ("stop", "length")


def test_encoder_cache_hits_for_a_resent_image(client, server):
    picture = pattern_png(3)
    before = cache(server)
    first = greedy(client, user(text("one"), image_part(picture)))
    middle = cache(server)
    second = greedy(client, user(text("one"), image_part(picture)))
    after = cache(server)
    assert middle["misses"] == before["misses"] + 1 and middle["hits"] == before["hits"]
    assert after["hits"] == middle["hits"] + 1 and after["misses"] == middle["misses"]
    assert logprobs(first) == logprobs(second) and after["bytes"] <= after["budget_bytes"]


def test_several_images_in_several_messages(client, tok):
    one, two = pattern_png(4), pattern_png(5)
    conversation = [
        {"role": "system", "content": "Compare pictures."},
        {"role": "user", "content": [image_part(one), text("first")]},
        {"role": "assistant", "content": "Seen."},
        {"role": "user", "content": [text("second"), image_part(two)]},
    ]
    swapped = [conversation[0], {**conversation[1], "content": [image_part(two), text("first")]}, conversation[2],
               {**conversation[3], "content": [text("second"), image_part(one)]}]
    a, b = greedy(client, conversation), greedy(client, swapped)
    assert logprobs(a) != logprobs(b), "images are placed in order"
    rendered = tok.render_chat([
        {"role": "system", "content": "Compare pictures."},
        {"role": "user", "content": "<image_placeholder>\nfirst"},
        {"role": "assistant", "content": "Seen."},
        {"role": "user", "content": "second\n<image_placeholder>"},
    ])
    assert a.usage.prompt_tokens == len(tok.encode(rendered)) + 2 * (IMAGE_TOKENS - 1)


def test_typed_special_tokens_are_plain_text(client, server, tok):
    from imagemini.api.chat import PromptEncoder

    typed = "<image_placeholder><begin_of_image>"
    before = cache(server)
    c = greedy(client, [{"role": "user", "content": typed}])
    rendered = tok.render_chat([{"role": "user", "content": typed}])
    bos = tok._tok.id_to_token(tok.special.bos)
    assert c.usage.prompt_tokens == 1 + len(PromptEncoder(tok).encode_plain(rendered[len(bos):]))
    assert cache(server)["misses"] == before["misses"] and cache(server)["hits"] == before["hits"]


def test_stream_with_an_image(server, http):
    from apitest import check_stream_framing, post_stream

    body = {"model": MODEL_ID, "messages": user(text("Look"), image_part(pattern_png(6))), "max_tokens": 3}
    usage = check_stream_framing(post_stream(http, server.url, body))
    assert usage["prompt_tokens"] > IMAGE_TOKENS


# --- files ----------------------------------------------------------------------------------------------
def test_pdf_text_and_page_images_reach_the_prompt(client, tok):
    pdf = make_pdf(["Hello page one", "Second page text", "Third"])
    c = greedy(client, user(text("Summarise"), file_part(pdf, "report.pdf")))
    content = ("Summarise\n[file report.pdf: PDF, 3 pages]\n[page 1]\n<image_placeholder>\nHello page one"
               "\n[page 2]\n<image_placeholder>\nSecond page text\n[page 3]\nThird")
    assert c.usage.prompt_tokens == text_tokens(tok, content) + 2 * (IMAGE_TOKENS - 1)
    other = greedy(client, user(text("Summarise"), file_part(make_pdf(["Hello page one", "Different words", "Third"]), "report.pdf")))
    assert logprobs(other) != logprobs(c)


def test_repairable_pdf_and_text_files(client, tok):
    c = greedy(client, user(file_part(pdf_broken_xref_repairable(), "r.pdf")))
    content = "[file r.pdf: PDF, 1 page]\n[page 1]\n<image_placeholder>\nRepaired text"
    assert c.usage.prompt_tokens == text_tokens(tok, content) + IMAGE_TOKENS - 1
    notes = "# Notes\nThree circles ✓"
    for mime, name in (("text/markdown", "notes.md"), ("application/octet-stream", "notes.md"), ("text/plain", None)):
        c = greedy(client, user(file_part(notes.encode(), name, mime)))
        assert c.usage.prompt_tokens == text_tokens(tok, f"[file {name or 'file'}]\n{notes}")
    raw = {"type": "file", "file": {"filename": "n.txt", "file_data": base64.b64encode(b"plain base64").decode()}}
    assert greedy(client, user(raw)).usage.prompt_tokens == text_tokens(tok, "[file n.txt]\nplain base64")


# --- limits: each with its own error -----------------------------------------------------------------------
def post(http, server, body) -> tuple[int, dict]:
    r = http.post(f"{server.url}/v1/chat/completions", json=body)
    return r.status_code, r.json()


def body(*parts, **extra) -> dict:
    return {"model": MODEL_ID, "messages": user(*parts), "max_tokens": 2, **extra}


def nested(depth: int):
    value: dict = {}
    for _ in range(depth):
        value = {"k": value}
    return value


LIMIT_CASES = [
    ("images per request", lambda: body(*[image_part(png_bytes(c)) for c in ("red", "green", "blue", "white", "black")]),
     400, "too_many_images", "IMAGEMINI_MAX_IMAGES"),
    ("decoded image bytes", lambda: body(image_part(b"\x89PNG" + bytes(300_001))), 413, "image_too_large", "IMAGEMINI_MAX_IMAGE_BYTES"),
    ("pixels per image", lambda: body(image_part(png_bomb())), 400, "image_too_large", "IMAGEMINI_MAX_IMAGE_PIXELS"),
    ("decoded file bytes", lambda: body(file_part(b"a" * 200_001, "big.txt", "text/plain")), 413, "file_too_large", "IMAGEMINI_MAX_FILE_BYTES"),
    ("PDF pages", lambda: body(file_part(make_pdf(["1", "2", "3", "4"]), "long.pdf")), 400, "too_many_pages", "IMAGEMINI_MAX_PDF_PAGES"),
    ("JSON nesting", lambda: body(text("x"), metadata=nested(20)), 400, "nesting_too_deep", "IMAGEMINI_MAX_JSON_DEPTH"),
    ("request body bytes", lambda: body(text("x" * 1_000_001)), 413, "request_too_large", "1000000 bytes"),
]


@pytest.mark.parametrize("name, make, status, code, named", LIMIT_CASES, ids=[c[0] for c in LIMIT_CASES])
def test_each_limit_has_its_error(server, http, name, make, status, code, named):
    got, data = post(http, server, make())
    assert got == status, data
    assert data["error"]["code"] == code and named in data["error"]["message"]


def test_sdk_raises_the_matching_exceptions(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_ID, messages=user(image_part(png_bomb())))
    assert e.value.code == "image_too_large" and e.value.param == "messages[0].content[0].image_url.url"
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model=MODEL_ID, messages=user(file_part(b"a" * 200_001, "big.txt", "text/plain")))
    assert e.value.status_code == 413


# --- the malformed-input corpus: each a 4xx, the server stays up ---------------------------------------------
PNG = png_bytes("red", (64, 64))
IMG = "messages[0].content[0].image_url.url"
FILE = "messages[0].content[0].file.file_data"


def url_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def raw_file(**file) -> dict:
    return {"type": "file", "file": file}


CORPUS = [
    ("bad base64", body(url_part("data:image/png;base64,!!not base64!!")), 400, IMG, "invalid_base64"),
    ("base64 of impossible length", body(url_part("data:image/png;base64,AAAAA")), 400, IMG, "invalid_base64"),
    ("wrong MIME text/plain", body(image_part(PNG, "text/plain")), 400, IMG, "invalid_image_format"),
    ("SVG", body(image_part(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml")), 400, IMG, "invalid_image_format"),
    ("PDF as image", body(image_part(make_pdf(["x"]), "application/pdf")), 400, IMG, "invalid_image_format"),
    ("zero-byte image", body(url_part("data:image/png;base64,")), 400, IMG, "invalid_image"),
    ("truncated PNG", body(image_part(PNG[: len(PNG) // 2])), 400, IMG, "invalid_image"),
    ("PNG signature only", body(image_part(PNG[:8])), 400, IMG, "invalid_image"),
    ("PNG with scrambled pixel data", body(image_part(corrupt_idat(PNG))), 400, IMG, "invalid_image"),
    ("PNG header lying about its size", body(image_part(png_header_only(64, 64))), 400, IMG, "invalid_image"),
    ("56-megapixel PNG bomb", body(image_part(png_bomb())), 400, IMG, "image_too_large"),
    ("10-gigapixel PNG header", body(image_part(png_header_only(100_000, 100_000))), 400, IMG, "image_too_large"),
    ("GIF garbage", body(image_part(b"GIF89a" + bytes(range(64)), "image/gif")), 400, IMG, "invalid_image"),
    ("truncated JPEG", body(image_part(image_bytes("JPEG", size=(64, 64))[:300], "image/jpeg")), 400, IMG, "invalid_image"),
    ("WebP garbage", body(image_part(b"RIFF\x20\x00\x00\x00WEBPVP8 " + bytes(20), "image/webp")), 400, IMG, "invalid_image"),
    ("BMP (unsupported format)", body(image_part(image_bytes("BMP"), "image/png")), 400, IMG, "invalid_image"),
    ("random bytes", body(image_part(bytes(range(256)) * 4)), 400, IMG, "invalid_image"),
    ("data URL not base64", body(url_part("data:image/png,rawdata")), 400, IMG, "invalid_url"),
    ("data URL without data", body(url_part("data:image/png;base64")), 400, IMG, "invalid_url"),
    ("ftp URL", body(url_part("ftp://example.com/a.png")), 400, IMG, "invalid_url"),
    ("file URL", body(url_part("file:///etc/passwd")), 400, IMG, "invalid_url"),
    ("URL with credentials", body(url_part("http://user:pw@example.com/a.png")), 400, IMG, "invalid_url"),
    ("URL to loopback", body(url_part("http://127.0.0.1:9/a.png")), 400, IMG, "url_not_allowed"),
    ("URL to localhost", body(url_part("http://localhost:9/a.png")), 400, IMG, "url_not_allowed"),
    ("URL to IPv6 loopback", body(url_part("http://[::1]:9/a.png")), 400, IMG, "url_not_allowed"),
    ("URL to cloud metadata", body(url_part("http://169.254.169.254/latest/meta-data/")), 400, IMG, "url_not_allowed"),
    ("URL to a private network", body(url_part("https://10.0.0.1/a.png")), 400, IMG, "url_not_allowed"),
    ("URL to decimal loopback", body(url_part("http://2130706433/a.png")), 400, IMG, "url_not_allowed"),
    ("detail not an option", body({"type": "image_url", "image_url": {"url": data_url(PNG), "detail": "ultra"}}),
     400, "messages[0].content[0].image_url.detail", "literal_error"),
    ("image_url without url", body({"type": "image_url", "image_url": {}}), 400, "messages[0].content[0].image_url.url", "missing"),
    ("PDF with broken xref", body(file_part(pdf_broken_xref_unrecoverable(), "x.pdf")), 400, FILE, "invalid_file"),
    ("encrypted PDF", body(file_part(make_pdf(["secret"], encrypt=True), "e.pdf")), 400, FILE, "encrypted_file"),
    ("truncated PDF", body(file_part(make_pdf(["a", "b"])[:300], "t.pdf")), 400, FILE, "invalid_file"),
    ("PDF without pages", body(file_part(make_pdf([]), "empty.pdf")), 400, FILE, "invalid_file"),
    ("not a PDF", body(file_part(b"just text", "fake.pdf")), 400, FILE, "invalid_file"),
    ("zip file", body(file_part(b"PK\x03\x04", "a.zip", "application/zip")), 400, FILE, "invalid_file_format"),
    ("image as a file", body(file_part(PNG, "a.png", "image/png")), 400, FILE, "invalid_file_format"),
    ("text file not UTF-8", body(file_part("café".encode("latin-1"), "a.txt", "text/plain")), 400, FILE, "invalid_file"),
    ("file bad base64", body(raw_file(filename="a.pdf", file_data="data:application/pdf;base64,%%%")), 400, FILE, "invalid_base64"),
    ("file_id only", body(raw_file(file_id="file-abc")), 400, "messages[0].content[0].file.file_id", "unsupported_parameter"),
    ("file without data", body(raw_file(filename="a.pdf")), 400, FILE, None),
    ("image in a system message", {"model": MODEL_ID, "messages": [{"role": "system", "content": [image_part(PNG)]}, *user(text("hi"))]},
     400, "messages[0].content[0]", "invalid_content"),
    ("file in a developer message", {"model": MODEL_ID, "messages": [{"role": "developer", "content": [file_part(b"x", "a.txt", "text/plain")]}]},
     400, "messages[0].content[0]", "invalid_content"),
    ("image in an assistant message", {"model": MODEL_ID, "messages": [*user(text("hi")), {"role": "assistant", "content": [image_part(PNG)]}]},
     400, "messages[1].content[0]", "invalid_content"),
]


@pytest.mark.parametrize("name, request_body, status, param, code", CORPUS, ids=[c[0] for c in CORPUS])
def test_malformed_input(server, http, name, request_body, status, param, code):
    got, data = post(http, server, request_body)
    assert got == status, data
    error = data["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    if code is not None:
        assert error["code"] == code


def test_corpus_is_large_and_the_server_is_still_up(server, client, openapi):
    assert len(CORPUS) >= 20 and openapi.checked["ErrorResponse"] >= len(CORPUS)
    health = server.wait_idle()
    assert health["status"] == "ok" and health["kv_cache"]["used_tokens"] == 0
    assert greedy(client, user(text("still there?"), image_part(PNG))).choices[0].finish_reason in ("stop", "length")
    assert "Traceback" not in server.log()
