"""TEST-ONLY fault injector: a WSGI middleware that makes a real Swift proxy answer errors.

**Never use this outside the test harness.** It sits in the pipeline of the
``faults-swift`` proxy only (the fault tests' own Swift, see ``swift.py``),
in front of ``s3api``, so both Swift API and S3 API requests pass it. It lets
the functional tests see how the drivers behave when a *real* server answers
``500 Internal Server Error``, ``503 Service Unavailable`` or S3's
``503 SlowDown``, with everything else (auth, storage, listings, multipart
uploads) done by the real Swift.

It is controlled by a JSON file that the tests write (atomically: a temporary
file, then ``os.replace``) and remove; it is read again whenever it changes
(a ``stat`` per request). An absent, unreadable or partial file means: pass
everything through. The file holds one rule or ``{"id": ..., "rules": [...]}``::

    {"id": "a1b2", "rules": [{
        "status": 503,            # the HTTP status to answer (500-599)
        "code": "SlowDown",       # the S3 error code (default by status:
                                  # 500 InternalError, 503 ServiceUnavailable)
        "count": 2,               # how many matching requests get it (null: all)
        "methods": ["PUT"],       # only these methods (absent: any)
        "path": "<image id>",     # only paths containing this (absent: any)
        "query": "partNumber=",   # only query strings containing this (absent: any)
        "after": false            # true: pass the request on first, then answer the
                                  # error instead of the server's answer (a lost answer)
    }]}

The first rule that matches and has faults left answers the request without
passing it on (the request body is left to eventlet, which discards it, or
closes the connection when the client waits for ``100 Continue``); with
``after``, the request is done by Swift and only its answer is replaced. A rule's
count is kept in memory per ``id`` (a new ``id`` starts the counts afresh;
without one, the file's bytes are the id). S3 requests (a SigV2/SigV4
``Authorization`` header or a presigned query) get S3's XML error document,
Swift requests a body like Swift's own errors. Every injected fault is
appended to the log file as one JSON line (``id``, ``rule``, ``method``,
``path``, ``status``, ``code``, ``api``), so a test can count them.

Only the standard library is used: the module runs in the Swift venv, from a
copy the harness puts on the proxy's ``PYTHONPATH``.
"""

from __future__ import annotations

import hashlib
import http
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

S3_CODES = {500: "InternalError", 503: "ServiceUnavailable"}
"""The S3 error code of a status when a rule names none."""
S3_MESSAGES = {
    "InternalError": "We encountered an internal error. Please try again.",
    "ServiceUnavailable": "Service is unable to handle request.",
    "SlowDown": "Please reduce your request rate.",
}
SWIFT_BODIES = {
    500: "<html><h1>Internal Error</h1><p>The server has either erred or is incapable "
    "of performing the requested operation.</p></html>",
    503: "<html><h1>Service Unavailable</h1><p>The server is currently unavailable. "
    "Please try again at a later time.</p></html>",
}
INJECTED_HEADER = "X-Imgstore-Fault-Injected"
"""Set on every injected answer (the test-only marker)."""


@dataclass(frozen=True)
class Rule:
    """One kind of fault and the requests it applies to."""

    status: int
    code: str
    count: int | None
    methods: frozenset[str]
    path: str
    query: str
    after: bool = False

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Rule:
        """A rule from its JSON object; ValueError/TypeError/KeyError when malformed."""
        status = int(data["status"])
        if not 400 <= status <= 599:
            raise ValueError(f"status {status} is not an error")
        count = data.get("count", 1)
        return cls(
            status=status,
            code=str(data.get("code") or S3_CODES.get(status, "InternalError")),
            count=None if count is None else int(count),
            methods=frozenset(str(m).upper() for m in data.get("methods") or ()),
            path=str(data.get("path") or ""),
            query=str(data.get("query") or ""),
            after=bool(data.get("after", False)),
        )

    def matches(self, method: str, path: str, query: str) -> bool:
        """Whether a request with this method, path and query string is one to fail."""
        return (
            (not self.methods or method in self.methods)
            and self.path in path
            and self.query in query
        )


def is_s3_request(environ: Mapping[str, Any]) -> bool:
    """Whether s3api will handle the request (signed header or presigned query)."""
    auth = str(environ.get("HTTP_AUTHORIZATION", ""))
    if auth.startswith(("AWS4-HMAC-SHA256 ", "AWS ")):
        return True
    query = str(environ.get("QUERY_STRING", ""))
    return any(k in query for k in ("X-Amz-Credential=", "AWSAccessKeyId="))


