"""oslo-config-generator documents every option of the core and the filesystem driver."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys

import pytest
from oslo_config import cfg

from imgstore import config
from imgstore.drivers.filesystem import FilesystemDriver

CORE_DEFAULT = ["enabled_backends"]
CORE_STORE = ["stores", "default_store", "default_backend", "image_size_cap", "md5_checksum"]
FILESYSTEM = [
    "filesystem_store_datadir",
    "filesystem_store_datadirs",
    "filesystem_store_metadata_file",
    "filesystem_store_file_perm",
    "filesystem_store_chunk_size",
    "filesystem_thin_provisioning",
    "filesystem_store_direct_io",
]

_OPTION_LINE = re.compile(r"^#([A-Za-z0-9_]+) = ?(.*)$")


def generator_command() -> list[str]:
    script = pathlib.Path(sys.executable).parent / "oslo-config-generator"
    if script.exists():
        return [str(script)]
    found = shutil.which("oslo-config-generator")
    return [found] if found else [sys.executable, "-m", "oslo_config.generator"]


@pytest.fixture(scope="module")
def sample() -> dict[str, dict[str, tuple[str, str]]]:
    """group -> option -> (help paragraph, default) from the generator's output."""
    out = subprocess.run(
        [*generator_command(), "--namespace", "imgstore"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    groups: dict[str, dict[str, tuple[str, str]]] = {}
    group = ""
    comment: list[str] = []
    for line in out.splitlines():
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1]
            groups.setdefault(group, {})
            comment = []
        elif not line.strip():
            comment = []
        elif match := _OPTION_LINE.match(line):
            assert group, "option before any section"
            groups[group][match.group(1)] = (" ".join(comment), match.group(2))
            comment = []
        elif line.startswith("#"):
            comment.append(line[1:].strip())
    return groups


def squash(text: str) -> str:
    """Text without whitespace: the generator wraps lines and may break at hyphens."""
    return re.sub(r"\s+", "", text)


def options_by_name() -> dict[str, cfg.Opt]:
    opts = [config.enabled_backends_opt, *config.store_opts, *FilesystemDriver.options()]
    return {o.dest: o for o in opts}


def test_the_expected_options_exist_in_the_code() -> None:
    # guards the lists above: an option renamed in the code must be renamed here
    assert set(options_by_name()) == {*CORE_DEFAULT, *CORE_STORE, *FILESYSTEM}


@pytest.mark.parametrize(
    ("group", "names"),
    [
        ("DEFAULT", CORE_DEFAULT),
        ("glance_store", CORE_STORE + FILESYSTEM),
        ("backend_defaults", FILESYSTEM),
    ],
)
def test_options_appear_with_help_in_their_group(
    sample: dict[str, dict[str, tuple[str, str]]], group: str, names: list[str]
) -> None:
    assert group in sample, f"no [{group}] section in the generated sample"
    opts = options_by_name()
    for name in names:
        assert name in sample[group], f"{name} missing from [{group}]"
        help_text, _default = sample[group][name]
        expected = opts[name].help
        assert expected, f"{name} has no help text"
        assert squash(expected) in squash(help_text), f"help of [{group}] {name}"


def test_options_stay_out_of_the_wrong_groups(
    sample: dict[str, dict[str, tuple[str, str]]],
) -> None:
    for name in CORE_STORE + FILESYSTEM:
        assert name not in sample.get("DEFAULT", {})
    for name in CORE_DEFAULT + CORE_STORE:
        assert name not in sample.get("backend_defaults", {})
    assert "enabled_backends" not in sample.get("glance_store", {})


def test_documented_defaults(sample: dict[str, dict[str, tuple[str, str]]]) -> None:
    store = sample["glance_store"]
    assert store["image_size_cap"][1] == str(1 << 40)
    assert store["md5_checksum"][1] == "true"
    assert store["default_store"][1] == "file"
    assert store["filesystem_store_chunk_size"][1] == str(4 * 1024 * 1024)
    assert store["filesystem_store_datadir"][1] == "/var/lib/glance/images"
    assert store["filesystem_thin_provisioning"][1] == "false"
    assert store["filesystem_store_direct_io"][1] == "true"
    assert (
        sample["backend_defaults"]["filesystem_store_chunk_size"]
        == (store["filesystem_store_chunk_size"])
    )
