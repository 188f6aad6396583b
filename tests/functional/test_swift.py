"""Swift-specific behaviour of the Swift driver, against the real Swift all-in-one.

(``python -m tests.functional.services up swift``; the large-object and
cleanup tests also run against radosgw's Swift API, ``up ceph``.)

* SLO and DLO round trips, with the manifest checked through a plain
  swiftclient connection; the segments of one add upload concurrently but
  never more than ``swift_store_thread_pools`` at once, with at most
  threads + 1 buffers;
* a DLO written the way glance_store writes it (``<obj>-00001`` segments, an
  ``X-Object-Manifest`` manifest) is read (whole and ranged) through its old
  ``user:key@`` location and deleted with every segment;
* a download cut mid-stream resumes with Range requests (whole and ranged
  reads) and fails with BackendUnavailable when the retries run out; the cut
  is made by a fault-injecting TCP relay on 127.0.0.1 (see CuttingProxy);
* a failed segmented upload leaves no segment behind;
* a token that stopped working is replaced by a new login in the middle of an
  upload; a wrong key is AuthenticationFailed without the key in the message;
* multi-tenant mode: a caller's token and storage URL or service catalog, an image
  container of its own, ACLs that share one image with another project (Keystone),
  and a location naming a host off the caller's catalog refused with no request made.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgstore import Stores
from imgstore.exceptions import (
    AuthenticationFailed,
    BackendError,
    BackendUnavailable,
    BadConfiguration,
    BadLocation,
    NotFound,
    SizeMismatch,
)
from imgstore.location import parse
from tests.functional.conftest import require_service
from tests.functional.cutting_proxy import CuttingProxy
from tests.functional.swift_helpers import (
    SMALL_SEGMENTS,
    container_listing,
    make_stores_factory,
    new_container,
    raw_connection,
    server,
)

pytestmark = pytest.mark.functional

MiB = 1 << 20


@pytest.fixture(params=["swift", "ceph"])
def srv(request: pytest.FixtureRequest) -> dict[str, Any]:
    return server(request.param)


@pytest.fixture
def container() -> str:
    return new_container()


@pytest.fixture
def make(tmp_path: Path, srv: dict[str, Any], container: str) -> Iterator[Any]:
    made: list[Stores] = []

    def make(**extra: Any) -> Stores:
        stores = make_stores_factory(tmp_path, srv, container, extra)({})
        made.append(stores)
        return stores

    yield make
    for stores in made:
        stores.close()


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_slo_round_trip_is_a_static_large_object(
    make: Any, srv: dict[str, Any], container: str
) -> None:
    stores = make(**SMALL_SEGMENTS)
    data = os.urandom(5 * MiB + 12345)  # not a multiple of the segment size
    result = stores.add("slo-" + uuid.uuid4().hex, _chunks(data, 300_000))  # unknown size
    assert result.metadata["segments"] == 6
    conn = raw_connection(srv)
    headers = conn.head_object(container, result.image_id)
    assert headers["x-static-large-object"].lower() == "true"
    assert int(headers["content-length"]) == len(data)
    with stores.get(result.location) as reader:
        assert reader.read_all() == data
    with stores.get(result.location, offset=MiB - 10, length=2 * MiB + 20) as reader:
        assert reader.read_all() == data[MiB - 10 : 3 * MiB + 10]
    assert len(container_listing(srv, container)()) == 7
    stores.delete(result.location)
    assert container_listing(srv, container)() == set()


@pytest.mark.parametrize("srv", ["swift"], indirect=True)
@pytest.mark.parametrize("kept", [1, 2])
def test_slo_manifest_kept_by_the_bulk_delete_is_deleted_again(
    make: Any, srv: dict[str, Any], container: str, kept: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Swift answers an SLO delete with 200 even when some of its deletes failed (a
    token that expired half way: the errors are in the body). Fault injected here (the
    real server does it only with that timing): the first ``kept`` deletes remove the
    segments, really, but leave the manifest."""
    stores = make(**SMALL_SEGMENTS)
    result = stores.add("kept-" + uuid.uuid4().hex, io.BytesIO(os.urandom(3 * MiB)))
    driver: Any = stores.driver("swift")
    conn = raw_connection(srv)
    real_call = driver.call
    left = [kept]

    def call(account: Any, doing: str, method: str, *args: Any, **kw: Any) -> Any:
        if method == "delete_object" and kw.get("query_string") == "multipart-manifest=delete":
            if left[0]:
                left[0] -= 1
                for name in container_listing(srv, container)():
                    if name != result.image_id:
                        with contextlib.suppress(Exception):
                            conn.delete_object(container, name)
                return None
        return real_call(account, doing, method, *args, **kw)

    monkeypatch.setattr(driver, "call", call)
    if kept == 1:
        stores.delete(result.location)
        assert container_listing(srv, container)() == set()
    else:
        with pytest.raises(BackendError, match="kept the manifest"):
            stores.delete(result.location)
        assert container_listing(srv, container)() == {result.image_id}
        conn.delete_object(container, result.image_id)


