"""The ``imgstore`` command: add, get, size, delete and copy images; list stores;
migrate and verify many images.

Configuration: ``--config-file FILE`` (repeatable; later files override
earlier ones, as with oslo.config). Without it, ``$IMGSTORE_CONFIG`` (a
colon-separated list of files) is used when set, and otherwise the embedded
default: one filesystem store in ``$IMGSTORE_DATA_DIR`` or the XDG data home.

Standard output carries only results (image bytes for ``get``, a JSON
document with ``--json``); messages, logs and the progress bar go to standard
error. The progress bar appears for add, get and copy only when standard
error is a terminal and ``--quiet`` is not given.

On failure exactly one line ``imgstore: error: ...`` is written to standard
error; ``--debug`` adds the traceback and DEBUG logging. The exit codes
follow (the same table ``imgstore --help`` prints).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import stat
import sys
import tempfile
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from imgstore.api import (
    DEFAULT_CLEANUP_AGE,
    DEFAULT_HASH_ALGO,
    AddResult,
    BackendInfo,
    Stores,
    open_stores,
)
from imgstore.exceptions import (
    AuthenticationFailed,
    BackendError,
    BackendUnavailable,
    BadConfiguration,
    BadLocation,
    ImgstoreError,
    IntegrityError,
    InvalidArgument,
    NotFound,
)
from imgstore.location import redact_uri
from imgstore.progress import ProgressBar, count_bar, progress_bar

PROG = "imgstore"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_INTEGRITY = 4
EXIT_UNAVAILABLE = 5
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    any other failure: Duplicate, StorageFull, ReadOnlyStore, NotSupported,
       BackendError, an output file that cannot be written, standard output
       closed early ("imgstore: error: output closed"); migrate: any image
       failed; verify: any image unreadable
  2    bad usage or configuration: bad arguments, BadConfiguration,
       UnknownBackend, InvalidArgument, BadLocation, UnknownScheme, an input
       file that is missing or unreadable, an output path that cannot be used
  3    NotFound: no image at that location
  4    integrity: SizeMismatch, SizeCapExceeded, ChecksumMismatch,
       DiskFormatMismatch, UnsafeImage; verify: any image does not match its
       recorded size or hashes; inspect: the image failed a safety check
  5    BackendUnavailable or AuthenticationFailed
  130  interrupted (Ctrl-C)
"""
__doc__ = f"{__doc__}\n{EXIT_CODES_HELP}"

RESULT_KEYS = (
    "location", "size", "checksum", "multihash", "hash_algo", "backend", "image_id",
    "disk_format", "virtual_size", "safety",
)  # fmt: skip
"""The keys of the JSON object ``add`` and ``copy`` print with ``--json``."""

LOG = logging.getLogger(__name__)


class UsageError(Exception):
    """A problem with the command line or local files; exit code 2."""


class OutputError(Exception):
    """The output file could not be written; exit code 1."""


class OutputClosed(Exception):
    """Standard output was closed by the reader (a broken pipe)."""


