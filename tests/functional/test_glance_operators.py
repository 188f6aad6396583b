"""Glance on imgstore where its functional suite does not go: operators' configurations.

Each test starts a glance-api of its own (``glance_helpers.private_glance``: the harness's
Glance install and compat package, another glance-api.conf) and talks to it over HTTP:

* one backend that cannot be configured (Swift without credentials) leaves glance-api
  up, serving the others; the broken one refuses uploads (410, as glance_store's
  ``StoreAddDisabled``), and the log says why once;
* ``GET /v2/info/stores/detail`` lists a Cinder backend with its volume type (Glance
  reads ``store.store_conf``);
* a legacy ``cinder://<volume>`` location (single-store days) is rewritten by Glance to
  ``cinder://<backend>/<volume>`` on the next image GET (``is_image_associated_with_store``
  and ``url_prefix``), and the image is served from the real Cinder;
* a cinder backend with no service credentials works with the caller's own token
  (Glance's request context), against Cinder behind Keystone;
* a multi-tenant swift backend stores each user's image in the user's own account
  (the request's token and service catalog) behind Keystone, and sharing the image
  with another project (members API: set_acls) lets that project read it;
* single-store Glance's task import removes its download from ``[task] work_dir``
  (legacy ``delete_from_backend`` outside the store's directory).

The Cinder tests share the test Cinder's RBD pool with ``test_cinder.py`` (whose checks
list the whole pool), so this module runs in that module's group (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from imgstore import Stores
from tests.functional.conftest import require_service
from tests.functional.glance_helpers import PrivateGlance, private_glance

pytestmark = pytest.mark.functional


def _create_image(g: PrivateGlance, name: str) -> str:
    answer = requests.post(
        f"{g.url}/v2/images",
        headers={**g.headers, "Content-Type": "application/json"},
        json={"name": name, "disk_format": "raw", "container_format": "bare"},
        timeout=60,
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def _upload(g: PrivateGlance, image_id: str, data: bytes, store: str) -> requests.Response:
    return requests.put(
        f"{g.url}/v2/images/{image_id}/file",
        headers={**g.headers, "Content-Type": "application/octet-stream",
                 "X-Image-Meta-Store": store},
        data=data, timeout=120,
    )  # fmt: skip


def _section(name: str, options: dict[str, Any]) -> str:
    return f"\n[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in options.items())


def test_glance_api_starts_with_a_broken_backend_and_serves_the_others(
    glance: dict[str, Any], tmp_path: Path
) -> None:
    extra = _section("broken", {"store_description": "Swift with no credentials"})
    with private_glance(glance, tmp_path, {"fs": "file", "broken": "swift"}, extra) as g:
        stores = g.get("/v2/info/stores")
        assert stores.status_code == 200, stores.text
        assert {s["id"] for s in stores.json()["stores"]} == {"fs", "broken"}

        data = os.urandom(100_000)
        good = _create_image(g, "served")
        assert _upload(g, good, data, "fs").status_code == 204
        image = g.get(f"/v2/images/{good}").json()
        assert (image["status"], image["stores"], image["size"]) == ("active", "fs", len(data))
        assert image["checksum"] == hashlib.md5(data).hexdigest()
        assert g.get(f"/v2/images/{good}/file").content == data

        refused = _create_image(g, "refused")
        answer = _upload(g, refused, data, "broken")
        assert answer.status_code == 410, answer.text  # StoreAddDisabled, as glance_store
        assert g.get(f"/v2/images/{refused}").json()["status"] == "queued"

        log = g.log_text()
        said = [line for line in log.splitlines() if "backend 'broken' (swift) is unusable" in line]
        assert len(said) == 1, log[-3000:]
        assert "ERROR" in said[0]


@pytest.fixture
def cinder_backend(cinder: dict[str, Any]) -> dict[str, Any]:
    """The options of a cinder backend ``vols`` on the test Cinder, in a new project."""
    from tests.functional.test_cinder import cinder_options

    return cinder_options(cinder, uuid.uuid4().hex)


def _glance_with_cinder(glance: dict[str, Any], tmp_path: Path, options: dict[str, Any]) -> Any:
    extra = _section("vols", {"store_description": "Cinder volumes", **options})
    return private_glance(glance, tmp_path / "glance", {"fs": "file", "vols": "cinder"}, extra)


def test_stores_detail_lists_a_cinder_backend_with_its_volume_type(
    glance: dict[str, Any], cinder: dict[str, Any], cinder_backend: dict[str, Any], tmp_path: Path
) -> None:
    with _glance_with_cinder(glance, tmp_path, cinder_backend) as g:
        detail = g.get("/v2/info/stores/detail")
        assert detail.status_code == 200, detail.text
        by_id = {s["id"]: s for s in detail.json()["stores"]}
        assert by_id["vols"]["type"] == "cinder"
        assert by_id["vols"]["properties"] == {
            "volume_type": cinder["volume_type"],
            "use_multipath": False,
        }
        assert by_id["fs"]["type"] == "file"
        assert "unusable" not in g.log_text()


def test_legacy_cinder_location_is_rewritten_and_served(
    glance: dict[str, Any], cinder: dict[str, Any], cinder_backend: dict[str, Any], tmp_path: Path
) -> None:
    from tests.functional.test_cinder import write_config

    data = os.urandom(3 * 1024 * 1024 + 17)
    conf = write_config(tmp_path / "vols.conf", cinder_backend)
    with Stores.from_config_files(conf) as stores:
        added = stores.add(str(uuid.uuid4()), data)
        volume_id = added.location.rsplit("/", 1)[-1]
        assert added.location == f"cinder://vols/{volume_id}"
        try:
            with _glance_with_cinder(glance, tmp_path, cinder_backend) as g:
                image_id = _create_image(g, "from single-store days")
                legacy = f"cinder://{volume_id}"
                # what a single-store Glance recorded: the volume alone, no store
                with sqlite3.connect(g.db) as db:
                    db.execute(
                        "UPDATE images SET status='active', size=?, checksum=?, "
                        "os_hash_algo='sha512', os_hash_value=? WHERE id=?",
                        (len(data), added.checksum, added.multihash, image_id),
                    )
                    db.execute(
                        "INSERT INTO image_locations (image_id, value, meta_data, status, "
                        "created_at, deleted) VALUES (?, ?, '{}', 'active', "
                        "datetime('now'), 0)",
                        (image_id, legacy),
                    )
                image = g.get(f"/v2/images/{image_id}")
                assert image.status_code == 200, image.text
                with sqlite3.connect(g.db) as db:
                    rows = db.execute(
                        "SELECT value, meta_data FROM image_locations WHERE image_id=?",
                        (image_id,),
                    ).fetchall()
                assert [(v, json.loads(m)) for v, m in rows] == [
                    (f"cinder://vols/{volume_id}", {"store": "vols"})
                ], g.log_text()[-3000:]
                assert g.get(f"/v2/images/{image_id}").json()["stores"] == "vols"
                served = g.get(f"/v2/images/{image_id}/file")
                assert served.status_code == 200, g.log_text()[-3000:]
                assert served.content == data
        finally:
            stores.delete(added.location)


def _keystone_login(cinder: dict[str, Any]) -> tuple[str, str, list[dict[str, Any]]]:
    """A real token of the images user: (token, project id, service catalog in the
    Keystone v2 form keystonemiddleware hands Glance in X-Service-Catalog)."""
    return _login(
        cinder["keystone_auth_url"], cinder["keystone_user"], cinder["keystone_password"],
        cinder["keystone_project"], cinder["keystone_domain"],
    )  # fmt: skip


def _login(
    auth_url: str, user: str, password: str, project: str, domain: str = "Default"
) -> tuple[str, str, list[dict[str, Any]]]:
    """(token, project id, service catalog in keystonemiddleware's v2 form) of a user."""
    answer = requests.post(
        f"{auth_url.rstrip('/')}/auth/tokens",
        json={"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "password": password, "domain": {"name": domain}}}},
            "scope": {"project": {"name": project, "domain": {"name": domain}}},
        }},
        timeout=30,
    )  # fmt: skip
    assert answer.status_code == 201, answer.text
    token = answer.json()["token"]
    catalog = [
        {
            "type": service["type"],
            "name": service.get("name", ""),
            "endpoints": [
                {
                    "region": endpoint.get("region_id") or endpoint.get("region"),
                    f"{endpoint['interface']}URL": endpoint["url"],
                }
                for endpoint in service["endpoints"]
            ],
        }
        for service in token["catalog"]
    ]
    # keystonemiddleware merges the interfaces of one region into one v2 endpoint
    for service in catalog:
        merged: dict[str, dict[str, Any]] = {}
        for endpoint in service["endpoints"]:
            merged.setdefault(endpoint["region"], {}).update(endpoint)
        service["endpoints"] = list(merged.values())
    return answer.headers["X-Subject-Token"], token["project"]["id"], catalog