def test_dlo_round_trip(make: Any, srv: dict[str, Any], container: str) -> None:
    stores = make(**SMALL_SEGMENTS, swift_store_large_object_type="dlo")
    data = os.urandom(3 * MiB + 7)
    result = stores.add("dlo-" + uuid.uuid4().hex, io.BytesIO(data), size=len(data))
    headers = raw_connection(srv).head_object(container, result.image_id)
    assert headers["x-object-manifest"].startswith(f"{container}/{result.image_id}-")
    assert stores.size(result.location) == len(data)
    with stores.get(result.location) as reader:
        assert reader.read_all() == data
    stores.delete(result.location)
    assert container_listing(srv, container)() == set()


def test_segments_upload_concurrently_within_the_bound(make: Any, container: str) -> None:
    stores = make(**SMALL_SEGMENTS)
    driver: Any = stores.driver("swift")
    writer = driver.begin_write("bound-" + uuid.uuid4().hex, None)
    block = memoryview(bytearray(os.urandom(256 * 1024)))
    try:
        for _ in range(48):  # 12 segments of 1 MiB
            writer.write(block)
        written = writer.commit(48 * len(block))
    except BaseException:
        writer.abort()
        raise
    assert 1 < writer.peak_uploads <= 3
    assert writer.buffers_allocated <= 3 + 1
    assert stores.size(str(written.location)) == 12 * MiB
    stores.delete(str(written.location))


def test_glance_store_dlo_is_read_and_deleted(
    make: Any, srv: dict[str, Any], container: str
) -> None:
    stores = make()
    conn = raw_connection(srv)
    conn.put_container(container)
    image_id = str(uuid.uuid4())
    pieces = [os.urandom(MiB), os.urandom(MiB), os.urandom(1000)]
    for n, piece in enumerate(pieces, start=1):  # glance_store's names: <obj>-%05d
        conn.put_object(container, f"{image_id}-{n:05d}", piece)
    conn.put_object(
        container, image_id, b"", headers={"X-Object-Manifest": f"{container}/{image_id}-"}
    )
    data = b"".join(pieces)
    # the location as glance_store wrote it: credentials inside
    scheme, rest = srv["auth_url"].split("://", 1)
    user = srv["user"].replace(":", "%3A")
    old = f"swift+{scheme}://{user}:{srv['key']}@{rest}/{container}/{image_id}"
    assert srv["key"] not in repr(stores.driver().parse(old))
    assert stores.size(old) == len(data)
    with stores.get(old) as reader:
        assert reader.read_all() == data
        assert srv["key"] not in repr(reader)
    with stores.get(old, offset=MiB - 5, length=MiB + 10) as reader:
        assert reader.read_all() == data[MiB - 5 : 2 * MiB + 5]
    stores.delete(old)
    assert container_listing(srv, container)() == set()
    with pytest.raises(NotFound):
        stores.size(old)


def test_failed_segmented_upload_leaves_no_segment(
    make: Any, srv: dict[str, Any], container: str
) -> None:
    stores = make(**SMALL_SEGMENTS)
    listing = container_listing(srv, container)

    broke = OSError("the source broke after 7 MiB")

    def source() -> Iterator[bytes]:
        for _ in range(7):
            yield os.urandom(MiB)
        raise broke

    with pytest.raises(OSError) as raised:  # the source's own error, unchanged
        stores.add("fail-" + uuid.uuid4().hex, source())
    assert raised.value is broke
    assert listing() == set()
    # a declared size the stream does not reach: the core's SizeMismatch, with the sizes
    with pytest.raises(SizeMismatch, match=f"ended after {3 * MiB} bytes, but {4 * MiB} were"):
        stores.add("short-" + uuid.uuid4().hex, io.BytesIO(os.urandom(3 * MiB)), size=4 * MiB)
    assert listing() == set()


