"""Secrets out of every error a driver raises, in one place.

The core passes whatever a driver raises through :func:`backend_error` (calls, reads,
writes, and the driver's configuration): an imgstore error keeps its class and gets its
message scrubbed, anything else becomes a :class:`BackendError` saying what failed. The
secrets are asked of the driver at that moment (a token it got a second ago counts),
and a message is trimmed only after it was scrubbed, so no part of a secret is left.

A client library that logs secrets outside any error (suds logs the SOAP login,
password included, at DEBUG) has its loggers scrubbed too: :func:`scrub_loggers`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from imgstore.exceptions import BackendError, ImgstoreError

MAX_MESSAGE = 1000
"""Longest message kept (backend libraries can put whole server answers in theirs)."""


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in ``text`` with ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _clean(text: str, secrets: list[str]) -> str:
    text = scrub(text, secrets)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def backend_error(
    exc: BaseException, what: str, secrets: Callable[[], Iterable[str]]
) -> ImgstoreError:
    """The error to raise for ``exc``, raised by a driver while doing ``what``: the same
    imgstore error with its message scrubbed, or a new :class:`BackendError`."""
    try:
        found = [s for s in secrets() if s]
    except Exception:  # a driver that failed to configure may not know them all
        found = []
    if isinstance(exc, ImgstoreError):
        clean = _clean(exc.msg, found)
        if clean != exc.msg:
            exc.msg = clean
            exc.args = (clean,)
        return exc
    return BackendError(_clean(f"{what} failed: {type(exc).__name__}: {exc}", found))


class _LogScrubber(logging.Filter):
    """Blanks known secrets in the records of the loggers it is added to."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a record that cannot format carries nothing to scrub
            return True
        if any(secret in text for secret in self.secrets):
            record.msg, record.args = scrub(text, sorted(self.secrets)), None
        return True


_LOG_SCRUBBER = _LogScrubber()


def scrub_loggers(name: str, secret: str) -> None:
    """Scrub ``secret`` (and those given before) from the records of logger ``name`` and
    of every logger under it there is now (call again once the library made more)."""
    if secret:
        _LOG_SCRUBBER.secrets.add(secret)
    for logger_name in list(logging.Logger.manager.loggerDict):
        if logger_name == name or logger_name.startswith(f"{name}."):
            logger = logging.getLogger(logger_name)
            if _LOG_SCRUBBER not in logger.filters:
                logger.addFilter(_LOG_SCRUBBER)