class SomeFailed(Exception):
    """Some images of a migrate or verify run failed (the report has the details), or
    the image ``inspect`` read failed a safety check."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def exit_code(exc: BaseException) -> int:
    """The documented exit code for ``exc``."""
    if isinstance(exc, SomeFailed):
        return exc.code
    if isinstance(exc, (UsageError, BadConfiguration, InvalidArgument, BadLocation)):
        return EXIT_USAGE
    if isinstance(exc, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, IntegrityError):
        return EXIT_INTEGRITY
    if isinstance(exc, (BackendUnavailable, AuthenticationFailed)):
        return EXIT_UNAVAILABLE
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_FAILURE


# -- argument parsing --------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        sub = self.prog[len(PROG) :].strip()
        where = f"{sub}: " if sub else ""
        self.exit(EXIT_USAGE, f"{PROG}: error: {where}{message} (see '{self.prog} --help')\n")


def _non_negative(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


_GLOBALS = ("config_file", "json", "debug", "quiet")


def _add_globals(parser: argparse.ArgumentParser, late: bool) -> None:
    """The global options, accepted before and after the sub-command.

    After the sub-command they land in ``late_*`` attributes (default
    suppressed) so they do not overwrite what came before; :func:`parse_args`
    merges both.
    """
    prefix = "late_" if late else ""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if late else value

    parser.add_argument(
        "--config-file",
        dest=prefix + "config_file",
        action="append",
        metavar="FILE",
        default=default([]),
        help="configuration file (repeatable; later files override earlier ones); "
        "default: $IMGSTORE_CONFIG (colon-separated), else one filesystem store in "
        "$IMGSTORE_DATA_DIR",
    )
    parser.add_argument(
        "--json",
        dest=prefix + "json",
        action="store_true",
        default=default(False),
        help="print results as JSON",
    )
    parser.add_argument(
        "--debug",
        dest=prefix + "debug",
        action="store_true",
        default=default(False),
        help="DEBUG logging and tracebacks on standard error",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        dest=prefix + "quiet",
        action="store_true",
        default=default(False),
        help="no progress bar; add/copy print only the location, delete prints nothing",
    )


def _add_migration_commands(command: Callable[..., Any]) -> None:
    """``migrate`` and ``verify``: many images listed in a file."""

    def many(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "input",
            metavar="INPUT",
            help="images as JSON lines or CSV (header) with image_id, location and, where "
            "known, size, checksum, os_hash_algo, os_hash_value; '-' for standard input",
        )
        p.add_argument(
            "--format",
            choices=("auto", "jsonl", "csv"),
            default="auto",
            help="input format (default: by extension, else by content)",
        )
        p.add_argument(
            "--concurrency",
            type=_positive,
            default=1,
            metavar="N",
            help="images at once (default 1); memory grows with N, not with image sizes",
        )
        p.add_argument("--report", metavar="FILE", help="write the JSON report to FILE")
        p.add_argument(
            "--metrics-port",
            type=_positive,
            metavar="N",
            help="serve the run's metrics as Prometheus text at http://HOST:N/metrics while "
            "it lasts (needs imgstore[metrics])",
        )
        p.add_argument(
            "--metrics-host",
            default="127.0.0.1",
            metavar="HOST",
            help="address --metrics-port listens on (default 127.0.0.1)",
        )
        p.add_argument(
            "--hash-algo",
            default=DEFAULT_HASH_ALGO,
            metavar="ALG",
            help=f"multihash algorithm where the input names none (default: {DEFAULT_HASH_ALGO})",
        )

    def elsewhere(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--broker",
            metavar="URL",
            help="enqueue the images on this Celery broker (amqp://...) for 'imgstore worker' "
            "processes on any number of hosts, instead of working here; needs --journal URL "
            "of a database they all reach (imgstore[distributed])",
        )
        p.add_argument(
            "--no-wait",
            action="store_true",
            help="with --broker: return once the images are enqueued (default: wait for "
            "them, with a progress bar, and report)",
        )

    p = command(
        "migrate",
        cmd_migrate,
        "copy every listed image into another backend, verified and resumable",
    )
    many(p)
    p.add_argument("--to", required=True, metavar="BACKEND", help="target backend")
    p.add_argument(
        "--journal",
        metavar="FILE|URL",
        help="the journal that makes the run resumable: a sqlite file (default: "
        "INPUT.journal; required when INPUT is '-'), or a database URL "
        "(mysql+pymysql://..., postgresql+psycopg://...; needs imgstore[distributed])",
    )
    p.add_argument(
        "--delete-source",
        action="store_true",
        help="delete each source image once its copy is verified",
    )
    p.add_argument("--dry-run", action="store_true", help="check and report; copy nothing")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="try again the images an earlier run of this journal failed",
    )
    p.add_argument(
        "--inspect",
        action="store_true",
        help="report each copy's disk format, virtual size and safety and count the "
        "unsafe ones, even where the target's image_inspection is off",
    )
    elsewhere(p)

    p = command(
        "worker",
        cmd_worker,
        "run the migrations enqueued by 'migrate --broker', until stopped (SIGTERM or "
        "Ctrl-C let the images in hand finish)",
    )
    p.add_argument("--broker", required=True, metavar="URL", help="the Celery broker (amqp://...)")
    p.add_argument("--journal", required=True, metavar="URL", help="the journal database's URL")
    p.add_argument(
        "--concurrency",
        type=_positive,
        default=1,
        metavar="N",
        help="images at once in this worker (default 1)",
    )
    p.add_argument(
        "--lease-seconds",
        type=_positive,
        default=60,
        metavar="S",
        help="how long an image stays this worker's without a renewal (renewed every "
        "third of it): a worker that dies gives its images up after this long (default 60)",
    )
    p.add_argument(
        "--metrics-port",
        type=_positive,
        metavar="N",
        help="serve this worker's metrics as Prometheus text at http://HOST:N/metrics "
        "(needs imgstore[metrics])",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address --metrics-port listens on (default 127.0.0.1)",
    )

    p = command(
        "status",
        cmd_status,
        "progress of a migration across all hosts, from its journal (also: migrate status)",
    )
    p.add_argument("--journal", required=True, metavar="FILE|URL", help="the run's journal")

    p = command("verify", cmd_verify, "re-read listed images and check their recorded hashes")
    many(p)
    elsewhere(p)
    p.add_argument(
        "--journal",
        metavar="URL",
        help="with --broker: the database where the workers keep each image's outcome "
        "(a fresh one per verify run)",
    )
    p.add_argument(
        "--inspect",
        action="store_true",
        help="also find each image's disk format, virtual size and safety in the same "
        "read, and count the unsafe ones (the audit of a catalogue)",
    )

    p = command(
        "inspect", cmd_inspect, "tell what one image (a LOCATION or a local FILE) is: disk "
        "format, virtual size and safety; exit 4 when it fails a safety check",
    )  # fmt: skip
    p.add_argument("image", metavar="LOCATION|FILE")


def build_parser() -> argparse.ArgumentParser:
    """The parser for the whole command line."""
    parser = _Parser(
        prog=PROG,
        description="Store, fetch and copy virtual-machine images in any configured backend.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_globals(parser, late=False)
    common = _Parser(add_help=False)
    _add_globals(common, late=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, func: Callable[[argparse.Namespace, Stores], None], text: str) -> Any:
        p = sub.add_parser(
            name,
            help=text,
            description=text,
            parents=[common],
            epilog=EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    p = command("add", cmd_add, "store an image from FILE (or standard input with '-')")
    p.add_argument("file", metavar="FILE", help="image file, or '-' for standard input")
    p.add_argument("--backend", metavar="NAME", help="backend to store in (default: the default)")
    p.add_argument("--id", metavar="IMAGE_ID", help="image id (default: a new UUID4)")
    p.add_argument(
        "--size",
        type=_non_negative,
        metavar="N",
        help="declared size in bytes (default: FILE's size; unknown for '-')",
    )
    p.add_argument(
        "--hash-algo",
        default=DEFAULT_HASH_ALGO,
        metavar="ALG",
        help=f"multihash algorithm (default: {DEFAULT_HASH_ALGO})",
    )
    p.add_argument(
        "--disk-format",
        metavar="FORMAT",
        help="the declared disk format (raw, qcow2, vmdk, ...): bytes of another "
        "format are refused (exit 4) and nothing is stored",
    )

    p = command("get", cmd_get, "write an image (or a byte range of it) to standard output")
    p.add_argument("location", metavar="LOCATION")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write to FILE instead (via a temporary file renamed on success)",
    )
    p.add_argument("--offset", type=_non_negative, default=0, metavar="N")
    p.add_argument("--length", type=_non_negative, metavar="N")

    p = command("size", cmd_size, "print the size of an image in bytes")
    p.add_argument("location", metavar="LOCATION")

    p = command("delete", cmd_delete, "delete an image")
    p.add_argument("location", metavar="LOCATION")

    command("stores", cmd_stores, "list the configured backends")

    p = command("copy", cmd_copy, "copy an image into another backend")
    p.add_argument("location", metavar="LOCATION")
    p.add_argument("--to", required=True, metavar="BACKEND", help="target backend")
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="do not read the copy back to compare its hash",
    )
    p.add_argument("--id", metavar="IMAGE_ID", help="image id of the copy (default: the source's)")
    p.add_argument("--hash-algo", default=DEFAULT_HASH_ALGO, metavar="ALG")

    p = command(
        "cleanup",
        cmd_cleanup,
        "remove what interrupted adds left behind (partial files, multipart uploads, "
        "orphan segments, unfinished images), found by the marker imgstore sets while writing",
    )
    p.add_argument(
        "--backend",
        action="append",
        metavar="NAME",
        help="look only in this backend (repeatable; default: every backend)",
    )
    p.add_argument(
        "--older-than",
        type=_non_negative,
        default=int(DEFAULT_CLEANUP_AGE),
        metavar="SECONDS",
        help=f"only leftovers of adds started this long ago, so running adds are spared "
        f"(default: {int(DEFAULT_CLEANUP_AGE)})",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list what would be removed; remove nothing"
    )

    _add_migration_commands(command)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` and merge global options given after the sub-command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "migrate" in argv and argv[argv.index("migrate") + 1 : argv.index("migrate") + 2] == [
        "status"
    ]:  # "imgstore migrate status": the status command
        at = argv.index("migrate")
        argv[at : at + 2] = ["status"]
    args = build_parser().parse_args(argv)
    args.config_file = list(args.config_file) + list(getattr(args, "late_config_file", []))
    for name in _GLOBALS[1:]:
        setattr(args, name, bool(getattr(args, name)) or bool(getattr(args, "late_" + name, False)))
    return args


PASSWORD_VARIABLES = {"broker": "IMGSTORE_BROKER_PASSWORD", "journal": "IMGSTORE_JOURNAL_PASSWORD"}
"""Where ``--broker`` / ``--journal`` URLs written without a password find it: every local
user reads a process's command line (ps), only its owner its environment."""


