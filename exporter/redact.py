"""Masking secrets in anything we print: logs, errors, /readyz, check-config.

One helper, used everywhere text leaves the process, because a secret leaks through
whichever path was forgotten: ``http://user:pass@prometheus`` in a start log line, a
connection error that quotes the URL, a readiness reason, a header value shown by
``check-config``. Credentials in a URL are masked wherever a URL appears; configured
secret values (tokens, passwords, header values) are masked wherever they appear.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

SECRET = "<secret>"
# Values this short would mask ordinary words; they are still masked as URL credentials
# and as config fields, just not searched for inside free text.
MIN_SEARCHED_LENGTH = 4
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@")


def mask_url(url: str) -> str:
    """``http://user:pass@host:9090/x`` -> ``http://<secret>@host:9090/x``; other URLs unchanged."""
    return _USERINFO.sub(rf"\1{SECRET}@", url)


def mask(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL credentials and every given secret value replaced by ``<secret>``."""
    text = mask_url(text)
    for secret in sorted({s for s in secrets if len(s) >= MIN_SEARCHED_LENGTH}, key=len, reverse=True):
        text = text.replace(secret, SECRET)
    return text


def first_line(text: str, limit: int = 300) -> str:
    """The headline of an error: native libraries append stack traces that help no reader of /readyz."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