def test_cinder_with_the_users_own_token(
    glance: dict[str, Any], cinder: dict[str, Any], tmp_path: Path
) -> None:
    """No service credentials in the cinder backend: Glance's request context (the
    caller's token, project and catalog, as keystonemiddleware passes them) reaches the
    real Cinder behind Keystone, for the upload, the download and the delete."""
    from tests.functional.test_cinder import cinder_options

    options = {
        k: v
        for k, v in cinder_options(cinder, "unused").items()
        if k not in ("cinder_endpoint_template", "cinder_store_project_name",
                     "cinder_store_user_name")
    }  # fmt: skip
    options.update(
        cinder_catalog_info=cinder["keystone_catalog_info"],
        cinder_os_region_name=cinder["keystone_region"],
    )
    data = os.urandom(2 * 1024 * 1024 + 5)
    tokens: list[str] = []

    def as_the_user(g: PrivateGlance) -> str:
        """A fresh token in the headers (the harness's Keystone tokens live 10 s)."""
        token, project_id, catalog = _keystone_login(cinder)
        tokens.append(token)
        g.headers.update(
            {"X-Auth-Token": token, "X-Project-Id": project_id,
             "X-Service-Catalog": json.dumps(catalog)}
        )  # fmt: skip
        return project_id

    with _glance_with_cinder(glance, tmp_path, options) as g:
        assert "unusable" not in g.log_text()
        project_id = as_the_user(g)
        image_id = _create_image(g, "on the user's own volume")
        answer = _upload(g, image_id, data, "vols")
        assert answer.status_code == 204, answer.text + g.log_text()[-3000:]
        as_the_user(g)
        image = g.get(f"/v2/images/{image_id}").json()
        assert (image["status"], image["stores"], image["size"]) == ("active", "vols", len(data))
        served = g.get(f"/v2/images/{image_id}/file")
        assert served.status_code == 200 and served.content == data
        with sqlite3.connect(g.db) as db:
            (value,) = db.execute(
                "SELECT value FROM image_locations WHERE image_id=?", (image_id,)
            ).fetchone()
        volume_id = value.rsplit("/", 1)[-1]
        assert value == f"cinder://vols/{volume_id}"
        # the volume is the user's: in their project, seen through Keystone's Cinder API
        volume_url = (
            f"{cinder['keystone_endpoint_template'] % {'project_id': project_id}}"
            f"/volumes/{volume_id}"
        )
        seen = requests.get(volume_url, headers={"X-Auth-Token": tokens[-1]}, timeout=30)
        assert seen.status_code == 200, seen.text
        as_the_user(g)
        deleted = requests.delete(f"{g.url}/v2/images/{image_id}", headers=g.headers, timeout=120)
        assert deleted.status_code == 204, deleted.text + g.log_text()[-3000:]
        as_the_user(g)
        gone = requests.get(volume_url, headers={"X-Auth-Token": tokens[-1]}, timeout=30)
        assert gone.status_code == 404 or gone.json()["volume"]["status"] == "deleting"
        log = g.log_text()
        assert not [t for t in tokens if t in log]