def _passwords_from_environment(args: argparse.Namespace) -> None:
    """Put the password of :data:`PASSWORD_VARIABLES` into a ``--broker`` or ``--journal``
    URL that names a user but no password; warn of a password written on the command
    line."""
    for option, variable in PASSWORD_VARIABLES.items():
        url = getattr(args, option, None)
        if not isinstance(url, str) or "://" not in url:
            continue  # not given, or a journal file
        scheme, _, rest = url.partition("://")
        netloc, slash, path = rest.partition("/")
        userinfo, at, host = netloc.rpartition("@")
        password = os.environ.get(variable)
        if ":" in userinfo:
            LOG.warning(
                "the --%s URL holds a password, which every local user can read in the "
                "process list: leave it out of the URL and set %s", option, variable,
            )  # fmt: skip
        elif password is not None:
            if not at:
                raise UsageError(f"{variable} is set but the --{option} URL names no user")
            quoted = urllib.parse.quote(password, safe="")
            setattr(args, option, f"{scheme}://{userinfo}:{quoted}@{host}{slash}{path}")


def config_files(args: argparse.Namespace) -> list[str]:
    """The configuration files to load: ``--config-file`` or ``$IMGSTORE_CONFIG``."""
    if args.config_file:
        return list(args.config_file)
    env = os.environ.get("IMGSTORE_CONFIG", "")
    return [p for p in env.split(os.pathsep) if p]


