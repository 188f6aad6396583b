"""The conformance suite against the Swift driver on real Swift APIs.

* OpenStack Swift all-in-one with tempauth (auth v1): ``services up swift``
* Ceph radosgw's Swift API (auth v1): ``services up ceph``
* OpenStack Swift behind Keystone v3 (authtoken + keystoneauth): ``services up keystone``

Each server runs the whole suite with the defaults (images of known size are
one streaming PUT); Swift and radosgw run it again with every add a Static
Large Object of 1 MiB segments uploaded 3 at a time, and Swift once more with
Dynamic Large Objects; every variant runs every size, 64 MiB included. The
listing that proves nothing is left behind holds every object of the test's
own container, where the segments live too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgstore.testing import ConformanceTests, StoreUnderTest
from tests.functional.swift_helpers import (
    SMALL_SEGMENTS,
    container_listing,
    make_stores_factory,
    new_container,
    server,
)

pytestmark = pytest.mark.functional


class _SwiftConformance(ConformanceTests):
    service = ""
    extra: dict[str, Any] = {}  # noqa: RUF012 - read-only class default
    max_size: int | None = None

    @pytest.fixture(scope="class")
    @classmethod
    def container(cls) -> str:
        return new_container()

    @pytest.fixture
    def store_under_test(self, tmp_path: Path, container: str) -> Iterator[StoreUnderTest]:
        srv = server(self.service)
        make_stores = make_stores_factory(tmp_path, srv, container, self.extra)
        with make_stores({}) as stores:
            driver: Any = stores.driver("swift")
            assert driver.account is not None
            driver._ensure_container(driver.account, container)
            yield StoreUnderTest(
                stores=stores,
                backend="swift",
                secrets=[srv["key"]],
                listing=container_listing(srv, container),
                max_size=self.max_size,
                make_stores=make_stores,
            )


class TestSwiftConformance(_SwiftConformance):
    """Swift (tempauth), defaults."""

    service = "swift"


class TestSwiftSloConformance(_SwiftConformance):
    """Swift (tempauth), every add an SLO of 1 MiB segments."""

    service = "swift"
    extra = SMALL_SEGMENTS


class TestSwiftDloConformance(_SwiftConformance):
    """Swift (tempauth), every add a DLO of 1 MiB segments."""

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
