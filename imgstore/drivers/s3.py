"""The S3 driver (``s3://``, ``s3+http://``, ``s3+https://``), on boto3.

Options keep glance_store's names (``s3_store_host``, ``s3_store_bucket``...),
so an existing ``[glance_store]`` section works unchanged.

* ``add``: an image of known size below ``s3_store_large_object_size`` goes up
  in one ``PutObject`` at commit (its bytes are kept in one buffer of exactly
  that size). Larger images, and images of unknown size that outgrow one part,
  go up as a multipart upload on the core's bounded uploader
  (:mod:`imgstore.parallel`): parts of ``s3_store_large_object_chunk_size``, grown
  to fit ``s3_store_max_parts`` (S3 cannot ask a server for its limit; see
  :func:`imgstore.parallel.piece_size`), go up on ``s3_store_thread_pools``
  threads while the next part fills, so an add holds at most ``(threads + 1)``
  part buffers. A server that refuses a part number is a :class:`BadConfiguration`
  naming that option. Any failure aborts the upload after the parts in flight have finished, so no
  part and no object is left behind. The object is created with
  ``If-None-Match: *`` (and checked by HEAD before a multipart commit, for
  servers that ignore the header there),
  so an existing image is never overwritten: :class:`Duplicate`. The object
  carries the writer's random token (``x-amz-meta-imgstore-writer``): when the
  server stored it but answered an error, botocore's retry meets it (412) and
  the writer knows it for its own, so the add succeeds.
* ``get``: one streaming ``GetObject``; an offset/length read sends a ``Range``
  (READ_RANDOM). ``size`` is a ``HeadObject``; ``delete`` checks existence
  first (S3 answers 204 for a missing key).
* errors: NoSuchKey/NoSuchBucket/404 -> :class:`NotFound`; signature, unknown
  key or access denied -> :class:`AuthenticationFailed`; throttling, 5xx and
  connection failures are retried by botocore ("standard" mode, exponential
  backoff, ``s3_store_max_retries``) and then -> :class:`BackendUnavailable`;
  a server certificate that fails verification (``s3_store_cacert``) ->
  :class:`BackendError` saying so, naming the endpoint.
* locations are ``s3://host[:port]/bucket/key`` (``s3+https://`` for TLS) and
  never carry credentials: these come from the configuration. glance_store's
  old ``s3://access:secret@host/bucket/key`` form is still read (the
  credentials in it are dropped, never used or shown).
* the secret key never reaches a log record, message or repr. botocore logs
  requests at DEBUG, but only the access key id and signatures, never the
  secret; the driver registers no handler and changes no logger level.
* what boto3 hashes besides (the payload's SHA-256, request and response
  checksums) is chosen by ``s3_store_payload_signing`` and the checksum options
  (see their help).
"""

from __future__ import annotations

import datetime
import logging
import re
import secrets as secrets_mod
import threading
from collections.abc import Iterator
from typing import Any

from oslo_config import cfg

from imgstore import telemetry
from imgstore.driver import (
    IMAGE_ID_RE,
    Driver,
    Leftover,
    RangeStream,
    ReadStream,
    WriteLimits,
    Writer,
    Written,
    clamp_range,
    close_quietly,
    read_resumes_option,
    retries_option,
    timeout_option,
    tls_refused,
    tls_verify_failure,
)
from imgstore.exceptions import (
    AuthenticationFailed,
    BackendError,
    BackendUnavailable,
    BadConfiguration,
    BadLocation,
    Duplicate,
    ImgstoreError,
    NotFound,
    for_status,
)
from imgstore.location import Location, check_part, naming, register, shown, split_once
from imgstore.parallel import MiB, PieceBody, Pieces, PiecesWriting

LOG = logging.getLogger(__name__)

MAX_PART_SIZE = 5 * 1024 * MiB
"""S3's largest part."""
MAX_PARTS = 10_000
"""AWS's most parts in one multipart upload (the default of ``s3_store_max_parts``)."""
WRITER_KEY = "imgstore-writer"
"""User metadata (``x-amz-meta-imgstore-writer``): a random token of the writer, on the
object it makes. When the server stored the object but its answer was lost, the writer's
retry meets it (If-None-Match: 412) and knows it for its own."""
READ_CHUNK_SIZE = 1 * MiB
_BODY = "an s3 response body"