# -- output helpers ------------------------------------------------------------


def _out(text: str) -> None:
    if sys.stdout is None:  # started with standard output closed (>&-)
        raise OutputClosed
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise OutputClosed from None


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, looping over short writes.

    Buffered file objects can report a short count instead of raising when a
    pipe's reader goes away mid-write, which would cut an image silently;
    ``os.write`` in a loop sees every short write and every error.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _out_bytes(data: bytes) -> None:
    if sys.stdout is None:
        raise OutputClosed
    try:
        write_all(sys.stdout.fileno(), data)
    except BrokenPipeError:
        raise OutputClosed from None


def _flush_stdout() -> None:
    if sys.stdout is None:
        raise OutputClosed
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise OutputClosed from None


def _emit_json(value: Any) -> None:
    _out(json.dumps(value, indent=2, sort_keys=False) + "\n")


def _emit_result(args: argparse.Namespace, result: AddResult) -> None:
    data = result.as_dict()
    picked = {key: data[key] for key in RESULT_KEYS}
    if args.json:
        _emit_json(picked)
    elif args.quiet:
        _out(result.location + "\n")
    else:
        picked["safety"] = "" if result.safety is None else str(result.safety)
        _out("".join(f"{key + ':':<13}{'' if v is None else v}\n" for key, v in picked.items()))


def _bar(args: argparse.Namespace, label: str, total: int | None) -> ProgressBar | None:
    return progress_bar(sys.stderr, label, total, enabled=not args.quiet)


@contextlib.contextmanager
def _progress(args: argparse.Namespace, label: str, total: int | None) -> Iterator[Any]:
    """A progress callback (or None), finished on success and erased on failure."""
    bar = _bar(args, label, total)
    try:
        yield bar
    except BaseException:
        if bar is not None:
            bar.finish(ok=False)
        raise
    if bar is not None:
        bar.finish()


# -- commands -------------------------------------------------------------------


