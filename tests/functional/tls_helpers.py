"""The check both TLS conformance modules make with a CA that did not sign the server."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from imgstore import AddResult, Stores
from imgstore.exceptions import BackendError


def assert_wrong_ca_refused(
    wrong_conf: Path,
    present: AddResult,
    expected: str,
    secrets: Iterable[str],
    listing: Callable[[], set[str]],
) -> None:
    """With ``wrong_conf`` (a CA that did not sign the server's certificate), an add and a
    get of ``present`` fail with exactly BackendError whose message holds ``expected`` and
    no secret, and the backend's ``listing`` does not change."""
    before = listing()
    with Stores.from_config_files(wrong_conf) as wrong_stores:
        with pytest.raises(BackendError) as added:
            wrong_stores.add(str(uuid.uuid4()), b"never stored", size=12)
        with pytest.raises(BackendError) as read:
            with wrong_stores.get(present.location) as reader:
                b"".join(reader)
    for raised in (added, read):
        assert type(raised.value) is BackendError
        message = str(raised.value)
        assert expected in message, message
        for secret in secrets:
            assert secret not in message
    assert listing() == before
