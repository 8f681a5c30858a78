"""Images and files of a request: from `image_url` / `file` parts to text and decodable images.

    media = MediaReader(settings)
    parts = media.resolve(messages)        # blocking (downloads, base64, PDFs): run it in a thread

`resolve` turns every `ImageRef` / `FileRef` of the parsed messages (chat.py) into content the
prompt can hold: text strings and `InputImage`s. An `InputImage` is NOT decoded here: it has a
content key (sha256 of its bytes) and a `load()` that decodes it, so an image whose encoding is
already cached (encoder.py) is never decoded again.

Images (`image_url.url`): `data:image/{png,jpeg,webp,gif};base64,...` (a GIF or animated WebP
gives its first frame), or an http(s) URL when the server allows it (fetch.py). Decoding checks
the header's width x height against `max_image_pixels` BEFORE any pixel is decoded, refuses
truncated or corrupt data with a 400, and converts to RGB (transparency onto white, as
transformers does); the checkpoint's processor does the rest (processor.py). `detail` (low/high/auto) changes nothing: the model has one input
resolution, so every image becomes the same N tokens whatever `detail` says.

Files (`file.file_data`, a data URL, plain base64, or an allowed http(s) URL; `file.filename`
names it): PDFs (read with pypdfium2: the text of every page, and the first `pdf_image_pages`
pages as images too) and UTF-8 text (text/plain, text/markdown, text/csv, application/json).
In the prompt a file reads

    [file report.pdf: PDF, 2 pages]
    [page 1]
    <image of page 1>
    text of page 1
    ...

Encrypted PDFs (a user password) are refused; a PDF whose cross-reference table is damaged but
whose objects are intact is read (PDFium repairs it, as viewers do); one that cannot be
repaired is a 400.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from PIL import Image, UnidentifiedImageError

from imagemini.models.processor import to_rgb

from .errors import APIError, bad_request
from .fetch import FetchPolicy, fetch
from .settings import ServerSettings

# PIL format name -> what a client calls it
IMAGE_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "GIF": "GIF"}
IMAGE_MIMES = {"image/png", "image/jpeg", "image/jpg", "image/pjpeg", "image/webp", "image/gif"}
SUPPORTED_IMAGES = "PNG, JPEG, WebP, GIF (first frame)"
PDF_MIME = "application/pdf"
TEXT_MIMES = ("text/plain", "text/markdown", "text/csv", "application/json")
FILE_MIMES = (PDF_MIME, *TEXT_MIMES)
EXTENSIONS = {
    ".pdf": PDF_MIME, ".txt": "text/plain", ".text": "text/plain", ".md": "text/markdown",
    ".markdown": "text/markdown", ".csv": "text/csv", ".json": "application/json",
}
MIME_ALIASES = {"text/x-markdown": "text/markdown", "application/x-pdf": PDF_MIME}
GENERIC_MIMES = ("", "application/octet-stream", "binary/octet-stream")
LINE = "\n"

# PDFium is not thread-safe: every call into it holds this lock.
PDFIUM_LOCK = threading.Lock()


# --- what chat.py parses and this module resolves ---------------------------------------------------
@dataclass(frozen=True)
class ImageRef:
    url: str
    detail: str | None
    param: str  # where it is in the request: messages[0].content[1]


@dataclass(frozen=True)
class FileRef:
    filename: str | None
    file_data: str | None
    file_id: str | None
    param: str


@dataclass(eq=False)
class InputImage:
    key: str  # sha256 of what identifies the picture (its bytes; a PDF page: the PDF + page + render size)
    param: str
    load: Callable[[], Image.Image] = field(repr=False)  # decode to RGB; raises APIError (400)


Content = str | InputImage  # resolved content: text, or one image


# --- the reader -------------------------------------------------------------------------------------
class MediaReader:
    def __init__(self, settings: ServerSettings, render_side: int = 768, fetch_policy: FetchPolicy | None = None) -> None:
        self.settings = settings
        self.render_side = render_side  # PDF pages are rendered with their longer side this long
        self._policy = fetch_policy

    def policy(self, what: str) -> FetchPolicy:
        s = self.settings
        base = self._policy or FetchPolicy(max_bytes=0)
        limit, name = (s.max_image_bytes, "max_image_bytes") if what == "image" else (s.max_file_bytes, "max_file_bytes")
        return FetchPolicy(
            max_bytes=limit, timeout_s=s.url_timeout_s, max_redirects=s.url_max_redirects,
            allow_private=s.allow_private_urls, allowed_networks=base.allowed_networks, resolve=base.resolve,
            what=what, limit_name=ServerSettings.env_name(name),
        )

    # --- images ------------------------------------------------------------------------------------
    def image(self, ref: ImageRef) -> InputImage:
        param = f"{ref.param}.image_url.url"
        data, declared = self._bytes(ref.url, "image", param)
        if declared not in GENERIC_MIMES and declared not in IMAGE_MIMES:
            raise bad_request(
                f"{param}: unsupported image type '{declared}'; supported: {SUPPORTED_IMAGES}", param=param, code="invalid_image_format"
            )
        key = hashlib.sha256(b"image\0" + data).hexdigest()
        max_pixels = self.settings.max_image_pixels
        return InputImage(key, param, lambda: decode_image(data, max_pixels, param))

    # --- files -------------------------------------------------------------------------------------
    def file(self, ref: FileRef, images_left: int) -> list[Content]:
        param = f"{ref.param}.file"
        if ref.file_id is not None and ref.file_data is None:
            raise APIError(400, f"{param}.file_id: this server has no Files API; send the content in file_data",
                           param=f"{param}.file_id", code="unsupported_parameter")
        if not ref.file_data:
            raise bad_request(f"{param}.file_data: file_data is required (a data: URL or base64)", param=f"{param}.file_data")
        data_param = f"{param}.file_data"
        data, declared = self._bytes(ref.file_data, "file", data_param)
        mime = file_type(declared, ref.filename)
        name = ref.filename or ("document.pdf" if mime == PDF_MIME else "file")
        if mime == PDF_MIME:
            return self._pdf(data, name, images_left, data_param)
        if mime in TEXT_MIMES:
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError:
                raise bad_request(f"{data_param}: the text file is not valid UTF-8", param=data_param, code="invalid_file") from None
            return [f"[file {name}]{LINE}{text}"]
        shown = declared or "unknown"
        hint = " (send images as image_url parts)" if mime.startswith("image/") else ""
        raise bad_request(
            f"{data_param}: unsupported file type '{shown}'{hint}; supported: {', '.join(FILE_MIMES)}",
            param=data_param, code="invalid_file_format",
        )

    def _pdf(self, data: bytes, name: str, images_left: int, param: str) -> list[Content]:
        pages = read_pdf(data, self.settings.max_pdf_pages, min(self.settings.pdf_image_pages, max(images_left, 0)),
                         self.render_side, param)
        digest = hashlib.sha256(data).hexdigest()
        out: list[Content] = [f"[file {name}: PDF, {len(pages)} page{'s' if len(pages) != 1 else ''}]"]
        for i, (text, picture) in enumerate(pages):
            out.append(f"{LINE}[page {i + 1}]")
            if picture is not None:
                key = hashlib.sha256(f"pdf-page\0{digest}\0{i}\0{self.render_side}".encode()).hexdigest()
                out += [LINE, InputImage(key, param, lambda p=picture: p)]
            if text:
                out.append(LINE + text)
        return out

    # --- bytes of a data URL, plain base64, or a URL ------------------------------------------------
    def _bytes(self, source: str, what: str, param: str) -> tuple[bytes, str]:
        s = self.settings
        limit, name = (s.max_image_bytes, "max_image_bytes") if what == "image" else (s.max_file_bytes, "max_file_bytes")
        scheme = source[:8].lower()
        if scheme.startswith(("http://", "https://")):
            if not s.allow_image_urls:
                raise APIError(
                    400, f"{param}: this server does not fetch URLs (started without --allow-image-urls); "
                    "send the content inline as a base64 data: URL",
                    param=param, code="url_fetch_disabled",
                )
            got = fetch(source, self.policy(what), param)
            if not got.data:
                raise bad_request(f"{param}: the URL returned no data", param=param, code=f"invalid_{what}")
            return got.data, MIME_ALIASES.get(got.content_type, got.content_type)
        if scheme.startswith("data:"):
            mime, payload = parse_data_url(source, param)
        elif what == "file" and source and ":" not in source[:16]:
            mime, payload = "", source  # OpenAI-style raw base64 file_data: the filename gives the type
        else:
            shown = source.split(":", 1)[0][:16] if ":" in source[:32] else "none"
            raise bad_request(
                f"{param}: expected a base64 data: URL{' or an http(s) URL' if s.allow_image_urls else ''} "
                f"(got scheme '{shown}')", param=param, code="invalid_url",
            )
        data = b64decode(payload, limit, what, ServerSettings.env_name(name), param)
        return data, MIME_ALIASES.get(mime, mime)


# --- pieces -------------------------------------------------------------------------------------------
def parse_data_url(url: str, param: str) -> tuple[str, str]:
    """`data:<mime>[;params];base64,<payload>` -> (mime, payload). Only base64 data URLs."""
    head, comma, payload = url.partition(",")
    if not comma or len(head) > 256:
        raise bad_request(f"{param}: malformed data: URL (expected data:<type>;base64,<data>)", param=param, code="invalid_url")
    fields = [f.strip().lower() for f in head[len("data:"):].split(";")]
    if "base64" not in fields[1:]:
        raise bad_request(f"{param}: only base64 data: URLs are supported (data:<type>;base64,...)", param=param, code="invalid_url")
    return fields[0], payload


_WHITESPACE = str.maketrans("", "", " \t\r\n")


def b64decode(payload: str, limit: int, what: str, limit_env: str, param: str) -> bytes:
    # Refuse an oversized payload from its length, before spending memory on decoding it.
    if len(payload) // 4 * 3 > limit + 3 * 4096:
        raise _too_large(what, limit, limit_env, param)
    text = payload.translate(_WHITESPACE)
    if len(text) % 4:
        text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{param}: the data is not valid base64", param=param, code="invalid_base64") from None
    if not data:
        raise bad_request(f"{param}: the {what} is empty (0 bytes)", param=param, code=f"invalid_{what}")
    if len(data) > limit:
        raise _too_large(what, limit, limit_env, param)
    return data


def _too_large(what: str, limit: int, limit_env: str, param: str) -> APIError:
    return APIError(413, f"{param}: the {what} is larger than {limit} bytes ({limit_env})", param=param, code=f"{what}_too_large")


def file_type(declared: str, filename: str | None) -> str:
    """The declared media type, or (when it is missing or generic) the one the file name implies."""
    if declared and declared not in GENERIC_MIMES:
        return declared
    return EXTENSIONS.get(PurePosixPath(filename or "").suffix.lower(), declared)


def decode_image(data: bytes, max_pixels: int, param: str) -> Image.Image:
    """PNG/JPEG/WebP/GIF bytes -> an RGB image (first frame). The size is checked from the header
    before decoding; every decoding failure is a 400."""
    try:
        image = Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS))
    except Image.DecompressionBombError:
        raise _pixels_error(None, max_pixels, param) from None
    except UnidentifiedImageError:
        raise bad_request(
            f"{param}: the data is not a {SUPPORTED_IMAGES} image (or is corrupt)", param=param, code="invalid_image"
        ) from None
    except Exception as exc:  # a header PIL could not parse: SyntaxError, OSError, struct.error, ...
        raise _corrupt(exc, param) from None
    with image:
        width, height = image.size
        if width < 1 or height < 1:
            raise bad_request(f"{param}: the image has no pixels ({width}x{height})", param=param, code="invalid_image")
        if width * height > max_pixels:
            raise _pixels_error((width, height), max_pixels, param)
        try:
            image.load()  # the first frame only
            return to_rgb(image)
        except Exception as exc:  # truncated, corrupt (OSError, SyntaxError, zlib.error, EOFError, ...)
            raise _corrupt(exc, param) from None


def _corrupt(exc: Exception, param: str) -> APIError:
    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return bad_request(f"{param}: the image could not be decoded (truncated or corrupt: {reason})", param=param, code="invalid_image")


def _pixels_error(size: tuple[int, int] | None, max_pixels: int, param: str) -> APIError:
    shown = f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels" if size else "far too many pixels"
    return bad_request(
        f"{param}: the image has {shown}, more than the limit of {max_pixels} (IMAGEMINI_MAX_IMAGE_PIXELS)",
        param=param, code="image_too_large",
    )


def read_pdf(data: bytes, max_pages: int, image_pages: int, render_side: int, param: str) -> list[tuple[str, Image.Image | None]]:
    """(text, page image or None) per page; the first `image_pages` pages are rendered."""
    try:
        import pypdfium2 as pdfium
    except ImportError:  # pragma: no cover - a dependency of the package
        raise APIError(400, f"{param}: PDF support is not installed on this server (pypdfium2)", param=param,
                       code="unsupported_parameter") from None
    if not data.lstrip()[:5] == b"%PDF-":
        raise bad_request(f"{param}: the data is not a PDF (no %PDF- header)", param=param, code="invalid_file")
    with PDFIUM_LOCK:
        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            if "password" in str(exc).lower():
                raise bad_request(f"{param}: the PDF is encrypted (password-protected); send it decrypted",
                                  param=param, code="encrypted_file") from None
            raise bad_request(f"{param}: the PDF could not be read (corrupt or truncated)", param=param, code="invalid_file") from None
        try:
            count = len(pdf)
            if count < 1:
                raise bad_request(f"{param}: the PDF has no pages", param=param, code="invalid_file")
            if count > max_pages:
                raise bad_request(
                    f"{param}: the PDF has {count} pages, more than the limit of {max_pages} (IMAGEMINI_MAX_PDF_PAGES)",
                    param=param, code="too_many_pages",
                )
            pages = []
            for i in range(count):
                page = pdf[i]
                try:
                    textpage = page.get_textpage()
                    text = textpage.get_text_range().replace("\r\n", "\n").replace("\r", "\n").strip()
                    textpage.close()
                    picture = _render(page, render_side) if i < image_pages else None
                finally:
                    page.close()
                pages.append((text, picture))
            return pages
        except APIError:
            raise
        except Exception:  # PdfiumError on a damaged page, or anything pdfium trips on
            raise bad_request(f"{param}: the PDF could not be read (corrupt page data)", param=param, code="invalid_file") from None
        finally:
            pdf.close()


def _render(page, side: int) -> Image.Image | None:
    width, height = page.get_size()  # points
    if not (width > 0 and height > 0):
        return None
    scale = side / max(width, height)
    if min(width, height) * scale < 1:
        return None  # a sliver: nothing to see
    return page.render(scale=scale).to_pil().convert("RGB")
