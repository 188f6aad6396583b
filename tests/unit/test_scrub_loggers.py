"""The core's filter for the loggers of a library that logs secrets (suds at DEBUG)."""

from __future__ import annotations

import logging

import pytest

from imgstore.scrubbing import scrub_loggers


def test_secrets_are_blanked_in_the_library_loggers_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    library, child, other = (
        logging.getLogger(name) for name in ("test-lib", "test-lib.client", "test-other")
    )
    scrub_loggers("test-lib", "hunter2-secret")
    caplog.set_level(logging.DEBUG)
    library.debug("login body <password>%s</password>", "hunter2-secret")
    child.debug("cookie hunter2-secret set")
    other.debug("hunter2-secret")  # not a logger of the library: left as it is
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["login body <password>***</password>", "cookie *** set", "hunter2-secret"]


def test_loggers_made_later_are_scrubbed_once_asked_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scrub_loggers("test-late", "first-secret")
    late = logging.getLogger("test-late.made-later")
    scrub_loggers("test-late", "")  # no new secret: the new logger gets the filter
    caplog.set_level(logging.DEBUG)
    late.debug("first-secret")
    assert [r.getMessage() for r in caplog.records] == ["***"]
