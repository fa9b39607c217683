"""Keeping header values (API tokens) out of error messages and logs.

Backends sometimes echo what they received ("invalid token phc_..."), and client libraries
put URLs in their errors; every text an exporter puts in an ExportError or a log line goes
through :meth:`Redactor.clean` first.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "[REDACTED]"
_MIN_VALUE_LEN = 4  # a whole header value this long or longer is redacted
_MIN_WORD_LEN = 8  # and so is each word of it this long or longer
_AUTH_SCHEMES = {"bearer", "basic", "token", "digest", "apikey", "api-key"}


class Redactor:
    """Replaces every configured header value, and each word of it (the token in
    ``Bearer <token>``), with ``[REDACTED]``; also truncates to ``limit`` characters."""

    def __init__(self, headers: dict[str, str], limit: int = 300) -> None:
        secrets: set[str] = set()
        for value in headers.values():
            if len(value) >= _MIN_VALUE_LEN:
                secrets.add(value)
            for word in value.split():
                if len(word) >= _MIN_WORD_LEN and word.lower() not in _AUTH_SCHEMES:
                    secrets.add(word)
        # Longest first so a whole value is replaced before its parts.
        self._secrets = sorted(secrets, key=len, reverse=True)
        self.limit = limit

    def clean(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, REDACTED)
        text = " ".join(text.split())  # one line
        if len(text) > self.limit:
            text = text[: self.limit] + "..."
        return text


def safe_url(url: str) -> str:
    """``url`` without user info, query or fragment (which may carry credentials); an
    unparsable one (a bad port, a broken IPv6 literal, no scheme) cut the same way as
    text, so the message still shows what is wrong with it."""
    try:
        if "://" not in url:  # no authority to parse ("user:pw@host/x" reads as a scheme)
            raise ValueError(url)
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        url = re.split(r"[?#]", url, maxsplit=1)[0]
        scheme, sep, rest = url.rpartition("://")
        netloc, slash, path = rest.partition("/")
        return f"{scheme}{sep}{netloc.rpartition('@')[2]}{slash}{path}"
