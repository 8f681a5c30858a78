"""What the routes share: the engine, the model card, the limits, and the server's lifecycle.

    state = ServerState.build(model_dir, async_engine, settings, api_keys)
    app.state.server = state          # routes read it from request.app.state.server

Shutdown: `begin_drain()` (on SIGTERM/SIGINT) stops new requests (503 + Retry-After) and gives
running ones `settings.shutdown_grace_s` to finish; the engine then aborts the rest, which
ends their streams with an error chunk (and non-streams with 503) instead of a cut connection.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from imagemini.engine.async_engine import AsyncEngine
from imagemini.models.config import JanusConfig
from imagemini.models.processor import Processor
from imagemini.models.tokenizer import Tokenizer

from .chat import PromptEncoder, image_start_ids
from .encoder import EncoderCache, ImageWriter, VisionEncoder
from .errors import APIError, overloaded
from .media import MediaReader
from .model_card import LoadedCard, load_card
from .sampling import ImageOutput, Limits
from .structured import thinking_supported
from .settings import ServerSettings

log = logging.getLogger(__name__)


@dataclass
class ServerState:
    engine: AsyncEngine
    card: LoadedCard
    limits: Limits
    settings: ServerSettings
    api_keys: tuple[str, ...] = ()
    processor: Processor | None = None
    prompts: PromptEncoder | None = None
    media: MediaReader | None = None
    vision: VisionEncoder | None = None
    writer: ImageWriter | None = None
    draining: bool = False
    # Reading media (base64, downloads, PDFs) and encoding images run in worker threads; these
    # bound how many requests do each at once (downloads wait on the network, not the CPU).
    media_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(4), repr=False)
    encode_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2), repr=False)
    _drain_task: asyncio.Task | None = field(default=None, repr=False)

    @classmethod
    def build(cls, model_dir: Path, engine: AsyncEngine, settings: ServerSettings, api_keys: list[str] | None) -> "ServerState":
        tokenizer, model, limits = engine.tokenizer, engine.frontend.model, engine.limits
        max_sequence = min(limits.context_length, limits.kv_budget_tokens)
        special = tokenizer.special
        # Text-only mode: no image span can start, so no image placeholder/end can follow either.
        banned = tuple(t for t in (special.boi, special.eoi, special.image) if t is not None)
        # Image mode: the model may open an image; the engine itself closes it.
        image_banned = tuple(t for t in (special.eoi, special.image) if t is not None)
        card = load_card(model_dir, limits.context_length, max_sequence, reasoning=thinking_supported(tokenizer))
        processor = Processor.from_dir(model_dir, tokenizer)
        limits = Limits(
            max_sequence_tokens=max_sequence,
            default_max_tokens=settings.default_max_tokens,
            vocab_size=tokenizer.vocab_size,
            banned_token_ids=banned,
            image_banned_token_ids=image_banned,
            image=image_output(model_dir, tokenizer, model.cfg, "image" in card.outputs and special.boi is not None),
        )
        return cls(
            engine, card, limits, settings, tuple(api_keys or ()),
            processor=processor,
            prompts=PromptEncoder(tokenizer),
            # PDF pages are also given as images only to a model that takes images.
            media=MediaReader(
                settings if "image" in card.inputs else replace(settings, pdf_image_pages=0),
                render_side=min(2 * processor.image_cfg.size, 2048),
            ),
            vision=VisionEncoder(model, processor, EncoderCache(settings.encoder_cache_bytes)),
            writer=ImageWriter(model),
        )

    # --- per request ------------------------------------------------------------------------------
    def check_key(self, authorization: str | None) -> None:
        if not self.api_keys:
            return
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise _unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
        if not any(hmac.compare_digest(key.strip().encode(), k.encode()) for k in self.api_keys):
            raise _unauthorized("Incorrect API key provided.")

    def check_capacity(self, n: int) -> None:
        """Refuse up front what the engine would refuse, so n choices are admitted all or none."""
        if self.draining:
            raise overloaded("The server is shutting down.", self.settings.retry_after_s)
        pending, limit = self.engine.num_pending, self.engine.max_pending
        if pending + n > limit:
            raise overloaded(
                f"The server is at capacity ({pending} requests in flight, limit {limit}); retry later.",
                self.settings.retry_after_s,
            )

    def health(self) -> dict[str, Any]:
        engine, stats = self.engine, self.engine.stats
        return {
            "status": "engine_stopped" if engine.dead else "draining" if self.draining else "ok",
            "model": self.card.id,
            "system_fingerprint": engine.system_fingerprint,
            "pending": engine.num_pending,  # requests in flight (queued + running)
            "max_pending": engine.max_pending,
            # As of the engine's last step that produced output:
            "running": stats.running,
            "waiting": stats.waiting,
            "kv_cache": {"used_tokens": stats.kv_used_tokens, "budget_tokens": engine.limits.kv_budget_tokens},
            "encoder_cache": self.vision.cache.stats() if self.vision is not None else None,
        }

    # --- lifecycle --------------------------------------------------------------------------------
    def begin_drain(self) -> None:
        if self._drain_task is None:
            self.draining = True
            self._drain_task = asyncio.ensure_future(self.engine.shutdown(self.settings.shutdown_grace_s))

    async def finish_drain(self) -> None:
        self.begin_drain()
        await self._drain_task


def image_output(model_dir: Path, tokenizer: Tokenizer, config: JanusConfig, enabled: bool) -> ImageOutput:
    """The checkpoint's image output and its defaults from generation_config.json:
    guidance_scale, temperature, top_p (image sampling), and imagemini's own
    image_start_after_prompt (bool) / image_start_prefix (text before begin-of-image)."""
    path = Path(model_dir) / "generation_config.json"
    try:
        gen = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        log.warning("%s is not valid JSON: image defaults ignored", path)
        gen = {}

    def number(key: str, low: float, high: float) -> float | None:
        value = gen.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return min(max(float(value), low), high)
        return None

    prefix = gen.get("image_start_prefix")
    return ImageOutput(
        enabled=enabled,
        num_tokens=config.vq.num_patches**2,
        resolution=config.image_resolution,
        guidance_scale=number("guidance_scale", 1.0, 20.0) or 5.0,
        temperature=number("temperature", 0.0, 2.0),
        top_p=number("top_p", 1e-6, 1.0),
        start_after_prompt=bool(gen.get("image_start_after_prompt", False)),
        start_ids=tuple(image_start_ids(tokenizer, prefix if isinstance(prefix, str) else None)) if enabled else (),
    )


def _unauthorized(message: str) -> APIError:
    return APIError(
        401, message, type="authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
    )


def on_shutdown_signal(callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` on the event loop when SIGTERM/SIGINT arrives, then the server's own handler.

    uvicorn waits for open connections before it tells the app (lifespan) to stop, so the app
    must hear the signal itself to end long streams cleanly within the graceful timeout. Only
    a Python-level handler (uvicorn's) is chained; without one nothing is installed. Returns a
    function that restores the previous handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        old = signal.getsignal(sig)
        if not callable(old) or old is signal.default_int_handler:
            continue

        def handler(signum: int, frame: Any, old: Callable = old) -> None:
            loop.call_soon_threadsafe(callback)
            old(signum, frame)

        previous[sig] = old
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
