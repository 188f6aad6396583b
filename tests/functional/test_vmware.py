"""The vmware driver against vcsim (``python -m tests.functional.services up vmware``).

The conformance kit runs against datastore ``LocalDS_0``; the listing that
proves nothing is left behind is every file and folder under the real
directories backing both datastores. Then the VMware-specific behaviour:
one login for many operations, renewal after the server ended the session,
datastore choice by weight and free space, TLS verified against the
generated CA (and refused with another one), a wrong password; uploads go to a
hidden temporary file moved into place on commit, so a writer killed
mid-upload leaves nothing under the image's name, and ``Stores.cleanup``
finds and removes what it left.
"""

from __future__ import annotations

import concurrent.futures
import os
import select
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from imgstore import AddResult, Stores
from imgstore.driver import is_partial_name
from imgstore.drivers.vmware import VMwareDriver, VsphereLocation
from imgstore.exceptions import (
    AuthenticationFailed,
    BackendError,
    BackendUnavailable,
    Duplicate,
    NotFound,
    StorageFull,
)
from imgstore.location import parse
from imgstore.testing import ConformanceTests, StoreUnderTest
from tests import otel_sdk
from tests.functional.cutting_proxy import CuttingProxy

pytestmark = pytest.mark.functional

IMAGE_DIR = "openstack_glance"
MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]


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


def partial_files(vmware: dict[str, Any], image_id: str | None = None) -> dict[str, int]:
    """The temporary upload files on vcsim's datastores (of ``image_id``, when given),
    with their sizes, read from the directories backing the datastores."""
    found = {}
    for name, root in vmware["datastore_dirs"].items():
        folder = Path(root) / IMAGE_DIR
        for entry in folder.iterdir() if folder.is_dir() else []:
            if is_partial_name(entry.name, image_id):
                try:
                    found[f"[{name}] {IMAGE_DIR}/{entry.name}"] = entry.stat().st_size
                except FileNotFoundError:
                    continue
    return found


def final_file(vmware: dict[str, Any], image_id: str, datastore: str = "LocalDS_0") -> Path:
    """The file an image ``image_id`` is stored in on ``datastore``."""
    return Path(vmware["datastore_dirs"][datastore]) / IMAGE_DIR / image_id


def wait_for(check: Any, what: str, timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


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
        start = threading.Barrier(4)

        def work() -> list[AddResult]:
            start.wait(timeout=60)
            done = []
            for _ in range(3):
                data = os.urandom(100_000)
                res = stores.add(_id(), data, size=len(data))
                assert stores.get(res.location).read_all() == data
                assert stores.size(res.location) == len(data)
                done.append(res)
            return done

        # .result() raises here whatever a worker raised (a failed assert too)
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(work) for _ in range(4)]
            results = [res for f in futures for res in f.result(timeout=600)]
        assert len(results) == 12
        for res in results:
            stores.delete(res.location)
        assert drv.logins == 1
        new = session_keys(admin) - before
        assert new == {current_key(drv)}, "exactly one new server session"


FIRST_LOGIN_IN_A_THREAD = """
import os, sys, threading
from imgstore import Stores
from imgstore.exceptions import NotFound

assert "eventlet" not in sys.modules, "the test needs a process without eventlet"
stores = Stores.from_config_files(sys.argv[1])

def first_operation():
    try:
        stores.size(sys.argv[2])  # the first login happens here
    except NotFound:
        print("not found", flush=True)

worker = threading.Thread(target=first_operation)
worker.start()
worker.join(timeout=60)
print("still alive" if worker.is_alive() else "joined", flush=True)
os._exit(0)  # a thread that cannot be joined would hang the exit too
"""