def test_expired_token_is_replaced_during_an_upload(make: Any, container: str) -> None:
    stores = make(**SMALL_SEGMENTS)
    driver: Any = stores.driver("swift")
    first = stores.add("tok-" + uuid.uuid4().hex, io.BytesIO(b"x" * 10), size=10)
    url, _token = driver._tokens[driver.account]
    # the token the driver holds stops working (as an expired one does): the
    # server answers 401 and the driver must log in again and go on
    driver._tokens[driver.account] = (url, "AUTH_tk" + "0" * 32)
    data = os.urandom(3 * MiB + 1)
    result = stores.add("tok2-" + uuid.uuid4().hex, io.BytesIO(data), size=len(data))
    assert driver._tokens[driver.account][1] != "AUTH_tk" + "0" * 32  # logged in again
    with stores.get(result.location) as reader:
        assert reader.read_all() == data
    stores.delete(result.location)
    stores.delete(first.location)


def test_wrong_key_is_authentication_failed(
    tmp_path: Path, srv: dict[str, Any], container: str
) -> None:
    bad = {**srv, "key": "not-the-key-" + uuid.uuid4().hex}
    with make_stores_factory(tmp_path, bad, container, {})({}) as stores:
        with pytest.raises(AuthenticationFailed) as info:
            stores.add("auth-" + uuid.uuid4().hex, io.BytesIO(b"abc"), size=3)
    assert bad["key"] not in str(info.value)


def test_multi_tenant_uses_the_callers_token(
    tmp_path: Path, srv: dict[str, Any], container: str
) -> None:
    conn = raw_connection(srv)
    storage_url, token = conn.get_auth()
    conf = tmp_path / "mt.conf"
    conf.write_text(
        "[glance_store]\nstores = swift\ndefault_store = swift\n"
        f"swift_store_multi_tenant = true\nswift_store_container = {container}\n"
        "swift_store_create_container_on_put = true\n"
    )
    with Stores.from_config_files(conf) as stores:
        driver: Any = stores.driver("swift")
        with pytest.raises(AuthenticationFailed):
            stores.add("mt-" + uuid.uuid4().hex, io.BytesIO(b"abc"), size=3)
        data = os.urandom(2 * MiB + 3)
        with driver.credentials(token=token, storage_url=storage_url):
            result = stores.add("mt-" + uuid.uuid4().hex, io.BytesIO(data), size=len(data))
        # glance_store's multi-tenant layout: a container of the image's own
        own = f"{container}_{result.image_id}"
        assert result.location.endswith(f"/{own}/{result.image_id}")
        assert storage_url.split("://", 1)[1] in result.location
        assert token not in result.location
        with driver.credentials(token=token, storage_url=storage_url):
            with stores.get(result.location) as reader:
                assert reader.read_all() == data
        with driver.credentials(token="AUTH_tk" + "1" * 32, storage_url=storage_url):
            with pytest.raises(AuthenticationFailed):
                stores.size(result.location)
        with driver.credentials(token=token, storage_url=storage_url):
            stores.delete(result.location)
        assert own not in [c["name"] for c in conn.get_account(full_listing=True)[1]]


def _multi_tenant_stores(tmp_path: Path, container: str, **extra: Any) -> Stores:
    conf = tmp_path / f"mt-{uuid.uuid4().hex[:6]}.conf"
    lines = [
        "[glance_store]", "stores = swift", "default_store = swift",
        "swift_store_multi_tenant = true", f"swift_store_container = {container}",
    ]  # fmt: skip
    conf.write_text("\n".join([*lines, *(f"{k} = {v}" for k, v in extra.items())]) + "\n")
    return Stores.from_config_files(conf)


def _catalog(*urls: str) -> list[dict[str, Any]]:
    """A Keystone v2 service catalog (as Glance's request context holds it)."""
    return [{"type": "object-store", "endpoints": [{"publicURL": u} for u in urls]}]


def test_multi_tenant_finds_its_storage_url_in_the_callers_catalog(
    tmp_path: Path, container: str
) -> None:
    storage_url, token = raw_connection(server("swift")).get_auth()
    with _multi_tenant_stores(tmp_path, container) as stores:
        driver: Any = stores.driver("swift")
        data = os.urandom(MiB + 5)
        with driver.credentials(token=token, catalog=_catalog(storage_url)):
            result = stores.add("mt-" + uuid.uuid4().hex, io.BytesIO(data), size=len(data))
            assert storage_url.split("://", 1)[1] in result.location
            with stores.get(result.location) as reader:
                assert reader.read_all() == data
            stores.delete(result.location)
            with pytest.raises(NotFound):
                stores.size(result.location)
        with pytest.raises(BadConfiguration, match="no 'object-store' endpoint"):
            with driver.credentials(token=token, catalog=[]):
                pass


