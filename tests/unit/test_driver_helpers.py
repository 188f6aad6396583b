"""The helpers the core gives every driver: error mapping (``Driver.mapped``,
``call_mapped``, ``map_error``) and the messages drivers share."""

from __future__ import annotations

from typing import Any

import pytest

from imgstore.driver import Driver, DriverConf, ReadStream, Writer, Written
from imgstore.drivers.http import HttpLocation
from imgstore.exceptions import (
    BackendError,
    BadConfiguration,
    Duplicate,
    ImgstoreError,
    NotFound,
    StorageFull,
)


class LibraryError(Exception):
    """What a driver's client library raises."""


class Plain(Driver):
    """A driver that keeps every default."""

    name = "plain-test"
    location_class = HttpLocation

    def open(self, location: Any, offset: int, length: int | None) -> ReadStream:
        raise NotImplementedError

    def size(self, location: Any) -> int:
        raise NotImplementedError


class Library(Plain):
    """Maps only its library's errors, ``from None``; a full disk is StorageFull."""

    name = "library-test"
    chain_errors = False

    def library_errors(self) -> tuple[type[BaseException], ...]:
        return (LibraryError,)

    def classify_error(self, exc: BaseException, doing: str) -> ImgstoreError:
        if "full" in str(exc):
            return StorageFull(f"{doing}: full")
        return super().classify_error(exc, doing)


class Blunt(Plain):
    """Maps whatever it is given, imgstore errors too."""

    def map_error(self, exc: BaseException, doing: str) -> ImgstoreError:
        return BackendError(f"{doing}: it failed")


def make(cls: type[Driver]) -> Any:
    return cls(DriverConf({}), "b1")


def fail(exc: BaseException) -> None:
    raise exc


def test_the_default_maps_any_exception_to_the_cores_message_chained() -> None:
    driver = make(Plain)
    cause = ValueError("bad answer")
    with pytest.raises(BackendError) as raised, driver.mapped("reading x"):
        fail(cause)
    assert str(raised.value) == "backend 'b1': reading x failed: ValueError: bad answer"
    assert raised.value.__cause__ is cause


def test_a_driver_may_drop_the_librarys_traceback() -> None:
    driver = make(Library)
    with pytest.raises(StorageFull, match=r"^writing x: full$") as raised:
        driver.call_mapped("writing x", fail, LibraryError("disk full"))
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__


def test_imgstore_errors_pass_unchanged() -> None:
    for cls in (Plain, Library, Blunt):
        driver = make(cls)
        cause = ValueError("underneath")
        error = NotFound("no image at x")
        error.__cause__ = cause
        with pytest.raises(NotFound) as raised, driver.mapped("reading x"):
            fail(error)
        assert raised.value is error
        assert str(error) == "no image at x"
        assert error.__cause__ is cause
    for cls in (Plain, Library):
        assert make(cls).map_error(error, "reading x") is error


def test_only_the_library_errors_are_mapped() -> None:
    driver = make(Library)
    other = KeyError("not the library's")
    with pytest.raises(KeyError) as raised, driver.mapped("reading x"):
        fail(other)
    assert raised.value is other
    with pytest.raises(BackendError, match=r"^backend 'b1': reading x failed: LibraryError: no$"):
        driver.call_mapped("reading x", fail, LibraryError("no"))


def test_call_mapped_passes_arguments_and_returns_the_result() -> None:
    driver = make(Plain)

    def add(a: int, b: int, *, doing: str, fn: str) -> str:
        return f"{a + b} {doing} {fn}"

    assert driver.call_mapped("adding", add, 1, 2, doing="d", fn="f") == "3 d f"


def test_duplicate_names_the_image_and_the_backend() -> None:
    error = make(Plain).duplicate("img-1")
    assert isinstance(error, Duplicate)
    assert str(error) == "image img-1 already exists in backend 'b1'"


def test_require_names_every_unset_option_in_order() -> None:
    driver = make(Plain)
    driver.conf = DriverConf({"a_host": "h", "a_user": "", "a_key": None, "a_port": 0})
    driver.require("a_host")
    with pytest.raises(BadConfiguration) as raised:
        driver.require("a_user", "a_host", "a_key", "a_port")
    assert str(raised.value) == "backend 'b1': set a_user, a_key, a_port"


def test_needs_imports_the_modules_or_says_what_to_install() -> None:
    driver = make(Plain)
    driver.needs("json", "json", "email.mime.text")
    with pytest.raises(BadConfiguration) as raised:
        driver.needs("libfoo", "json", "imgstore_no_such_module_here")
    assert str(raised.value) == (
        "backend 'b1': the plain-test driver needs libfoo: pip install 'imgstore[plain-test]'"
    )
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__


def test_with_room_takes_the_highest_rank_then_the_most_free_asking_only_ranks_tried() -> None:
    driver = make(Plain)
    rank = {"a": 2, "b": 2, "c": 2, "d": 1, "e": 0}
    room = {"a": 50, "b": 80, "c": 80, "d": 500, "e": 900}
    asked: list[str] = []

    def free(place: str) -> int:
        asked.append(place)
        return room[place]

    places = list(rank)
    assert driver.with_room(places, rank.__getitem__, free, 80, "disk") == "b"  # b before c
    assert sorted(asked) == ["a", "b", "c"], "rank 1 and 0 need not be asked"
    asked.clear()
    assert driver.with_room(places, rank.__getitem__, free, 81, "disk") == "d"
    assert sorted(asked) == ["a", "b", "c", "d"]
    with pytest.raises(StorageFull) as raised:
        driver.with_room(places, rank.__getitem__, free, 901, "disk")
    assert str(raised.value) == "backend 'b1': no disk has room for 901 bytes"


def test_a_writer_repr_names_its_class_and_shown_location_when_it_has_one() -> None:
    class Up(Writer):
        def write(self, chunk: memoryview) -> None: ...
        def commit(self, size: int) -> Written:
            raise NotImplementedError

        def abort(self) -> None: ...

    up = Up()
    assert repr(up).startswith("<") and " object at 0x" in repr(up)
    up.shown = "s3://host/bucket/img-1"
    assert repr(up) == "<Up s3://host/bucket/img-1>"


def test_found_is_false_only_for_not_found() -> None:
    calls: list[tuple[Any, ...]] = []
    assert Driver.found(lambda *a, **k: calls.append((a, k)), 1, x=2)
    assert calls == [((1,), {"x": 2})]
    assert make(Plain).found(lambda: None) is True
    assert make(Plain).found(fail, NotFound("gone")) is False
    with pytest.raises(BackendError):
        make(Plain).found(fail, BackendError("down"))
