"""Log lines as text (people) or one JSON object per line (log collectors), in both processes.

    configure_logging("json")                  # the API process: every record becomes a JSON line
    serve(app, host, port, log_format="json")  # api/server.py: uvicorn's own loggers follow (uvicorn_log_config)

`imagemini serve --log-format json` chooses it; the engine process reads the same choice from
IMAGEMINI_LOG_FORMAT, which `configure_logging` sets for the children it starts. A JSON line
holds `time` (ISO 8601 UTC), `level`, `logger`, `message`, and the `fields` a record carries
(`log.info("request", extra={"fields": {...}})`: the access log, api/access_log.py); a text line
shows those fields after the message as `key=value` pairs.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
from typing import Any

LOG_FORMATS = ("text", "json")
FORMAT_VARIABLE = "IMAGEMINI_LOG_FORMAT"
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", {})
        return " ".join([line, *(f"{k}={_plain(v)}" for k, v in fields.items() if v is not None)])


_BARE = re.compile(r"[\w./:+-]+")


def _plain(value: Any) -> str:
    """A value as is when it needs no quoting (ids, paths, numbers), else as JSON."""
    text = str(value)
    return text if isinstance(value, (int, float, str)) and _BARE.fullmatch(text) else json.dumps(value)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line |= getattr(record, "fields", {})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def log_format_from_env() -> str:
    return os.environ.get(FORMAT_VARIABLE, "text")


def configure_logging(log_format: str, text_format: str = TEXT_FORMAT) -> None:
    """The root logger writes `log_format` lines to stderr; child processes started from now on
    inherit the choice (IMAGEMINI_LOG_FORMAT)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)} (got {log_format!r})")
    os.environ[FORMAT_VARIABLE] = log_format
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(text_format))
    logging.basicConfig(level=os.environ.get("IMAGEMINI_LOG_LEVEL", "info").upper(), handlers=[handler], force=True)


def uvicorn_log_config(log_format: str) -> dict[str, Any] | None:
    """uvicorn's `log_config`: its own coloured text lines, or None (its loggers then reach the
    root logger's JSON handler). Its access log is off either way: api/access_log.py writes a
    richer line per request."""
    if log_format == "json":
        return None
    import uvicorn.config

    return uvicorn.config.LOGGING_CONFIG