def test_multi_tenant_swift_with_the_users_token_catalog_and_acls(
    glance: dict[str, Any], tmp_path: Path
) -> None:
    """A swift backend with swift_store_multi_tenant (no credentials of its own), behind
    the harness's Keystone: each request's token and service catalog (as
    keystonemiddleware hands them to Glance) store the image in the user's own account,
    in a container of its own; sharing the image with another project (Glance's members
    API calls set_acls) lets that project's token read it from the owner's account."""
    ks = require_service("keystone")
    demo = (ks["auth_url"], ks["user"], ks["password"], ks["project"])
    alt = (ks["auth_url"], ks["alt_user"], ks["alt_password"], ks["alt_project"])
    container = f"glance-mt-{uuid.uuid4().hex[:8]}"
    extra = _section("mt", {
        "store_description": "Swift, the users' own accounts",
        "swift_store_multi_tenant": True,
        "swift_store_container": container,
        "swift_store_region": ks["region"],
    })  # fmt: skip
    data = os.urandom(2 * 1024 * 1024 + 9)
    tokens: list[str] = []

    def as_user(g: PrivateGlance, who: tuple[str, str, str, str], roles: str) -> str:
        """A fresh token (the harness's Keystone tokens live 10 s) in the headers."""
        token, project_id, catalog = _login(*who)
        tokens.append(token)
        g.headers.update(
            {"X-Auth-Token": token, "X-Project-Id": project_id, "X-Roles": roles,
             "X-Service-Catalog": json.dumps(catalog)}
        )  # fmt: skip
        return project_id

    backends = {"fs": "file", "mt": "swift"}
    with private_glance(glance, tmp_path / "glance", backends, extra) as g:
        assert "unusable" not in g.log_text()
        demo_project = as_user(g, demo, "member,reader")
        image_id = _create_image(g, "in the user's own account")
        answer = _upload(g, image_id, data, "mt")
        assert answer.status_code == 204, answer.text + g.log_text()[-3000:]
        with sqlite3.connect(g.db) as db:
            (value,) = db.execute(
                "SELECT value FROM image_locations WHERE image_id=?", (image_id,)
            ).fetchone()
        assert value == (
            f"swift+http://{ks['swift_url'].split('://', 1)[1]}/v1/AUTH_{demo_project}/"
            f"{container}_{image_id}/{image_id}"
        )
        as_user(g, demo, "member,reader")
        served = g.get(f"/v2/images/{image_id}/file")
        assert served.status_code == 200 and served.content == data, g.log_text()[-3000:]
        # the other project: not a member yet, so Glance does not show it the image
        alt_project = as_user(g, alt, "member,reader")
        assert g.get(f"/v2/images/{image_id}/file").status_code == 404
        as_user(g, demo, "member,reader")
        shared = requests.post(
            f"{g.url}/v2/images/{image_id}/members", headers=g.headers,
            json={"member": alt_project}, timeout=60,
        )  # fmt: skip
        assert shared.status_code == 200, shared.text + g.log_text()[-3000:]
        as_user(g, alt, "member,reader")
        served = g.get(f"/v2/images/{image_id}/file")
        assert served.status_code == 200, served.text + g.log_text()[-3000:]
        assert served.content == data
        as_user(g, demo, "member,reader")
        deleted = requests.delete(f"{g.url}/v2/images/{image_id}", headers=g.headers, timeout=120)
        assert deleted.status_code == 204, deleted.text + g.log_text()[-3000:]
        token, _, _ = _login(*demo)
        account = f"{ks['swift_url']}/v1/AUTH_{demo_project}"
        left = requests.get(
            account, headers={"X-Auth-Token": token}, params={"prefix": container}, timeout=30
        )
        assert left.status_code in (200, 204) and not left.text.strip(), left.text
        log = g.log_text()
        assert not [t for t in tokens if t in log]


