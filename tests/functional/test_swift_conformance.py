"""The conformance suite against the Swift driver on real Swift APIs.

* OpenStack Swift all-in-one with tempauth (auth v1): ``services up swift``
* Ceph radosgw's Swift API (auth v1): ``services up ceph``
* OpenStack Swift behind Keystone v3 (authtoken + keystoneauth): ``services up keystone``

Each server runs the whole suite with the defaults (images of known size are
one streaming PUT); Swift (tempauth and Keystone v3) and radosgw run it again
with every add a Static Large Object of 1 MiB segments uploaded 3 at a time,
and Swift (both) once more with Dynamic Large Objects; every variant runs every
size, 64 MiB included. The listing that proves nothing is left behind holds
every object of the test's own container, where the segments live too. The
harness's Keystone tokens live 10 s, so the longer Keystone cases also outlive
a token (the driver logs in again); test_swift_keystone_expiry.py makes a token
expire mid-transfer on purpose.

Swift (tempauth) also runs it once more over https, through nginx's TLS port in
front of its proxy (``services up nginx``; nginx hands out an https storage
URL), the harness's CA in ``swift_store_cacert``; the listing reads the same
container over plain http. With a CA that did not sign nginx's certificate
every operation fails with a :class:`BackendError` that says certificate
verification failed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imgstore import Stores
from imgstore.testing import ConformanceTests, StoreUnderTest
from tests.functional.conftest import require_service
from tests.functional.cross_sections import TLS_CROSS_SECTION
from tests.functional.swift_helpers import (
    SMALL_SEGMENTS,
    container_listing,
    make_stores_factory,
    new_container,
    server,
    swift_options,
    write_config,
)
from tests.functional.tls_helpers import assert_wrong_ca_refused


def https_server(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``server(name)`` with its auth URL through nginx's https port, and the option that
    makes the driver trust nginx's CA. Only ``swift`` (tempauth) has such a port here."""
    assert name == "swift", name
    nginx = require_service("nginx")
    srv = {**server(name), "auth_url": nginx["swift_https_auth_url"]}
    return srv, {"swift_store_cacert": nginx["ca_file"]}


pytestmark = pytest.mark.functional


SWIFT_RACE = (
    "Swift checks If-None-Match: * when a PUT starts: overlapping PUTs of one object all "
    "get 201 and the newest stays (no atomic create in Swift; two raw PUTs do the same)"
)
LAST_WRITER_WINS = {
    "swift": SWIFT_RACE,
    "keystone": SWIFT_RACE,
    "ceph": "radosgw's Swift API ignores If-None-Match: * (a PUT over an existing object "
    "gets 201): the driver's HEAD before the PUT is the only check",
}
"""Why racing adds of one id may all succeed, by server (the kit's race tests xfail)."""


