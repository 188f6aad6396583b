"""The vmware driver against vcsim (``python -m tests.functional.services up vmware``).

The conformance kit runs against datastore ``LocalDS_0``; the listing that
proves nothing is left behind is every file and folder under the real
directories backing both datastores. Then the VMware-specific behaviour:
one login for many operations, renewal after the server ended the session,
datastore choice by weight and free space, TLS verified against the
generated CA (and refused with another one), a wrong password.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from imgstore import Stores
from imgstore.drivers.vmware import VMwareDriver, VsphereLocation
from imgstore.exceptions import (
    AuthenticationFailed,
    BackendError,
    Duplicate,
    NotFound,
    StorageFull,
)
from imgstore.location import parse
from imgstore.testing import ConformanceTests, StoreUnderTest

pytestmark = pytest.mark.functional

IMAGE_DIR = "openstack_glance"


def write_config(path: Path, options: dict[str, Any], core: dict[str, Any] | None = None) -> Path:
    """A multi-store config with one vmware backend named ``vc``."""
    lines = ["[DEFAULT]", "enabled_backends = vc:vmware", "[glance_store]", "default_backend = vc"]
    lines += [f"{k} = {v}" for k, v in (core or {}).items()]
    lines.append("[vc]")
    for key, value in options.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key} = {item}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def vc_options(vmware: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Options for the running vcsim (TLS verified against its CA)."""
    return {
        "vmware_server_host": vmware["host"],
        "vmware_server_port": vmware["port"],
        "vmware_server_username": vmware["user"],
        "vmware_server_password": vmware["password"],
        "vmware_ca_file": vmware["ca_file"],
        "vmware_api_retry_count": 2,
        "vmware_task_poll_interval": 1,
        "vmware_store_image_dir": f"/{IMAGE_DIR}",
        "vmware_datastores": [f"{vmware['datacenter']}:LocalDS_0:10"],
        **extra,
    }


def datastore_listing(vmware: dict[str, Any]) -> set[str]:
    """Every file and folder on vcsim's datastores (hidden and partial ones included),
    but for the image directories themselves: the first add to a datastore makes one,
    and it stays, as it does on a real datastore."""
    found = set()
    for name, root in vmware["datastore_dirs"].items():
        for dirpath, dirnames, filenames in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            for entry in dirnames + filenames:
                path = os.path.normpath(os.path.join(rel, entry))
                if path != IMAGE_DIR:
                    found.add(f"[{name}] {path}")
    return found


