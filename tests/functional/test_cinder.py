"""The cinder driver against a real Cinder (api + scheduler + volume) on the test Ceph cluster.

Cinder comes from ``python -m tests.functional.services up ceph cinder``
(noauth: every test class uses a project of its own, a fresh hex id). The
listing that proves nothing is left behind holds every volume (with its
status) and every attachment of that project, and every RBD image in
Cinder's pool. os-brick reaches the volumes through librados with the key
of Cinder's cephx user handed over in memory (``cinder_rbd_keyring``):
nothing is written to ``/etc/ceph``.

The conformance kit runs every size, including 64 MiB (each add costs a
volume create, an attach and a detach: about 1-2 s).

Through Keystone: the same Cinder has a second API that authenticates with the
harness's Keystone (tokens live 10 s). ``TestCinderKeystoneConformance`` runs
the whole kit again with the driver configured as an operator would (glance_store's
``cinder_store_*`` options, a user and project in a domain of their own, Cinder
found in the catalog); ``TestCinderKeystone`` covers the catalog endpoint and the
volumes' owner, a token that ends in the middle of an add, a wrong password,
Keystone unreachable, ``cinder_endpoint_template`` and an application credential.
Their listing and cleanup use the noauth API as admin in the images project.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgstore import (
    AuthenticationFailed,
    BackendError,
    BackendUnavailable,
    BadConfiguration,
    Duplicate,
    InUse,
    NotFound,
    Stores,
)
from imgstore.drivers.cinder import CinderLocation
from imgstore.testing import ConformanceTests, Payload, StoreUnderTest
from tests.functional.conftest import require_service, skip_or_fail

try:
    import rados
    import rbd
    from cinderclient import api_versions
    from cinderclient import exceptions as cinder_exc
    from cinderclient.v3 import client as cinder_client
    from keystoneauth1 import identity as ks_identity
    from keystoneauth1 import session as ks_session
    from keystoneauth1 import token_endpoint
except ImportError as exc:  # skip locally; in CI a missing dependency is an error
    skip_or_fail(
        f"the cinder extra (python-cinderclient, os-brick) or Ceph's bindings are missing "
        f"(run scripts/setup): {exc}"
    )

pytestmark = pytest.mark.functional

MiB = 1 << 20
GiB = 1 << 30
BACKEND = "vols"


def admin_client(details: dict[str, Any], project: str) -> Any:
    """A cinderclient for ``project`` (noauth: every caller is admin)."""
    url = details["endpoint_template"] % {"project_id": project}
    auth = token_endpoint.Token(endpoint=url, token=f"tests:{project}")
    return cinder_client.Client(
        session=ks_session.Session(auth=auth), api_version=api_versions.APIVersion("3.54")
    )


def cinder_options(details: dict[str, Any], project: str, **extra: Any) -> dict[str, Any]:
    """The options of a cinder backend on the test Cinder, in ``project``."""
    return {
        # oslo.config does not interpolate '%': the template goes in as it is
        "cinder_endpoint_template": details["endpoint_template"],
        "cinder_store_project_name": project,
        "cinder_store_user_name": "imgstore",
        "cinder_volume_type": details["volume_type"],
        "cinder_rbd_keyring": details["keyring"],
        "cinder_root_helper": "env",
        "cinder_privsep_mode": "in-process",
        "cinder_state_transition_timeout": 60,
        "cinder_host_ip": "127.0.0.1",
        **extra,
    }


def write_config(path: Path, options: dict[str, Any], core: dict[str, Any] | None = None) -> Path:
    lines = [
        "[DEFAULT]",
        f"enabled_backends = {BACKEND}:cinder",
        "[glance_store]",
        f"default_backend = {BACKEND}",
        *(f"{k} = {v}" for k, v in (core or {}).items()),
        f"[{BACKEND}]",
        *(f"{k} = {v}" for k, v in options.items()),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def listing(client: Any, details: dict[str, Any]) -> set[str]:
    """Every volume (with status) and attachment of the project, every RBD image of the pool."""
    entries = {f"volume:{v.id}:{v.status}" for v in client.volumes.list()}
    entries |= {f"attachment:{a.id}" for a in client.attachments.list()}
    cluster = rados.Rados(conffile=details["ceph_admin_conf"], rados_id="admin")
    cluster.connect(timeout=20)
    try:
        with cluster.open_ioctx(details["rbd_pool"]) as ioctx:
            entries |= {f"rbd:{name}" for name in rbd.RBD().list(ioctx)}
            entries |= {f"trash:{t['name']}" for t in rbd.RBD().trash_list(ioctx)}
    finally:
        cluster.shutdown()
    return entries


@pytest.fixture(scope="class")
def project() -> str:
    return uuid.uuid4().hex


@pytest.fixture(scope="class")
def client(cinder: dict[str, Any], project: str) -> Iterator[Any]:
    c = admin_client(cinder, project)
    yield c
    # a failed test may leave volumes: remove them so the pool does not fill up
    for att in c.attachments.list():
        c.attachments.delete(att.id)
    for vol in c.volumes.list():
        c.volumes.force_delete(vol.id)
    deadline = time.monotonic() + 60  # gone from the pool before the next class lists it
    while c.volumes.list() and time.monotonic() < deadline:
        time.sleep(0.2)


@pytest.fixture
def password() -> str:
    # not used by a noauth Cinder, but configured: it must never show anywhere
    return secrets.token_hex(16)


class TestCinderConformance(ConformanceTests):
    """The same Cinder without Keystone (``cinder_endpoint_template``): a cross-section of
    the kit. The data path is the same as in :class:`TestCinderKeystoneConformance`, which
    runs the whole kit (every size, 64 MiB included, ranges, failures, concurrency, races);
    what differs is how the driver reaches Cinder, which every test below goes through."""

    CROSS_SECTION = (
        "test_round_trip[0-known-file]",
        "test_round_trip[3chunk+7-unknown-file]",
        "test_ranged_read",
        "test_missing_image_is_not_found",
        "test_stream_size_mismatch[short-by-one-pieces]",
        "test_duplicate_add[True]",
        "test_delete_then_get",
        "test_delete_missing_is_not_found",
        "test_failing_source[after-two-chunks-True]",
        "test_no_secret_in_read_output",
        "test_no_secret_in_write_output",
    )

    @pytest.fixture
    def store_under_test(
        self, tmp_path: Path, cinder: dict[str, Any], project: str, client: Any, password: str
    ) -> Iterator[StoreUnderTest]:
        options = cinder_options(cinder, project, cinder_store_password=password)
        yield from cinder_store_under_test(tmp_path, options, [password], cinder, client)


def cinder_store_under_test(
    tmp_path: Path,
    options: dict[str, Any],
    secrets: list[str],
    cinder: dict[str, Any],
    client: Any,
) -> Iterator[StoreUnderTest]:
    """The kit's view of a cinder backend with ``options``; its listing through ``client``."""
    configs = itertools.count()

    def make_stores(core: dict[str, Any]) -> Stores:
        path = tmp_path / f"imgstore-{next(configs)}.conf"
        return Stores.from_config_files(write_config(path, options, core))

    with make_stores({}) as stores:
        yield StoreUnderTest(
            stores=stores,
            backend=BACKEND,
            secrets=[*secrets, *cinder["secrets"]],
            listing=lambda: listing(client, cinder),
            make_stores=make_stores,
        )


