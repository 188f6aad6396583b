"""The secret audit: no secret of the test servers in any log record.

With ``IMGSTORE_SECRET_AUDIT=1`` (on by default in CI, ``CI=true``; turn it off
with ``IMGSTORE_SECRET_AUDIT=0``) every functional test runs with the root
logger at DEBUG and a handler that checks every record: its formatted message,
exception text and stack. When the test ends, the test fails if any secret of
the harness appears in a record. The secrets are every value whose key looks
secret (``password``, ``secret``, ``token``, ``key``, ``keyring``...) in each
server's ``.cache/services/*/details.json``, the ``secrets`` lists there, and
the password inside any URI among them.

Not secrets: S3 access key ids (an identifier, sent in clear in every signed
request's ``Authorization`` header) and values that name an existing file (the
keyring path; its content is listed under ``secrets``).

Exception messages, reprs and emitted locations are checked by the
conformance kit (``imgstore.testing``); :func:`assert_no_secret` is shared
with ``test_secret_audit.py``, which runs the audit on every backend always.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tests.functional.services._common import STATE_ROOT

_SECRET_KEY = re.compile(r"password|passwd|secret|token|keyring|credential|(^|_)key$", re.I)
_NOT_SECRET_KEY = re.compile(r"access_key", re.I)
MIN_LENGTH = 6
"""Shorter values would match by chance; the harness generates long secrets."""


def enabled() -> bool:
    """Whether the whole functional suite runs under the audit."""
    flag = os.environ.get("IMGSTORE_SECRET_AUDIT", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    if flag in ("1", "true", "yes", "on"):
        return True
    from tests.functional.conftest import in_ci  # conftest imports this module

    return in_ci()


def _uri_password(value: str) -> list[str]:
    if "://" not in value or "@" not in value:
        return []
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:
        return []
    password = parts.password
    return [password, urllib.parse.unquote(password)] if password else []


def _walk(key: str, value: Any, out: set[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _walk(str(k), v, out)
    elif isinstance(value, list):
        for v in value:
            _walk(key, v, out)
    elif isinstance(value, str):
        out.update(_uri_password(value))
        if _SECRET_KEY.search(key) and not _NOT_SECRET_KEY.search(key):
            if not (value.startswith("/") and os.path.exists(value)):
                out.add(value)


def harness_secrets(root: Path = STATE_ROOT) -> list[str]:
    """Every secret in the details of the servers that are up, longest first."""
    found: set[str] = set()
    for path in sorted(root.glob("*/details.json")):
        try:
            details = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        _walk("", details, found)
    return sorted((s for s in found if len(s) >= MIN_LENGTH), key=len, reverse=True)


class RecordCollector(logging.Handler):
    """Checks the full text of every record (message, exception, stack) as it is emitted.

    Records are scanned on the spot and only those showing a secret are kept,
    so a test that logs a lot at DEBUG (botocore...) costs no memory.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(level=logging.DEBUG)
        self.secrets = list(secrets)
        self.count = 0
        self.leaks: list[tuple[str, str]] = []
        self._guard = threading.Lock()
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception as exc:  # a record that cannot format is still checked by its args
            text = f"{record.msg!r} {record.args!r} (format failed: {exc!r})"
        leaks = find_leaks(self.secrets, [text])
        with self._guard:
            self.count += 1
            self.leaks += leaks


def find_leaks(secrets: Iterable[str], texts: Iterable[str]) -> list[tuple[str, str]]:
    """``(secret shown as ***, excerpt)`` for each record that contains a secret."""
    leaks = []
    for text in texts:
        for secret in secrets:
            at = text.find(secret)
            if at >= 0:
                excerpt = text[max(0, at - 120) : at + len(secret) + 60].replace(secret, "<SECRET>")
                leaks.append((secret[:2] + "***", excerpt))
                break
    return leaks


class audit:
    """Root logger at DEBUG with a :class:`RecordCollector` for the duration."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = list(secrets)

    def __enter__(self) -> RecordCollector:
        self.root = logging.getLogger()
        self.level = self.root.level
        self.collector = RecordCollector(self.secrets)
        self.root.addHandler(self.collector)
        self.root.setLevel(logging.DEBUG)
        # libraries that set their own level (stevedore by the CLI, for one) are opened up
        self.saved = {}
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger) and logger.level > logging.DEBUG:
                self.saved[name] = logger.level
                logger.setLevel(logging.NOTSET)
        return self.collector

    def __exit__(self, *exc: object) -> None:
        self.root.removeHandler(self.collector)
        self.root.setLevel(self.level)
        for name, level in self.saved.items():
            logging.getLogger(name).setLevel(level)


def assert_no_secret(collector: RecordCollector) -> None:
    """Fail with excerpts (the secret masked) when a record showed a secret."""
    leaks = collector.leaks
    if leaks:
        shown = "\n".join(f"  {s}: ...{e}..." for s, e in leaks[:5])
        raise AssertionError(f"{len(leaks)} log record(s) show a harness secret:\n{shown}")


def audited() -> Iterator[RecordCollector | None]:
    """The body of the autouse fixture in conftest.py."""
    if not enabled():
        yield None
        return
    with audit(harness_secrets()) as collector:
        yield collector
    assert_no_secret(collector)