@contextlib.contextmanager
def _serving(data: bytes) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that answers every GET with ``data``; its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/image.raw"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_legacy_task_import_leaves_nothing_in_the_work_dir(
    glance: dict[str, Any], tmp_path: Path
) -> None:
    """Single-store Glance's tasks API: the import flow downloads into ``[task]
    work_dir`` with a private file store, imports into the store, then removes the
    download with the legacy ``delete_from_backend`` - outside the store's directory,
    in Glance's own scratch directory."""
    data = os.urandom(300_000)
    # the source is the test's own server on loopback: Glance refuses loopback and ports
    # other than 80 and 443 unless allowed
    allow = "\n[import_filtering_opts]\nallowed_hosts = [127.0.0.1]\nallowed_ports = []\n"
    with (
        _serving(data) as url,
        private_glance(glance, tmp_path, {"file": "file"}, allow, legacy=True) as g,
    ):
        task = requests.post(
            f"{g.url}/v2/tasks",
            headers={**g.headers, "Content-Type": "application/json"},
            json={"type": "import", "input": {
                "import_from": url, "import_from_format": "raw",
                "image_properties": {"disk_format": "raw", "container_format": "bare",
                                     "name": "imported by a task"}}},
            timeout=60,
        )  # fmt: skip
        assert task.status_code == 201, task.text
        task_id = task.json()["id"]
        deadline = time.monotonic() + 90
        while (state := g.get(f"/v2/tasks/{task_id}").json())["status"] in (
            "pending",
            "processing",
        ):
            assert time.monotonic() < deadline, state
            time.sleep(0.3)
        assert state["status"] == "success", (state, g.log_text()[-3000:])
        image_id = state["result"]["image_id"]
        assert (tmp_path / "images" / image_id).read_bytes() == data
        assert g.get(f"/v2/images/{image_id}/file").content == data
        left = [p.name for p in (tmp_path / "work").iterdir()]
        assert left == [], g.log_text()[-3000:]
