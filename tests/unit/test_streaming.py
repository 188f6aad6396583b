"""The core's fed request: what the writer feeds is what the request reads, failures and
early ends reach the writer, and an abort ends the request without its body."""

from __future__ import annotations

import threading
import time

import pytest

from imgstore.exceptions import BackendError, BackendUnavailable
from imgstore.streaming import END, FedBody, FedRequest, FedWriting, SizedFedBody


def test_the_request_reads_what_is_fed_in_order() -> None:
    got: list[bytes] = []
    body = SizedFedBody(9)
    request = FedRequest(lambda: got.append(b"".join(iter(lambda: bytes(body.read(2)), b""))),
                         body, "t", "writing x")  # fmt: skip
    for piece in (b"abc", b"def", b"ghi"):
        request.feed(piece)
    request.finish()
    assert got == [b"abcdefghi"]
    assert request.sent and len(body) == 9


def test_an_iterating_client_gets_the_chunks() -> None:
    got: list[bytes] = []
    body = FedBody()
    request = FedRequest(lambda: got.extend(body), body, "t", "writing x")
    request.feed(b"one")
    request.feed(b"two")
    request.finish()
    assert got == [b"one", b"two"]


def test_a_failure_of_the_request_reaches_the_writer() -> None:
    body = FedBody(depth=1)

    def send() -> None:
        next(iter(body))
        raise BackendUnavailable("backend 'x': writing: the server went away")

    request = FedRequest(send, body, "t", "writing x")
    with pytest.raises(BackendUnavailable, match="went away"):
        for _ in range(100):  # the request fails after the first chunk; a feed says so
            request.feed(b"chunk")
    assert not request.sent


def test_a_request_that_ends_before_its_body_is_an_early_end() -> None:
    request = FedRequest(lambda: None, FedBody(depth=1), "t", "writing x")
    request.start()
    request.join()
    with pytest.raises(BackendError, match="ended early"):
        request.feed(b"more")


def test_an_empty_request_may_end_before_the_end_marker() -> None:
    request = FedRequest(lambda: None, SizedFedBody(0), "t", "writing x")
    request.finish()
    assert request.sent


def test_abort_ends_the_request_without_an_error() -> None:
    reading = threading.Event()
    body = FedBody(depth=1)

    def send() -> None:
        reading.set()
        for _ in body:
            pass

    request = FedRequest(send, body, "t", "writing x")
    request.feed(b"first")
    assert reading.wait(5)
    request.abort()
    assert request.error is None and not request.sent


@pytest.mark.parametrize("reads", [True, False], ids=["read", "iterate"])
def test_accepted_counts_what_was_sent_and_the_last_chunk_once_answered(reads: bool) -> None:
    body = SizedFedBody(9) if reads else FedBody()
    answered = threading.Event()
    took_all = threading.Event()

    def send() -> None:
        if reads:
            while body.read(2):
                pass
        else:
            for _chunk in body:
                pass
        took_all.set()
        answered.wait(5)  # the server's answer

    request = FedRequest(send, body, "t", "writing x")
    assert request.accepted == 0
    for piece in (b"abc", b"def", b"ghi"):
        request.feed(piece)
    request.feed(END)
    assert took_all.wait(5)
    assert request.accepted == 6, "the last chunk is on the wire, not yet stored"
    answered.set()
    request.join()
    assert request.sent and request.accepted == 9


class _Fed(FedWriting):
    def __init__(self, request: FedRequest) -> None:
        self._request = request


def test_a_fed_writer_feeds_copies_and_counts_the_last_chunk_once_answered() -> None:
    got: list[bytes] = []
    go, read, answer = threading.Event(), threading.Event(), threading.Event()
    body = FedBody()

    def send() -> None:
        go.wait(10)  # the client reads the body only after the writer reused its buffer
        got.extend(body)
        read.set()
        answer.wait(10)

    writer = _Fed(FedRequest(send, body, "t", "writing x"))
    buffer = bytearray(b"abc")
    writer.write(memoryview(buffer))
    buffer[:] = b"def"
    writer.write(memoryview(buffer))
    writer._request.feed(END)
    go.set()
    assert read.wait(10)
    assert got == [b"abc", b"def"]
    assert writer.accepted == 3  # the last chunk counts once the server has answered
    answer.set()
    writer._request.finish()
    assert writer.accepted == 6


def test_a_fed_writer_lends_buffers_feeds_them_as_they_are_and_reuses_them_once_sent() -> None:
    body = FedBody(depth=2)
    taken: list[bytes | memoryview] = []
    sent: list[bytes] = []
    step = threading.Semaphore(0)

    def send() -> None:  # a client that takes a chunk, sends it, then takes the next
        for chunk in body:
            taken.append(chunk)
            sent.append(bytes(chunk))
            step.acquire()

    writer = _Fed(FedRequest(send, body, "t", "writing x"))
    first = writer.space(4)
    again = writer.space(4)  # lent until written
    assert first is not None and again is not None and again.buffer is first.buffer
    first.view()[:] = b"abcd"
    writer.write(first.view())
    second = writer.space(4)
    assert second is not None and second.buffer is not first.buffer  # the first is in use
    second.view()[:3] = b"efg"
    writer.write(second.view()[:3])  # a short last chunk, still in place
    deadline = time.monotonic() + 5
    while len(taken) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert isinstance(taken[0], memoryview) and taken[0].obj is first.buffer  # not copied
    third = writer.space(4)
    assert third is not None and third.buffer is not first.buffer  # not sent yet
    step.release()  # the client takes the second chunk: the first was sent
    deadline = time.monotonic() + 5
    while len(taken) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.kept(memoryview(b"zz"))  # the third goes unused: back to the pool, copied
    fourth = writer.space(4)
    assert fourth is not None and fourth.buffer in (first.buffer, third.buffer)
    writer._request.feed(END)
    step.release()
    writer._request.finish()
    assert sent == [b"abcd", b"efg"]
    assert body.buffers_allocated == 3


def test_a_fed_writer_copies_a_chunk_read_elsewhere_and_keeps_its_memory_bounded() -> None:
    body = SizedFedBody(300 * 7, depth=3)
    got = bytearray()

    def send() -> None:
        while chunk := body.read(5):  # a client reading in small blocks
            got.extend(chunk)

    writer = _Fed(FedRequest(send, body, "t", "writing x"))
    expected = bytearray()
    for n in range(300):
        data = bytes([n % 251]) * 7
        expected += data
        space = writer.space(7)
        assert space is not None
        if n % 10 == 0:  # now and then the core reads into a buffer of its own
            writer.write(memoryview(bytearray(data)))
            continue
        space.view()[:] = data
        writer.write(space.view())
    writer._request.finish()
    assert got == expected
    # the queue's 3, the one the client sends, the one lent: never more
    assert body.buffers_allocated <= 3 + 2
    assert writer.space(8) is None  # another size: the core uses its own buffer