class FaultInjection:
    """The middleware: answers the requests the control file's rules name with errors."""

    def __init__(self, app: WSGIApp, control_file: str, log_file: str) -> None:
        self.app = app
        self.control_file = control_file
        self.log_file = log_file
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._rules: tuple[str, list[Rule]] = ("", [])
        self._used: dict[tuple[str, int], int] = {}

    def _current_rules(self) -> tuple[str, list[Rule]]:
        """The control file's (id, rules); ("", []) when there is none or it is unreadable."""
        try:
            st = os.stat(self.control_file)
        except OSError:
            self._stamp = None
            return "", []
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return self._rules
        try:
            with open(self.control_file, "rb") as f:
                raw = f.read()
            data = json.loads(raw)
            rules = data.get("rules", [data]) if isinstance(data, dict) else data
            parsed = [Rule.parse(r) for r in rules]
            ident = str(data.get("id") or "") if isinstance(data, dict) else ""
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return "", []  # partial or broken: pass through, read it again next time
        self._rules = (ident or hashlib.sha256(raw).hexdigest()[:16], parsed)
        self._stamp = stamp
        return self._rules

    def _take(self, method: str, path: str, query: str) -> tuple[str, int, Rule] | None:
        """The rule that fails this request (its count used up by one), or None."""
        with self._lock:
            ident, rules = self._current_rules()
            for index, rule in enumerate(rules):
                if not rule.matches(method, path, query):
                    continue
                used = self._used.get((ident, index), 0)
                if rule.count is not None and used >= rule.count:
                    continue
                self._used[(ident, index)] = used + 1
                return ident, index, rule
        return None

    def _log(self, entry: dict[str, Any]) -> None:
        try:
            with open(self.log_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, sort_keys=True) + "\n")
        except OSError:
            pass  # the log is for the tests' counts; the fault itself still happens

    def _pass_on(self, environ: dict[str, Any]) -> str:
        """Let Swift do the request; its answer is read and dropped. Returns its status."""
        answered: list[str] = []

        def swallow(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
            answered.append(status)
            return lambda data: None

        result = self.app(environ, swallow)
        try:
            for _chunk in result:
                pass
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return answered[0] if answered else ""

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        path = str(environ.get("PATH_INFO", ""))
        query = str(environ.get("QUERY_STRING", ""))
        taken = self._take(method, path, query)
        if taken is None:
            return self.app(environ, start_response)
        ident, index, rule = taken
        s3 = is_s3_request(environ)
        entry = {"id": ident, "rule": index, "method": method, "path": path, "query": query,
                 "status": rule.status, "code": rule.code if s3 else "",
                 "api": "s3" if s3 else "swift"}  # fmt: skip
        if rule.after:
            entry["passed"] = self._pass_on(environ)
        self._log(entry)
        reason = _reason(rule.status)
        # catch_errors (earlier in the pipeline) set the id it puts in X-Trans-Id
        trans_id = str(environ.get("swift.trans_id") or f"tx{uuid.uuid4().hex[:21]}")
        if s3:
            message = S3_MESSAGES.get(rule.code, reason)
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{rule.code}</Code><Message>{message}</Message>"
                f"<Resource>{_xml_escape(path)}</Resource><RequestId>{trans_id}</RequestId>"
                "</Error>"
            ).encode()
            headers = [("Content-Type", "application/xml"), ("x-amz-request-id", trans_id)]
        else:
            body = SWIFT_BODIES.get(rule.status, f"<html><h1>{reason}</h1></html>").encode()
            headers = [("Content-Type", "text/html; charset=UTF-8")]
        if method == "HEAD":
            body = b""  # an error to a HEAD has no body (S3 and Swift alike)
        headers += [("Content-Length", str(len(body))), (INJECTED_HEADER, "true")]
        start_response(f"{rule.status} {reason}", headers)
        return [body]


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def filter_factory(global_conf: dict[str, str], **local_conf: str) -> Callable[[WSGIApp], WSGIApp]:
    """paste.deploy's entry: ``paste.filter_factory = fault_injection:filter_factory``.

    Options: ``control_file`` (the JSON rules; required) and ``log_file`` (the
    injected faults, one JSON line each; default: the control file + ``.log``).
    """
    control_file = local_conf.get("control_file") or global_conf.get("control_file")
    if not control_file:
        raise ValueError("fault_injection: set control_file")
    log_file = local_conf.get("log_file") or f"{control_file}.log"

    def make(app: WSGIApp) -> WSGIApp:
        return FaultInjection(app, control_file, log_file)

    return make
