"""Structured logs: one JSON object per line on stderr, quiet unless asked.

Fields passed with ``extra={...}`` become keys of the object, so a cycle's
numbers can be read by a log pipeline without regular expressions.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

from exporter.redact import mask

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, every text field masked (exporter/redact.py): URL
    credentials always, and the configured secret values wherever they appear."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = tuple(secrets)

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(self._masked(entry), default=str)

    def _masked(self, value: Any) -> Any:
        if isinstance(value, str):
            return mask(value, self._secrets)
        if isinstance(value, dict):
            return {key: self._masked(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._masked(item) for item in value]
        return value if isinstance(value, int | float | bool | None) else mask(str(value), self._secrets)


def configure(level: str = "info", secrets: Iterable[str] = ()) -> None:
    """JSON lines on stderr at ``level``; Python warnings (numpy, urllib3) go through it too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(secrets))
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("apscheduler", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
