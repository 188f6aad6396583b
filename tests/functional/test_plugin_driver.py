"""A driver from another distribution loads by name, with no change to imgstore.

Builds a clean virtual environment, installs imgstore from this checkout as an
ordinary (non-editable) distribution, then the example package under
``examples/imgstore-sqlite-driver``, and runs the conformance kit inside that
environment against ``enabled_backends = db:sqlite`` set in a config file.
The only link between imgstore and the driver is the pair of entry points.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = [pytest.mark.functional, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "imgstore-sqlite-driver"

# Only what building the imgstore distribution reads; copied so that the
# in-tree build (build/, *.egg-info) never touches the checkout.
_REPO_FILES = ("pyproject.toml", "setup.cfg", "README.md", "LICENSE", "MANIFEST.in")
_IGNORE = shutil.ignore_patterns(
    "__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".mypy_cache", ".ruff_cache"
)

# Written into the throwaway environment and run there with its own pytest.
TEST_MODULE = textwrap.dedent(
    '''
    """Runs imgstore's conformance kit against the third-party sqlite driver."""

    import sqlite3
    import sys
    from pathlib import Path

    import pytest

    import imgstore
    import imgstore_sqlite
    from imgstore import Stores
    from imgstore.config import installed_driver_names
    from imgstore.location import parse
    from imgstore.testing import ConformanceTests, StoreUnderTest


    def test_both_come_from_the_environment():
        site = Path(sys.prefix).resolve()
        for module in (imgstore, imgstore_sqlite):
            assert site in Path(module.__file__).resolve().parents, module.__file__
        assert "sqlite" in installed_driver_names()


    def test_location_parses_without_any_backend():
        loc = parse("sqlite:///srv/images%20db/images.sqlite?image=abc-1")
        assert type(loc).__name__ == "SqliteLocation"
        assert (loc.db_path, loc.image_id) == ("/srv/images db/images.sqlite", "abc-1")
        assert parse(str(loc)) == loc


    class TestSqliteConformance(ConformanceTests):
        @pytest.fixture
        def store_under_test(self, tmp_path):
            db = tmp_path / "data" / "images.sqlite"
            configs = iter(range(1000))

            def make_stores(overrides):
                # enabled_backends in a config file: the driver is found by name only
                conf = tmp_path / f"imgstore-{next(configs)}.conf"
                lines = [
                    "[DEFAULT]",
                    "enabled_backends = db:sqlite",
                    "[glance_store]",
                    *(f"{key} = {value}" for key, value in overrides.items()),
                    "[db]",
                    f"sqlite_store_path = {db}",
                    "sqlite_store_chunk_size = 262144",
                ]
                conf.write_text("\\n".join(lines) + "\\n")
                return Stores.from_config_files(conf)

            def listing():
                # every raw entry: image rows, committed or not, and chunk owners
                conn = sqlite3.connect(db)
                try:
                    rows = conn.execute(
                        "SELECT 'image:' || id FROM images "
                        "UNION SELECT DISTINCT 'chunks:' || image_id FROM chunks"
                    ).fetchall()
                finally:
                    conn.close()
                return {row[0] for row in rows}

            with make_stores({}) as stores:
                assert stores.describe()[0].driver == "sqlite"
                yield StoreUnderTest(
                    stores=stores, backend="db", listing=listing, make_stores=make_stores
                )
    '''
)


def _clean_env(tmp_path: Path) -> dict[str, str]:
    """The environment minus whatever ties a subprocess to the outer venv or pytest."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTEST_ADDOPTS", "PYTHONSTARTUP"}
        and not k.startswith("PYTEST_")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return env


def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float) -> float:
    """Run ``cmd``; fail the test with its output when it fails. Returns seconds taken."""
    start = time.monotonic()
    proc = subprocess.run(
        cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    took = time.monotonic() - start
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd[:4])}... exited {proc.returncode} after {took:.1f}s\n"
            f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return took


def _copy_imgstore_source(dst: Path) -> Path:
    dst.mkdir()
    for name in _REPO_FILES:
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, dst / name)
    shutil.copytree(REPO / "imgstore", dst / "imgstore", ignore=_IGNORE)
    return dst


def test_third_party_driver_passes_conformance_in_a_clean_venv(tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    venv = tmp_path / "venv"
    timings: dict[str, float] = {}
    timings["venv"] = _run([sys.executable, "-m", "venv", str(venv)], env, tmp_path, 300)
    python = str(venv / "bin" / "python")

    src = _copy_imgstore_source(tmp_path / "imgstore-src")
    plugin = tmp_path / "imgstore-sqlite-driver"
    shutil.copytree(EXAMPLE, plugin, ignore=_IGNORE)

    # what `pip install` does, by scripts/pip-install (uv when the project's venv has it:
    # the same resolution from the same index, without pip's 20 s of resolver CPU)
    pip = ["bash", str(REPO / "scripts" / "pip-install"), python]
    timings["pip imgstore[test]"] = _run([*pip, f"{src}[test]"], env, tmp_path, 600)
    # The driver is an ordinary distribution installed after imgstore, with no
    # change to imgstore's files: only its two entry points connect them.
    timings["pip plugin"] = _run([*pip, str(plugin)], env, tmp_path, 600)

    work = tmp_path / "run"
    work.mkdir()
    # what a third-party project adds: the kit marks its 64 MiB cases "slow"
    (work / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: large images\n")
    (work / "test_sqlite_conformance.py").write_text(TEST_MODULE)
    report = work / "report.xml"
    pytest_cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    pytest_cmd += ["-W", "error::pytest.PytestWarning", f"--junitxml={report}", "."]
    timings["pytest"] = _run(pytest_cmd, env, work, 1200)

    suite = ET.parse(report).getroot()
    if suite.tag == "testsuites":
        suite = suite[0]
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    conformance = [
        case
        for case in suite.iter("testcase")
        if case.get("classname", "").endswith("TestSqliteConformance")
        and case.find("skipped") is None
    ]
    skipped = [
        f"{case.get('name')}: {case.find('skipped').get('message', '')}"  # type: ignore[union-attr]
        for case in suite.iter("testcase")
        if case.find("skipped") is not None
    ]
    summary = (
        f"{counts}, conformance tests run: {len(conformance)}, skipped: {skipped}, "
        f"timings: {timings}"
    )
    print(summary)
    assert counts["tests"] > 0, summary
    assert counts["failures"] == 0 and counts["errors"] == 0, summary
    assert len(conformance) >= 10, summary
