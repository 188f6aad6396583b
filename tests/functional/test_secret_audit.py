"""The secret audit on every backend, always on (the CI-run short version).

For S3 (radosgw and Swift's s3api), Swift (tempauth and radosgw), GridFS and
HTTP(S) each test runs, with every logger at DEBUG and every record kept:
add (one request and multipart/segmented), whole and ranged get, size,
duplicate add, delete, get/delete of a missing image, and a second store with
a wrong password (the authentication error path). It then fails if any secret
of the harness (``secret_audit.harness_secrets()``) or the wrong password
appears in a log record, an exception message or repr, a location, or a trace span
(the real OpenTelemetry SDK records every span of the run).
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imgstore import Stores
from imgstore.exceptions import AuthenticationFailed, Duplicate, NotFound
from tests import otel_sdk
from tests.functional import secret_audit
from tests.functional.conftest import require_service, skip_or_fail
from tests.functional.swift_helpers import new_container, swift_options
from tests.functional.swift_helpers import server as swift_server
from tests.functional.swift_helpers import write_config as swift_config
from tests.functional.test_gridfs_conformance import write_config as gridfs_config
from tests.functional.test_http_conformance import docroot, make_stores, put, with_password
from tests.functional.test_s3_conformance import new_bucket, purge_bucket, s3_options
from tests.functional.test_s3_conformance import server as s3_server
from tests.functional.test_s3_conformance import write_config as s3_config

pytestmark = pytest.mark.functional
__all__ = ["docroot"]  # a fixture, used by name

WRONG = "wrong-" + uuid.uuid4().hex
"""The password of the wrong-credentials store: a secret too."""


def test_the_audit_catches_a_leak() -> None:
    """The check itself can fail: a secret logged at DEBUG, inside an exception, is found."""
    secret = "s3cr3t-" + uuid.uuid4().hex
    with secret_audit.audit([secret]) as collector:
        try:
            raise ValueError(f"token={secret}")
        except ValueError:
            logging.getLogger("some.library").debug("request failed", exc_info=True)
    with pytest.raises(AssertionError, match="show a harness secret"):
        secret_audit.assert_no_secret(collector)
    assert secret_audit.find_leaks([secret], ["nothing here"]) == []


def test_harness_secrets_are_collected() -> None:
    secrets = secret_audit.harness_secrets()
    if not secrets:
        skip_or_fail("no server is up: no harness secret to collect")
    assert all(len(s) >= secret_audit.MIN_LENGTH for s in secrets)
    assert not any(s.startswith("/") and os.path.exists(s) for s in secrets)


def must_fail(what: str, expected: type[Exception], call: Callable[[], object]) -> list[str]:
    """Run ``call``: it must raise ``expected`` (anything else propagates, and success fails
    the test); return the texts of the exception, for the secret check."""
    try:
        call()
    except expected as exc:
        return [str(exc), repr(exc), *map(str, exc.args)]
    pytest.fail(f"{what} succeeded; it must raise {expected.__name__}")


def exercise(
    stores: Stores, wrong: Stores | None, writable: bool, seed: Callable[[bytes], str] | None
) -> list[str]:
    """Every operation and error path; return the texts of every exception and location.

    Each error path must fail with its exception, so the audit never looks at the text
    of an error that did not happen."""
    shown: list[str] = [repr(stores)]
    small, big = os.urandom(100_000), os.urandom(6 * 1024 * 1024 + 17)
    locations = []
    if writable:
        for data in (small, big):
            result = stores.add(str(uuid.uuid4()), data, size=len(data))
            locations.append(result.location)
            shown += [result.location, repr(result)]
            shown += must_fail(
                "a second add of the same id",
                Duplicate,
                lambda: stores.add(result.image_id, data, size=len(data)),  # noqa: B023
            )
    else:
        assert seed is not None
        locations = [seed(small)]
    for location in locations:
        with stores.get(location) as reader:
            b"".join(reader)
        with stores.get(location, offset=10, length=1000) as reader:
            assert len(b"".join(reader)) == 1000
        stores.size(location)
    missing = locations[0].rsplit("/", 1)[0] + "/" + uuid.uuid4().hex
    calls: list[tuple[str, type[Exception], Callable[[], object]]] = [
        ("size of a missing image", NotFound, lambda: stores.size(missing))
    ]
    if writable:
        for location in locations:
            stores.delete(location)
        calls += [
            ("delete of a deleted image", NotFound, lambda: stores.delete(locations[0])),
            ("size of a deleted image", NotFound, lambda: stores.size(locations[0])),
        ]
    if wrong is not None:
        calls += [
            ("size with a wrong password", AuthenticationFailed, lambda: wrong.size(locations[0]))
        ]
        if writable:
            calls.append(
                (
                    "add with a wrong password",
                    AuthenticationFailed,
                    lambda: wrong.add(str(uuid.uuid4()), small, size=len(small)),
                )
            )
    for what, expected, call in calls:
        shown += must_fail(what, expected, call)
    return shown


@contextlib.contextmanager
def audited(extra: list[str]) -> Iterator[list[str]]:
    """Run the body at DEBUG; then no secret in any record or in the texts it returned."""
    secrets = [*secret_audit.harness_secrets(), WRONG, *extra]
    shown: list[str] = []
    spans = otel_sdk.installed().spans
    spans.clear()
    with secret_audit.audit(secrets) as collector:
        yield shown
    secret_audit.assert_no_secret(collector)
    leaks = secret_audit.find_leaks(secrets, shown)
    assert not leaks, f"a secret shows in an exception or location: {leaks[:3]}"
    traced = spans.get_finished_spans()
    assert any(s.status.description for s in traced), "no failed operation was traced"
    leaks = secret_audit.find_leaks(secrets, otel_sdk.span_texts(list(traced)))
    assert not leaks, f"a secret shows in a trace span: {leaks[:3]}"
    assert collector.count > 10, "hardly a log record: DEBUG logging did not reach the handler"


@pytest.mark.parametrize("service", ["ceph", "swift"])
def test_s3(service: str, tmp_path: Path) -> None:
    details = s3_server(service)
    bucket = new_bucket()
    options = s3_options(details, bucket, s3_store_large_object_size=5,
                         s3_store_large_object_chunk_size=5)  # fmt: skip
    bad = {**options, "s3_store_secret_key": WRONG}
    with audited([details["s3_secret_key"]]) as shown:
        with Stores.from_config_files(s3_config(tmp_path / "a.conf", options)) as stores, \
             Stores.from_config_files(s3_config(tmp_path / "b.conf", bad)) as wrong:  # fmt: skip
            try:
                shown += exercise(stores, wrong, True, None)
            finally:
                purge_bucket(stores.driver("s3"))


@pytest.mark.parametrize("service", ["swift", "ceph"])
def test_swift(service: str, tmp_path: Path) -> None:
    srv = swift_server(service)
    container = new_container()
    options = swift_options(srv, container, swift_store_large_object_size=5,
                            swift_store_large_object_chunk_size=1)  # fmt: skip
    bad = {**options, "swift_store_key": WRONG}
    with audited([srv["key"]]) as shown:
        with Stores.from_config_files(swift_config(tmp_path / "a.conf", options)) as stores, \
             Stores.from_config_files(swift_config(tmp_path / "b.conf", bad)) as wrong:  # fmt: skip
            shown += exercise(stores, wrong, True, None)


def test_gridfs(tmp_path: Path) -> None:
    mongo = require_service("mongo")
    options = {
        "mongodb_store_uri": mongo["uri_with_password"],
        "mongodb_store_db": f"audit_{uuid.uuid4().hex[:8]}",
        "mongodb_store_server_selection_timeout": 10,
    }
    # the password is percent-encoded in the URI (it has '@', ':', '/'...)
    quoted = urllib.parse.quote(mongo["password"], safe="")
    bad = {**options, "mongodb_store_uri": mongo["uri_with_password"].replace(quoted, WRONG)}
    assert bad["mongodb_store_uri"] != options["mongodb_store_uri"]
    with audited([mongo["password"]]) as shown:
        good_conf = gridfs_config(tmp_path / "a.conf", options)
        bad_conf = gridfs_config(tmp_path / "b.conf", bad)
        with Stores.from_config_files(good_conf) as stores, \
             Stores.from_config_files(bad_conf) as wrong:  # fmt: skip
            shown += exercise(stores, wrong, True, None)
            driver: Any = stores.driver("mongo")
            driver.client.drop_database(options["mongodb_store_db"])


@pytest.mark.parametrize("url_key", ["http_url", "https_url"])
def test_http(url_key: str, docroot: Path, tmp_path: Path, nginx: dict[str, Any]) -> None:
    base, password = with_password(nginx[url_key])
    options = {
        "http_allowed_networks": "127.0.0.0/8",
        "https_ca_certificates_file": nginx["ca_file"],
    }
    with audited([password]) as shown:
        with make_stores(tmp_path, options) as stores:
            shown += exercise(
                stores, None, False, lambda data: f"{base}/images/{put(docroot, data)}"
            )
