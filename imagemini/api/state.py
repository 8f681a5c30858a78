"""What the routes share: the engine, the model card, the limits, the model's parts the API uses
(tokenizer, grammar compiler, image encoder and decoder), and the server's lifecycle.

    state = ServerState.build(model_dir, async_engine, settings, api_keys, store)
    app.state.server = state          # routes read it from request.app.state.server
    await state.open_store()          # at start-up: the store's migrations (api/access.py: who may call)

Shutdown: `begin_drain()` (on SIGTERM/SIGINT) stops new requests (503 + Retry-After) and gives
running ones `settings.shutdown_grace_s` to finish; the engine then aborts the rest, which
ends their streams with an error chunk (and non-streams with 503) instead of a cut connection.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from imagemini.engine.async_engine import AsyncEngine
from imagemini.engine.structured import GrammarCompiler
from imagemini.models.image_output import ImageOutput, ImageWriter
from imagemini.models.processor import Processor
from imagemini.store.clock import clock_from_env
from imagemini.store.store import Store

from .access import Access
from .metering import wait_for_ledger_writes
from .chat import PromptEncoder
from .encoder import EncoderCache, VisionEncoder
from .errors import overloaded
from .media import InputImage, MediaReader
from .metrics import Metrics, replica_label
from .model_card import LoadedCard, load_card
from .reasoning import card_thinks, thinking_supported
from .sampling import Limits
from .settings import ServerSettings


@dataclass
class ServerState:
    engine: AsyncEngine
    card: LoadedCard
    limits: Limits
    settings: ServerSettings
    access: Access = field(default_factory=lambda: Access(None))
    processor: Processor | None = None
    grammars: GrammarCompiler | None = None
    prompts: PromptEncoder | None = None
    media: MediaReader | None = None
    vision: VisionEncoder | None = None
    writer: ImageWriter | None = None
    metrics: Metrics | None = None  # GET /metrics (metrics.py)
    draining: bool = False
    # Which replica this process is when several serve one model (Ray Serve: ray_app.py gives its
    # replica id); None for a lone server. Metrics and access-log lines carry `replica_label(replica)`.
    replica: str | None = None
    # Reading media (base64, downloads, PDFs) and encoding images run in worker threads; these
    # bound how many requests do each at once (downloads wait on the network, not the CPU).
    media_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(4), repr=False)
    encode_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2), repr=False)
    _drain_task: asyncio.Task | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls, model_dir: Path, engine: AsyncEngine, settings: ServerSettings, api_keys: list[str] | None,
        store: Store | None = None, replica: str | None = None,
    ) -> "ServerState":
        """The API's model parts (tokenizer, grammar compiler, the model's image encoder and decoder)
        are the ones the engine loaded in this process (async_engine.py: EngineFrontend); they are
        taken from it here, once, and reached through this state everywhere else."""
        frontend, limits = engine.frontend, engine.limits
        tokenizer, model = frontend.tokenizer, frontend.model
        max_sequence = min(limits.context_length, limits.kv_budget_tokens)
        card = load_card(model_dir, limits.context_length, max_sequence, reasoning=thinking_supported(tokenizer))
        processor = Processor.from_dir(model_dir, tokenizer)
        request_limits = Limits(
            max_sequence_tokens=max_sequence,
            default_max_tokens=settings.default_max_tokens,
            vocab_size=tokenizer.vocab_size,
            image=ImageOutput.from_dir(model_dir, tokenizer, model.cfg, offered="image" in card.outputs),
            think_ids=limits.think if card_thinks(card) else None,
            model_context=limits.context_length,
            no_token_ids=tokenizer.no_token_ids,
        )
        vision = VisionEncoder(model, processor, EncoderCache(settings.encoder_cache_bytes))
        return cls(
            engine, card, request_limits, settings,
            Access(store, tuple(api_keys or ()), clock=store.clock if store is not None else clock_from_env()),
            processor=processor,
            grammars=frontend.grammars,
            prompts=PromptEncoder(tokenizer),
            # PDF pages are also given as images only to a model that takes images.
            media=MediaReader(
                settings if "image" in card.inputs else replace(settings, pdf_image_pages=0),
                render_side=min(2 * processor.image_cfg.size, 2048),
            ),
            vision=vision,
            writer=ImageWriter(model),
            metrics=Metrics(card.id, engine, vision.cache, replica_label(replica)),
            replica=replica,
        )

    @property
    def store(self) -> Store | None:
        return self.access.store

    # --- per request ------------------------------------------------------------------------------
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

    async def prompt_embeds(self, ids: list[int], images: list[InputImage]) -> torch.Tensor | None:
        """The prompt's embeddings with its images encoded, in a worker thread (a bounded number of
        requests at once); None for a prompt without images: the engine embeds its ids itself."""
        if not images:
            return None
        async with self.encode_slots:
            return await asyncio.to_thread(self.vision.prompt_embeds, ids, images)

    def health(self) -> dict[str, Any]:
        engine, stats = self.engine, self.engine.stats
        return {
            "status": "engine_stopped" if engine.dead else "draining" if self.draining else "ok",
            "model": self.card.id,
            "system_fingerprint": engine.system_fingerprint,
            # Where and how the model runs (EngineConfig, resolved): device, weights' dtype, plans.
            "engine": {"device": engine.config.device, "dtype": engine.config.dtype,
                       "attention": engine.config.attention, "row_tile": engine.config.row_tile},
            "pending": engine.num_pending,  # requests in flight (queued + running)
            "max_pending": engine.max_pending,
            # As of the engine's last step that produced output:
            "running": stats.running,
            "waiting": stats.waiting,
            "kv_cache": {"used_tokens": stats.kv_used_tokens, "budget_tokens": engine.limits.kv_budget_tokens},
            "prefix_cache": stats.prefix_cache,  # null: off (--prefix-cache-tokens 0)
            "encoder_cache": self.vision.cache.stats() if self.vision is not None else None,
        }

    # --- lifecycle --------------------------------------------------------------------------------
    async def open_store(self) -> None:
        """Bring the store's schema up to date and give back reservations that dead servers left."""
        if self.store is not None:
            await self.store.migrate()
            await self.store.sweep_reservations()

    def begin_drain(self) -> None:
        if self._drain_task is None:
            self.draining = True
            self._drain_task = asyncio.ensure_future(self.engine.shutdown(self.settings.shutdown_grace_s))

    async def finish_drain(self) -> None:
        self.begin_drain()
        await self._drain_task
        if self.store is not None:
            await wait_for_ledger_writes()
            await self.store.close()


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
