"""vsphere:// locations and vmware driver configuration (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgstore import BadLocation, Stores
from imgstore.driver import is_partial_name, partial_name
from imgstore.drivers.vmware import (
    DatastoreSpec,
    VMwareDriver,
    VsphereLocation,
    parse_datastores,
)
from imgstore.exceptions import BadConfiguration
from imgstore.location import parse

IMAGE = "0f4b0c4e-1b6a-4b8f-9c1d-2e3f4a5b6c7d"


def test_glance_store_form_parses_and_round_trips() -> None:
    uri = f"vsphere://vc.example/folder/openstack_glance/{IMAGE}?dcPath=DC0&dsName=LocalDS_0"
    loc = parse(uri)
    assert isinstance(loc, VsphereLocation)
    assert (loc.host, loc.port, loc.datacenter, loc.datastore) == (
        "vc.example", None, "DC0", "LocalDS_0",
    )  # fmt: skip
    assert loc.path == f"openstack_glance/{IMAGE}"
    assert loc.image_id == IMAGE
    assert loc.directory == "openstack_glance"
    assert loc.datastore_path == f"[LocalDS_0] openstack_glance/{IMAGE}"
    assert str(loc) == uri
    assert parse(str(loc)) == loc
    assert loc.https_url() == (
        f"https://vc.example/folder/openstack_glance/{IMAGE}?dcPath=DC0&dsName=LocalDS_0"
    )


def test_query_order_encoding_port_and_no_dcpath() -> None:
    # newer glance_store writes dsName first; the datacenter path is url-encoded
    loc = parse(f"vsphere://10.0.0.5:8443/folder/g/{IMAGE}?dsName=ds%201&dcPath=Folder%2FDC%201")
    assert isinstance(loc, VsphereLocation)
    assert (loc.port, loc.datastore, loc.datacenter) == (8443, "ds 1", "Folder/DC 1")
    assert (
        str(loc) == f"vsphere://10.0.0.5:8443/folder/g/{IMAGE}?dcPath=Folder%2FDC%201&dsName=ds%201"
    )
    assert parse(str(loc)) == loc
    esx = parse(f"vsphere://esx.example/folder/openstack_glance/{IMAGE}?dsName=datastore1")
    assert isinstance(esx, VsphereLocation) and esx.datacenter is None
    assert parse(str(esx)) == esx
    v6 = parse(f"vsphere://[fd00::5]:443/folder/a/b/{IMAGE}?dcPath=DC&dsName=ds")
    assert isinstance(v6, VsphereLocation)
    assert (v6.host, v6.port, v6.directory) == ("fd00::5", 443, "a/b")
    assert parse(str(v6)) == v6


@pytest.mark.parametrize(
    "uri",
    [
        "vsphere://",
        "vsphere://host",
        f"vsphere://host/{IMAGE}?dsName=ds",
        "vsphere://host/folder/?dsName=ds",
        f"vsphere://host/folder/a/{IMAGE}",
        f"vsphere://host/folder/a/{IMAGE}?dcPath=DC",
        f"vsphere://host/folder/a/{IMAGE}?dsName=",
        f"vsphere://host/folder/a/{IMAGE}?dsName=ds&dsName=ds2",
        f"vsphere://host/folder/a/{IMAGE}?dsName=ds&other=1",
        f"vsphere://host/folder/a/{IMAGE}?dsName=d/../s",
        f"vsphere://host/folder/a/../{IMAGE}?dsName=ds",
        f"vsphere://host/folder/a//{IMAGE}?dsName=ds",
        f"vsphere://host/folder/a/{IMAGE}/?dsName=ds",
        f"vsphere://host/folder/a/{IMAGE}?dsName=ds#frag",
        f"vsphere://host:99999/folder/a/{IMAGE}?dsName=ds",
        f"vsphere://host/folder/a/{IMAGE}?dsName=ds%5B1%5D",
        f"vsphere://host/folder/a/{IMAGE}?dsName=ds&dcPath=DC/../x",
    ],
)
def test_malformed_locations_are_bad_location(uri: str) -> None:
    with pytest.raises(BadLocation):
        parse(uri)


def test_credentials_are_refused_and_never_shown() -> None:
    uri = f"vsphere://admin:s3cr3t@vc.example/folder/g/{IMAGE}?dsName=ds"
    with pytest.raises(BadLocation) as raised:
        parse(uri)
    assert "s3cr3t" not in str(raised.value)


@given(
    name=st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
        min_size=1,
        max_size=30,
    ).filter(lambda s: s not in (".", "..") and "/" not in s and not s.isspace()),
    ds=st.text(alphabet="abcXYZ09 _-.&=?%+", min_size=1, max_size=12).filter(
        lambda s: s.strip() == s
    ),
    dc=st.text(alphabet="abcXYZ09 _-/&=?%+", min_size=1, max_size=12).filter(
        lambda s: s.strip() == s and "" not in s.split("/") and ".." not in s.split("/")
    ),
)
def test_any_names_round_trip(name: str, ds: str, dc: str) -> None:
    loc = VsphereLocation("vc.example", 18989, f"openstack_glance/{name}", dc, ds)
    back = parse(str(loc))
    assert back == loc
    assert isinstance(back, VsphereLocation)
    assert (back.image_id, back.datastore, back.datacenter) == (name, ds, dc)


def test_datastore_option_parsing() -> None:
    assert parse_datastores(["DC0:LocalDS_0:5", "Folder/DC1:ds 2", "DC:a:b:0"]) == [
        DatastoreSpec("DC0", "LocalDS_0", 5),
        DatastoreSpec("Folder/DC1", "ds 2", 0),
        DatastoreSpec("DC:a", "b", 0),
    ]
    for bad in (["DC0"], ["DC0:ds:heavy"], [":ds:1"], ["DC0::1"], ["DC:ds:1", "DC:ds:2"]):
        with pytest.raises(BadConfiguration):
            parse_datastores(bad)


def _stores(tmp_path: Path, **options: str) -> Stores:
    lines = ["[glance_store]", "stores = vmware", "default_store = vmware"]
    lines += [f"{k} = {v}" for k, v in options.items()]
    path = tmp_path / "imgstore.conf"
    path.write_text("\n".join(lines) + "\n")
    return Stores.from_config_files(path)


BASE = {
    "vmware_server_host": "vc.example",
    "vmware_server_username": "admin",
    "vmware_server_password": "pa55word",
}


def test_configuration(tmp_path: Path) -> None:
    with _stores(tmp_path, **BASE, vmware_datastores="DC0:ds:1") as stores:
        drv = stores.driver()
        assert isinstance(drv, VMwareDriver)
        assert (drv.host, drv.port, drv.image_dir, drv.verify) == (
            "vc.example", 443, "openstack_glance", True,
        )  # fmt: skip
        assert "pa55word" not in repr(drv) and "pa55word" not in repr(stores)
        assert drv.secrets() == ["pa55word"]  # no session yet: no cookie
        # the emitted location leaves the default port out, as glance_store does
        loc = drv.datastore_location(IMAGE, drv.datastores[0])
        assert (
            str(loc) == f"vsphere://vc.example/folder/openstack_glance/{IMAGE}?dcPath=DC0&dsName=ds"
        )
        assert drv.owns(loc)
        assert drv.owns(parse(f"vsphere://vc.example:443/folder/x/{IMAGE}?dsName=ds"))
        assert not drv.owns(parse(f"vsphere://other.example/folder/x/{IMAGE}?dsName=ds"))
        assert not drv.owns(parse(f"vsphere://vc.example:8443/folder/x/{IMAGE}?dsName=ds"))


def test_configuration_port_ca_and_read_only(tmp_path: Path) -> None:
    opts = {**BASE, "vmware_server_host": "vc.example:18989", "vmware_ca_file": "/ca.pem",
            "vmware_insecure": "true"}  # fmt: skip
    with _stores(tmp_path, **opts) as stores:
        drv = stores.driver()
        assert isinstance(drv, VMwareDriver)
        assert (drv.port, drv.verify, drv.insecure) == (18989, "/ca.pem", False)
        assert stores.capabilities().names() == ["read", "read_random", "delete"]


@pytest.mark.parametrize(
    "options",
    [
        {"vmware_server_host": "vc.example"},
        {**BASE, "vmware_server_password": ""},
        {**BASE, "vmware_datastores": "DC0"},
        {**BASE, "vmware_store_image_dir": "/"},
        {**BASE, "vmware_store_image_dir": "a/../b"},
        {**BASE, "vmware_server_host": "vc.example:https"},
    ],
)
def test_bad_configuration(tmp_path: Path, options: dict[str, str]) -> None:
    with pytest.raises(BadConfiguration) as raised:
        _stores(tmp_path, **options)
    assert "pa55word" not in str(raised.value)


def test_foreign_location_is_refused_before_any_connection(tmp_path: Path) -> None:
    with _stores(tmp_path, **BASE, vmware_datastores="DC0:ds:1") as stores:
        with pytest.raises(BadLocation):
            stores.size(f"vsphere://evil.example/folder/openstack_glance/{IMAGE}?dsName=ds")
        with pytest.raises(BadLocation):
            stores.delete(f"vsphere://vc.example/folder/elsewhere/{IMAGE}?dsName=ds")


def test_partial_names() -> None:
    name = partial_name(IMAGE)
    assert name.startswith(f".{IMAGE}.") and name.endswith(".imgstore-partial")
    assert len(name) == len(IMAGE) + len("..") + 12 + len(".imgstore-partial")
    assert partial_name(IMAGE) != name  # a new token each time
    assert is_partial_name(name) and is_partial_name(name, IMAGE)
    assert not is_partial_name(name, IMAGE + "x") and not is_partial_name(name, IMAGE[:-1])
    # the id is cut so that the name stays within 255 characters
    long_id = "a" * 255
    assert len(partial_name(long_id)) <= 255
    assert is_partial_name(partial_name(long_id), long_id)
    # only the exact form: never an image, nor another program's file
    for other in (
        IMAGE,
        f"{IMAGE}.0123456789ab.imgstore-partial",  # not hidden
        f".{IMAGE}.0123456789AB.imgstore-partial",  # upper-case token
        f".{IMAGE}.0123456789a.imgstore-partial",  # short token
        ".0123456789ab.imgstore-partial",  # no id
        f".{IMAGE}.0123456789ab.imgstore-partial.vmdk",
    ):
        assert not is_partial_name(other), other


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}", fullmatch=True))
def test_any_id_makes_a_valid_partial_location(image_id: str) -> None:
    name = partial_name(image_id)
    assert is_partial_name(name, image_id)
    loc = VsphereLocation("vc.example", None, f"openstack_glance/{name}", "DC0", "LocalDS_0")
    assert parse(str(loc)) == loc and loc.image_id == name
