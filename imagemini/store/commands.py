"""The store from the shell, and where `imagemini serve` finds it.

    imagemini keys create --name admin --management          the first management key (printed once)
    imagemini keys create --name ci --limit 5 --limit-reset daily --requests-per-minute 60
    imagemini keys list | show HASH | disable HASH [--enable] | delete HASH
    imagemini serve --data-dir DIR | --database-url postgresql://... [--no-auth]

Where the store is: --database-url (IMAGEMINI_DATABASE_URL), else the SQLite file in --data-dir
(IMAGEMINI_DATA_DIR, default $XDG_DATA_HOME/imagemini or ~/.local/share/imagemini). `keys`
creates the default one; `serve` opens it only when it exists (or a flag names a store), so
a server that never had keys runs as before, without a ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .clock import LIMIT_RESETS, clock_from_env, iso, parse_iso

if TYPE_CHECKING:  # store.py loads SQLAlchemy: imported where a store is opened
    from .store import KeyRecord

DATABASE_FILE = "imagemini.db"
log = logging.getLogger("imagemini")


def default_data_dir() -> Path:
    if os.environ.get("IMAGEMINI_DATA_DIR"):
        return Path(os.environ["IMAGEMINI_DATA_DIR"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "imagemini"


def add_store_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None,
                   help=f"the SQLite store's directory (IMAGEMINI_DATA_DIR; default {default_data_dir()})")
    p.add_argument("--database-url", default=None,
                   help="a PostgreSQL store instead: postgresql://user:pass@host/db (IMAGEMINI_DATABASE_URL)")


def store_url(args: argparse.Namespace, create: bool) -> str | None:
    """The store's URL; None when serving without one (no flag, and no store at the default place)."""
    from .store import database_url

    url = args.database_url or os.environ.get("IMAGEMINI_DATABASE_URL")
    if url:
        return database_url(url=url)
    if args.data_dir is not None:
        return database_url(data_dir=args.data_dir)
    default = default_data_dir()
    if create or (default / DATABASE_FILE).exists():
        return database_url(data_dir=default)
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


async def _has_keys(url: str) -> bool:
    from .store import Store

    store = Store(url)
    try:
        await store.migrate()
        return await store.has_keys()
    finally:
        await store.close()


def check_serving_rule(host: str, port: int, url: str | None, api_keys: list[str] | None, no_auth: bool) -> None:
    """A server on a non-loopback address needs keys: exit with a message when it has none, or
    warn loudly when --no-auth says to serve anyway."""
    if is_loopback(host) or api_keys or (url is not None and asyncio.run(_has_keys(url))):
        return
    if not no_auth:
        sys.exit(
            f"imagemini: refusing to serve on {host} without API keys: anyone who can reach the port could use "
            "the model. Create a key (imagemini keys create --name NAME, then serve with the same --data-dir or "
            "--database-url), or give --api-key KEY; --no-auth serves everyone without a key."
        )
    log.warning("*** --no-auth: serving on %s WITHOUT API KEYS: anyone who can reach port %d can use the model ***", host, port)


# --- imagemini keys ----------------------------------------------------------------------------------
def add_keys_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="API keys of the store: create, list, show, disable, delete")
    actions = p.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new key, printed once (the store keeps only its hash)")
    create.add_argument("--name", required=True)
    create.add_argument("--management", action="store_true", help="a management key: manages keys, no completions")
    create.add_argument("--limit", type=float, default=None, help="credit limit in USD (default: unlimited)")
    create.add_argument("--limit-reset", choices=LIMIT_RESETS, default=None, help="the limit resets at midnight UTC")
    create.add_argument("--expires-at", default=None, help="ISO 8601 time after which the key stops working")
    create.add_argument("--requests-per-minute", type=int, default=None)
    create.add_argument("--tokens-per-minute", type=int, default=None)
    actions.add_parser("list", help="every key (no secrets)")
    for name, help_text in (("show", "one key"), ("disable", "stop a key (--enable: start it again)"), ("delete", "remove a key")):
        a = actions.add_parser(name, help=help_text)
        a.add_argument("hash")
        if name == "disable":
            a.add_argument("--enable", action="store_true")
    for action in actions.choices.values():
        add_store_arguments(action)
    p.set_defaults(func=cmd_keys)


def describe(key: "KeyRecord", now_ms: int) -> dict[str, Any]:
    from .store import nanos_to_usd

    return {
        "hash": key.hash, "name": key.name, "label": key.label, "is_management_key": key.is_management,
        "disabled": key.disabled, "limit": nanos_to_usd(key.limit_nanos), "limit_reset": key.limit_reset,
        "limit_remaining": nanos_to_usd(key.limit_remaining(now_ms)), "usage": nanos_to_usd(key.usage_nanos),
        "requests_per_minute": key.requests_per_minute, "tokens_per_minute": key.tokens_per_minute,
        "created_at": iso(key.created_at_ms), "expires_at": iso(key.expires_at_ms),
    }


def cmd_keys(args: argparse.Namespace) -> None:
    print(json.dumps(asyncio.run(_keys(args)), indent=2))


async def _keys(args: argparse.Namespace) -> Any:
    from .store import Store, usd_to_nanos

    store = Store(store_url(args, create=True), clock_from_env())
    try:
        await store.migrate()
        now = store.clock()
        if args.action == "create":
            secret, key = await store.create_key(
                args.name, management=args.management, limit_reset=args.limit_reset,
                limit_nanos=None if args.limit is None else usd_to_nanos(args.limit),
                expires_at_ms=None if args.expires_at is None else parse_iso(args.expires_at),
                requests_per_minute=args.requests_per_minute, tokens_per_minute=args.tokens_per_minute,
            )
            print("the key, shown this once (the store keeps only its hash):", file=sys.stderr)
            return {"data": describe(key, now), "key": secret}
        if args.action == "list":
            return {"data": [describe(k, now) for k in await store.list_keys(limit=1_000_000)]}
        if args.action == "delete":
            if not await store.delete_key(args.hash):
                raise ValueError(f"no key with hash {args.hash}")
            return {"deleted": True}
        key = (
            await store.update_key(args.hash, disabled=not args.enable) if args.action == "disable"
            else await store.get_key(args.hash)
        )
        if key is None:
            raise ValueError(f"no key with hash {args.hash}")
        return {"data": describe(key, now)}
    finally:
        await store.close()
