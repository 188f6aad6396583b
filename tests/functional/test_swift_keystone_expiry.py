"""A Keystone token that expires in the middle of an upload or a download (Swift driver).

The harness's Keystone gives tokens that live 10 s (``[token] expiration``,
lowered from 3600 there: a real server setting, see services/keystone.py).
The proxy in front of Swift (authtoken + keystoneauth) keeps a validation in
memcache for minutes, but still refuses the token once it has expired:
checked here with raw requests after each transfer. Seven transfers run at
once, each through Stores of its own, paced by a slow source or a slow reader
so that a token expires half-way (the module so waits about one token
lifetime, not seven):

* a segmented upload (SLO, and DLO) whose first segments go with one token
  and the rest after it expired: the proxy refuses a segment PUT (its log
  shows the 401) and the driver logs in again and sends it once more;
* a streaming PUT whose source gives its first byte only after the token the
  add began with expired: a streaming body can be sent once only, so the
  driver logs in just before it (with the old token the 401 would come after
  the whole body was read from the source, and the add would fail);
* a streaming PUT that goes on after its own token expired (Swift checks a
  token when a request starts);
* a download (SLO, and DLO) read so slowly that the proxy fetches most of the
  segments after the token expired (its log says when), then a ranged read,
  for which the driver logs in again;
* a caller's token (multi-tenant) that expired: the driver cannot log in for
  the caller, so every operation is :class:`AuthenticationFailed`.

Each checks the md5 of what was stored (read back apart from imgstore) or
read, the container listing (the image and its segments, then nothing after
the delete; nothing at all after a failed add), that the token really expired
mid-way (Keystone's own times for it, read with ``allow_expired``, and a raw
request the proxy refuses) and, where it must, that the driver logged in again.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from imgstore import Stores
from imgstore.exceptions import AuthenticationFailed
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
PACE = 1.0
"""Seconds past a token's expiry before a transfer goes on."""
LOG_WAIT = 10.0
"""Seconds to wait for the proxy to log a request that has ended."""
KINDS: dict[str, dict[str, Any]] = {
    "slo": SMALL_SEGMENTS,
    "dlo": {**SMALL_SEGMENTS, "swift_store_large_object_type": "dlo"},
}


# -- Keystone and the proxy, seen from outside imgstore -------------------------------


def _epoch(stamp: str) -> float:
    """Keystone's ``2026-12-04T22:07:58.000000Z`` as seconds since the epoch."""
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def token_times(srv: dict[str, Any], token: str) -> tuple[float, float]:
    """Keystone's ``issued_at`` and ``expires_at`` of ``token`` (expired or not)."""
    conn = raw_connection(srv)
    try:
        _, own = conn.get_auth()
    finally:
        conn.close()
    resp = requests.get(
        f"{srv['auth_url']}/auth/tokens",
        params={"allow_expired": "1"},
        headers={"X-Auth-Token": own, "X-Subject-Token": token},
        timeout=30,
    )
    assert resp.status_code == 200, f"Keystone: {resp.status_code} {resp.text[:200]}"
    body = resp.json()["token"]
    return _epoch(body["issued_at"]), _epoch(body["expires_at"])


def proxy_status(storage_url: str, token: str) -> int:
    """The proxy's answer to a raw HEAD of the account with ``token``."""
    return requests.head(storage_url, headers={"X-Auth-Token": token}, timeout=30).status_code


@dataclasses.dataclass(frozen=True)
class Logged:
    """One request in the proxy's log."""

    method: str
    path: str
    """Unquoted, without the query string."""
    status: int
    source: str
    """``-`` for a client's request; ``SLO`` or ``DLO`` for a segment the proxy fetched."""
    start: float
    end: float

    @property
    def name(self) -> str:
        """The object name (the last part of the path)."""
        return self.path.rsplit("/", 1)[-1]


class ProxyLog:
    """The second proxy's log (``proxy_log``), from where it ended when this was made.

    Its proxy-logging lines: client, remote, date, method, path, protocol,
    status, referer, agent, token, bytes in, bytes out, etag, transaction,
    headers, request time, source, log info, start time, end time, ...
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size

    def requests(self, needle: str) -> list[Logged]:
        """The requests so far whose path holds ``needle``."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode("utf-8", "replace")
        found = []
        for line in text.splitlines():
            _, sep, rest = line.partition("proxy-keystone: ")
            fields = rest.split()
            if not sep or len(fields) < 20 or not fields[6].isdigit():
                continue
            path = urllib.parse.unquote(fields[4]).split("?", 1)[0]
            if needle in path:
                found.append(
                    Logged(fields[3], path, int(fields[6]), fields[16],
                           float(fields[18]), float(fields[19]))
                )  # fmt: skip
        return found

    def wait(self, needle: str, done: Callable[[list[Logged]], bool]) -> list[Logged]:
        """The requests whose path holds ``needle``, once ``done`` says all are logged."""
        deadline = time.monotonic() + LOG_WAIT
        while True:
            found = self.requests(needle)
            if done(found) or time.monotonic() > deadline:
                return found
            time.sleep(0.2)


