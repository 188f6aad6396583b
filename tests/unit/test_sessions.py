"""The core's session renewal: once per ended session, only on a refusal, and when a
session is renewed ahead of its end."""

from __future__ import annotations

import contextvars
import threading

import pytest

from imgstore import telemetry
from imgstore.exceptions import AuthenticationFailed, BackendUnavailable
from imgstore.sessions import Renewal, SessionExpired, acting_as, renew_margin


class Server:
    """Hands out numbered sessions and refuses those in ``ended``."""

    def __init__(self) -> None:
        self.session = 1
        self.logins = 0
        self.ended: set[int] = set()
        self.calls: list[int] = []

    def current(self) -> int:
        return self.session

    def login(self) -> None:
        self.logins += 1
        self.session += 1

    def call(self, session: int) -> str:
        self.calls.append(session)
        if session in self.ended:
            raise SessionExpired
        return f"done with {session}"


def test_an_ended_session_is_renewed_once_and_the_call_made_again() -> None:
    server = Server()
    server.ended.add(1)
    renewal = Renewal(server.current, server.login, "test")
    with telemetry.measure("get", "b", "d") as op:
        assert renewal.call(server.call, "reading x") == "done with 2"
    assert server.logins == 1
    assert server.calls == [1, 2]
    assert op.retries == 1


def test_a_session_refused_again_after_renewal_is_not_renewed_twice() -> None:
    server = Server()
    server.ended.update({1, 2})
    renewal = Renewal(server.current, server.login, "test")
    with pytest.raises(AuthenticationFailed, match="reading x: the server refused the session"):
        renewal.call(server.call, "reading x")
    assert server.logins == 1
    assert server.calls == [1, 2]


def test_a_call_that_cannot_be_repeated_renews_but_is_not_made_again() -> None:
    server = Server()
    server.ended.add(1)
    renewal = Renewal(server.current, server.login, "test")
    with pytest.raises(AuthenticationFailed, match="writing x"):
        renewal.call(server.call, "writing x", again=False)
    assert server.calls == [1]
    assert server.logins == 1, "the next call finds a new session"
    assert renewal.call(server.call, "reading x") == "done with 2"


def test_other_errors_pass_without_renewal() -> None:
    server = Server()
    renewal = Renewal(server.current, server.login, "test")

    def failing(session: int) -> str:
        server.calls.append(session)
        raise BackendUnavailable("connection reset")

    with pytest.raises(BackendUnavailable, match="connection reset"):
        renewal.call(failing, "reading x")
    assert server.logins == 0
    assert server.calls == [1]


def test_threads_that_find_the_same_session_ended_renew_it_once() -> None:
    server = Server()
    server.ended.add(1)
    renewal = Renewal(server.current, server.login, "test")
    everyone_refused = threading.Barrier(4)

    def call(session: int) -> str:
        if session in server.ended:
            everyone_refused.wait(timeout=10)  # all four hold the ended session
            raise SessionExpired
        return f"done with {session}"

    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(renewal.call(call, "reading x")))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == ["done with 2"] * 4
    assert server.logins == 1


@pytest.mark.parametrize(
    ("lifetime", "margin"), [(10, 2), (60, 15), (479, 119), (3600, 120), (86400, 120), (3, 1)]
)
def test_renewal_margin_is_a_quarter_of_the_lifetime_within_bounds(
    lifetime: float, margin: int
) -> None:
    assert renew_margin(lifetime) == margin


CALLER: contextvars.ContextVar[str | None] = contextvars.ContextVar("test_caller", default=None)


def test_acting_as_sets_a_callers_credentials_for_the_block_only() -> None:
    with acting_as(CALLER, "alice"):
        assert CALLER.get() == "alice"
        with acting_as(CALLER, None):  # None: the credentials stay as they are
            assert CALLER.get() == "alice"
        with acting_as(CALLER, "bob"):
            assert CALLER.get() == "bob"
        assert CALLER.get() == "alice"
        with pytest.raises(KeyError), acting_as(CALLER, "carol"):
            raise KeyError("an error inside the block still resets it")
        assert CALLER.get() == "alice"
    assert CALLER.get() is None
    seen: list[str | None] = []  # another thread sees none of it
    with acting_as(CALLER, "alice"):
        thread = threading.Thread(target=lambda: seen.append(CALLER.get()))
        thread.start()
        thread.join()
    assert seen == [None]
