"""TLS certificate verification failures: found in what requests, urllib3 and botocore
wrap, and mapped by the S3 and Swift drivers to a BackendError that says so (no server)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3.exceptions
from botocore import exceptions as bx

from imgstore import Stores
from imgstore.driver import tls_verify_failure
from imgstore.exceptions import BackendError, BackendUnavailable

REASON = "unable to get local issuer certificate"
SECRET = "s3cr3t-never-shown"


def verify_error(reason: str = REASON) -> ssl.SSLCertVerificationError:
    """What ssl raises when the server's certificate chain is not trusted."""
    err = ssl.SSLCertVerificationError(
        1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {reason} (_ssl.c:1006)"
    )
    err.verify_message = reason
    err.verify_code = 20
    return err


def requests_error(url: str = "https://swift.example:8443/auth/v1.0") -> requests.RequestException:
    """requests' SSLError as its adapter raises it (MaxRetryError -> urllib3 SSLError)."""
    inner = urllib3.exceptions.SSLError(verify_error())
    pool = urllib3.exceptions.MaxRetryError(None, "/auth/v1.0", inner)  # type: ignore[arg-type]
    return requests.exceptions.SSLError(pool, request=requests.Request("GET", url).prepare())


def botocore_error(cause: BaseException | None = None) -> bx.SSLError:
    """botocore's SSLError as its endpoint raises it."""
    error = urllib3.exceptions.SSLError(cause if cause is not None else verify_error())
    return bx.SSLError(endpoint_url="https://s3.example:8443/bucket", error=error)


@pytest.mark.parametrize(
    "exc",
    [
        verify_error(),
        requests_error(),
        botocore_error(),
        OSError(
            f"HTTPSConnectionPool: [SSL: CERTIFICATE_VERIFY_FAILED] certificate "
            f"verify failed: {REASON} (_ssl.c:1006)"
        ),
    ],
    ids=["ssl", "requests", "botocore", "text-only"],
)
def test_verification_failures_are_found(exc: BaseException) -> None:
    assert tls_verify_failure(exc) == REASON


@pytest.mark.parametrize(
    "exc",
    [
        ssl.SSLError(1, "[SSL: UNEXPECTED_EOF_WHILE_READING] EOF in violation of protocol"),
        botocore_error(ssl.SSLError(1, "[SSL] record layer failure")),
        requests.exceptions.ConnectionError("Connection refused"),
        ValueError("certificate"),
    ],
    ids=["eof", "botocore-other", "refused", "other"],
)
def test_other_errors_are_not_verification_failures(exc: BaseException) -> None:
    assert tls_verify_failure(exc) is None


def test_hostname_mismatch_reason() -> None:
    reason = "Hostname mismatch, certificate is not valid for 'other.example'."
    assert tls_verify_failure(requests_error()) == REASON
    assert tls_verify_failure(botocore_error(verify_error(reason))) == reason


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Stores]:
    """An s3 and a swift backend, never connected."""
    conf = tmp_path / "imgstore.conf"
    conf.write_text(
        "[DEFAULT]\nenabled_backends = s3:s3, swift:swift\n"
        "[glance_store]\ndefault_backend = s3\n"
        "[s3]\ns3_store_host = https://s3.example:8443\ns3_store_access_key = AKID\n"
        f"s3_store_secret_key = {SECRET}\ns3_store_bucket = images\n"
        "[swift]\nswift_store_auth_address = https://swift.example:8443/auth/v1.0\n"
        f"swift_store_user = test:tester\nswift_store_key = {SECRET}\n"
        "swift_store_auth_version = 1\nswift_store_container = images\n"
    )
    with Stores.from_config_files(conf) as st:
        yield st


def test_s3_maps_a_verification_failure(stores: Stores) -> None:
    driver: Any = stores.driver("s3")
    err = driver.map_error(botocore_error(), "adding x")
    assert type(err) is BackendError
    assert str(err) == (
        "backend 's3': adding x: TLS certificate verification failed for "
        f"https://s3.example:8443 ({REASON}); set s3_store_cacert to the CA that signed "
        "its certificate"
    )
    other = driver.map_error(botocore_error(ssl.SSLError(1, "record layer failure")), "adding x")
    assert type(other) is BackendUnavailable  # a broken connection, not a refused certificate


def test_swift_maps_a_verification_failure(stores: Stores) -> None:
    driver: Any = stores.driver("swift")
    exc = requests_error(f"https://user:{SECRET}@swift.example:8443/v1/AUTH_test/c/o?x={SECRET}")
    err = driver.map_error(exc, "adding x")
    assert type(err) is BackendError
    assert str(err) == (
        "adding x: TLS certificate verification failed for https://swift.example:8443 "
        f"({REASON}); set swift_store_cacert to the CA that signed its certificate"
    )
    no_request = requests.exceptions.SSLError(
        f"HTTPSConnectionPool(host='swift.example', port=8443): Max retries exceeded "
        f"(Caused by SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] "
        f"certificate verify failed: {REASON} (_ssl.c:1006)')))"
    )
    assert f"for https://swift.example:8443 ({REASON})" in str(
        driver.map_error(no_request, "adding x")
    )
