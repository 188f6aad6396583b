"""The test-only fault injector of the faults-swift proxy (services/fault_injection.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.functional.services.fault_injection import FaultInjection, filter_factory

SIGV4 = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, Signature=x"


class App:
    """The rest of the pipeline: answers 201 and counts the requests it saw."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        self.seen += 1
        start_response("201 Created", [("Content-Length", "2")])
        return [b"ok"]


def call(mw: FaultInjection, method: str = "PUT", path: str = "/v1/AUTH_t/c/img",
         query: str = "", **headers: str) -> tuple[str, dict[str, str], bytes]:  # fmt: skip
    answer: dict[str, Any] = {}

    def start_response(status: str, hdrs: list[tuple[str, str]], exc_info: Any = None) -> None:
        answer["status"], answer["headers"] = status, dict(hdrs)

    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, **headers}
    body = b"".join(mw(environ, start_response))
    return answer["status"], answer["headers"], body


@pytest.fixture
def control(tmp_path: Path) -> Path:
    return tmp_path / "inject.json"


def write(control: Path, data: Any) -> None:
    tmp = control.with_suffix(".tmp")
    tmp.write_text(json.dumps(data) if not isinstance(data, str) else data)
    os.replace(tmp, control)


def make(control: Path) -> tuple[FaultInjection, App]:
    app = App()
    mw = filter_factory({}, control_file=str(control))(app)
    assert isinstance(mw, FaultInjection)
    return mw, app


def test_no_control_file_passes_everything(control: Path) -> None:
    mw, app = make(control)
    assert call(mw)[0] == "201 Created"
    assert app.seen == 1


@pytest.mark.parametrize("text", ["{", '{"status": 503, "count": 1', "[1, 2]", '{"status": 200}'])
def test_a_partial_or_broken_control_file_passes_everything(control: Path, text: str) -> None:
    mw, app = make(control)
    write(control, text)
    assert call(mw)[0] == "201 Created"
    assert app.seen == 1


def test_count_methods_path_and_query_select_the_requests(control: Path) -> None:
    mw, _ = make(control)
    write(control, {"id": "a", "rules": [{"status": 503, "count": 2, "methods": ["PUT"],
                                          "path": "/c/img", "query": "partNumber="}]})  # fmt: skip
    assert call(mw, query="partNumber=1&uploadId=x")[0] == "503 Service Unavailable"
    assert call(mw, "GET", query="partNumber=1")[0] == "201 Created"
    assert call(mw, path="/v1/AUTH_t/c/other", query="partNumber=1")[0] == "201 Created"
    assert call(mw, query="uploadId=x")[0] == "201 Created"
    assert call(mw, query="partNumber=2")[0] == "503 Service Unavailable"
    assert call(mw, query="partNumber=3")[0] == "201 Created"  # the count is used up
    lines = [json.loads(x) for x in Path(f"{control}.log").read_text().splitlines()]
    assert [(e["id"], e["rule"], e["query"]) for e in lines] == [
        ("a", 0, "partNumber=1&uploadId=x"), ("a", 0, "partNumber=2"),
    ]  # fmt: skip
    write(control, {"id": "b", "status": 500, "count": None})  # a new id: counts start afresh
    for _ in range(3):
        assert call(mw)[0] == "500 Internal Server Error"
    control.unlink()
    assert call(mw)[0] == "201 Created"


def test_s3_requests_get_s3_errors_and_swift_requests_swift_ones(control: Path) -> None:
    mw, _ = make(control)
    write(control, {"status": 503, "code": "SlowDown", "count": None})
    status, headers, body = call(mw, path="/bucket/img", HTTP_AUTHORIZATION=SIGV4)
    assert status == "503 Service Unavailable"
    assert headers["Content-Type"] == "application/xml"
    assert b"<Error><Code>SlowDown</Code>" in body
    assert headers["X-Imgstore-Fault-Injected"] == "true"
    presigned = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=test%2F20260101"
    assert b"<Code>SlowDown</Code>" in call(mw, "GET", "/bucket/img", presigned)[2]
    status, headers, body = call(mw)
    assert headers["Content-Type"].startswith("text/html")
    assert body.startswith(b"<html><h1>Service Unavailable</h1>")
    assert call(mw, "HEAD", HTTP_AUTHORIZATION=SIGV4)[2] == b""  # no body to a HEAD
    write(control, {"status": 500, "count": None})
    assert b"<Code>InternalError</Code>" in call(mw, HTTP_AUTHORIZATION=SIGV4)[2]


def test_after_lets_the_server_act_and_replaces_its_answer(control: Path) -> None:
    mw, app = make(control)
    write(control, {"status": 503, "count": 1, "after": True})
    assert call(mw)[0] == "503 Service Unavailable"
    assert app.seen == 1
    assert json.loads(Path(f"{control}.log").read_text())["passed"] == "201 Created"