# -- through Keystone ----------------------------------------------------------


def keystone_options(details: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A cinder backend as an operator writes it for a Cinder behind Keystone, with
    glance_store's option names: log in as the images user (a domain of its own), find
    Cinder in the catalog; the second API of the test Cinder (authtoken)."""
    return {
        "cinder_store_auth_address": details["keystone_auth_url"],
        "cinder_store_user_name": details["keystone_user"],
        "cinder_store_password": details["keystone_password"],
        "cinder_store_project_name": details["keystone_project"],
        "cinder_store_user_domain_name": details["keystone_domain"],
        "cinder_store_project_domain_name": details["keystone_domain"],
        "cinder_catalog_info": details["keystone_catalog_info"],
        "cinder_os_region_name": details["keystone_region"],
        "cinder_volume_type": details["volume_type"],
        "cinder_rbd_keyring": details["keyring"],
        "cinder_root_helper": "env",
        "cinder_privsep_mode": "in-process",
        "cinder_state_transition_timeout": 60,
        "cinder_host_ip": "127.0.0.1",
        **extra,
    }


class TestCinderKeystoneConformance(ConformanceTests):
    """The whole kit again, with the driver logged in to Keystone (tokens live 10 s) and
    Cinder taken from the catalog: the Keystone-authenticated API of the same Cinder.

    The listing and the cleanup use the noauth API as admin in the images project (the
    same database: an independent view of what the driver did)."""

    @pytest.fixture(scope="class")
    @classmethod
    def project(cls, cinder: dict[str, Any]) -> str:
        """The images project in Keystone (its id is hex: the noauth API takes it too)."""
        return str(cinder["keystone_project_id"])

    @pytest.fixture
    def store_under_test(
        self, tmp_path: Path, cinder: dict[str, Any], client: Any
    ) -> Iterator[StoreUnderTest]:
        yield from cinder_store_under_test(
            tmp_path, keystone_options(cinder), [cinder["keystone_password"]], cinder, client
        )


class Logins:
    """Counts the logins of a driver's Keystone plugin and the Cinder requests it makes."""

    def __init__(self, stores: Stores) -> None:
        cinder_client = stores.driver(BACKEND)._cinder()  # type: ignore[attr-defined]
        self.http = cinder_client.client
        self.plugin = self.http.session.auth
        self.tokens: list[tuple[str, float]] = []  # (token, its end in epoch seconds)
        self.requests = 0
        get_auth_ref, request = self.plugin.get_auth_ref, self.http.request

        def counted_login(session: Any, **kw: Any) -> Any:
            ref = get_auth_ref(session, **kw)
            self.tokens.append((ref.auth_token, ref.expires.timestamp()))
            return ref

        def counted_request(*args: Any, **kw: Any) -> Any:
            self.requests += 1
            return request(*args, **kw)

        self.plugin.get_auth_ref = counted_login
        self.http.request = counted_request


def keystone_status(details: dict[str, Any], token: str) -> int:
    """The status of a volume listing through Cinder's Keystone API with ``token``."""
    url = details["keystone_endpoint_template"] % {"project_id": details["keystone_project_id"]}
    auth = token_endpoint.Token(endpoint=url, token=token)
    resp = ks_session.Session(auth=auth).get(f"{url}/volumes", raise_exc=False)
    return int(resp.status_code)


class TestCinderKeystone:
    """What only the Keystone path has: the catalog, the owner, the token's end, bad
    credentials, application credentials, the endpoint template with a project id."""

    @pytest.fixture(scope="class")
    @classmethod
    def project(cls, cinder: dict[str, Any]) -> str:
        """The images project in Keystone (its id is hex: the noauth API takes it too)."""
        return str(cinder["keystone_project_id"])

    def _stores(self, tmp_path: Path, options: dict[str, Any]) -> Stores:
        path = tmp_path / f"imgstore-{uuid.uuid4().hex[:8]}.conf"
        return Stores.from_config_files(write_config(path, options))

    def test_catalog_endpoint_and_owner(
        self, tmp_path: Path, cinder: dict[str, Any], client: Any
    ) -> None:
        """The driver finds the Keystone API of Cinder in the catalog, with the project
        id of its token; the volume belongs to that project; few logins for many calls."""
        before = listing(client, cinder)
        with self._stores(tmp_path, keystone_options(cinder)) as stores:
            logins = Logins(stores)
            started = time.monotonic()
            result = stores.add(str(uuid.uuid4()), b"k" * 5000, size=5000)
            assert _read_all(stores, result.location) == b"k" * 5000
            vol = _volume(result.location, client)
            assert getattr(vol, "os-vol-tenant-attr:tenant_id") == cinder["keystone_project_id"]
            stores.delete(result.location)
            elapsed = time.monotonic() - started
            endpoint = logins.http.get_endpoint()
        assert endpoint == (
            cinder["keystone_endpoint_template"] % {"project_id": cinder["keystone_project_id"]}
        )
        # one token serves about 3/4 of its 10 s; keystoneauth alone would log in
        # before every use (about three times per request)
        logged_in, requests = len(logins.tokens), logins.requests  # no token in a message
        assert requests >= 10
        assert logged_in <= 2 + int(elapsed / 5), f"{logged_in} logins in {elapsed:.1f} s"
        assert listing(client, cinder) == before

    def test_token_ends_mid_add(self, tmp_path: Path, cinder: dict[str, Any], client: Any) -> None:
        """An add whose source stalls until the token it started with has expired: the
        driver logs in again and Cinder takes the new token (the old one gets 401)."""
        expiration = require_service("keystone")["token_expiration"]
        assert expiration <= 30, "Keystone's tokens live too long for this test"
        before = listing(client, cinder)
        payload = Payload(2 * MiB + 3, seed=31)
        assert payload.data is not None
        with self._stores(tmp_path, keystone_options(cinder)) as stores:
            logins = Logins(stores)

            def source() -> Iterator[bytes]:
                assert payload.data is not None
                yield payload.data[:MiB]
                first_ends = logins.tokens[0][1]
                time.sleep(max(0.0, first_ends - time.time()) + 0.5)
                yield payload.data[MiB:]

            result = stores.add(str(uuid.uuid4()), source(), size=payload.size)
            assert _read_all(stores, result.location) == payload.data
            stores.delete(result.location)
        assert len(logins.tokens) >= 2
        first_token, first_ends = logins.tokens[0]
        assert time.time() > first_ends
        assert keystone_status(cinder, first_token) == 401
        assert keystone_status(cinder, logins.tokens[-1][0]) in (200, 401)  # maybe gone too
        assert listing(client, cinder) == before

    def test_wrong_password(self, tmp_path: Path, cinder: dict[str, Any], client: Any) -> None:
        """Keystone refuses the user: AuthenticationFailed, nothing created, nothing shown."""
        before = listing(client, cinder)
        wrong = secrets.token_hex(16)
        options = keystone_options(cinder, cinder_store_password=wrong)
        with self._stores(tmp_path, options) as stores:
            with pytest.raises(AuthenticationFailed) as added:
                stores.add(str(uuid.uuid4()), b"abc", size=3)
            with pytest.raises(AuthenticationFailed) as sized:
                stores.size(f"cinder://{BACKEND}/{uuid.uuid4()}")
        for raised in (added, sized):
            assert wrong not in str(raised.value)
            assert "vols" in str(raised.value)
        assert listing(client, cinder) == before

    def test_endpoint_template(self, tmp_path: Path, cinder: dict[str, Any], client: Any) -> None:
        """``cinder_endpoint_template`` instead of the catalog: the token's project id is
        put into it; a wrong password is AuthenticationFailed there too."""
        before = listing(client, cinder)
        options = keystone_options(
            cinder, cinder_endpoint_template=cinder["keystone_endpoint_template"]
        )
        with self._stores(tmp_path, options) as stores:
            result = stores.add(str(uuid.uuid4()), b"template", size=8)
            assert _read_all(stores, result.location) == b"template"
            stores.delete(result.location)
        wrong = {**options, "cinder_store_password": secrets.token_hex(16)}
        with self._stores(tmp_path, wrong) as stores, pytest.raises(AuthenticationFailed):
            stores.size(result.location)
        assert listing(client, cinder) == before

    @pytest.mark.parametrize("template", [False, True], ids=["catalog", "endpoint-template"])
    def test_keystone_unreachable(
        self, tmp_path: Path, cinder: dict[str, Any], template: bool
    ) -> None:
        """Nothing listens at cinder_store_auth_address: BackendUnavailable naming the
        backend, whether the endpoint comes from the catalog or from the template (whose
        project id needs a login before the client exists)."""
        with socket.socket() as sock:  # a port that was free a moment ago
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        options = keystone_options(
            cinder, cinder_store_auth_address=f"http://127.0.0.1:{port}/v3", cinder_http_retries=0
        )
        if template:
            options["cinder_endpoint_template"] = cinder["keystone_endpoint_template"]
        with (
            self._stores(tmp_path, options) as stores,
            pytest.raises(BackendUnavailable, match="'vols'"),
        ):
            stores.size(f"cinder://{BACKEND}/{uuid.uuid4()}")

    def test_application_credential(
        self, tmp_path: Path, cinder: dict[str, Any], client: Any
    ) -> None:
        """glance_store's cinder_store_application_credential_id/_secret instead of a
        password (no user, no project): the volumes go to the credential's project."""
        before = listing(client, cinder)
        user = ks_identity.V3Password(
            auth_url=cinder["keystone_auth_url"],
            username=cinder["keystone_user"],
            password=cinder["keystone_password"],
            user_domain_name=cinder["keystone_domain"],
            project_name=cinder["keystone_project"],
            project_domain_name=cinder["keystone_domain"],
        )
        session = ks_session.Session(auth=user)
        identity = {"service_type": "identity", "interface": "public"}
        user_id = user.get_user_id(session)
        body = {"application_credential": {"name": f"imgstore-{uuid.uuid4().hex[:12]}"}}
        created = session.post(
            f"/users/{user_id}/application_credentials", json=body, endpoint_filter=identity
        ).json()["application_credential"]
        try:
            options = {
                k: v
                for k, v in keystone_options(cinder).items()
                if not k.startswith(("cinder_store_user", "cinder_store_pass", "cinder_store_proj"))
            }
            options["cinder_store_application_credential_id"] = created["id"]
            options["cinder_store_application_credential_secret"] = created["secret"]
            with self._stores(tmp_path, options) as stores:
                assert created["secret"] in stores.driver(BACKEND).secrets()
                result = stores.add(str(uuid.uuid4()), b"app credential", size=14)
                vol = _volume(result.location, client)
                assert getattr(vol, "os-vol-tenant-attr:tenant_id") == cinder["keystone_project_id"]
                assert _read_all(stores, result.location) == b"app credential"
                stores.delete(result.location)
        finally:
            session.delete(
                f"/users/{user_id}/application_credentials/{created['id']}",
                endpoint_filter=identity,
            )
        assert listing(client, cinder) == before


# -- Cinder-specific behaviour ------------------------------------------------


@pytest.fixture
def stores(tmp_path: Path, cinder: dict[str, Any], project: str, client: Any) -> Iterator[Stores]:
    with Stores.from_config_files(
        write_config(tmp_path / "imgstore.conf", cinder_options(cinder, project))
    ) as s:
        yield s


def _volume(location: str, client: Any) -> Any:
    loc = CinderLocation.from_uri(location)
    return client.volumes.get(loc.volume_id)


def _read_all(stores: Stores, location: str, **kw: Any) -> bytes:
    with stores.get(location, **kw) as reader:
        return b"".join(reader)


class TestCinderVolumes:
    def test_known_size_volume(self, stores: Stores, client: Any, cinder: dict[str, Any]) -> None:
        payload = Payload(3 * MiB + 5, seed=21)
        assert payload.data is not None
        image_id = str(uuid.uuid4())
        result = stores.add(image_id, payload.data, size=payload.size)
        vol = _volume(result.location, client)
        assert vol.size == 1  # GiB, rounded up
        assert vol.name == f"image-{image_id}"
        assert vol.metadata["glance_image_id"] == image_id
        assert vol.metadata["image_size"] == str(payload.size)  # not the GiB size
        assert vol.metadata.get("readonly") == "True"
        assert vol.volume_type == cinder["volume_type"]
        assert vol.status == "available"
        assert not vol.attachments
        assert stores.size(result.location) == payload.size
        assert _read_all(stores, result.location) == payload.data
        stores.delete(result.location)
        with pytest.raises(cinder_exc.NotFound):
            client.volumes.get(vol.id)

    @pytest.mark.slow
    def test_unknown_size_extends(
        self, stores: Stores, client: Any, cinder: dict[str, Any]
    ) -> None:
        """Past 1 GiB, the writer detaches, extends the volume and goes on."""
        before = listing(client, cinder)
        size = GiB + 3 * MiB + 1
        payload = Payload(size, seed=22, keep=False)
        result = stores.add(str(uuid.uuid4()), payload.pieces((4 * MiB, MiB + 3)), size=None)
        assert result.size == size
        assert result.multihash == payload.hexdigest("sha512")
        vol = _volume(result.location, client)
        assert vol.size == 2
        assert vol.metadata["image_size"] == str(size)
        assert stores.size(result.location) == size
        h = hashlib.sha512()
        with stores.get(result.location) as reader:
            for chunk in reader:
                h.update(chunk)
        assert h.hexdigest() == payload.hexdigest("sha512")
        # the tail, across the first GiB boundary, through a ranged read
        tail = _read_all(stores, result.location, offset=GiB - 7, length=20)
        assert len(tail) == 20
        stores.delete(result.location)
        assert listing(client, cinder) == before

    def test_legacy_location_forms(self, stores: Stores, client: Any) -> None:
        """glance_store's ``cinder://<volume id>`` and ``cinder://<store>/<id>`` both read."""
        result = stores.add(str(uuid.uuid4()), b"legacy bytes", size=12)
        loc = CinderLocation.from_uri(result.location)
        assert result.location == f"cinder://{BACKEND}/{loc.volume_id}"
        legacy = f"cinder://{loc.volume_id}"
        assert stores.backend_for(legacy) == BACKEND
        assert _read_all(stores, legacy) == b"legacy bytes"
        assert stores.size(legacy) == 12
        stores.delete(legacy)
        with pytest.raises(NotFound):
            stores.size(result.location)

    def test_duplicate_while_volume_exists(self, stores: Stores) -> None:
        image_id = str(uuid.uuid4())
        result = stores.add(image_id, b"one", size=3)
        with pytest.raises(Duplicate):
            stores.add(image_id, b"two", size=3)
        stores.delete(result.location)
        again = stores.add(image_id, b"three", size=5)  # the id is free again
        stores.delete(again.location)

    def test_concurrent_readers_share_one_attachment(self, stores: Stores, client: Any) -> None:
        chunk = stores.chunk_size(BACKEND)
        payload = Payload(3 * chunk, seed=23)
        assert payload.data is not None
        result = stores.add(str(uuid.uuid4()), payload.data, size=payload.size)
        vol_id = CinderLocation.from_uri(result.location).volume_id
        # longer than a chunk: each reader is still open after its first chunk
        readers = [stores.get(result.location, offset=i * 1000, length=2 * chunk) for i in range(4)]
        try:
            iterators = [iter(r) for r in readers]  # kept: a dropped one closes its reader
            firsts = [next(it) for it in iterators]
            assert len(client.attachments.list(search_opts={"volume_id": vol_id})) == 1
            for i, first in enumerate(firsts):
                assert first == payload.data[i * 1000 : i * 1000 + len(first)]
        finally:
            for r in readers:
                r.close()
        assert client.attachments.list(search_opts={"volume_id": vol_id}) == []
        assert client.volumes.get(vol_id).status == "available"
        stores.delete(result.location)

    def test_delete_while_being_read_is_in_use(self, stores: Stores, client: Any) -> None:
        chunk = stores.chunk_size(BACKEND)
        payload = Payload(2 * chunk, seed=24)
        assert payload.data is not None
        result = stores.add(str(uuid.uuid4()), payload.data, size=payload.size)
        reader = stores.get(result.location)
        iterator = iter(reader)
        first = next(iterator)
        with pytest.raises(InUse):
            stores.delete(result.location)
        rest = b"".join(iterator)
        reader.close()
        assert first + rest == payload.data  # left as it was
        stores.delete(result.location)
        with pytest.raises(NotFound):
            stores.size(result.location)

    def test_cleanup_removes_what_a_dead_add_left(
        self, stores: Stores, client: Any, cinder: dict[str, Any]
    ) -> None:
        """An add whose process died mid-write leaves a flagged volume + attachment; cleanup
        finds exactly that and removes it, and leaves finished images alone."""
        before = listing(client, cinder)
        finished = stores.add(str(uuid.uuid4()), b"finished", size=8)
        drv: Any = stores.driver(BACKEND)
        writer = drv.begin_write(str(uuid.uuid4()), 3 * MiB)
        writer.write(memoryview(b"x" * MiB))
        # the process "dies": its local connection goes, Cinder's attachment stays
        att = writer._att
        att.io.close()
        att.connector.disconnect_volume(att.connection_info, att.device, force=True)
        assert any(a.volume_id for a in client.attachments.list())
        found = list(drv.leftovers(0))
        assert [lo.ref for lo in found] == [writer._volume_id]
        assert stores.cleanup(older_than=3600) == []  # too young: spared
        outcomes = stores.cleanup(older_than=0)
        assert [o.outcome for o in outcomes] == ["removed"]
        assert list(drv.leftovers(0)) == []
        assert stores.size(finished.location) == 8
        stores.delete(finished.location)
        assert listing(client, cinder) == before


class TestCinderFailures:
    def test_bad_keyring_leaves_nothing(
        self, tmp_path: Path, cinder: dict[str, Any], project: str, client: Any
    ) -> None:
        """os-brick cannot open the volume (wrong cephx key): clear error, no volume left."""
        keyring = tmp_path / "wrong.keyring"
        keyring.write_text(
            f"[client.{cinder['rbd_user']}]\n\tkey = AQBzfeNnAAAAABAAWr5sqJ8GtN3tHgaTmkXJuA==\n"
        )
        before = listing(client, cinder)
        conf = write_config(
            tmp_path / "c.conf",
            cinder_options(
                cinder, project, cinder_rbd_keyring=keyring, cinder_rados_connect_timeout=3
            ),
        )
        with Stores.from_config_files(conf) as s, pytest.raises(BackendError) as raised:
            s.add(str(uuid.uuid4()), b"x" * 100, size=100)
        assert "os-brick cannot connect" in str(raised.value)
        assert "AQBzfeNn" not in str(raised.value)
        assert "BrickException" in str(raised.value)
        assert listing(client, cinder) == before

    def test_unknown_volume_type(
        self, tmp_path: Path, cinder: dict[str, Any], project: str, client: Any
    ) -> None:
        before = listing(client, cinder)
        conf = write_config(
            tmp_path / "c.conf",
            cinder_options(cinder, project, cinder_volume_type="no-such-type"),
        )
        with Stores.from_config_files(conf) as s, pytest.raises(BadConfiguration):
            s.add(str(uuid.uuid4()), b"abc", size=3)
        assert listing(client, cinder) == before

    def test_volume_stuck_in_transition_times_out_and_is_removed(
        self, tmp_path: Path, cinder: dict[str, Any], project: str, client: Any
    ) -> None:
        """A volume that stays 'creating' -> a timeout naming the option, and no volume left.

        The real Cinder puts the volume in 'creating'; the test keeps it there by
        resetting its status through Cinder's admin API as soon as the driver has
        created it (a fault the server cannot produce on demand otherwise).
        """
        before = listing(client, cinder)
        conf = write_config(
            tmp_path / "c.conf",
            cinder_options(cinder, project, cinder_state_transition_timeout=2),
        )
        with Stores.from_config_files(conf) as s:
            drv_client = s.driver(BACKEND)._cinder()  # type: ignore[attr-defined]
            real_create = drv_client.volumes.create
            created: list[str] = []

            def create_and_stick(*args: Any, **kw: Any) -> Any:
                vol = real_create(*args, **kw)
                created.append(vol.id)
                deadline = time.monotonic() + 30
                while client.volumes.get(vol.id).status == "creating":
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                client.volumes.reset_state(vol.id, "creating")
                return vol

            drv_client.volumes.create = create_and_stick
            with pytest.raises(BackendUnavailable) as raised:
                s.add(str(uuid.uuid4()), b"abc", size=3)
        assert "cinder_state_transition_timeout" in str(raised.value)
        assert created
        assert listing(client, cinder) == before

    def test_failure_after_attach_detaches_and_deletes(
        self, stores: Stores, client: Any, cinder: dict[str, Any]
    ) -> None:
        """The source breaks while the volume is attached read-write: nothing stays."""
        before = listing(client, cinder)
        seen: list[str] = []
        lock = threading.Lock()

        def source() -> Iterator[bytes]:
            yield b"a" * MiB
            with lock:
                seen.extend(a.volume_id for a in client.attachments.list())
            raise OSError("the source broke")

        with pytest.raises(OSError, match="the source broke"):
            stores.add(str(uuid.uuid4()), source(), size=None)
        assert seen, "the volume was not attached while the data flowed"
        assert listing(client, cinder) == before

    def test_missing_volume(self, stores: Stores) -> None:
        missing = f"cinder://{BACKEND}/{uuid.uuid4()}"
        with pytest.raises(NotFound):
            stores.size(missing)
        with pytest.raises(NotFound):
            _read_all(stores, missing)
        with pytest.raises(NotFound):
            stores.delete(missing)
