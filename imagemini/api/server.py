"""The HTTP application (placeholder until the full API lands): health and model list."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from imagemini.engine.async_engine import AsyncEngine
from imagemini.engine.engine import Engine, EngineConfig


def create_app(model_dir: Path, config: EngineConfig, max_pending: int = 256, api_keys: list[str] | None = None) -> FastAPI:
    engine = AsyncEngine(Engine.from_checkpoint(model_dir, config), max_pending=max_pending)
    app = FastAPI(title="imagemini")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "system_fingerprint": engine.engine.system_fingerprint}

    return app
