"""Coverage-guided fuzzing with atheris: location URIs and configuration files.

    python tests/fuzz/fuzz_atheris.py location -runs=100000
    python tests/fuzz/fuzz_atheris.py config -runs=100000

(``tox -e fuzz`` runs both.) The checks are those of the hypothesis targets
beside this file: only imgstore's exceptions come out of ``parse`` and the
configuration loader, whatever parses reads back equal, and a password put in
a URI's user-info never shows in ``redact_uri``, an error or a location.
Extra arguments go to libFuzzer (``-max_total_time=60``, a corpus directory).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from imgstore import Stores
    from imgstore.config import config_from_files, read_settings
    from imgstore.exceptions import BadLocation, ImgstoreError
    from imgstore.location import known_schemes, parse, redact_uri

    SCHEMES = [*known_schemes(), "HTTP", "nosuch"]  # imports every driver's location module

SEPARATORS = ["://", "://", ":", ":/", "://u:Zqsecret1@", "://localhost/"]
SECRET = "Zqsecret1"
_workdir = Path(tempfile.mkdtemp(prefix="imgstore-atheris-"))


def _text(fdp: atheris.FuzzedDataProvider, size: int) -> str:
    # ConsumeUnicode gives ASCII, UTF-16 or UTF-32 text, lone surrogates included
    return str(fdp.ConsumeUnicode(size))


def fuzz_location(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 3)
    if mode == 0:
        uri = _text(fdp, 200)
    else:
        scheme = SCHEMES[fdp.ConsumeIntInRange(0, len(SCHEMES) - 1)]
        sep = SEPARATORS[fdp.ConsumeIntInRange(0, len(SEPARATORS) - 1)]
        uri = f"{scheme}{sep}{_text(fdp, 200)}"
    with_secret = SECRET in uri and "://u:Zqsecret1@" in uri
    shown = [redact_uri(uri)]
    try:
        loc = parse(uri)
    except ImgstoreError as exc:
        if not isinstance(exc, BadLocation):
            raise
        shown += [str(exc), repr(exc)]
    else:
        again = parse(loc.to_uri())
        if again != loc or again.to_uri() != loc.to_uri():
            raise AssertionError(f"{uri!r} reads back as {again.to_uri()!r}")
        shown += [repr(loc), loc.redacted()]
        if loc.scheme not in ("http", "https"):  # http(s) URLs are kept as given
            shown.append(str(loc))
    if with_secret:
        for text in shown:
            if SECRET in text:
                raise AssertionError(f"the password shows in {text!r} (from {uri!r})")


CONFIG_PIECES = [
    "[DEFAULT]\n", "[glance_store]\n", "[backend_defaults]\n", "[a]\n", "[b]\n",
    "enabled_backends = a:file, b:http\n", "enabled_backends = a:", "stores = file, http\n",
    "stores = ", "default_store = ", "default_backend = a\n", "default_backend = ",
    f"filesystem_store_datadir = {_workdir}/data\n", "filesystem_store_datadirs = ",
    "image_size_cap = ", "http_proxy_information = ", "s3_store_host = ", "s3_store_bucket = ",
    "mongodb_store_uri = mongodb://127.0.0.1:9/", "rbd_store_chunk_size = ",
    "swift_store_container = ", "http_allowed_networks = ", "\n", " = ", "$", "%(",
]  # fmt: skip


def fuzz_config(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    parts = []
    for _ in range(fdp.ConsumeIntInRange(0, 12)):
        if fdp.ConsumeBool():
            parts.append(CONFIG_PIECES[fdp.ConsumeIntInRange(0, len(CONFIG_PIECES) - 1)])
        else:
            text = _text(fdp, 24)
            # keep generated paths inside the work directory: a data directory is created
            parts.append(text.replace("/", "_"))
    path = _workdir / "fuzz.conf"
    path.write_bytes("".join(parts).encode("utf-8", "surrogatepass"))
    try:
        read_settings(config_from_files([path]))
        with Stores.from_config_files(path) as stores:
            stores.describe()
    except ImgstoreError:
        pass


TARGETS = {"location": fuzz_location, "config": fuzz_config}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv[1]]
    os.environ.setdefault("IMGSTORE_DATA_DIR", str(_workdir / "default"))
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