class _InterruptibleReader:
    """Reads a pipe, FIFO or terminal so that Ctrl-C is seen even while no data comes.

    Python runs a signal handler only between bytecodes; a SIGINT that lands
    just before a blocking read() begins would wait for the next byte, maybe
    forever. Waiting in short select() calls returns to Python often enough.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def readinto(self, view: memoryview) -> int:
        while True:
            ready, _, _ = select.select([self._fd], [], [], 0.2)
            if ready:
                return os.readv(self._fd, [view])


@contextlib.contextmanager
def _open_input(path: str) -> Iterator[tuple[Any, int | None]]:
    """The image source and its size when it is a regular file."""
    if path == "-":
        if sys.stdin is None:  # started with standard input closed (<&-)
            raise UsageError("cannot read standard input: it is closed")
        fd = sys.stdin.buffer.fileno()
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        yield sys.stdin.buffer if regular else _InterruptibleReader(fd), None
        return
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        st = os.fstat(fh.fileno())
        if stat.S_ISREG(st.st_mode):
            yield fh, st.st_size
        else:  # a FIFO or a device
            yield _InterruptibleReader(fh.fileno()), None


def cmd_add(args: argparse.Namespace, stores: Stores) -> None:
    """``imgstore add``."""
    image_id = args.id if args.id is not None else str(uuid.uuid4())
    with _open_input(args.file) as (source, file_size):
        size = args.size if args.size is not None else file_size
        with _progress(args, "add", size) as bar:
            try:
                result = stores.add(
                    image_id,
                    source,
                    size=size,
                    backend=args.backend,
                    hash_algo=args.hash_algo,
                    progress=bar,
                    expected_disk_format=args.disk_format,
                )
            except OSError as exc:
                # The core wraps backend errors; an OSError here came from reading the source.
                raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from exc
    _emit_result(args, result)


def _stream_image(args: argparse.Namespace, stores: Stores, write: Callable[[bytes], None]) -> int:
    """Read the requested image or range, hand every chunk to ``write``; return the count."""
    with stores.get(args.location, offset=args.offset, length=args.length) as reader:
        with _progress(args, "get", reader.size) as bar:
            count = 0
            for chunk in reader:
                write(chunk)
                count += len(chunk)
                if bar is not None:
                    bar(count, reader.size)
    return count


def cmd_get(args: argparse.Namespace, stores: Stores) -> None:
    """``imgstore get``."""
    if args.output is not None and args.output != "-":
        _get_to_file(args, stores, args.output)
        return
    if sys.stdout is None:
        raise OutputClosed
    if sys.stdout.isatty():
        raise UsageError("refusing to write image data to a terminal; use -o FILE or a redirect")
    _flush_stdout()
    _stream_image(args, stores, _out_bytes)


def _file_mode(path: str) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def _get_to_file(args: argparse.Namespace, stores: Stores, output: str) -> None:
    """Write the image to a temporary file beside ``output``; rename it on success.

    The temporary file is created before the backend is asked, so an unusable
    output path fails fast; on any failure it is removed and ``output`` is
    left as it was.
    """
    target = os.path.abspath(output)
    if os.path.isdir(target):
        raise UsageError(f"cannot write {output}: it is a directory")
    with contextlib.suppress(OSError):
        if not stat.S_ISREG(os.stat(target).st_mode):
            # /dev/null, /dev/stdout, a FIFO...: write into it; renaming a
            # temporary file over it would replace the device node itself
            _get_to_special(args, stores, output)
            return
    directory, name = os.path.split(target)
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".imgstore-part", dir=directory)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from None

    def write(chunk: bytes) -> None:
        try:
            write_all(fd, chunk)
        except OSError as exc:
            raise OutputError(f"cannot write {output}: {exc.strerror or exc}") from exc

    done = False
    try:
        count = _stream_image(args, stores, write)
        try:
            os.fsync(fd)
            os.fchmod(fd, _file_mode(target))
            os.close(fd)
            fd = -1
            os.replace(temp, target)
        except OSError as exc:
            raise OutputError(f"cannot write {output}: {exc.strerror or exc}") from exc
        done = True
    finally:
        if fd >= 0:
            os.close(fd)
        if not done:
            with contextlib.suppress(OSError):
                os.unlink(temp)
    if args.json:
        _emit_json({"location": redact_uri(args.location), "output": output, "size": count})


def _get_to_special(args: argparse.Namespace, stores: Stores, output: str) -> None:
    """Stream the image into an existing file that is not a regular file."""
    try:
        fd = os.open(output, os.O_WRONLY | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from None
    try:
        if os.isatty(fd):
            raise UsageError("refusing to write image data to a terminal")

        def write(chunk: bytes) -> None:
            try:
                write_all(fd, chunk)
            except BrokenPipeError:
                raise OutputClosed from None
            except OSError as exc:
                raise OutputError(f"cannot write {output}: {exc.strerror or exc}") from exc

        count = _stream_image(args, stores, write)
    finally:
        os.close(fd)
    if args.json:
        _emit_json({"location": redact_uri(args.location), "output": output, "size": count})


def cmd_size(args: argparse.Namespace, stores: Stores) -> None:
    """``imgstore size``."""
    size = stores.size(args.location)
    if args.json:
        _emit_json({"location": redact_uri(args.location), "size": size})
    else:
        _out(f"{size}\n")


def cmd_delete(args: argparse.Namespace, stores: Stores) -> None:
    """``imgstore delete``."""
    stores.delete(args.location)
    if args.json:
        _emit_json({"location": redact_uri(args.location), "deleted": True})
    elif not args.quiet:
        _out(f"deleted {redact_uri(args.location)}\n")


def cmd_stores(args: argparse.Namespace, stores: Stores) -> None:
    """``imgstore stores``."""
    infos = stores.describe()
    rows = [
        {
            "name": info.name,
            "driver": info.driver,
            "default": info.default,
            "capabilities": info.capabilities.names(),
            "schemes": list(info.schemes),
            "unusable": info.unusable,
        }
        for info in infos
    ]
    if args.json:
        _emit_json(rows)
    else:
        _stores_table(infos)
    unusable = [info.name for info in infos if info.unusable]
    if unusable:  # listed above; the exit code tells a script (2, bad configuration)
        raise BadConfiguration(f"unusable backends: {', '.join(unusable)}")


def _stores_table(infos: list[BackendInfo]) -> None:
    table = [("", "NAME", "DRIVER", "SCHEMES", "CAPABILITIES")]
    table += [
        (
            "*" if info.default else "",
            info.name,
            info.driver,
            ",".join(info.schemes),
            "UNUSABLE" if info.unusable else ",".join(info.capabilities.names()),
        )
        for info in infos
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    reasons = [f"{info.name}: unusable: {info.unusable}\n" for info in infos if info.unusable]
    _out("\n".join(lines) + "\n(* = default backend)\n" + "".join(reasons))


def cmd_cleanup(args: argparse.Namespace, stores: Stores) -> None:
    """``imgstore cleanup``."""
    outcomes = stores.cleanup(args.backend, older_than=args.older_than, remove=not args.dry_run)
    if args.json:
        _emit_json([o.as_dict() for o in outcomes])
    elif not args.quiet or any(o.outcome == "failed" for o in outcomes):
        lines = []
        for o in outcomes:
            item = o.leftover
            age = "?" if item.age is None else f"{item.age:.0f}s"
            size = "" if item.size is None else f" {item.size} bytes"
            why = f": {o.error}" if o.error else ""
            lines.append(
                f"{o.outcome:8} {item.backend}: {item.kind} {item.name} (age {age}{size}){why}"
            )
        lines.append(f"{len(outcomes)} leftover(s)" + (" found (dry run)" if args.dry_run else ""))
        _out("\n".join(lines) + "\n")
    failed = sum(o.outcome == "failed" for o in outcomes)
    if failed:
        raise BackendError(f"{failed} of {len(outcomes)} leftovers could not be removed")


def cmd_copy(args: argparse.Namespace, stores: Stores) -> None:
    """``imgstore copy``."""
    with _progress(args, "copy", None) as bar:
        result = stores.copy(
            args.location,
            args.to,
            verify=args.verify,
            image_id=args.id,
            hash_algo=args.hash_algo,
            progress=bar,
        )
    _emit_result(args, result)


def _read_input(args: argparse.Namespace) -> list[Any]:
    from imgstore.migration import parse_images, read_images

    if args.input == "-":
        return parse_images(sys.stdin.read(), args.format)
    try:
        return read_images(args.input, args.format)
    except OSError as exc:
        raise UsageError(f"cannot read {args.input}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"cannot read {args.input}: not UTF-8 text") from None


def _write_report(path: str, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file renamed on success."""
    target = os.path.abspath(path)
    directory, name = os.path.split(target)
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _run_many(args: argparse.Namespace, label: str, run: Callable[[Any], Any]) -> Any:
    """Run ``run(progress)`` under a count bar (serving metrics with ``--metrics-port``);
    write and print the report."""
    stop_metrics = None
    if args.metrics_port is not None:
        from imgstore.metrics_server import serve

        stop_metrics = serve(args.metrics_port, args.metrics_host)
    bar = count_bar(sys.stderr, label, enabled=not args.quiet)
    try:
        report = run(bar)
    except BaseException:
        if bar is not None:
            bar.finish(ok=False)
        raise
    finally:
        if stop_metrics is not None:
            stop_metrics()
    if bar is not None:
        bar.finish()
    data = report.as_dict()
    if args.report:
        _write_report(args.report, data)
    if args.json:
        _emit_json(data)
    elif not args.quiet:
        lines = [
            f"{label}: {len(report.images)} images, {data['summary']['bytes']} bytes read "
            f"in {report.seconds:.1f} s"
        ]
        lines += [f"  {outcome}: {count}" for outcome, count in report.counts.items()]
        lines += [f"  {i.image_id}: {i.outcome}: {i.error}" for i in report.failed[:20]]
        if len(report.failed) > 20:
            lines.append(f"  ... and {len(report.failed) - 20} more (see the report)")
        if report.inspected:
            lines.append(f"  inspected: {report.inspected}, unsafe: {len(report.unsafe)}")
            for i in report.unsafe[:20]:
                failed = i.inspection["safety"]["failed_checks"] if i.inspection else {}
                lines.append(f"  {i.image_id}: unsafe: {', '.join(failed)}")
        _out("\n".join(lines) + "\n")
    return report


