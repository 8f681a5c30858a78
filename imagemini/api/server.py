"""The HTTP application: OpenAI/OpenRouter-compatible chat completions over the engine.

    app = create_app(model_dir, EngineConfig(), max_pending=256, api_keys=["sk-..."])
    serve(app, "127.0.0.1", 8000)     # what `imagemini serve` does (--replicas N: ray_app.py)

Routes (each also under /api/v1, OpenRouter's prefix):
    POST /v1/chat/completions         JSON, or Server-Sent Events with "stream": true
    GET  /v1/models                   {"object": "list", "data": [model card]}
    GET  /v1/models/{id}              the model card
    GET  /health                      liveness + load: pending, running, waiting, KV tokens in use
    GET  /metrics                     Prometheus metrics (metrics.py); every request also gets an
                                      access-log line and an X-Request-Id header (access_log.py)
    /api/v1/key, /keys, /credits, /generation   OpenRouter's platform API: platform.py (keys and the
                                      ledger live in imagemini/store/; who may call: access.py)
    GET  /, /playground               the model page and playground (imagemini/web/)
    GET  /openapi.json                every route, body and status above (openapi.py)

The request contract is in schemas.py, the error shapes in errors.py, the limits in
settings.py (IMAGEMINI_* environment variables). Images and files in: chat.py (parts, prompt
encoding), media.py (decoding, PDFs), fetch.py (http(s) URLs), encoder.py (vision encoder and
its cache); generated images to PNG: imagemini/models/image_output.py. One request becomes one
plan in plan.py before it reaches the engine. README.md documents the whole API.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from imagemini.engine.async_engine import AsyncEngine
from imagemini.engine.engine import EngineConfig
from imagemini.store.store import Store
from imagemini.web.routes import web_router

from imagemini.logs import uvicorn_log_config

from . import errors, openapi
from .access_log import AccessLog
from .metrics import replica_label
from .platform import platform_router
from .routes import api_router, health_router
from .settings import ServerSettings
from .state import ServerState, on_shutdown_signal

log = logging.getLogger("imagemini")


def create_app(
    model_dir: Path,
    config: EngineConfig,
    max_pending: int = 256,
    api_keys: list[str] | None = None,
    *,
    settings: ServerSettings | None = None,
    engine_threads: int | None = None,
    store: Store | None = None,
    replica: str | None = None,
) -> FastAPI:
    """Starts the engine process (`engine_threads` torch threads) and waits until it is ready.
    With a `store`: keys, limits and the ledger (migrated at start-up). `replica`: this app's id
    among several serving one model (ray_app.py), None for a lone server."""
    settings = settings or ServerSettings.from_env()
    engine = AsyncEngine(model_dir, config, max_pending=max_pending, threads=engine_threads)
    state = ServerState.build(Path(model_dir), engine, settings, api_keys, store, replica)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.open_store()
        state.engine.start()
        restore_signals = on_shutdown_signal(state.begin_drain)
        try:
            yield
        finally:
            restore_signals()
            await state.finish_drain()

    app = FastAPI(title="imagemini", version="0.1.0", lifespan=lifespan)
    app.state.server = state
    app.state.model_dir = Path(model_dir)
    errors.install(app)
    app.add_middleware(AccessLog, metrics=state.metrics, replica=replica_label(replica))
    openapi.install(app)  # the whole contract at /openapi.json (openapi.py)
    app.include_router(api_router, prefix="/v1")
    app.include_router(api_router, prefix="/api/v1", include_in_schema=False)  # same routes, documented once
    app.include_router(platform_router, prefix="/api/v1")
    app.include_router(health_router)
    app.include_router(web_router)  # the model page and playground (imagemini/web/)
    return app


def page_url(host: str, port: int) -> str:
    """Where a browser on this machine finds the model page of a server listening on host:port."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/ (API at http://{shown}:{port}/v1)"


def serve(app: FastAPI, host: str, port: int, log_format: str = "text") -> None:
    """Run `app` with uvicorn; once it listens, say where the model page is. `log_format`: as
    `configure_logging` was given (imagemini/logs.py); uvicorn's access log gives way to ours."""

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:
                log.info("ready: model page and playground at %s", page_url(host, port))

    # asyncio and h11 by name: uvicorn would pick uvloop and httptools when they are installed
    # (Ray's extra brings them), and the server must answer the same whatever else is installed.
    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=15,
                            log_config=uvicorn_log_config(log_format), access_log=False, loop="asyncio", http="h11")
    Server(config).run()
