"""The cinder driver's Keystone options and token renewal, without a server.

The functional tests (``TestCinderKeystoneConformance``, ``TestCinderKeystone`` in
tests/functional/test_cinder.py) run the same paths against a real Keystone and
Cinder; here: which keystoneauth plugin the options give, and when a token is renewed.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from imgstore import BadConfiguration, Stores
from tests.functional.conftest import import_or_fail

cinder = import_or_fail("imgstore.drivers.cinder", "the cinder extra is not installed")
ks_access = import_or_fail("keystoneauth1.access", "keystoneauth1 is not installed")
ks_identity = import_or_fail("keystoneauth1.identity", "keystoneauth1 is not installed")
ks_session = import_or_fail("keystoneauth1.session", "keystoneauth1 is not installed")

AUTH_URL = "http://keystone.invalid:5000/v3"


def stores(tmp_path: Path, **options: str) -> Stores:
    """A Stores with one cinder backend ``vols`` and these options."""
    lines = [
        "[DEFAULT]",
        "enabled_backends = vols:cinder",
        "[glance_store]",
        "default_backend = vols",
        "[vols]",
        *(f"{k} = {v}" for k, v in options.items()),
    ]
    path = tmp_path / "imgstore.conf"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Stores.from_config_files(path)


def plugin_of(s: Stores) -> Any:
    """The keystoneauth plugin of the backend's cinderclient (no request is made)."""
    return s.driver("vols")._cinder().client.session.auth  # type: ignore[attr-defined]


def test_password_with_domains(tmp_path: Path) -> None:
    """glance_store's option names, the user and the project in domains of their own."""
    with stores(
        tmp_path,
        cinder_store_auth_address=AUTH_URL,
        cinder_store_user_name="glance",
        cinder_store_password="s3cret-password",
        cinder_store_project_name="images",
        cinder_store_user_domain_name="users-domain",
        cinder_store_project_domain_name="projects-domain",
    ) as s:
        plugin = plugin_of(s)
        assert isinstance(plugin, ks_identity.V3Password)
        assert plugin.auth_url == AUTH_URL
        method = plugin.auth_methods[0]
        assert (method.username, method.user_domain_name) == ("glance", "users-domain")
        assert (plugin.project_name, plugin.project_domain_name) == ("images", "projects-domain")
        assert "s3cret-password" in s.driver("vols").secrets()


def test_application_credential(tmp_path: Path) -> None:
    """Both application credential options: that credential, no user or project needed."""
    with stores(
        tmp_path,
        cinder_store_auth_address=AUTH_URL,
        cinder_store_application_credential_id="0123abcd",
        cinder_store_application_credential_secret="app-secret-value",
    ) as s:
        plugin = plugin_of(s)
        assert isinstance(plugin, ks_identity.V3ApplicationCredential)
        method = plugin.auth_methods[0]
        assert method.application_credential_id == "0123abcd"
        assert "app-secret-value" in s.driver("vols").secrets()


def test_application_credential_needs_both(tmp_path: Path) -> None:
    """Only the id: glance_store falls back to the password, which is missing here."""
    with (
        pytest.raises(BadConfiguration, match="cinder_store_password"),
        stores(
            tmp_path,
            cinder_store_auth_address=AUTH_URL,
            cinder_store_application_credential_id="0123abcd",
        ),
    ):
        pass


_Password: Any = ks_identity.V3Password


def _token(lifetime: float) -> dict[str, Any]:
    """The body of a Keystone v3 token issued now that lives ``lifetime`` seconds."""
    now = datetime.datetime.now(datetime.UTC)
    end = now + datetime.timedelta(seconds=lifetime)
    domain = {"id": "default", "name": "Default"}
    return {
        "token": {
            "methods": ["password"],
            "issued_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "expires_at": end.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "user": {"id": "u", "name": "u", "domain": domain},
            "project": {"id": "p", "name": "p", "domain": domain},
            "catalog": [],
        }
    }


