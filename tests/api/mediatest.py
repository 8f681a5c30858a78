"""Builders of the images, PDFs and malformed inputs the image/file API tests send.

    png_bytes("red")                       # a small valid PNG
    data_url(png_bytes("red"))             # data:image/png;base64,...
    make_pdf(["page one text", "page two"]) # a tiny, valid, hand-written PDF (Helvetica text)
    png_bomb()                             # a real 8000x7000 PNG of a few KB (56 megapixels)
"""

from __future__ import annotations

import base64
import io
import struct
import zlib

from PIL import Image


def png_bytes(color="red", size=(32, 32), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return buffer.getvalue()


def image_bytes(fmt: str, color="red", size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def pattern_png(seed: int, size=(48, 40)) -> bytes:
    """A noisy picture: different seeds give clearly different images."""
    import random

    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_part(data: bytes, mime: str = "image/png", **extra) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(data, mime), **extra}}


def file_part(data: bytes, filename: str | None, mime: str = "application/pdf") -> dict:
    file = {"file_data": data_url(data, mime)}
    if filename is not None:
        file["filename"] = filename
    return {"type": "file", "file": file}


def png_bomb(width: int = 8000, height: int = 7000) -> bytes:
    """A genuine, fully decodable 1-bit PNG: 56 megapixels in a few kilobytes."""
    buffer = io.BytesIO()
    Image.new("1", (width, height), 0).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, followed by a tiny (wrong) image stream."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def corrupt_idat(png: bytes) -> bytes:
    """The PNG with its compressed pixel data scrambled (CRCs recomputed, so only zlib fails)."""
    out, at = bytearray(png[:8]), 8
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind, body = png[at + 4 : at + 8], bytearray(png[at + 8 : at + 8 + length])
        if kind == b"IDAT":
            for i in range(2, len(body)):
                body[i] ^= 0x5A
        out += struct.pack(">I", length) + kind + body + struct.pack(">I", zlib.crc32(kind + bytes(body)) & 0xFFFFFFFF)
        at += 12 + length
    return bytes(out)


def make_pdf(pages: list[str], encrypt: bool = False) -> bytes:
    """A minimal valid PDF: one Helvetica text line per page (latin-1 text, no parentheses)."""
    objs = {1: b"<< /Type /Catalog /Pages 2 0 R >>", 3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"}
    kids, n = [], 4
    for text in pages:
        stream = b"BT /F1 12 Tf 20 50 Td (" + text.encode("latin-1") + b") Tj ET"
        objs[n] = (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 100] "
                   b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (n + 1))
        objs[n + 1] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
        kids.append(n)
        n += 2
    objs[2] = b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % k for k in kids) + b"] /Count %d >>" % len(kids)
    trailer = b""
    if encrypt:  # Standard security handler whose user password is not empty
        objs[n] = b"<< /Filter /Standard /V 1 /R 2 /O <" + b"11" * 32 + b"> /U <" + b"22" * 32 + b"> /P -4 >>"
        trailer = b" /Encrypt %d 0 R /ID [<00112233445566778899aabbccddeeff> <00112233445566778899aabbccddeeff>]" % n
    out, offsets = bytearray(b"%PDF-1.4\n"), {}
    for i in sorted(objs):
        offsets[i] = len(out)
        out += b"%d 0 obj\n" % i + objs[i] + b"\nendobj\n"
    xref, size = len(out), max(objs) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for i in range(1, size):
        out += b"%010d 00000 n \n" % offsets[i]
    out += b"trailer\n<< /Size %d /Root 1 0 R" % size + trailer + b" >>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def pdf_broken_xref_repairable() -> bytes:
    """Wrong xref offsets but intact objects: PDFium rebuilds the table (as viewers do)."""
    return make_pdf(["Repaired text"]).replace(b" 00000 n", b" 00000 q")


def pdf_broken_xref_unrecoverable() -> bytes:
    """An xref and trailer pointing at a catalog that is not there."""
    return (b"%PDF-1.4\nxref\n0 2\n0000000000 65535 f \n0000000999 00000 n \n"
            b"trailer\n<< /Size 2 /Root 1 0 R >>\nstartxref\n9\n%%EOF\n")