def test_a_thread_that_logged_in_first_can_be_joined(
    make_stores: Any, vmware: dict[str, Any], tmp_path: Path
) -> None:
    """The first login imports oslo.vmware's API, and with it eventlet, whose second copy
    of ``threading`` takes over the importing thread's end-of-thread lock: done in a
    worker thread (the first operation of a server's thread pool), that thread could
    never be joined, and ``ThreadPoolExecutor.shutdown`` hung. The driver imports it
    when it is built instead; in a fresh process, so that eventlet is not there yet."""
    config = write_config(tmp_path / "first-login.conf", vc_options(vmware))
    with make_stores() as stores:
        drv = stores.driver("vc")
        assert isinstance(drv, VMwareDriver)
        missing = drv.datastore_location(_id(), drv.datastores[0]).to_uri()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", FIRST_LOGIN_IN_A_THREAD, str(config), missing],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=True,
    )  # fmt: skip
    assert done.stdout.splitlines() == ["not found", "joined"], done.stderr[-2000:]


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
        spans = otel_sdk.installed().spans
        spans.clear()
        try:
            # a read with the ended session's cookie: 401, one new login, retried
            assert stores.get(res.location, offset=7, length=1000).read_all() == data[7:1007]
            assert injector.rejected == 1
            (get,) = [s for s in spans.get_finished_spans() if s.name == "imgstore.get"]
            assert (get.attributes or {})["imgstore.retries"] == 1, "the retry was not counted"
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


@pytest.fixture
def cut_vcsim(make_stores: Any, vmware: dict[str, Any]) -> Iterator[Any]:
    """``make(resumes, cuts) -> (stores, proxy)``: a backend that reaches vcsim through a
    CuttingProxy (the fault injector: vcsim cannot cut a download on demand), which
    cuts the first ``cuts`` connections after 4 MiB of answers (the WSDL is less)."""
    proxies: list[CuttingProxy] = []

    def make(resumes: int, cuts: int) -> tuple[Stores, CuttingProxy]:
        proxy = CuttingProxy(int(vmware["port"]), after=4 * MiB, cuts=cuts)
        proxies.append(proxy)
        return make_stores(vmware_server_port=proxy.port, vmware_read_resumes=resumes), proxy

    yield make
    for proxy in proxies:
        proxy.close()


def test_a_download_cut_twice_is_resumed_where_it_stopped(cut_vcsim: Any) -> None:
    """The core reopens the read at the byte where it broke off (a Range request), after
    checking that the file is the same one (its Last-Modified date and length)."""
    stores, proxy = cut_vcsim(resumes=3, cuts=2)
    with stores:
        data = os.urandom(12 * MiB)
        res = stores.add(_id(), data, size=len(data))
        spans = otel_sdk.installed().spans
        spans.clear()
        try:
            assert stores.get(res.location).read_all() == data
            assert proxy.cut == 2
            (get,) = [s for s in spans.get_finished_spans() if s.name == "imgstore.get"]
            assert (get.attributes or {})["imgstore.retries"] == 2, "the resumes count as retries"
            ranged = stores.get(res.location, offset=MiB + 5, length=6 * MiB).read_all()
            assert ranged == data[MiB + 5 : 7 * MiB + 5]
        finally:
            stores.delete(res.location)


def test_a_download_cut_without_resumes_is_unavailable(cut_vcsim: Any) -> None:
    """A connection cut mid-body is worth another try (BackendUnavailable), never an
    integrity error (SizeMismatch), when it may not be resumed."""
    stores, proxy = cut_vcsim(resumes=0, cuts=1)
    with stores:
        data = os.urandom(8 * MiB)
        res = stores.add(_id(), data, size=len(data))
        try:
            with pytest.raises(BackendUnavailable, match=r"after \d+ of 8388608 bytes"):
                stores.get(res.location).read_all()
            assert proxy.cut == 1
        finally:
            stores.delete(res.location)


