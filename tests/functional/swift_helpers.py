"""Shared by the Swift functional tests: servers, configurations, raw listings."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swiftclient import client as sc  # type: ignore[import-untyped]

from imgstore import Stores
from tests.functional.conftest import require_service

SMALL_SEGMENTS = {
    # every add of known size a large object of 1 MiB segments, 3 uploading at once
    "swift_store_large_object_size": 0,
    "swift_store_large_object_chunk_size": 1,
    "swift_store_thread_pools": 3,
}


def server(name: str) -> dict[str, Any]:
    """Auth v1 details of server ``name``: ``swift`` (tempauth) or ``ceph`` (radosgw)."""
    details = require_service(name)
    if name == "ceph":
        return {
            "auth_url": details["swift_auth_url"],
            "user": details["swift_user"],
            "key": details["swift_key"],
            "auth_version": "1",
        }
    if name == "keystone":
        return {
            "auth_url": details["auth_url"],
            "user": f"{details['project']}:{details['user']}",
            "key": details["password"],
            "auth_version": "3",
            "details": details,
        }
    return {
        "auth_url": details["auth_url"],
        "user": details["user"],
        "key": details["key"],
        "auth_version": "1",
    }


def swift_options(srv: dict[str, Any], container: str, **extra: Any) -> dict[str, Any]:
    """The ``swift_store_*`` options for server ``srv`` and ``container``."""
    return {
        "swift_store_auth_address": srv["auth_url"],
        "swift_store_user": srv["user"],
        "swift_store_key": srv["key"],
        "swift_store_auth_version": srv["auth_version"],
        "swift_store_container": container,
        "swift_store_create_container_on_put": True,
        **extra,
    }


def write_config(path: Path, options: dict[str, Any]) -> Path:
    """A legacy ``[glance_store]`` file with one swift store."""
    lines = ["[glance_store]", "stores = swift", "default_store = swift"]
    lines += [f"{key} = {value}" for key, value in options.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def new_container() -> str:
    return f"imgstore-{uuid.uuid4().hex[:12]}"


def raw_connection(srv: dict[str, Any]) -> Any:
    """A plain swiftclient connection (not the driver's) to look at the account."""
    if srv["auth_version"] == "1":
        return sc.Connection(authurl=srv["auth_url"], user=srv["user"], key=srv["key"])
    project, _, user = srv["user"].partition(":")
    return sc.Connection(
        authurl=srv["auth_url"],
        user=user,
        key=srv["key"],
        auth_version="3",
        os_options={
            "project_name": project,
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        },
    )


def container_listing(srv: dict[str, Any], container: str) -> Callable[[], set[str]]:
    """Every object (images, manifests, segments) in ``container``."""

    def listing() -> set[str]:
        conn = raw_connection(srv)
        try:
            _, objects = conn.get_container(container, full_listing=True)
        except sc.ClientException as exc:
            if exc.http_status == 404:
                return set()
            raise
        finally:
            conn.close()
        return {o["name"] for o in objects}

    return listing


def make_stores_factory(
    tmp_path: Path, srv: dict[str, Any], container: str, extra: dict[str, Any]
) -> Callable[[dict[str, Any]], Stores]:
    """``make_stores(overrides)`` for StoreUnderTest."""
    counter = iter(range(10_000))

    def make_stores(overrides: dict[str, Any]) -> Stores:
        path = tmp_path / f"imgstore-swift-{next(counter)}.conf"
        return Stores.from_config_files(
            write_config(path, swift_options(srv, container, **extra, **overrides))
        )

    return make_stores