class _SwiftConformance(ConformanceTests):
    service = ""
    extra: dict[str, Any] = {}  # noqa: RUF012 - read-only class default
    max_size: int | None = None

    def driver_server(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The server the driver under test talks to and the options added for it (the
        listing always reads ``server(service)``)."""
        return server(self.service), {}

    @pytest.fixture(scope="class")
    @classmethod
    def container(cls) -> str:
        return new_container()

    @pytest.fixture(scope="class")
    def class_stores(
        self, tmp_path_factory: pytest.TempPathFactory, container: str
    ) -> Iterator[tuple[Stores, Callable[[dict[str, Any]], Stores]]]:
        """One Stores for the class's tests, as an image service keeps one: its token and
        connections live on between tests (a Stores per test took a Keystone login and a
        token validation each, half the time of a Keystone class)."""
        driver_srv, options = self.driver_server()
        make_stores = make_stores_factory(
            tmp_path_factory.mktemp("swift"), driver_srv, container, {**self.extra, **options}
        )
        with make_stores({}) as stores:
            driver: Any = stores.driver("swift")
            assert driver.account is not None
            driver._ensure_container(driver.account, container)
            yield stores, make_stores

    @pytest.fixture
    def store_under_test(
        self,
        class_stores: tuple[Stores, Callable[[dict[str, Any]], Stores]],
        container: str,
    ) -> StoreUnderTest:
        srv = server(self.service)
        stores, make_stores = class_stores
        return StoreUnderTest(
            stores=stores,
            backend="swift",
            secrets=[srv["key"]],
            listing=container_listing(srv, container),
            max_size=self.max_size,
            make_stores=make_stores,
            last_writer_wins=LAST_WRITER_WINS.get(self.service, ""),
        )


SEGMENTED_CROSS_SECTION = (
    "test_round_trip[3chunk+7-unknown-file]",
    "test_round_trip[64MiB-known-file]",
    "test_ranged_read",
    "test_stream_size_mismatch[short-at-chunk-edge-pieces]",
    "test_failing_source[after-two-chunks-True]",
    "test_duplicate_add",
    "test_delete_then_get",
    "test_no_secret_in_write_output",
)
"""What the tempauth segmented classes keep of the kit: segments, ranges across them,
failures that must leave no segment, a duplicate, a delete of every segment."""


class TestSwiftConformance(_SwiftConformance):
    """Swift (tempauth), defaults."""

    service = "swift"


class TestSwiftSloConformance(_SwiftConformance):
    """Swift (tempauth), every add an SLO of 1 MiB segments: a cross-section of the kit
    (the Keystone class of the same segments on the same Swift runs it whole; the
    segments are written alike whatever the login)."""

    CROSS_SECTION = SEGMENTED_CROSS_SECTION

    service = "swift"
    extra = SMALL_SEGMENTS


class TestSwiftDloConformance(_SwiftConformance):
    """Swift (tempauth), every add a DLO of 1 MiB segments: a cross-section of the kit
    (the Keystone class of the same segments on the same Swift runs it whole; the
    segments are written alike whatever the login)."""

    CROSS_SECTION = SEGMENTED_CROSS_SECTION

    service = "swift"
    extra = {**SMALL_SEGMENTS, "swift_store_large_object_type": "dlo"}  # noqa: RUF012


class TestRadosgwSwiftConformance(_SwiftConformance):
    """radosgw's Swift API, defaults."""

    service = "ceph"


class TestRadosgwSwiftSloConformance(_SwiftConformance):
    """radosgw's Swift API, every add an SLO of 1 MiB segments."""

    service = "ceph"
    extra = SMALL_SEGMENTS


class TestKeystoneSwiftConformance(_SwiftConformance):
    """Swift behind Keystone v3 (authtoken + keystoneauth), defaults."""

    service = "keystone"


class TestKeystoneSwiftSloConformance(_SwiftConformance):
    """Swift behind Keystone v3, every add an SLO of 1 MiB segments."""

    service = "keystone"
    extra = SMALL_SEGMENTS


class TestKeystoneSwiftDloConformance(_SwiftConformance):
    """Swift behind Keystone v3, every add a DLO of 1 MiB segments."""

    service = "keystone"
    extra = {**SMALL_SEGMENTS, "swift_store_large_object_type": "dlo"}  # noqa: RUF012


class TestSwiftHttpsConformance(_SwiftConformance):
    """Swift (tempauth) through nginx's https port, the harness's CA in swift_store_cacert."""

    CROSS_SECTION = (*TLS_CROSS_SECTION, "test_storage_url_is_https")

    service = "swift"

    def driver_server(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return https_server(self.service)

    def test_storage_url_is_https(self, store_under_test: StoreUnderTest) -> None:
        """The kit above really went through TLS: nginx's storage URL and the locations."""
        image_id = str(uuid.uuid4())
        stores = store_under_test.stores
        result = stores.add(image_id, b"over tls", size=8)
        try:
            nginx = require_service("nginx")
            assert result.location.startswith(
                f"swift+https://{nginx['swift_https_url'].split('://')[1]}/"
            )
            driver: Any = stores.driver("swift")
            conn = driver.connection(driver.account)
            try:
                conn.head_account()
                assert conn.url.startswith(f"{nginx['swift_https_url']}/v1/AUTH_")
            finally:
                conn.close()
        finally:
            stores.delete(result.location)


def test_swift_https_with_a_wrong_ca(tmp_path: Path) -> None:
    """A CA that did not sign nginx's certificate: add and get fail with a BackendError that
    says certificate verification failed and names the server, with no secret; nothing of
    the failed add is left in the container."""
    srv, good_options = https_server("swift")
    wrong_options = {"swift_store_cacert": require_service("nginx")["wrong_ca_file"]}
    container = new_container()
    listing = container_listing(server("swift"), container)
    good_conf = write_config(tmp_path / "good.conf", swift_options(srv, container, **good_options))
    wrong_conf = write_config(
        tmp_path / "wrong.conf", swift_options(srv, container, **wrong_options)
    )
    server_url = srv["auth_url"].split("/auth/")[0]
    expected = (
        f"TLS certificate verification failed for {server_url} "
        "(unable to get local issuer certificate); set swift_store_cacert"
    )
    with Stores.from_config_files(good_conf) as stores:
        driver: Any = stores.driver("swift")
        present = stores.add(str(uuid.uuid4()), b"signed by the right CA", size=22)
        try:
            assert_wrong_ca_refused(wrong_conf, present, expected, [srv["key"]], listing)
        finally:
            stores.delete(present.location)
            driver.call(driver.account, "removing the container", "delete_container", container)
        assert listing() == set()