def test_a_download_is_not_resumed_into_a_changed_image(
    cut_vcsim: Any, vmware: dict[str, Any]
) -> None:
    """The file is replaced (one byte longer) between the cut and the resume: the read
    fails instead of splicing two images."""
    stores, proxy = cut_vcsim(resumes=3, cuts=1)
    with stores:
        image_id = _id()
        data = os.urandom(12 * MiB)
        res = stores.add(image_id, data, size=len(data))
        try:
            with stores.get(res.location) as reader, pytest.raises(BackendError, match="changed"):
                for number, _chunk in enumerate(reader):
                    if number == 0:  # the first response is still open on the old file
                        path = final_file(vmware, image_id)
                        replacement = path.with_name(f".{image_id}.new")
                        replacement.write_bytes(os.urandom(len(data) + 1))
                        os.replace(replacement, path)
            assert proxy.cut == 1
        finally:
            stores.delete(res.location)


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


# -- temporary files, moves and leftovers ---------------------------------------------


def test_upload_goes_to_a_temporary_file_moved_into_place(
    make_stores: Any, vmware: dict[str, Any]
) -> None:
    image_id = _id()
    data = os.urandom(12 << 20)
    before = datastore_listing(vmware)
    seen: dict[str, Any] = {}
    with make_stores() as stores:
        drv = stores.driver("vc")
        assert isinstance(drv, VMwareDriver)
        final_uri = drv.datastore_location(image_id, drv.datastores[0]).to_uri()

        def source() -> Iterator[bytes]:
            yield data[: 6 << 20]
            # a first chunk is on its way: vcsim holds the temporary file by now
            seen["partials"] = wait_for(
                lambda: {k: v for k, v in partial_files(vmware, image_id).items() if v},
                "the temporary file to fill",
            )
            seen["new"] = datastore_listing(vmware) - before
            seen["final exists"] = final_file(vmware, image_id).exists()
            with pytest.raises(NotFound):
                stores.size(final_uri)
            seen["young"] = [o.leftover.name for o in stores.cleanup(remove=False)]
            seen["any age"] = [o.leftover for o in stores.cleanup(older_than=0, remove=False)]
            yield data[6 << 20 :]

        calls: list[tuple[int, bool]] = []  # progress: (done, whether the image is in place)
        res = stores.add(
            image_id, source(), size=len(data),
            progress=lambda done, _: calls.append((done, final_file(vmware, image_id).exists())),
        )  # fmt: skip
        assert [d for d, _ in calls] == sorted(d for d, _ in calls) and calls[-1][0] == len(data)
        assert all(placed for d, placed in calls if d == len(data)), "100% before the PUT's answer"
        # during the upload: the temporary file only, and cleanup spares it unless asked
        (temp,) = seen["partials"]
        assert seen["new"] == {temp} and not seen["final exists"]
        assert temp.startswith(f"[LocalDS_0] {IMAGE_DIR}/.{image_id}.")
        assert not [n for n in seen["young"] if image_id in n]
        (found,) = [item for item in seen["any age"] if image_id in item.name]
        assert found.kind == "partial file" and found.age is not None and found.age < 60
        # after the commit: the image under its final name, and nothing else
        assert res.location == final_uri
        assert datastore_listing(vmware) - before == {f"[LocalDS_0] {IMAGE_DIR}/{image_id}"}
        assert stores.get(res.location).read_all() == data
        stores.delete(res.location)
    assert datastore_listing(vmware) == before


KILLED_WRITER = """
import sys, time
from imgstore import Stores

stores = Stores.from_config_files(sys.argv[1])

def source():
    yield b"k" * (6 << 20)
    print("writing", flush=True)  # the first chunk is on its way
    time.sleep(600)  # killed here
    yield b"never"

stores.add(sys.argv[2], source(), size=64 << 20)
"""