# -- the transfers -------------------------------------------------------------------


def _sleep_until(when: float) -> None:
    time.sleep(max(0.0, when - time.time()))


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def shared_token(driver: Any) -> str:
    """The token the driver shares between its requests."""
    return str(driver._tokens[driver.account][1])


@dataclasses.dataclass
class Env:
    """What every transfer needs: the server, a place for config files, the proxy's log."""

    srv: dict[str, Any]
    tmp: Path
    log: ProxyLog

    @property
    def lifetime(self) -> int:
        return int(self.srv["details"]["token_expiration"])

    @contextmanager
    def store(self, name: str, extra: dict[str, Any]) -> Iterator[Box]:
        """Stores of their own on a container of their own, emptied and removed after."""
        container = new_container()
        (self.tmp / name).mkdir()
        make = make_stores_factory(self.tmp / name, self.srv, container, extra)
        with make({}) as stores:
            driver: Any = stores.driver("swift")
            box = Box(self, stores, driver, container, container_listing(self.srv, container))
            try:
                yield box
            finally:
                box.wipe()

    def stored_md5(self, container: str, obj: str) -> str:
        """The md5 of an object as the proxy serves it, read with swiftclient."""
        conn = raw_connection(self.srv)
        try:
            _, body = conn.get_object(container, obj, resp_chunk_size=MiB)
            digest = hashlib.md5(usedforsecurity=False)
            for piece in body:
                digest.update(piece)
            return digest.hexdigest()
        finally:
            conn.close()


@dataclasses.dataclass
class Box:
    """One transfer's Stores, driver and container."""

    env: Env
    stores: Stores
    driver: Any
    container: str
    listing: Callable[[], set[str]]

    def login(self) -> tuple[str, float]:
        """Have the driver log in (and make the container); its token and when that expires."""
        self.driver._ensure_container(self.driver.account, self.container)
        token = shared_token(self.driver)
        issued, expires = token_times(self.env.srv, token)
        assert expires - issued <= self.env.lifetime, "Keystone's tokens live longer than said"
        assert expires - time.time() > 3, "the token is too close to its end already"
        return token, expires

    def storage_url(self) -> str:
        return str(self.driver._tokens[self.driver.account][0])

    def assert_refused(self, token: str, what: str) -> None:
        status = proxy_status(self.storage_url(), token)
        assert status == 401, f"{what}: the proxy answered {status} to the expired token"

    def wipe(self) -> None:
        """Delete whatever is left in the container, and the container."""
        conn = raw_connection(self.env.srv)
        try:
            for name in self.listing():
                conn.delete_object(self.container, name)
            try:
                conn.delete_container(self.container)
            except Exception as exc:
                if getattr(exc, "http_status", None) != 404:
                    raise
        finally:
            conn.close()