def test_a_location_off_the_callers_catalog_gets_no_request(tmp_path: Path, container: str) -> None:
    """A crafted location naming another host never receives the caller's token: the
    listener (standing in for the attacker's host) sees no connection. The control at the
    end puts the same listener in the catalog and sees the connection arrive."""
    storage_url, token = raw_connection(server("swift")).get_auth()
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        listener.setblocking(False)
        port = listener.getsockname()[1]
        account = storage_url.rsplit("/", 1)[1]
        stores = stack.enter_context(
            _multi_tenant_stores(tmp_path, container, swift_store_retries=0, swift_store_timeout=1)
        )
        driver: Any = stores.driver("swift")
        hostile = [
            f"swift+http://127.0.0.1:{port}/v1/{account}/c/img",
            f"swift+http://0x7f.1:{port}/v1/{account}/c/img",
            f"swift+https://127.0.0.1:{port}/v1/{account}/c/img",
        ]
        with driver.credentials(token=token, catalog=_catalog(storage_url)):
            for location in hostile:
                for call in (stores.size, stores.delete, lambda loc: stores.get(loc).close()):
                    with pytest.raises(BadLocation, match="not an object-store endpoint"):
                        call(location)
        with pytest.raises(BlockingIOError):
            listener.accept()  # no connection was made
        # control: the listener in the catalog is reached (it never answers: a timeout)
        trusted = f"http://127.0.0.1:{port}/v1/AUTH_x"
        with driver.credentials(token=token, catalog=_catalog(storage_url, trusted)):
            with pytest.raises(BackendUnavailable):
                stores.size(hostile[0])
        accepted, _ = listener.accept()
        accepted.close()


def test_multi_tenant_acls_share_one_image_with_another_project(
    tmp_path: Path, container: str
) -> None:
    """glance_store's set_acls on Swift with Keystone (keystoneauth): another project
    reads the image only while its container's read ACL names that project."""
    demo = server("keystone")
    details = demo["details"]
    alt = {
        **demo,
        "user": f"{details['alt_project']}:{details['alt_user']}",
        "key": details["alt_password"],
    }
    demo_url, demo_token = raw_connection(demo).get_auth()
    alt_url, alt_token = raw_connection(alt).get_auth()
    alt_project = alt_url.rsplit("/AUTH_", 1)[1]
    with _multi_tenant_stores(tmp_path, container) as stores:
        driver: Any = stores.driver("swift")
        data = os.urandom(MiB + 7)
        with driver.credentials(token=demo_token, catalog=_catalog(demo_url)):
            result = stores.add("acl-" + uuid.uuid4().hex, io.BytesIO(data), size=len(data))
        # the alt project's own catalog: the demo account is on the same endpoint
        as_alt = driver.credentials(token=alt_token, catalog=_catalog(alt_url))
        with as_alt:
            with pytest.raises(AuthenticationFailed):
                stores.size(result.location)
        with driver.credentials(token=demo_token, catalog=_catalog(demo_url)):
            driver.set_acls(parse(result.location), read_tenants=[alt_project])
        with driver.credentials(token=alt_token, catalog=_catalog(alt_url)):
            with stores.get(result.location) as reader:
                assert reader.read_all() == data
        with driver.credentials(token=demo_token, catalog=_catalog(demo_url)):
            driver.set_acls(parse(result.location), read_tenants=[])
        with driver.credentials(token=alt_token, catalog=_catalog(alt_url)):
            with pytest.raises(AuthenticationFailed):
                stores.size(result.location)
        with driver.credentials(token=demo_token, catalog=_catalog(demo_url)):
            stores.delete(result.location)


# -- a download cut mid-stream ---------------------------------------------------


