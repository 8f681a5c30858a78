"""`imagemini serve --replicas N`: the server as N Ray Serve replicas (ray_app.py), on a Ray
cluster started here for this machine, or on a running one (`--ray-address`).

    imagemini serve --replicas 2                                  # one machine, the SQLite store if any
    imagemini serve --replicas 2 --max-replicas 8 --target-ongoing-requests 4   # autoscaling
    imagemini serve --replicas 4 --ray-address HOST:6379 --database-url postgresql://...

Ray is optional (`pip install 'imagemini[ray]'`): it is imported only once `--replicas` is
given, so `imagemini serve` alone never loads it.

The store: replicas share keys and the ledger through it. PostgreSQL works everywhere. The
SQLite file (--data-dir) works for replicas on ONE machine, as several processes of one
machine share it safely (WAL, store.py); with `--ray-address` replicas may run on other
machines, each of which would open a file of its own, so that is refused.

CPUs: each replica's engine runs `--engine-threads` torch threads and Ray reserves that many CPUs
for it. By default a replica gets this machine's cores divided among the replicas that may run
(`--max-replicas`, else `--replicas`), less one left to its HTTP side: on a small machine the
replicas share the cores rather than each taking all of them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from dataclasses import asdict

from .settings import ServerSettings

APP_NAME = "imagemini"
RAY_MISSING = "imagemini: --replicas runs the server on Ray Serve, which is not installed: pip install 'imagemini[ray]'"
REPLICA_OPTIONS = ("min_replicas", "max_replicas", "target_ongoing_requests", "ray_address")

log = logging.getLogger("imagemini")


def add_replica_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("replicas (Ray Serve; pip install 'imagemini[ray]')")
    g.add_argument("--replicas", type=int, default=None,
                   help="serve with N Ray Serve replicas, each with its own engine (with autoscaling: the initial count)")
    g.add_argument("--min-replicas", type=int, default=None, help="autoscaling: fewest replicas (default 1)")
    g.add_argument("--max-replicas", type=int, default=None, help="autoscaling: most replicas (default --replicas)")
    g.add_argument("--target-ongoing-requests", type=float, default=None,
                   help="autoscaling: requests in flight per replica that Ray scales towards (Ray's default: 2)")
    g.add_argument("--ray-address", default=None,
                   help="join this running Ray cluster (default: start one on this machine)")


def check_replica_arguments(args: argparse.Namespace, store: str | None) -> None:
    """Refuse what cannot work, before anything starts; exits when Ray is not installed."""
    if args.replicas is None:
        given = [f"--{name.replace('_', '-')}" for name in REPLICA_OPTIONS if getattr(args, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} need --replicas N")
        return
    if args.replicas < 1:
        raise ValueError("--replicas must be >= 1")
    if args.device not in ("cpu", "cuda"):  # Ray gives each replica its GPU: none names one itself
        raise ValueError(f"--device {args.device} with --replicas: use cuda (one GPU per replica) or cpu")
    if args.ray_address and store is not None and store.startswith("sqlite"):
        raise ValueError(
            "--ray-address with the SQLite store: replicas on other machines would each open a store of their own. "
            "Give --database-url postgresql://... (the SQLite store serves replicas on one machine: omit --ray-address)"
        )
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        sys.exit(RAY_MISSING)


def forward_replica_logs(log_format: str) -> None:
    """How Ray relays the replicas' log lines to this process's stderr; before Ray is imported,
    which reads these variables once. Every line is kept: Ray would otherwise fold lines that
    differ only in numbers and ids, as access-log lines of several replicas do, into one
    "[repeated Nx]". With JSON lines, Ray's "(ServeReplica... pid=N)" prefix is left off, so
    that each line stays one JSON object (it carries its `replica`: api/access_log.py)."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if log_format == "json":
        os.environ.setdefault("RAY_DISABLE_WORKER_LOG_PREFIX", "1")


def default_engine_threads(args: argparse.Namespace) -> int:
    """This machine's cores divided among the replicas that may run, less one for HTTP."""
    most = args.max_replicas or args.replicas
    return max(1, len(os.sched_getaffinity(0)) // most - 1)


def serve_replicas(args: argparse.Namespace, settings: ServerSettings, store: str | None) -> None:
    """Start (or join) Ray, run the application until SIGTERM/SIGINT, then take it down."""
    import ray
    from ray import serve

    from .ray_app import ImageminiArgs, build
    from .server import page_url

    app_args = ImageminiArgs(
        model=str(args.model.resolve()) if args.model else None, dtype=args.dtype, max_num_seqs=args.max_num_seqs,
        device=args.device,
        kv_budget_tokens=args.kv_budget_tokens, max_pending=args.max_pending,
        engine_threads=args.engine_threads or default_engine_threads(args), api_keys=args.api_key or [],
        database_url=store, settings=asdict(settings), log_format=args.log_format, replicas=args.replicas, min_replicas=args.min_replicas,
        max_replicas=args.max_replicas, target_ongoing_requests=args.target_ongoing_requests,
    )
    application = build(app_args)  # refuses bad replica counts before Ray starts
    if not args.ray_address and app_args.engine_threads * args.replicas > len(os.sched_getaffinity(0)):
        raise ValueError(f"{args.replicas} replicas of {app_args.engine_threads} engine threads need more CPUs "
                         f"than this machine's {len(os.sched_getaffinity(0))}: lower --engine-threads")
    # The replicas read IMAGEMINI_* (settings, clock) from their own environment, on any machine.
    env = {k: v for k, v in os.environ.items() if k.startswith("IMAGEMINI_")}
    ray.init(address=args.ray_address or "local", include_dashboard=False, runtime_env={"env_vars": env})
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(application, name=APP_NAME, route_prefix="/")
        log.info("ready: %d replicas of %d engine threads; model page and playground at %s",
                 args.replicas, app_args.engine_threads, page_url(args.host, args.port))
        _wait_for_stop_signal()
    finally:
        if args.ray_address:
            serve.delete(APP_NAME)  # a shared cluster keeps its Serve instance
        else:
            serve.shutdown()
        ray.shutdown()


def _wait_for_stop_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