def kill_a_writer(vmware: dict[str, Any], config: Path, image_id: str) -> dict[str, int]:
    """Start adding ``image_id`` in another process and SIGKILL it mid-upload (no abort
    runs); return the temporary files it left, with their sizes."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(config), image_id],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready and proc.stdout.readline() == b"writing\n", "the writer did not start"
        final = final_file(vmware, image_id)
        wait_for(
            lambda: (
                any(partial_files(vmware, image_id).values())
                or (final.exists() and final.stat().st_size)
            ),
            "bytes on the datastore",
        )
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -9
    time.sleep(0.3)  # vcsim notices the broken connection and closes the file
    return partial_files(vmware, image_id)


def test_killed_writer_leaves_no_image_and_cleanup_removes_its_file(
    make_stores: Any, vmware: dict[str, Any], tmp_path: Path
) -> None:
    image_id = _id()
    before = datastore_listing(vmware)
    left = kill_a_writer(vmware, write_config(tmp_path / "w.conf", vc_options(vmware)), image_id)
    # nothing under the image's name: no truncated image to read
    assert not final_file(vmware, image_id).exists()
    assert len(left) == 1
    assert datastore_listing(vmware) - before == set(left)
    with make_stores() as stores:
        drv = stores.driver("vc")
        assert isinstance(drv, VMwareDriver)
        with pytest.raises(NotFound):
            stores.size(drv.datastore_location(image_id, drv.datastores[0]).to_uri())
        # the default age spares it (its writer might still be running)
        assert not [o for o in stores.cleanup() if image_id in o.leftover.name]
        outcomes = [o for o in stores.cleanup(older_than=0) if image_id in o.leftover.name]
        (outcome,) = outcomes
        assert outcome.outcome == "removed", outcome.error
        item = outcome.leftover
        assert item.kind == "partial file" and item.backend == "vc"
        assert item.size == next(iter(left.values()))
        assert item.age is not None and 0 <= item.age < 120
        assert vmware["password"] not in repr(outcome.as_dict())
        # removing it again is no error
        drv.remove_leftover(item)
        # the retry of the add works
        res = stores.add(image_id, b"retried", size=7)
        assert stores.get(res.location).read_all() == b"retried"
        stores.delete(res.location)
    assert datastore_listing(vmware) == before


def test_duplicate_on_commit_keeps_the_image_and_no_temporary_file(
    make_stores: Any, vmware: dict[str, Any]
) -> None:
    image_id = _id()
    before = datastore_listing(vmware)
    with make_stores() as stores:

        def source() -> Iterator[bytes]:
            yield b"a" * (5 << 20)
            # meanwhile another add of the same id finishes first
            stores.add(image_id, b"winner", size=6)
            yield b"b" * 1000

        with pytest.raises(Duplicate) as raised:
            stores.add(image_id, source(), size=(5 << 20) + 1000)
        assert image_id in str(raised.value)
        drv = stores.driver("vc")
        assert isinstance(drv, VMwareDriver)
        final_uri = drv.datastore_location(image_id, drv.datastores[0]).to_uri()
        assert stores.get(final_uri).read_all() == b"winner"
        assert not partial_files(vmware, image_id)
        assert datastore_listing(vmware) - before == {f"[LocalDS_0] {IMAGE_DIR}/{image_id}"}
        stores.delete(final_uri)
    assert datastore_listing(vmware) == before


def test_discard_removes_the_image_and_its_temporary_files(
    make_stores: Any, vmware: dict[str, Any], tmp_path: Path
) -> None:
    image_id, other_id = _id(), _id()
    before = datastore_listing(vmware)
    config = write_config(tmp_path / "w.conf", vc_options(vmware))
    with make_stores() as stores:
        other = stores.add(other_id, b"unrelated", size=9)
        # an upload killed midway: discard removes its temporary file only
        left = kill_a_writer(vmware, config, image_id)
        assert len(left) == 1
        assert stores.discard(image_id) is True
        assert not partial_files(vmware, image_id)
        assert datastore_listing(vmware) - before == {f"[LocalDS_0] {IMAGE_DIR}/{other_id}"}
        # a finished image: discard removes it; then there is nothing left to remove
        res = stores.add(image_id, b"finished", size=8)
        assert stores.discard(image_id) is True
        with pytest.raises(NotFound):
            stores.size(res.location)
        assert stores.discard(image_id) is False
        assert stores.get(other.location).read_all() == b"unrelated"
        stores.delete(other.location)
    assert datastore_listing(vmware) == before