class _Issuing(_Password):  # type: ignore[misc]
    """A password plugin whose logins return tokens of ``lifetime`` seconds, counted."""

    lifetime = 10.0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.logins = 0

    def get_auth_ref(self, session: Any, **kwargs: Any) -> Any:
        self.logins += 1
        return ks_access.create(body=_token(self.lifetime), auth_token=f"token-{self.logins}")


def _logins(plugin_class: Any, lifetime: float, uses: int) -> tuple[int, int]:
    """How many logins ``uses`` uses of a fresh plugin need; and its renewal margin."""
    plugin = plugin_class(auth_url=AUTH_URL, username="u", password="p", project_id="p")
    plugin.lifetime = lifetime
    session = ks_session.Session(auth=plugin)
    for _ in range(uses):
        plugin.get_access(session)
    return plugin.logins, plugin.MIN_TOKEN_LIFE_SECONDS


@pytest.mark.parametrize(
    ("lifetime", "margin"), [(10, 2), (60, 15), (479, 119), (3600, 120), (86400, 120), (3, 1)]
)
def test_renewal_margin(lifetime: float, margin: int) -> None:
    """A quarter of the token's lifetime, at most keystoneauth's 120 s, at least 1 s."""
    renewing = cinder._renewing(_Issuing)
    assert _logins(renewing, lifetime, 5) == (1, margin)


def test_short_tokens_are_reused() -> None:
    """keystoneauth alone logs in for every use of a token shorter than 120 s."""
    assert _logins(_Issuing, 10, 5)[0] == 5
    assert _logins(cinder._renewing(_Issuing), 10, 5)[0] == 1
    assert _logins(_Issuing, 3600, 5)[0] == 1


CATALOG = [
    {
        "type": "volumev3",
        "name": "cinderv3",
        "endpoints": [
            {"region": "RegionOne", "publicURL": "http://cinder.invalid/v3/p1",
             "internalURL": "http://cinder-internal.invalid/v3/p1"},
            {"region": "RegionTwo", "publicURL": "http://cinder-two.invalid/v3/p1"},
        ],
    }
]  # fmt: skip


def test_no_service_credentials_acts_with_the_callers_token(tmp_path: Path) -> None:
    """Neither Keystone nor noauth settings: each request brings its own token, and the
    endpoint comes from its catalog (cinder_catalog_info, region) - no request is made."""
    from imgstore import AuthenticationFailed

    with stores(tmp_path, cinder_os_region_name="RegionTwo") as s:
        drv: Any = s.driver("vols")
        assert drv.per_request
        with pytest.raises(AuthenticationFailed, match="no service credentials"):
            drv._cinder()
        with drv.credentials("caller-token-1", "p1", CATALOG):
            plugin = plugin_of(s)
            assert plugin.endpoint == "http://cinder-two.invalid/v3/p1"
            assert plugin.token == "caller-token-1"
            assert "caller-token-1" in drv.secrets()  # scrubbed while it is in use
        assert "caller-token-1" not in drv.secrets()
        with pytest.raises(AuthenticationFailed, match="a token and a project id"):
            with drv.credentials("", "p1", CATALOG):
                pass
        with pytest.raises(BadConfiguration, match="service catalog has no"):
            with drv.credentials("caller-token-1", "p1", []):
                pass
    with stores(tmp_path, cinder_endpoint_template="http://cinder.invalid/v3/%(project_id)s") as s:
        drv = s.driver("vols")
        with drv.credentials("caller-token-2", "p9", None):
            assert plugin_of(s).endpoint == "http://cinder.invalid/v3/p9"


def test_service_credentials_are_preferred_over_the_callers(tmp_path: Path) -> None:
    with stores(
        tmp_path,
        cinder_endpoint_template="http://cinder.invalid/v3/%(project_id)s",
        cinder_store_project_name="images",
    ) as s:
        drv: Any = s.driver("vols")
        assert not drv.per_request
        with drv.credentials("caller-token-3", "p1", CATALOG):
            assert plugin_of(s).endpoint == "http://cinder.invalid/v3/images"
