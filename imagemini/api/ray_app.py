"""The HTTP application as a Ray Serve deployment: N replicas, each with its own engine process.

    imagemini serve --replicas 2 [--database-url postgresql://...]   # local Ray cluster (replicas.py)
    serve run docs/ray/serve.yaml                                     # on a running Ray cluster
    serve run imagemini.api.ray_app:build replicas=2 database_url=postgresql://...

Each replica runs `create_app` (server.py) unchanged: its own engine process, its own bounded
queue (a full queue answers 503 + Retry-After from the replica, not from Ray: Ray's own limit on
requests per replica sits above `max_pending`), its own drain on shutdown. Keys and the ledger
are shared through the store at `database_url`; rate limits are counted in each replica
(access.py). Every replica loads the same weights with the same engine config, so the same
seeded request gives the same bytes and the same `system_fingerprint` on any of them (the
engine's thread count is not part of either: api/README.md, `seed`).

Each response names its replica in `X-Imagemini-Replica` (Ray's replica id); the same id is
`app.state.server.replica`, the `replica` label of its metrics and the `replica` field of its
access-log lines. Each replica writes its log lines in `log_format` (imagemini/logs.py); Ray
Serve's own access log is off, as uvicorn's is for a lone server: ours says more.

Ray checks each replica's health every HEALTH_CHECK_PERIOD_S (`check_health`): a replica whose
engine process died answers 500 to the requests it was running and 503 to new ones until Ray
replaces it.

Ray schedules `engine_threads` CPUs per replica: replicas on one machine share its cores.
"""

# No `from __future__ import annotations`: Ray Serve reads `build`'s annotation as a class to
# validate a config file's `args:` with it.
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REPLICA_HEADER = "X-Imagemini-Replica"
# Requests a replica takes beyond the engine's `max_pending` (health checks, the key API, the page):
# Ray queues only past this, so a full engine queue is the replica's own 503 with Retry-After.
ROUTE_HEADROOM = 32
# Ray's default is 10 s; a replica without an engine refuses every request it is given meanwhile.
HEALTH_CHECK_PERIOD_S = 2.0


class ImageminiArgs(BaseModel):
    """The application's arguments (`args:` of a Serve config file; `imagemini serve` fills them
    from its options). Paths are read on the replicas' machines."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None  # a checkpoint directory; None: the bundled checkpoint
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    # "cpu", or "cuda": each replica then asks Ray for one GPU and runs on the one Ray gives it.
    device: Literal["cpu", "cuda"] = "cpu"
    max_num_seqs: int = Field(32, ge=1)
    kv_budget_tokens: int = Field(65536, ge=1)
    max_pending: int = Field(256, ge=1)
    # Torch threads of each replica's engine process, and the CPUs Ray reserves for the replica.
    engine_threads: int = Field(1, ge=1)
    api_keys: list[str] = []
    database_url: str | None = None  # the shared store (keys, limits, ledger); None: none
    settings: dict[str, Any] = {}  # ServerSettings fields; unset ones from IMAGEMINI_* (settings.py)
    log_format: Literal["text", "json"] = "text"  # imagemini/logs.py
    replicas: int = Field(1, ge=1)  # with autoscaling: the initial count
    min_replicas: int | None = Field(None, ge=0)
    max_replicas: int | None = Field(None, ge=1)
    target_ongoing_requests: float | None = Field(None, gt=0)

    def autoscaling_config(self) -> dict[str, Any] | None:
        """Ray Serve's autoscaling_config, or None for a fixed `replicas` count."""
        if self.min_replicas is None and self.max_replicas is None and self.target_ongoing_requests is None:
            return None
        low = 1 if self.min_replicas is None else self.min_replicas
        high = max(self.replicas, low) if self.max_replicas is None else self.max_replicas
        if not low <= self.replicas <= high:
            raise ValueError(f"replicas must lie between min_replicas and max_replicas ({low} <= {self.replicas} <= {high})")
        config = {"min_replicas": low, "max_replicas": high, "initial_replicas": self.replicas}
        if self.target_ongoing_requests is not None:
            config["target_ongoing_requests"] = self.target_ongoing_requests
        return config


class ReplicaHeader:
    """ASGI middleware: every response says which replica made it."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app, self.header = app, (REPLICA_HEADER.lower().encode(), replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)


@serve.ingress()
class ImageminiServer:
    """One replica: `create_app` (its engine process starts here), behind Ray Serve's proxy."""

    def __init__(self, args: ImageminiArgs) -> None:
        self.args = args
        self.server: Any = None  # the app's ServerState, once built

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = _create_replica_app(self.args, serve.get_replica_context().replica_tag)
        self.server = app.state.server
        return app

    def check_health(self) -> None:
        """Ray replaces a replica whose engine process has died (its /health says why)."""
        if self.server is not None and self.server.engine.dead is not None:
            raise RuntimeError(f"the engine is not running: {self.server.engine.dead}")


def _create_replica_app(args: ImageminiArgs, replica: str) -> FastAPI:
    from imagemini.cli import default_model_dir
    from imagemini.engine.engine import EngineConfig
    from imagemini.engine.scheduler import SchedulerConfig
    from imagemini.logs import configure_logging
    from imagemini.store.clock import clock_from_env
    from imagemini.store.store import Store, database_url

    from .server import create_app
    from .settings import ServerSettings

    configure_logging(args.log_format)  # before the engine process starts: it follows the choice
    settings = replace(ServerSettings.from_env(), **args.settings)
    config = EngineConfig(dtype=args.dtype, device=args.device, kv_budget_tokens=args.kv_budget_tokens,
                          scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs))
    store = Store(database_url(url=args.database_url), clock_from_env()) if args.database_url else None
    app = create_app(Path(args.model) if args.model else default_model_dir(), config, args.max_pending,
                     args.api_keys or None, settings=settings, engine_threads=args.engine_threads, store=store,
                     replica=replica)
    app.add_middleware(ReplicaHeader, replica=replica)
    return app


def build(args: ImageminiArgs) -> Application:
    """The Serve application (the import path of a Serve config file: `imagemini.api.ray_app:build`)."""
    autoscaling = args.autoscaling_config()
    grace = float(args.settings.get("shutdown_grace_s", 10.0))
    deployment = serve.deployment(
        ImageminiServer,
        name="imagemini",
        ray_actor_options={"num_cpus": args.engine_threads, "num_gpus": 1 if args.device == "cuda" else 0},
        max_ongoing_requests=args.max_pending + ROUTE_HEADROOM,
        # Ray waits this long for a stopping replica, whose own drain takes up to the grace period.
        graceful_shutdown_timeout_s=grace + 10.0,
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        logging_config={"enable_access_log": False},
        **({"autoscaling_config": autoscaling} if autoscaling else {"num_replicas": args.replicas}),
    )
    return deployment.bind(args)