def cmd_migrate(args: argparse.Namespace, stores: Stores) -> None:
    """``imgstore migrate``."""
    from imgstore.migration import migrate

    records = _read_input(args)
    journal = args.journal
    if args.broker:
        _migrate_elsewhere(args, stores, records)
        return
    if journal is None:
        if args.input == "-":
            raise UsageError("--journal FILE is needed when the input is standard input")
        journal = args.input + ".journal"
    report = _run_many(
        args,
        "migrate",
        lambda bar: migrate(
            stores,
            records,
            args.to,
            concurrency=args.concurrency,
            journal=journal,
            delete_source=args.delete_source,
            dry_run=args.dry_run,
            retry_failed=args.retry_failed,
            hash_algo=args.hash_algo,
            progress=bar,
            inspect=args.inspect,
        ),
    )
    if report.failed:
        raise SomeFailed(
            f"{len(report.failed)} of {len(report.images)} images failed"
            + (f"; see {args.report}" if args.report else ""),
            EXIT_FAILURE,
        )


def _migrate_elsewhere(args: argparse.Namespace, stores: Stores, records: list[Any]) -> None:
    """``migrate --broker``: enqueue for the workers; wait and report unless --no-wait."""
    from imgstore import distributed

    if args.dry_run:
        raise UsageError("--dry-run runs here: leave out --broker")
    stores.driver(args.to)  # UnknownBackend now, not in every worker
    options = distributed.Options(
        args.to, args.delete_source, args.retry_failed, args.hash_algo, args.inspect
    )
    report = _elsewhere(args, records, options)
    if report is not None and report.failed:
        raise SomeFailed(
            f"{len(report.failed)} of {len(report.images)} images failed"
            + (f"; see {args.report}" if args.report else ""),
            EXIT_FAILURE,
        )