def upload_segmented(env: Env, kind: str) -> None:
    """The first segments go with the add's token, the rest after it expired."""
    with env.store(f"upload-{kind}", KINDS[kind]) as box:
        token0, expires0 = box.login()
        chunk = box.driver.write_chunk_size  # the core writes once it has this much
        data = os.urandom(2 * chunk + 17)
        resumed: list[float] = []

        def source() -> Iterator[bytes]:
            yield data[:chunk]  # written (and its 1 MiB segments sent) before the token ends
            _sleep_until(expires0 + PACE)
            resumed.append(time.time())
            for at in range(chunk, len(data), MiB):
                yield data[at : at + MiB]

        image_id = str(uuid.uuid4())
        result = box.stores.add(image_id, source(), size=len(data))
        assert resumed[0] > expires0
        assert result.checksum == _md5(data)
        assert env.stored_md5(box.container, image_id) == _md5(data)
        names = box.listing()
        segments = names - {image_id}
        assert image_id in names
        assert len(segments) == -(-len(data) // MiB), sorted(names)
        assert all(n.startswith(f"{image_id}-") for n in segments), sorted(names)
        puts = env.log.wait(
            f"/{box.container}/{image_id}-",
            lambda found: {r.name for r in found if r.status == 201} >= segments,
        )
        puts = [r for r in puts if r.method == "PUT"]
        early = [r for r in puts if r.status == 201 and r.end < expires0]
        refused = [r for r in puts if r.status == 401]
        assert early, f"no segment was stored before the token expired: {puts}"
        assert refused, f"no segment PUT was refused: the token did not expire mid-upload {puts}"
        assert all(r.start >= expires0 - 0.1 for r in refused), (expires0, refused)
        assert {r.name for r in puts if r.status == 201} == segments
        assert shared_token(box.driver) != token0, "the driver did not log in again"
        box.assert_refused(token0, f"{kind} upload")
        box.stores.delete(result.location)
        assert box.listing() == set()


def put_first_byte_late(env: Env) -> None:
    """A streaming PUT whose source starts after the token the add began with expired."""
    with env.store("put-late", {}) as box:
        token0, expires0 = box.login()
        data = os.urandom(2 * MiB + 5)

        def source() -> Iterator[bytes]:
            _sleep_until(expires0 + PACE)  # begin_write's HEAD went with token0 before this
            for at in range(0, len(data), MiB):
                yield data[at : at + MiB]

        image_id = str(uuid.uuid4())
        result = box.stores.add(image_id, source(), size=len(data))
        assert result.checksum == _md5(data)
        assert env.stored_md5(box.container, image_id) == _md5(data)
        assert box.listing() == {image_id}
        logged = env.log.wait(f"/{box.container}/{image_id}", lambda found: len(found) >= 3)
        heads = [r for r in logged if r.method == "HEAD"]
        puts = [r for r in logged if r.method == "PUT"]
        assert heads and heads[0].status == 404 and heads[0].end < expires0, logged
        # one PUT, with a token of its own: none refused after its body was read
        assert [r.status for r in puts] == [201], logged
        assert puts[0].start > expires0
        assert shared_token(box.driver) != token0
        box.assert_refused(token0, "streaming PUT, first byte late")
        box.stores.delete(result.location)
        assert box.listing() == set()


def put_spanning(env: Env) -> None:
    """A streaming PUT whose body still flows after its token expired."""
    with env.store("put-spanning", {}) as box:
        box.login()
        chunk = box.driver.write_chunk_size
        data = os.urandom(chunk + 2 * MiB + 3)
        marks: dict[str, float] = {}

        def source() -> Iterator[bytes]:
            for at in range(0, chunk, MiB):
                marks.setdefault("first", time.time())  # the PUT logs in after this
                yield data[at : at + MiB]
            # the core wrote the first chunk: the PUT started and has its token
            _sleep_until(marks["first"] + env.lifetime + 3 * PACE)
            marks["rest"] = time.time()
            for at in range(chunk, len(data), MiB):
                yield data[at : at + MiB]

        image_id = str(uuid.uuid4())
        result = box.stores.add(image_id, source(), size=len(data))
        token1 = shared_token(box.driver)  # the PUT's own (nothing came after it)
        issued1, expires1 = token_times(env.srv, token1)
        assert issued1 >= marks["first"] - 1, "not the PUT's token"  # Keystone keeps seconds
        assert expires1 < marks["rest"], "the PUT's token had not expired when the rest came"
        assert result.checksum == _md5(data)
        assert env.stored_md5(box.container, image_id) == _md5(data)
        assert box.listing() == {image_id}
        puts = env.log.wait(
            f"/{box.container}/{image_id}",
            lambda found: any(r.method == "PUT" for r in found),
        )
        puts = [r for r in puts if r.method == "PUT"]
        assert [r.status for r in puts] == [201], puts
        assert puts[0].start < expires1 < puts[0].end, (expires1, puts)
        box.assert_refused(token1, "streaming PUT")
        box.stores.delete(result.location)
        assert box.listing() == set()


def download(env: Env, kind: str) -> None:
    """A slow reader: most segments are fetched by the proxy after the token expired."""
    with env.store(f"download-{kind}", KINDS[kind]) as box:
        data = os.urandom(24 * MiB + 7)
        image_id = str(uuid.uuid4())
        location = box.stores.add(image_id, data, size=len(data)).location
        (env.tmp / f"download-{kind}" / "reader").mkdir()
        make = make_stores_factory(env.tmp / f"download-{kind}" / "reader", env.srv,
                                   box.container, {})  # fmt: skip
        with make({}) as stores:
            reader_box = Box(env, stores, stores.driver("swift"), box.container, box.listing)
            token0, expires0 = reader_box.login()
            digest = hashlib.md5(usedforsecurity=False)
            with stores.get(location) as reader:
                pieces = iter(reader)
                digest.update(next(pieces))
                _sleep_until(expires0 + PACE)
                for piece in pieces:
                    digest.update(piece)
            assert digest.hexdigest() == _md5(data)
            fetched = env.log.wait(
                f"/{box.container}/{image_id}-",
                lambda found: len({r.name for r in found if r.method == "GET"}) >= 25,
            )
            fetched = [r for r in fetched if r.method == "GET" and r.source == kind.upper()]
            assert {r.status for r in fetched} == {200}, fetched
            late = [r for r in fetched if r.start > expires0]
            assert len({r.name for r in fetched}) == 25, fetched
            assert len(late) >= 10, f"only {len(late)} segments fetched after the token expired"
            reader_box.assert_refused(token0, f"{kind} download")
            # the shared token has expired: a ranged read logs in again
            with stores.get(location, offset=5 * MiB + 3, length=MiB) as reader:
                assert reader.read_all() == data[5 * MiB + 3 : 6 * MiB + 3]
            assert shared_token(reader_box.driver) != token0
        box.stores.delete(location)
        assert box.listing() == set()


def callers_token(env: Env) -> None:
    """Multi-tenant: an expired caller's token is AuthenticationFailed, nothing written."""
    with env.store("callers-token", SMALL_SEGMENTS) as box:
        box.login()
        kept = box.stores.add(str(uuid.uuid4()), b"kept", size=4)
        conn = raw_connection(env.srv)
        try:
            url, token = conn.get_auth()
        finally:
            conn.close()
        _, expires = token_times(env.srv, token)
        assert proxy_status(url, token) in (200, 204)
        _sleep_until(expires + PACE)
        assert proxy_status(url, token) == 401
        driver = box.driver
        image_id = str(uuid.uuid4())
        location = f"swift+http://{url.split('://', 1)[1]}/{box.container}/{kept.image_id}"
        failures = []
        with driver.credentials(token=token, storage_url=url):
            with pytest.raises(AuthenticationFailed) as sized:
                box.stores.size(location)
            failures.append(sized.value)
            with pytest.raises(AuthenticationFailed) as read:
                with box.stores.get(location) as reader:
                    reader.read_all()
            failures.append(read.value)
            for size in (3, 3 * MiB):  # a streaming PUT, and an SLO
                with pytest.raises(AuthenticationFailed) as added:
                    box.stores.add(image_id, os.urandom(size), size=size)
                failures.append(added.value)
        for exc in failures:
            assert "refused (401" in str(exc), str(exc)
            assert token not in str(exc) and env.srv["key"] not in str(exc)
        assert box.listing() == {kept.image_id}
        box.stores.delete(kept.location)


TRANSFERS: dict[str, Callable[[Env], None]] = {
    "upload-slo": lambda env: upload_segmented(env, "slo"),
    "upload-dlo": lambda env: upload_segmented(env, "dlo"),
    "put-first-byte-late": put_first_byte_late,
    "put-spanning": put_spanning,
    "download-slo": lambda env: download(env, "slo"),
    "download-dlo": lambda env: download(env, "dlo"),
    "callers-token": callers_token,
}


@pytest.fixture(scope="module")
def transfers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Future[None]]:
    """Every transfer, run at once (each test reads its own outcome)."""
    srv = server("keystone")
    env = Env(srv, tmp_path_factory.mktemp("keystone-expiry"), ProxyLog(
        Path(srv["details"]["proxy_log"])))  # fmt: skip
    with ThreadPoolExecutor(len(TRANSFERS), thread_name_prefix="expiry") as pool:
        futures = {name: pool.submit(run, env) for name, run in TRANSFERS.items()}
        wait(futures.values())
    return futures


