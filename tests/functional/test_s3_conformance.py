"""The conformance suite against the S3 driver on two real S3 servers.

* Ceph radosgw (``python -m tests.functional.services up ceph``)
* OpenStack Swift's ``s3api`` (``python -m tests.functional.services up swift``)

Each server runs the whole suite twice: with the defaults (one PUT below
``s3_store_large_object_size``, boto3 checksums "when_required") and with every
add a multipart upload of 5 MiB parts and boto3's default checksums
("when_supported"). The listing that proves nothing is left behind holds every
object and every multipart upload in the bucket and, on Swift, every segment in
the ``<bucket>+segments`` container where s3api keeps the parts.

radosgw also runs it once more over https, through nginx's TLS port in front
of it (``services up nginx``), the harness's CA in ``s3_store_cacert``; with a
CA that did not sign nginx's certificate every operation fails with a
:class:`BackendError` that says certificate verification failed.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imgstore import Stores
from imgstore.testing import ConformanceTests, StoreUnderTest
from tests.functional.conftest import require_service
from tests.functional.cross_sections import TLS_CROSS_SECTION
from tests.functional.tls_helpers import assert_wrong_ca_refused

pytestmark = pytest.mark.functional

MULTIPART = {
    "s3_store_large_object_size": 0,
    "s3_store_large_object_chunk_size": 5,
    "s3_store_thread_pools": 3,
    "s3_store_enable_data_integrity_protection": True,
    "s3_store_request_checksum_calculation": "when_supported",
    "s3_store_response_checksum_validation": "when_supported",
}


def server(name: str) -> dict[str, Any]:
    """Connection details of the S3 endpoint of server ``name`` (a ceph cluster's radosgw,
    or swift's s3api)."""
    details = require_service(name)
    endpoint = details["rgw_endpoint"] if "rgw_endpoint" in details else details["s3_endpoint"]
    return {**details, "endpoint": endpoint}


def https_server(name: str) -> dict[str, Any]:
    """``server(name)`` reached through nginx's https port in front of it, with nginx's CA."""
    nginx = require_service("nginx")
    url = nginx["rgw_https_url"] if name == "ceph" else nginx["swift_https_url"]
    return {**server(name), "endpoint": url, "cacert": nginx["ca_file"]}


def s3_options(details: dict[str, Any], bucket: str, **extra: Any) -> dict[str, Any]:
    """The ``s3_store_*`` options for ``details``' endpoint (and CA) and ``bucket``."""
    return {
        "s3_store_host": details["endpoint"],
        "s3_store_access_key": details["s3_access_key"],
        "s3_store_secret_key": details["s3_secret_key"],
        "s3_store_bucket": bucket,
        "s3_store_create_bucket_on_put": True,
        "s3_store_bucket_url_format": "path",
        **({"s3_store_cacert": details["cacert"]} if "cacert" in details else {}),
        **extra,
    }


def write_config(path: Path, options: dict[str, Any]) -> Path:
    """A legacy ``[glance_store]`` file with one s3 store."""
    lines = ["[glance_store]", "stores = s3", "default_store = s3"]
    lines += [f"{key} = {value}" for key, value in options.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def purge_bucket(driver: Any, remove: bool = True) -> None:
    """Delete every object and multipart upload in the driver's bucket (and the bucket)."""
    client, bucket = driver.client, driver.bucket
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])
        for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            client.abort_multipart_upload(
                Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        if remove:
            client.delete_bucket(Bucket=bucket)
    except client.exceptions.NoSuchBucket:
        pass


def rgw_collect_garbage(details: dict[str, Any]) -> None:
    """Have radosgw free deleted objects now, not after its 2-hour GC delay.

    The test cluster's OSD keeps data in a few GiB of memory; without this the
    suite (and the RBD tests sharing the cluster) would fill it up.
    """
    if "ceph_conf" not in details:
        return
    subprocess.run(
        ["radosgw-admin", "-c", details["ceph_conf"], "gc", "process", "--include-all"],
        capture_output=True,
        timeout=120,
        check=False,
    )


def new_bucket() -> str:
    return f"imgstore-{uuid.uuid4().hex[:16]}"


def swift_segments(details: dict[str, Any], bucket: str) -> set[str]:
    """Objects in Swift's ``<bucket>+segments`` container (s3api's parts), via the Swift API."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    auth = urllib.request.Request(
        details["auth_url"],
        headers={"X-Auth-User": details["user"], "X-Auth-Key": details["key"]},
    )
    with opener.open(auth, timeout=10) as resp:
        token = resp.headers["X-Auth-Token"]
        storage = resp.headers["X-Storage-Url"]
    container = urllib.parse.quote(f"{bucket}+segments")
    req = urllib.request.Request(
        f"{storage}/{container}?format=json&limit=10000", headers={"X-Auth-Token": token}
    )
    try:
        with opener.open(req, timeout=10) as resp:
            return {f"segment:{o['name']}" for o in json.load(resp)}
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return set()
        raise


def bucket_listing(stores: Stores, backend: str, details: dict[str, Any]) -> Callable[[], set[str]]:
    """Every object, multipart upload (and Swift segment) in the backend's bucket."""
    driver: Any = stores.driver(backend)

    def listing() -> set[str]:
        client, bucket = driver.client, driver.bucket
        found: set[str] = set()
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                found |= {f"object:{o['Key']}" for o in page.get("Contents", [])}
            uploads = client.list_multipart_uploads(Bucket=bucket)
        except client.exceptions.NoSuchBucket:
            return found
        found |= {f"upload:{u['Key']}:{u['UploadId']}" for u in uploads.get("Uploads", [])}
        if "auth_url" in details:
            found |= swift_segments(details, bucket)
        return found

    return listing


LAST_WRITER_WINS = {
    "ceph": "",
    "swift": "s3api hands the PUT to Swift, which checks If-None-Match: * when the PUT "
    "starts: overlapping PUTs of one key all succeed and the newest stays",
}
"""Why racing adds of one id may all succeed, by server (the kit's race tests xfail)."""


class _S3Conformance(ConformanceTests):
    service = ""
    extra: dict[str, Any] = {}  # noqa: RUF012 - read-only class default

    @classmethod
    def details(cls) -> dict[str, Any]:
        """What the driver under test connects to (the cleanup always uses ``server``)."""
        return server(cls.service)

    @pytest.fixture(scope="class")
    @classmethod
    def bucket(cls) -> Iterator[str]:
        name = new_bucket()
        yield name
        details = server(cls.service)
        conf = s3_options(details, name)
        lines = ["[glance_store]", "stores = s3", "default_store = s3"]
        lines += [f"{k} = {v}" for k, v in conf.items()]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "cleanup.conf"
            path.write_text("\n".join(lines) + "\n")
            with Stores.from_config_files(path) as stores:
                purge_bucket(stores.driver("s3"))
        rgw_collect_garbage(details)

    @pytest.fixture
    def store_under_test(self, tmp_path: Path, bucket: str) -> Iterator[StoreUnderTest]:
        details = self.details()
        configs = iter(range(1000))

        def make_stores(overrides: dict[str, Any]) -> Stores:
            path = tmp_path / f"imgstore-{next(configs)}.conf"
            return Stores.from_config_files(
                write_config(path, s3_options(details, bucket, **self.extra, **overrides))
            )

        with make_stores({}) as stores:
            # the bucket exists before the first listing
            stores.driver("s3")._ensure_bucket()  # type: ignore[attr-defined]
            yield StoreUnderTest(
                stores=stores,
                backend="s3",
                secrets=[details["s3_secret_key"]],
                listing=bucket_listing(stores, "s3", details),
                make_stores=make_stores,
                last_writer_wins=LAST_WRITER_WINS.get(self.service, ""),
            )


class TestRadosgwConformance(_S3Conformance):
    """radosgw, defaults: single PUTs for known sizes, checksums when_required."""

    service = "ceph"


class TestRadosgwMultipartConformance(_S3Conformance):
    """radosgw, every add a multipart upload (5 MiB parts), boto3's default checksums."""

    service = "ceph"
    extra = MULTIPART


class TestSwiftS3Conformance(_S3Conformance):
    """Swift's s3api, defaults."""

    service = "swift"


class TestSwiftS3MultipartConformance(_S3Conformance):
    """Swift's s3api, every add a multipart upload, boto3's default checksums."""

    service = "swift"
    extra = MULTIPART


class TestRadosgwHttpsConformance(_S3Conformance):
    """radosgw through nginx's https port, the harness's CA in s3_store_cacert, defaults."""

    CROSS_SECTION = (*TLS_CROSS_SECTION, "test_locations_are_https")

    service = "ceph"

    @classmethod
    def details(cls) -> dict[str, Any]:
        return https_server(cls.service)

    def test_locations_are_https(self, store_under_test: StoreUnderTest) -> None:
        """The kit above really went through TLS: the driver's endpoint and locations."""
        image_id = str(uuid.uuid4())
        stores = store_under_test.stores
        result = stores.add(image_id, b"over tls", size=8)
        try:
            endpoint = https_server(self.service)["endpoint"]
            assert stores.driver("s3").endpoint_url == endpoint  # type: ignore[attr-defined]
            assert result.location.startswith(f"s3+https://{endpoint.split('://')[1]}/")
        finally:
            stores.delete(result.location)


def test_radosgw_https_with_a_wrong_ca(tmp_path: Path) -> None:
    """A CA that did not sign nginx's certificate: add and get fail with a BackendError that
    says certificate verification failed and names the endpoint, with no secret; nothing of
    the failed add is left in the bucket."""
    good = https_server("ceph")
    wrong = {**good, "cacert": require_service("nginx")["wrong_ca_file"]}
    bucket = new_bucket()
    good_conf = write_config(tmp_path / "good.conf", s3_options(good, bucket))
    wrong_conf = write_config(tmp_path / "wrong.conf", s3_options(wrong, bucket))
    expected = (
        f"TLS certificate verification failed for {good['endpoint']} "
        "(unable to get local issuer certificate); set s3_store_cacert"
    )
    with Stores.from_config_files(good_conf) as stores:
        driver: Any = stores.driver("s3")
        try:
            present = stores.add(str(uuid.uuid4()), b"signed by the right CA", size=22)
            assert_wrong_ca_refused(
                wrong_conf, present, expected, [good["s3_secret_key"], good["s3_access_key"]],
                bucket_listing(stores, "s3", good),
            )  # fmt: skip
        finally:
            purge_bucket(driver)