def _elsewhere(args: argparse.Namespace, records: list[Any], options: Any) -> Any:
    """Enqueue ``records`` for the workers of ``--journal``; the report once they are done
    (None with --no-wait)."""
    from imgstore import distributed
    from imgstore.journal import Journal
    from imgstore.journal_db import is_url

    if not args.journal or not is_url(args.journal):
        raise UsageError("--broker needs --journal URL: a database every worker reaches")
    label = args.command
    started = time.monotonic()
    since = time.time()
    with Journal(args.journal, options.target) as journal:
        sent = distributed.submit(args.broker, journal, records, options)
        _note(f"{label}: {sent} of {len(records)} images enqueued on {journal.path}")
        if args.no_wait:
            return None
        return _run_many(args, label, lambda bar: _waited(journal, records, since, bar, started))


def _waited(journal: Any, records: list[Any], since: float, bar: Any, started: float) -> Any:
    from imgstore import distributed
    from imgstore.migration import Status

    def show(done: int, total: int, failed: int) -> None:
        if bar is not None:
            bar(Status(done, total, failed, 0, None, time.monotonic() - started))

    distributed.wait(journal, records, since, show)
    return distributed.report(journal, records, time.monotonic() - started)


def cmd_worker(args: argparse.Namespace, stores: Stores) -> None:
    """``imgstore worker``."""
    from imgstore import distributed

    stop_metrics = None
    if args.metrics_port is not None:
        from imgstore.metrics_server import serve

        stop_metrics = serve(args.metrics_port, args.metrics_host)
    try:
        distributed.run_worker(
            args.broker,
            args.journal,
            stores,
            args.concurrency,
            "DEBUG" if args.debug else "INFO",
            lease_seconds=args.lease_seconds,
        )
    finally:
        if stop_metrics is not None:
            stop_metrics()


def cmd_status(args: argparse.Namespace, stores: Stores) -> None:
    """``imgstore status`` (``imgstore migrate status``)."""
    from imgstore import distributed
    from imgstore.journal import Journal

    with Journal.existing(args.journal) as journal:
        data = distributed.status(journal)
    if args.json:
        _emit_json(data)
        return
    lines = [f"journal {data['journal']} -> {data['target']}: {data['images']} images"]
    lines += [f"  {state}: {n}" for state, n in data["states"].items()]
    lines.append(f"  in flight: {data['in_flight']}")
    for host, counts in data["hosts"].items():
        lines.append(
            f"  {host}: {counts['done']} done, {counts['failed']} failed, "
            f"{counts['bytes']} bytes copied"
        )
    if data["bytes_per_second"]:
        lines.append(f"  throughput: {data['bytes_per_second'] / 1e6:.1f} MB/s")
    _out("\n".join(lines) + "\n")