@pytest.mark.parametrize("kind", ["slo", "dlo"])
def test_a_segmented_upload_outlives_its_token(transfers: dict[str, Future[None]],
                                               kind: str) -> None:  # fmt: skip
    """Segments after the token expired are refused once, then sent with a new token."""
    transfers[f"upload-{kind}"].result()


def test_a_streaming_put_starting_after_the_token_expired(
    transfers: dict[str, Future[None]],
) -> None:
    """The PUT logs in first: its one attempt is stored, none is refused."""
    transfers["put-first-byte-late"].result()


def test_a_streaming_put_outlives_its_token(transfers: dict[str, Future[None]]) -> None:
    """Swift checks the token when the PUT starts; the body may flow past its end."""
    transfers["put-spanning"].result()


@pytest.mark.parametrize("kind", ["slo", "dlo"])
def test_a_slow_download_outlives_its_token(transfers: dict[str, Future[None]],
                                            kind: str) -> None:  # fmt: skip
    """The proxy fetches the segments after the token expired; a later read logs in again."""
    transfers[f"download-{kind}"].result()


def test_an_expired_callers_token_is_authentication_failed(
    transfers: dict[str, Future[None]],
) -> None:
    """Multi-tenant: no login is possible for the caller, so AuthenticationFailed."""
    transfers["callers-token"].result()
