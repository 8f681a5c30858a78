"""The web routes (mounted at the root by api/server.py; no API key needed to read them: the
playground's requests carry the key typed into it)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from imagemini.api.errors import APIError

from .page import Example, PageFacts, render_page

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
ASSETS = {"style.css": "text/css; charset=utf-8", "playground.js": "text/javascript; charset=utf-8"}
# Everything the page loads comes from this server; data: and blob: are the pictures.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

web_router = APIRouter()  # documented in /openapi.json (api/openapi.py)


def examples(model_dir: Path) -> list[Example]:
    """model_card.json `examples`: [{"prompt", "modalities"?, "note"?}, ...]; none if absent."""
    path = model_dir / "model_card.json"
    try:
        raw = json.loads(path.read_text()).get("examples", []) if path.exists() else []
        return [Example.from_json(e) for e in raw]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        log.warning("%s: 'examples' is not a list of {prompt, modalities, note}: none shown", path)
        return []


async def _page(request: Request, playground_only: bool) -> HTMLResponse:
    app_state = request.app.state
    needs_key = await app_state.server.access.keys_required()  # keys may come and go with the store
    facts = PageFacts.of(app_state.server, str(request.base_url), examples(app_state.model_dir), needs_key)
    return HTMLResponse(render_page(facts, playground_only), headers=SECURITY_HEADERS)


@web_router.get("/")
async def model_page(request: Request) -> HTMLResponse:
    return await _page(request, playground_only=False)


@web_router.get("/playground")
async def playground(request: Request) -> HTMLResponse:
    return await _page(request, playground_only=True)


@web_router.get("/static/{name}")
async def asset(name: str) -> Response:
    if name not in ASSETS:
        raise APIError(404, f"No asset named '{name}'.", code="not_found")
    return Response((STATIC / name).read_bytes(), media_type=ASSETS[name], headers=SECURITY_HEADERS)