def cmd_verify(args: argparse.Namespace, stores: Stores) -> None:
    """``imgstore verify``."""
    from imgstore.migration import MISMATCH

    records = _read_input(args)
    if args.broker:
        from imgstore import distributed

        report = _elsewhere(
            args,
            records,
            distributed.Options(distributed.VERIFY, hash_algo=args.hash_algo, inspect=args.inspect),
        )
        if report is None:
            return
    elif args.journal:
        raise UsageError("verify keeps a journal only with --broker")
    else:
        report = _verified_here(args, stores, records)
    if report.failed:
        mismatched = sum(1 for i in report.failed if i.outcome == MISMATCH)
        raise SomeFailed(
            f"{len(report.failed)} of {len(report.images)} images failed verification "
            f"({mismatched} mismatched, {len(report.failed) - mismatched} unreadable)"
            + (f"; see {args.report}" if args.report else ""),
            EXIT_INTEGRITY if mismatched else EXIT_FAILURE,
        )


def _verified_here(args: argparse.Namespace, stores: Stores, records: list[Any]) -> Any:
    from imgstore.migration import verify_images

    return _run_many(
        args,
        "verify",
        lambda bar: verify_images(
            stores,
            records,
            concurrency=args.concurrency,
            hash_algo=args.hash_algo,
            progress=bar,
            inspect=args.inspect,
        ),
    )


def cmd_inspect(args: argparse.Namespace, stores: Stores) -> None:
    """``imgstore inspect``: one image, read from its start only as far as the inspector
    needs (the first chunk for most images; to the end for a vmdk with a footer)."""
    from imgstore.inspection import InspectionPolicy, StreamInspector

    inspector = StreamInspector(InspectionPolicy("report"), None, "the image")
    if os.path.exists(args.image):
        shown = args.image
        with _open_input(args.image) as (source, size):
            while not inspector.decided and (chunk := source.read(1 << 20)):
                inspector.update(chunk)
    else:
        shown = redact_uri(args.image)
        with stores.get(args.image) as reader:
            size = reader.size
            for chunk in reader:
                inspector.update(chunk)
                if inspector.decided:
                    break
    found = inspector.result(size)
    data = {"image": shown, "size": size, "read": inspector.fed, **found.as_dict()}
    if args.json:
        _emit_json(data)
    elif not args.quiet:
        _out(
            f"{'image:':<14}{shown}\n{'size:':<14}{size}\n"
            f"{'disk_format:':<14}{found.disk_format or ' or '.join(found.formats)}\n"
            f"{'virtual_size:':<14}{'' if found.virtual_size is None else found.virtual_size}\n"
            f"{'safety:':<14}{found.safety}\n"
        )
    if not found.safety.passed:
        raise SomeFailed(f"{shown} failed the disk-format safety checks", EXIT_INTEGRITY)


# -- main ------------------------------------------------------------------------


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.levelname_lower = record.levelname.lower()
        return super().format(record)


def setup_logging(debug: bool) -> None:
    """Library logs to standard error: WARNING and up, or everything with ``debug``."""
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(prog)s: %(levelname_lower)s: " + ("%(name)s: " if debug else "") + "%(message)s"
    handler.setFormatter(_Formatter(fmt.replace("%(prog)s", PROG)))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_imgstore_cli", False)]:
        root.removeHandler(old)
    handler._imgstore_cli = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    # stevedore warns "Could not load X" for a driver that is not installed; the
    # error line already says so, with the installed drivers.
    logging.getLogger("stevedore").setLevel(logging.NOTSET if debug else logging.ERROR)


def _note(message: str) -> None:
    """A line of information on standard error."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{PROG}: {message}\n")
        sys.stderr.flush()


def _error(message: str) -> None:
    line = " ".join(str(message).split()) or "failed"
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{PROG}: error: {line}\n")
        sys.stderr.flush()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (UsageError, OutputError, ImgstoreError, SomeFailed)):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return f"{type(exc).__name__}: {exc}"


def _silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null so the exit-time flush cannot fail again."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _prints_to_stdout(args: argparse.Namespace) -> bool:
    """Whether the command writes anything to standard output."""
    if args.json:
        return True
    if args.command in ("delete", "cleanup"):
        return not args.quiet  # cleanup -q prints only failures
    if args.command == "get":
        return args.output in (None, "-")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    setup_logging(args.debug)
    try:
        _passwords_from_environment(args)
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    if sys.stdout is None and _prints_to_stdout(args):
        # standard output was closed before we started (>&-): say so before
        # doing anything, rather than adding an image whose location is lost
        _error("output closed")
        return EXIT_FAILURE
    try:
        # `stores` reports a backend that cannot be configured; other commands stop
        with open_stores(config_files(args), keep_unusable=args.func is cmd_stores) as stores:
            args.func(args, stores)
        return EXIT_OK
    except OutputClosed:
        if args.debug:
            traceback.print_exc()
        _silence_stdout()
        _error("output closed")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        _error(_describe(exc))
        return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