_BY_CODE: dict[str, type[ImgstoreError]] = {
    **dict.fromkeys(["NoSuchKey", "NoSuchBucket", "NoSuchUpload", "NotFound"], NotFound),
    **dict.fromkeys(
        "SignatureDoesNotMatch InvalidAccessKeyId AccessDenied InvalidToken ExpiredToken "
        "InvalidSecurity AuthorizationHeaderMalformed".split(),
        AuthenticationFailed,
    ),
    **dict.fromkeys(
        "SlowDown Throttling ThrottlingException RequestTimeout ServiceUnavailable "
        "InternalError".split(),
        BackendUnavailable,
    ),
}
"""S3 error codes of a known kind, whatever their HTTP status (some come with a 400);
any other code is classed by its status (:func:`imgstore.exceptions.for_status`)."""
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


_PART_LIMIT = re.compile(r"between 1 and (\d+)")
"""The server's part-number limit in its refusal (AWS, Swift s3api, Ceph radosgw say it so)."""


# -- locations ----------------------------------------------------------------


def _split_endpoint(host: str) -> tuple[bool, str]:
    """``(https, host[:port][/path])`` of a configured ``s3_store_host``."""
    host = host.strip()
    lower = host.lower()
    if lower.startswith("https://"):
        return True, host[8:].strip("/")
    if lower.startswith("http://"):
        return False, host[7:].strip("/")
    return False, host.strip("/")


@register
class S3Location(Location):
    """``s3://host[:port]/bucket/key`` (``s3+https://`` over TLS; ``s3+http://`` read too)."""

    schemes = ("s3", "s3+http", "s3+https")

    def __init__(self, scheme: str, host: str, bucket: str, key: str) -> None:
        scheme = scheme.lower()
        if scheme not in self.schemes:
            raise BadLocation(f"not an s3 scheme: {scheme!r}")
        for what, value in (("host", host), ("bucket", bucket), ("key", key)):
            check_part("s3", what, value, "?#@")
        if "/" in bucket or "/" in key or key in (".", ".."):
            raise BadLocation("s3 location bucket and key cannot contain '/' or be '.' or '..'")
        if "" in host.split("/") or "://" in host:
            # s3://a//b/bucket/key cannot be read back: from_uri needs non-empty parts
            raise BadLocation("s3 location host has an empty path part")
        self._scheme = scheme
        self.host = host
        self.bucket = bucket
        self.key = key

    @property
    def secure(self) -> bool:
        """Whether the location is served over https."""
        return self._scheme == "s3+https"

    @classmethod
    def from_uri(cls, uri: str) -> S3Location:
        form = "s3://host/bucket/key (s3+https:// for TLS)"
        scheme, rest = split_once(uri, "s3", form)
        if "?" in rest or "#" in rest:
            raise BadLocation(f"s3 locations take no query or fragment: {shown(uri)!r}")
        # glance_store's old access:secret@ form: the credentials are dropped
        parts = rest.rpartition("@")[2].strip("/").split("/")
        if len(parts) < 3 or not all(parts):
            raise BadLocation(f"malformed s3 location {shown(uri)!r}: expected {form}")
        with naming(uri):
            return cls(scheme, "/".join(parts[:-2]), parts[-2], parts[-1])

    def to_uri(self) -> str:
        return f"{self._scheme}://{self.host}/{self.bucket}/{self.key}"


# -- the driver -----------------------------------------------------------------


def _error_code(exc: BaseException) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", "") or "")
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