@pytest.fixture
def cut_download(tmp_path: Path, container: str) -> Iterator[Any]:
    """``(stores, location, data, proxy)`` makers for an image read through a CuttingProxy."""
    srv = server("swift")
    details = require_service("swift")
    made: list[Any] = []

    def make(retries: int, cuts: int) -> tuple[Stores, str, bytes, CuttingProxy]:
        conn = raw_connection(srv)
        storage_url, token = conn.get_auth()
        conn.put_container(container)
        data = os.urandom(24 * MiB)
        image_id = "cut-" + uuid.uuid4().hex
        conn.put_object(container, image_id, data)
        proxy = CuttingProxy(details["ports"]["proxy"], after=2 * MiB, cuts=cuts)
        conf = tmp_path / f"cut-{len(made)}.conf"
        conf.write_text(
            "[glance_store]\nstores = swift\ndefault_store = swift\n"
            f"swift_store_multi_tenant = true\nswift_store_container = {container}\n"
            f"swift_store_retry_get_count = {retries}\n"
        )
        stores = Stores.from_config_files(conf)
        relayed = storage_url.replace(f":{details['ports']['proxy']}/", f":{proxy.port}/")
        made.append((stores, proxy, conn, image_id))
        ctx = stores.driver("swift").credentials(token=token, storage_url=relayed)  # type: ignore[attr-defined]
        ctx.__enter__()
        made[-1] = (*made[-1], ctx)
        location = f"swift+http://{relayed.split('://', 1)[1]}/{container}/{image_id}"
        return stores, location, data, proxy

    yield make
    for stores, proxy, conn, image_id, ctx in made:
        ctx.__exit__(None, None, None)
        stores.close()
        proxy.close()
        conn.delete_object(container, image_id)


def test_cut_download_resumes(cut_download: Any, caplog: pytest.LogCaptureFixture) -> None:
    stores, location, data, proxy = cut_download(retries=3, cuts=2)
    digest = hashlib.sha256()
    with caplog.at_level(logging.WARNING, logger="imgstore.pipeline"):
        with stores.get(location) as reader:
            got = 0
            for chunk in reader:
                digest.update(chunk)
                got += len(chunk)
    assert proxy.cut == 2, "the relay did not cut the download"
    assert got == len(data)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert sum("resuming" in r.getMessage() for r in caplog.records) == 2


def test_cut_ranged_download_resumes(cut_download: Any) -> None:
    stores, location, data, proxy = cut_download(retries=1, cuts=1)
    with stores.get(location, offset=MiB + 3, length=12 * MiB) as reader:
        assert reader.read_all() == data[MiB + 3 : 13 * MiB + 3]
    assert proxy.cut == 1


def test_cut_download_without_retries_fails(cut_download: Any) -> None:
    stores, location, _data, proxy = cut_download(retries=1, cuts=2)
    with pytest.raises(BackendUnavailable):
        with stores.get(location) as reader:
            for _ in reader:
                pass
    assert proxy.cut == 2


# -- Keystone v3 ---------------------------------------------------------------------


def test_keystone_another_projects_token_is_refused(tmp_path: Path, container: str) -> None:
    demo = server("keystone")
    details = demo["details"]
    alt = {
        **demo,
        "user": f"{details['alt_project']}:{details['alt_user']}",
        "key": details["alt_password"],
    }
    with make_stores_factory(tmp_path, demo, container, SMALL_SEGMENTS)({}) as stores:
        data = os.urandom(2 * MiB + 1)
        result = stores.add("ks-" + uuid.uuid4().hex, io.BytesIO(data), size=len(data))
        assert f"AUTH_{details['project_id']}" in raw_connection(demo).get_auth()[0]
        alt_url, alt_token = raw_connection(alt).get_auth()
        demo_url = raw_connection(demo).get_auth()[0]
        driver: Any = stores.driver("swift")
        # alt's token on demo's account: Swift (keystoneauth) says 403
        with driver.credentials(token=alt_token, storage_url=demo_url):
            loc = f"swift+http://{demo_url.split('://', 1)[1]}/{container}/{result.image_id}"
            with pytest.raises(AuthenticationFailed):
                stores.size(loc)
            with pytest.raises(AuthenticationFailed):
                stores.add("ks2-" + uuid.uuid4().hex, io.BytesIO(b"abc"), size=3)
        assert alt_url != demo_url
        with stores.get(result.location) as reader:
            assert reader.read_all() == data
        stores.delete(result.location)
    # a wrong password: AuthenticationFailed, the password never shown
    bad = {**demo, "key": "wrong-" + uuid.uuid4().hex}
    with make_stores_factory(tmp_path, bad, container, {})({}) as stores:
        with pytest.raises(AuthenticationFailed) as info:
            stores.size(f"swift+http://{bad['auth_url'].split('://', 1)[1]}/{container}/nothing")
    assert bad["key"] not in str(info.value)