@pytest.fixture(scope="module")
def make_stores(vmware: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("vmware-conf")
    counter = iter(range(10_000))

    def make(core: dict[str, Any] | None = None, **extra: Any) -> Stores:
        path = folder / f"imgstore-{next(counter)}.conf"
        return Stores.from_config_files(write_config(path, vc_options(vmware, **extra), core))

    yield make


@pytest.fixture(scope="module")
def shared_stores(make_stores: Any) -> Iterator[Stores]:
    """One Stores for the whole conformance run: one login (it costs seconds)."""
    with make_stores() as stores:
        yield stores


class TestVMwareConformance(ConformanceTests):
    """The shared kit against datastore LocalDS_0 of vcsim, TLS verified."""

    @pytest.fixture
    def store_under_test(
        self, vmware: dict[str, Any], shared_stores: Stores, make_stores: Any
    ) -> Iterator[StoreUnderTest]:
        yield StoreUnderTest(
            stores=shared_stores,
            backend="vc",
            secrets=[vmware["password"]],
            listing=lambda: datastore_listing(vmware),
            make_stores=make_stores,
        )


# -- VMware-specific behaviour ---------------------------------------------------------


def admin_session(vmware: dict[str, Any]) -> Any:
    """An oslo.vmware session of the test itself (to look at and end the driver's sessions)."""
    from oslo_vmware import api

    return api.VMwareAPISession(
        vmware["host"], vmware["user"], vmware["password"], 2, 1,
        port=vmware["port"], cacert=vmware["ca_file"], insecure=False,
    )  # fmt: skip


def session_keys(admin: Any) -> set[str]:
    """The keys of every session the server holds."""
    from oslo_vmware import vim_util

    found = admin.invoke_api(
        vim_util, "get_object_property", admin.vim,
        admin.vim.service_content.sessionManager, "sessionList",
    )  # fmt: skip
    return {str(s.key) for s in (getattr(found, "UserSession", None) or [])}


def current_key(drv: VMwareDriver) -> str:
    api = drv._session()
    return str(api._session_id)


@pytest.fixture(scope="module")
def admin(vmware: dict[str, Any]) -> Iterator[Any]:
    session = admin_session(vmware)
    yield session
    session.logout()


def _id() -> str:
    return f"vmw-{uuid.uuid4().hex[:12]}"


def test_one_login_for_many_operations(make_stores: Any, admin: Any) -> None:
    before = session_keys(admin)
    with make_stores() as stores:
        drv = stores.driver("vc")
        assert isinstance(drv, VMwareDriver)
        assert drv.logins == 0  # no login before the first operation
        results = []

        def work() -> None:
            for _ in range(3):
                data = os.urandom(100_000)
                res = stores.add(_id(), data, size=len(data))
                assert stores.get(res.location).read_all() == data
                assert stores.size(res.location) == len(data)
                results.append(res)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 12
        for res in results:
            stores.delete(res.location)
        assert drv.logins == 1
        new = session_keys(admin) - before
        assert new == {current_key(drv)}, "exactly one new server session"


def test_session_ended_by_the_server_is_renewed(
    make_stores: Any, admin: Any, vmware: dict[str, Any]
) -> None:
    """TerminateSession from another session ends the driver's: the next SOAP call
    (delete) logs in again by itself (oslo.vmware's NotAuthenticated handling)."""
    with make_stores() as stores:
        drv = stores.driver("vc")
        assert isinstance(drv, VMwareDriver)
        first = stores.add(_id(), b"x" * 1000, size=1000)
        old = current_key(drv)
        admin.invoke_api(
            admin.vim, "TerminateSession", admin.vim.service_content.sessionManager,
            sessionId=[old],
        )  # fmt: skip
        assert old not in session_keys(admin)
        stores.delete(first.location)
        assert current_key(drv) != old
        assert current_key(drv) in session_keys(admin)
        with pytest.raises(NotFound):
            stores.size(first.location)


class _RejectStaleCookies(requests.adapters.HTTPAdapter):
    """FAULT INJECTOR (vcsim cannot produce this): vcsim's /folder handler never checks
    the session cookie, while ESX and vCenter answer 401 to a cookie of an ended
    session. This adapter emulates that check: a request carrying a cookie in
    ``revoked`` gets a 401 without reaching vcsim; everything else goes through."""

    def __init__(self, revoked: set[str]) -> None:
        super().__init__()
        self.revoked = revoked
        self.rejected = 0

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        if request.headers.get("Cookie") in self.revoked:
            self.rejected += 1
            resp = requests.Response()
            resp.status_code = 401
            resp.request = request
            resp.url = request.url or ""
            resp.raw = None
            return resp
        return super().send(request, *args, **kwargs)


def test_401_on_the_datastore_interface_renews_the_session(make_stores: Any, admin: Any) -> None:
    with make_stores() as stores:
        drv = stores.driver("vc")
        assert isinstance(drv, VMwareDriver)
        data = os.urandom(300_000)
        res = stores.add(_id(), data, size=len(data))
        stale_key, stale_cookie = current_key(drv), drv.cookie_header()
        admin.invoke_api(
            admin.vim, "TerminateSession", admin.vim.service_content.sessionManager,
            sessionId=[stale_key],
        )  # fmt: skip
        injector = _RejectStaleCookies({stale_cookie})
        drv.http.mount("https://", injector)
        try:
            # a read with the ended session's cookie: 401, one new login, retried
            assert stores.get(res.location, offset=7, length=1000).read_all() == data[7:1007]
            assert injector.rejected == 1
            assert drv.logins == 2
            assert drv.cookie_header() != stale_cookie
            assert current_key(drv) in session_keys(admin)
            # the new session serves every following operation, uploads included
            more = os.urandom(50_000)
            res2 = stores.add(_id(), iter([more[:20_000], more[20_000:]]), size=None)
            assert stores.get(res2.location).read_all() == more
            assert stores.size(res.location) == len(data)
            assert injector.rejected == 1 and drv.logins == 2
        finally:
            for r in (res, locals().get("res2")):
                if r is not None:
                    stores.delete(r.location)


def test_datastore_by_weight_then_free_space(make_stores: Any, vmware: dict[str, Any]) -> None:
    dc = vmware["datacenter"]
    before = datastore_listing(vmware)
    # the heavier datastore wins, whichever order the options come in
    for order in (["LocalDS_0:1", "LocalDS_1:7"], ["LocalDS_1:7", "LocalDS_0:1"]):
        with make_stores(vmware_datastores=[f"{dc}:{e}" for e in order]) as stores:
            res = stores.add(_id(), b"weighted", size=8)
            loc = parse(res.location)
            assert isinstance(loc, VsphereLocation) and loc.datastore == "LocalDS_1"
            stores.delete(res.location)
    # equal weights: the one with more free space, as the server reports it now
    with make_stores(vmware_datastores=[f"{dc}:LocalDS_0:3", f"{dc}:LocalDS_1:3"]) as stores:
        drv = stores.driver("vc")
        assert isinstance(drv, VMwareDriver)
        free = {s.datastore: drv.free_space(s) for s in drv.datastores}
        res = stores.add(_id(), b"roomy", size=5)
        loc = parse(res.location)
        assert isinstance(loc, VsphereLocation)
        assert free[loc.datastore] == max(free.values())
        stores.delete(res.location)
        # an image of known size larger than any datastore's free space: StorageFull
        too_big = max(free.values()) + 1
        with pytest.raises(StorageFull):
            stores.add(_id(), iter([b"never sent"]), size=too_big)
    assert datastore_listing(vmware) == before


def test_duplicate_is_checked_before_any_byte(make_stores: Any, vmware: dict[str, Any]) -> None:
    with make_stores() as stores:
        image_id = _id()
        res = stores.add(image_id, b"first", size=5)
        before = datastore_listing(vmware)
        with pytest.raises(Duplicate):
            stores.add(image_id, iter([b"second!"]), size=None)
        assert datastore_listing(vmware) == before
        assert stores.get(res.location).read_all() == b"first"
        stores.delete(res.location)


def test_failed_add_leaves_no_file(make_stores: Any, vmware: dict[str, Any]) -> None:
    class Broken(Exception):
        pass

    def source() -> Iterator[bytes]:
        yield os.urandom(5 << 20)
        yield os.urandom(3 << 20)
        raise Broken("the source broke")

    before = datastore_listing(vmware)
    with make_stores() as stores:
        for size in (None, 64 << 20):
            with pytest.raises(Broken):
                stores.add(_id(), source(), size=size)
            assert datastore_listing(vmware) == before


def test_tls_verified_and_refused_with_another_ca(make_stores: Any, vmware: dict[str, Any]) -> None:
    with make_stores() as stores:  # vmware_ca_file = the generated CA: works
        res = stores.add(_id(), b"tls", size=3)
        stores.delete(res.location)
    with make_stores(vmware_ca_file=vmware["wrong_ca_file"]) as stores:
        with pytest.raises(BackendError) as raised:
            stores.add(_id(), b"tls", size=3)
        assert "TLS" in str(raised.value)
        assert vmware["password"] not in str(raised.value)


def test_wrong_password_is_authentication_failed(
    make_stores: Any, vmware: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    with make_stores(vmware_server_password="not-" + vmware["password"]) as stores:
        with pytest.raises(AuthenticationFailed) as raised:
            stores.size(
                f"vsphere://{vmware['host']}:{vmware['port']}/folder/{IMAGE_DIR}/x"
                f"?dcPath={vmware['datacenter']}&dsName=LocalDS_0"
            )
    assert vmware["password"] not in str(raised.value)
    assert vmware["password"] not in caplog.text