class S3Driver(Driver):
    """Stores images as objects in one S3 bucket."""

    name = "s3"
    location_class = S3Location

    @classmethod
    def options(cls) -> list[cfg.Opt]:
        when = ["when_required", "when_supported"]
        return [
            cfg.StrOpt(
                "s3_store_host",
                help="The S3 endpoint: host[:port] (http) or http(s)://host[:port]. Required.",
            ),
            cfg.StrOpt(
                "s3_store_region_name",
                default="",
                help="Region used for request signing; empty: botocore's default (us-east-1).",
            ),
            cfg.StrOpt("s3_store_access_key", secret=True, help="S3 access key id. Required."),
            cfg.StrOpt("s3_store_secret_key", secret=True, help="S3 secret key. Required."),
            cfg.StrOpt("s3_store_bucket", help="Bucket where images are stored. Required."),
            cfg.BoolOpt(
                "s3_store_create_bucket_on_put",
                default=False,
                help="Create the bucket on the first add when it does not exist.",
            ),
            cfg.StrOpt(
                "s3_store_bucket_url_format",
                default="auto",
                choices=["auto", "virtual", "path"],
                help="Addressing: 'path' (host/bucket/key), 'virtual' (bucket.host/key) "
                "or 'auto' (botocore chooses).",
            ),
            cfg.IntOpt(
                "s3_store_large_object_size",
                default=100,
                min=0,
                help="Images of known size below this many MiB go up in one PUT; "
                "larger ones, and images of unknown size, in a multipart upload.",
            ),
            cfg.IntOpt(
                "s3_store_large_object_chunk_size",
                default=10,
                min=5,
                help="Multipart part size in MiB (at least 5); grows by itself when "
                "an image would need more than s3_store_max_parts parts.",
            ),
            cfg.IntOpt(
                "s3_store_max_parts",
                default=MAX_PARTS,
                min=1,
                help="The most parts the S3 server takes in one multipart upload (its "
                "highest part number): AWS, Ceph radosgw (rgw_multipart_part_upload_limit) "
                "and MinIO take 10,000; OpenStack Swift's s3api takes max_upload_part_num "
                "(1,000 unless configured). The part size grows so that no upload needs "
                "more parts: for a known size, to ceil(size / this) rounded up to a MiB; "
                "for an unknown size it doubles every (this / 10) parts. An image that "
                "would need more parts of 5 GiB is refused before anything is written. "
                "When the server takes fewer, a large add fails with BadConfiguration "
                "(and its upload is aborted).",
            ),
            cfg.IntOpt(
                "s3_store_thread_pools",
                default=10,
                min=1,
                help="Parts uploaded at once per add; memory per add is at most "
                "(this + 1) x the part size.",
            ),
            cfg.StrOpt(
                "s3_store_cacert",
                default="",
                help="CA bundle to verify the endpoint's certificate; empty: botocore's default.",
            ),
            cfg.BoolOpt(
                "s3_store_enable_data_integrity_protection",
                default=False,
                help="Use the two checksum options below; False means 'when_required' "
                "for both (as glance_store).",
            ),
            cfg.StrOpt(
                "s3_store_request_checksum_calculation",
                default="when_required",
                choices=when,
                help="boto3's request_checksum_calculation (only with "
                "s3_store_enable_data_integrity_protection).",
            ),
            cfg.StrOpt(
                "s3_store_response_checksum_validation",
                default="when_required",
                choices=when,
                help="boto3's response_checksum_validation (only with "
                "s3_store_enable_data_integrity_protection).",
            ),
            cfg.BoolOpt(
                "s3_store_payload_signing",
                default=None,
                help="Sign every uploaded byte (SHA-256 of the payload in the SigV4 "
                "signature). Unset: botocore's choice, signed over http and not over "
                "https. False: UNSIGNED-PAYLOAD everywhere, saving an extra hash of the "
                "image but leaving the bytes unprotected in transit over plain http.",
            ),
            retries_option("s3_store_max_retries"),
            timeout_option("s3_store_connect_timeout", 10.0, "to connect"),
            timeout_option("s3_store_read_timeout", 60.0),
            read_resumes_option("s3_store_read_resumes"),
        ]

    def configure(self) -> None:
        conf = self.conf
        self.require(
            "s3_store_host", "s3_store_access_key", "s3_store_secret_key", "s3_store_bucket"
        )
        self.secure, self.endpoint_host = _split_endpoint(conf.s3_store_host)
        if not self.endpoint_host:
            raise BadConfiguration(f"backend {self.backend!r}: s3_store_host names no host")
        self.endpoint_url = f"{'https' if self.secure else 'http'}://{self.endpoint_host}"
        self.scheme = "s3+https" if self.secure else "s3"
        self.bucket = conf.s3_store_bucket
        self.url_format = conf.s3_store_bucket_url_format
        if self.url_format == "virtual" and not _DNS_BUCKET.match(self.bucket):
            raise BadConfiguration(
                f"backend {self.backend!r}: bucket {self.bucket!r} is not a DNS name; "
                "virtual-host addressing needs one (use s3_store_bucket_url_format = path)"
            )
        self.large_object_size = conf.s3_store_large_object_size * MiB
        self.part_base = conf.s3_store_large_object_chunk_size * MiB
        self.max_parts: int = conf.s3_store_max_parts
        self.read_resumes = conf.s3_store_read_resumes
        self.threads = conf.s3_store_thread_pools
        self.create_bucket = conf.s3_store_create_bucket_on_put
        integrity = conf.s3_store_enable_data_integrity_protection  # else as glance_store
        self.checksums = (
            conf.s3_store_request_checksum_calculation if integrity else "when_required",
            conf.s3_store_response_checksum_validation if integrity else "when_required",
        )
        self._secret = conf.s3_store_secret_key
        self._bucket_ready = False
        self._lock = threading.Lock()
        self._client: Any = None
        self._make_client()  # fails early on a broken configuration (no network used)

    def _make_client(self) -> Any:
        with self._lock:
            if self._client is not None:
                return self._client
            self.needs("boto3", "boto3.session", "botocore.config")
            import boto3.session
            from botocore.config import Config

            conf = self.conf
            s3_settings: dict[str, Any] = {"addressing_style": self.url_format}
            if conf.s3_store_payload_signing is not None:
                s3_settings["payload_signing_enabled"] = bool(conf.s3_store_payload_signing)
            config = Config(
                s3=s3_settings,
                request_checksum_calculation=self.checksums[0],
                response_checksum_validation=self.checksums[1],
                retries={"mode": "standard", "total_max_attempts": conf.s3_store_max_retries + 1},
                connect_timeout=conf.s3_store_connect_timeout,
                read_timeout=conf.s3_store_read_timeout,
                max_pool_connections=max(10, 2 * self.threads),
                tcp_keepalive=True,
            )
            session = boto3.session.Session()
            self._client = session.client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=conf.s3_store_region_name or "us-east-1",
                aws_access_key_id=conf.s3_store_access_key,
                aws_secret_access_key=self._secret,
                verify=conf.s3_store_cacert or True,
                config=config,
            )
            # botocore retries by itself: each request it makes again counts as a retry
            # of the imgstore operation running (imgstore.telemetry)
            self._client.meta.events.register("request-created.s3", _count_retry)
            return self._client

    @property
    def client(self) -> Any:
        """The boto3 S3 client (thread-safe; shared by all operations)."""
        return self._client if self._client is not None else self._make_client()

    def secrets(self) -> list[str]:
        return [self._secret] if self._secret else []

    def __repr__(self) -> str:
        return (
            f"<S3Driver backend={self.backend!r} endpoint={self.endpoint_url!r} "
            f"bucket={self.bucket!r}>"
        )

    # -- locations ---------------------------------------------------------

    def owns(self, location: Location) -> bool:
        return (
            isinstance(location, S3Location)
            and location.secure == self.secure
            and location.host.lower() == self.endpoint_host.lower()
            and location.bucket == self.bucket
        )

    def _location(self, key: str) -> S3Location:
        return S3Location(self.scheme, self.endpoint_host, self.bucket, key)

    def _checked(self, location: Location) -> S3Location:
        if not self.owns(location):
            raise BadLocation(f"{location.redacted()} is not inside backend {self.backend!r}")
        assert isinstance(location, S3Location)
        return location

    # -- errors ------------------------------------------------------------

    def classify_error(self, exc: BaseException, doing: str) -> ImgstoreError:
        """An :mod:`imgstore.exceptions` error for a boto3/botocore failure."""
        from botocore import exceptions as bx

        what = f"backend {self.backend!r}: {doing}"
        if isinstance(exc, bx.ClientError):
            code, status = _error_code(exc)
            detail = f"{code or status} (HTTP {status})"
            cls = _BY_CODE.get(code) or for_status(status)
            if code == "NoSuchBucket":
                return NotFound(f"{what}: bucket {self.bucket!r} does not exist")
            if cls is NotFound:
                return NotFound(f"{what}: not found")
            if cls is AuthenticationFailed:
                return AuthenticationFailed(
                    f"{what}: the S3 server refused our credentials ({detail}); "
                    "check s3_store_access_key and s3_store_secret_key"
                )
            if cls is BackendUnavailable:
                return BackendUnavailable(f"{what}: the S3 server failed ({detail}); retried")
            if cls is Duplicate:  # 412 of a conditional write
                return Duplicate(f"{what}: the object already exists ({detail})")
            return cls(f"{what}: {detail}")
        tls = tls_verify_failure(exc) if isinstance(exc, bx.SSLError) else None
        if tls is not None:
            # before the connection errors: botocore's SSLError is a ConnectionError
            return tls_refused(what, self.endpoint_url, tls, "s3_store_cacert")
        # botocore's ConnectionError covers its endpoint and connect-timeout errors
        unreachable = (bx.ConnectionError, bx.ReadTimeoutError, bx.ConnectionClosedError)
        if isinstance(exc, (*unreachable, ConnectionError, TimeoutError)):
            return BackendUnavailable(
                f"{what}: cannot reach {self.endpoint_url} ({type(exc).__name__})"
            )
        if isinstance(exc, (bx.IncompleteReadError, bx.ResponseStreamingError)):
            # the connection broke off mid-body: worth another try, never bad bytes
            return BackendUnavailable(
                f"{what}: the connection to {self.endpoint_url} broke off ({type(exc).__name__})"
            )
        if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
            return BadConfiguration(f"{what}: no S3 credentials")
        return BackendError(f"{what}: {type(exc).__name__}")

    # -- operations --------------------------------------------------------

    def _exists(self, key: str, doing: str) -> bool:
        return self.found(
            self.call_mapped, doing, lambda: self.client.head_object(Bucket=self.bucket, Key=key)
        )

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        try:
            with self.mapped(f"checking bucket {self.bucket!r}"):
                self.client.head_bucket(Bucket=self.bucket)
        except NotFound:
            if not self.create_bucket:
                raise BadConfiguration(
                    f"backend {self.backend!r}: bucket {self.bucket!r} does not exist on "
                    f"{self.endpoint_url}; create it or set s3_store_create_bucket_on_put"
                ) from None
            self._create_bucket()
        self._bucket_ready = True

    def _create_bucket(self) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = self.conf.s3_store_region_name
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**kwargs)
            LOG.info("backend %r: created bucket %r", self.backend, self.bucket)
        except Exception as exc:
            code, _ = _error_code(exc)
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return
            raise self.map_error(exc, f"creating bucket {self.bucket!r}") from exc

    def location_for(self, image_id: str) -> Location | None:
        return self._location(image_id)

    def _uploads(self, doing: str, prefix: str = "") -> list[dict[str, Any]]:
        """The bucket's unfinished multipart uploads (of keys that start with ``prefix``)."""
        with self.mapped(doing):
            pages = self.client.get_paginator("list_multipart_uploads")
            found = pages.paginate(Bucket=self.bucket, Prefix=prefix)
            return [upload for page in found for upload in page.get("Uploads", [])]

    def abort_upload(self, key: str, upload_id: str, doing: str) -> None:
        """Abort a multipart upload and remove its parts; one already gone is no error."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:
            if _error_code(exc)[0] != "NoSuchUpload":
                raise self.map_error(exc, doing) from exc

    def discard(self, image_id: str) -> bool:
        """Abort the unfinished multipart uploads of ``image_id`` and delete its object."""
        self._ensure_bucket()
        doing = f"discarding {self._location(image_id).redacted()}"
        removed = False
        for upload in self._uploads(doing, prefix=image_id):
            if upload["Key"] == image_id:
                self.abort_upload(image_id, str(upload["UploadId"]), doing)
                removed = True
        if self._exists(image_id, doing):
            self.call_mapped(doing, self.client.delete_object, Bucket=self.bucket, Key=image_id)
            removed = True
        return removed

    def write_limits(self) -> WriteLimits:
        return WriteLimits(
            largest_piece=MAX_PART_SIZE,
            most_pieces=self.max_parts,
            first_piece=self.part_base,
            pieces="parts",
            why="s3_store_max_parts, and S3's 5 GiB parts; an image of unknown size starts "
            "with parts of s3_store_large_object_chunk_size",
        )

    def begin_write(self, image_id: str, size: int | None) -> Writer:
        self._ensure_bucket()
        location = self._location(image_id)
        if self._exists(image_id, f"checking {location.redacted()}"):
            raise self.duplicate(image_id)
        return S3Writer(self, location, size)

    def open(self, location: Location, offset: int, length: int | None) -> ReadStream:
        loc = self._checked(location)
        doing = f"reading {loc.redacted()}"
        if offset == 0 and length is None:
            response = self.call_mapped(
                doing, self.client.get_object, Bucket=loc.bucket, Key=loc.key
            )
            return self._stream(response, int(response["ContentLength"]), doing)
        total = self.size(loc)
        start, count = clamp_range(total, offset, length)
        if count == 0:
            return self._stream(None, 0, doing)
        response = self.call_mapped(
            doing,
            self.client.get_object,
            Bucket=loc.bucket,
            Key=loc.key,
            Range=f"bytes={start}-{start + count - 1}",
        )
        got = int(response["ContentLength"])
        if got != count:
            close_quietly(response["Body"], _BODY, LOG)
            raise BackendError(f"{doing}: asked for {count} bytes, the server sent {got}")
        return self._stream(response, count, doing)

    def _stream(self, response: Any, size: int, doing: str) -> RangeStream:
        """The body of one GetObject response (None: nothing to read)."""
        body: Any = response["Body"] if response is not None else None

        def read(_at: int, n: int) -> bytes:
            try:
                data: bytes = body.read(n)
            except Exception as exc:
                raise self.map_error(exc, doing) from exc
            return data

        return RangeStream(
            size, read, READ_CHUNK_SIZE, name="S3Stream",
            release=None if body is None else lambda: close_quietly(body, _BODY, LOG),
            version=None if response is None else response.get("ETag"),
        )  # fmt: skip

    def size(self, location: Location) -> int:
        loc = self._checked(location)
        head = self.call_mapped(
            f"sizing {loc.redacted()}", self.client.head_object, Bucket=loc.bucket, Key=loc.key
        )
        return int(head["ContentLength"])

    def delete(self, location: Location) -> None:
        loc = self._checked(location)
        doing = f"deleting {loc.redacted()}"
        if not self._exists(loc.key, doing):
            raise NotFound(f"no image at {loc.redacted()}")
        self.call_mapped(doing, self.client.delete_object, Bucket=loc.bucket, Key=loc.key)

    def leftovers(self, older_than: float) -> Iterator[Leftover]:
        """Multipart uploads in the bucket, started ``older_than`` s ago or more.

        Every add above the large-object size is a multipart upload until it
        completes; one still open that long after it started was abandoned
        (the bucket is the image store's own, as glance_store also requires).
        Keys that are not image ids imgstore could have written are left alone.
        """
        now = datetime.datetime.now(datetime.timezone.utc)
        try:
            uploads = self._uploads(f"listing the multipart uploads of bucket {self.bucket!r}")
        except NotFound:  # no bucket, no leftovers
            return
        for upload in uploads:
            key = str(upload["Key"])
            age = (now - upload["Initiated"]).total_seconds()
            if IMAGE_ID_RE.fullmatch(key) and age >= older_than:
                yield Leftover(
                    self.backend, "multipart upload", f"{self.bucket}/{key}", age,
                    None, (key, str(upload["UploadId"])),
                )  # fmt: skip

    def remove_leftover(self, leftover: Leftover) -> None:
        key, upload_id = leftover.ref
        self.abort_upload(key, upload_id, f"aborting the multipart upload of {leftover.name}")

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            close_quietly(client, f"the s3 client of backend {self.backend!r}", LOG)


def _count_retry(request: Any, **_: Any) -> None:
    """botocore's ``request-created`` hook: a request made for a second or later attempt
    is a retry of the operation running in this context."""
    attempt = getattr(request, "context", {}).get("retries", {}).get("attempt", 1)
    if attempt > 1:
        telemetry.retried()


class S3Writer(PiecesWriting, Writer):
    """One image going up: a single PUT, or a multipart upload with parallel parts."""

    def __init__(self, driver: S3Driver, location: S3Location, size: int | None) -> None:
        self._driver = driver
        self._location = location
        self._key = location.key
        self.shown = location.redacted()
        self._upload_id: str | None = None
        self._token = secrets_mod.token_hex(16)
        self._pieces = Pieces(
            self._upload_part, workers=driver.threads, name="imgstore-s3-part",
            base=driver.part_base, total=size, limit=driver.max_parts, largest=MAX_PART_SIZE,
            before_first=self._start_upload, on_error=self._part_error,
            # a known size below the threshold: one buffer of exactly that size, one PUT
            hold=size is not None and size < driver.large_object_size,
        )  # fmt: skip

    def _start_upload(self) -> None:
        drv = self._driver
        created = drv.call_mapped(
            f"starting a multipart upload of {self.shown}",
            drv.client.create_multipart_upload,
            Bucket=drv.bucket,
            Key=self._key,
            Metadata={WRITER_KEY: self._token},
        )
        self._upload_id = str(created["UploadId"])

    def _upload_part(self, number: int, body: PieceBody) -> str:
        drv = self._driver
        response = drv.client.upload_part(
            Bucket=drv.bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number,
            Body=body.whole(),
        )  # fmt: skip
        return str(response["ETag"])

    def _part_error(self, exc: BaseException, number: int) -> BaseException:
        """A failed part's exception, as the imgstore error the writer raises."""
        err = self._part_refused(exc, number) or self._driver.map_error(
            exc, f"uploading part {number} of {self.shown}"
        )
        err.__cause__ = exc
        return err

    def _part_refused(self, exc: BaseException, number: int) -> BadConfiguration | None:
        """The server's refusal of a part number above its limit, as the configuration
        error it is (``s3_store_max_parts`` is above the server's limit); else None."""
        code, status = _error_code(exc)
        if code != "InvalidArgument" or status != 400:
            return None
        error = getattr(exc, "response", {}).get("Error", {})
        message = str(error.get("Message", ""))
        if error.get("ArgumentName") != "partNumber" and "part number" not in message.lower():
            return None
        drv = self._driver
        found = _PART_LIMIT.search(message)
        limit = f"at most {found.group(1)} parts" if found else "fewer parts"
        return BadConfiguration(
            f"backend {drv.backend!r}: uploading part {number} of {self.shown}: the S3 "
            f"server takes {limit} in one upload ({message.strip() or code}), but "
            f"s3_store_max_parts is {drv.max_parts}: set it to the server's limit"
        )

    # -- finishing ---------------------------------------------------------

    def commit(self, size: int) -> Written:
        drv = self._driver
        self._pieces.raise_failure()
        if self._pieces.sent == 0:  # one PUT: a single image, or one smaller than a part
            self._conditional(
                f"writing {self.shown}",
                drv.client.put_object,
                Bucket=drv.bucket,
                Key=self._key,
                Body=self._pieces.held().whole(),
                Metadata={WRITER_KEY: self._token},
            )
        else:
            etags = self._pieces.finish()
            # radosgw ignores If-None-Match on CompleteMultipartUpload: look first
            if drv._exists(self._key, f"checking {self.shown}"):
                raise drv.duplicate(self._key)
            parts = [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]
            self._conditional(
                f"completing the multipart upload of {self.shown}",
                drv.client.complete_multipart_upload,
                Bucket=drv.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
            )
            self._upload_id = None
            self._pieces.stop()
        return Written(self._location)

    def _conditional(self, doing: str, fn: Any, **kwargs: Any) -> None:
        """``fn`` with ``If-None-Match: *``: an existing key is :class:`Duplicate`."""
        drv = self._driver
        try:
            fn(IfNoneMatch="*", **kwargs)
            return
        except Exception as exc:
            code, status = _error_code(exc)
            error = drv.map_error(exc, doing)
            duplicate = code == "PreconditionFailed" or status == 412
            # an earlier try was stored but its answer lost: botocore's retry met our own
            # object (412) or upload (NoSuchUpload), or every answer was a server error
            # (not a timeout: a stalled server is not asked again)
            if (duplicate or code == "NoSuchUpload" or status >= 500) and self._written_by_us():
                LOG.warning(
                    "backend %r: %s: stored, but the server answered an error",
                    drv.backend, doing,
                )  # fmt: skip
                return
            if duplicate:
                raise drv.duplicate(self._key) from None
            if code != "NotImplemented" and status != 501:
                raise error from exc
        # a server without conditional writes: the HEAD in begin_write is the check
        drv.call_mapped(doing, fn, **kwargs)

    def _written_by_us(self) -> bool:
        """Whether the key holds the object this writer made (its token in the metadata)."""
        drv = self._driver
        try:
            head = drv.client.head_object(Bucket=drv.bucket, Key=self._key)
        except Exception:
            return False
        return bool(head.get("Metadata", {}).get(WRITER_KEY) == self._token)

    def abort(self) -> None:
        self._pieces.stop()  # parts not started are skipped; none lands after the abort
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        try:
            self._driver.abort_upload(self._key, upload_id, "aborting")
        except ImgstoreError as err:
            LOG.warning(
                "backend %r: could not abort the multipart upload of %s (%s); its parts "
                "remain until `imgstore cleanup` (or the bucket's lifecycle) removes them",
                self._driver.backend, self.shown, err,
            )  # fmt: skip
