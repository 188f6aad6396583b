"""Move many images between backends, resumably and verified; re-verify stored images.

:func:`migrate` copies every listed image into a target backend with
:meth:`Stores.copy` (which hashes the source as it streams and reads the copy
back), checks what was read against the size and hashes the image service
recorded, keeps its progress in a :class:`~imgstore.journal.Journal` so that
a killed run resumes where it stopped, and deletes sources only on request and
only once their copy is verified. :func:`verify_images` re-reads stored
images and checks them against the recorded hashes.

The input is what an image service's database holds: :func:`read_images`
parses JSON lines or CSV with ``image_id``, ``location`` and, where known,
``size``, ``checksum`` (md5), ``os_hash_algo`` and ``os_hash_value``.

Memory: ``concurrency`` copies run at once, each holding at most the
pipeline's buffers (a few chunks, at most 32 MiB), so the total stays within
``concurrency`` times that whatever the number or size of the images.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from imgstore import journal as journal_mod
from imgstore.api import DEFAULT_HASH_ALGO, Stores, validate_image_id
from imgstore.backoff import poll
from imgstore.exceptions import (
    ChecksumMismatch,
    Duplicate,
    ImgstoreError,
    IntegrityError,
    InUse,
    InvalidArgument,
    NotFound,
    SizeMismatch,
)
from imgstore.inspection import InspectionPolicy, StreamInspector
from imgstore.journal import Journal
from imgstore.journal_db import is_url
from imgstore.location import redact_uri, split_scheme
from imgstore.pipeline import new_hash

LOG = logging.getLogger(__name__)

FIELDS = ("image_id", "location", "size", "checksum", "os_hash_algo", "os_hash_value")
"""The input columns; ``image_id`` and ``location`` are required."""

# outcomes of migrate()
MIGRATED = "migrated"
"""Copied in this run and verified."""
ALREADY_MIGRATED = "already_migrated"
"""Done by an earlier run (the journal says so); not copied again."""
PRESENT = "present"
"""The target already held exactly these bytes; nothing copied."""
FAILED = "failed"
WOULD_COPY = "would_copy"
"""Dry run: would be copied."""

# outcomes of verify_images()
OK = "ok"
MISMATCH = "mismatch"
UNREADABLE = "unreadable"

DISCARD_WAIT = 60.0
"""Seconds a resumed run waits for a killed run's hold on a half-written copy to lapse."""

_HEX = frozenset("0123456789abcdefABCDEF")


@dataclasses.dataclass(frozen=True, repr=False)
class ImageRecord:
    """One input line: an image as the image service recorded it."""

    image_id: str
    location: str
    """As given; may carry credentials, so show :attr:`shown` instead."""
    size: int | None = None
    checksum: str | None = None
    os_hash_algo: str | None = None
    os_hash_value: str | None = None
    line: int = 0

    @property
    def shown(self) -> str:
        """The location with any credentials replaced by ``***``."""
        return redact_uri(self.location)

    def scrub(self, text: str) -> str:
        """``text`` without this record's raw location or the credentials in it."""
        shown = self.shown
        if shown == self.location:
            return text
        text = text.replace(self.location, shown)
        userinfo = self.location[self.location.find("://") + 3 : self.location.rfind("@")]
        for piece in sorted({userinfo, *userinfo.split(":", 1)}, key=len, reverse=True):
            if len(piece) >= 3:
                text = text.replace(piece, "***")
        return text

    def __repr__(self) -> str:
        return f"<ImageRecord {self.image_id} at {self.shown}>"


# -- input -------------------------------------------------------------------------


def _field(raw: dict[str, Any], name: str) -> Any:
    value = raw.get(name)
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _hexdigest(value: Any, what: str, length: int | None, where: str) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value
        or not set(value) <= _HEX
        or (length is not None and len(value) != length)
    ):
        need = f"{length} hex digits" if length else "hex digits"
        raise InvalidArgument(f"{where}: {what} must be {need}, not {str(value)[:80]!r}")
    return value.lower()


def make_record(raw: dict[str, Any], line: int = 0) -> ImageRecord:
    """Validate one input row (a mapping of :data:`FIELDS`) into an :class:`ImageRecord`."""
    where = f"line {line}" if line else "image"
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where}: expected an object with image_id and location")
    image_id = _field(raw, "image_id")
    if image_id is None:
        raise InvalidArgument(f"{where}: image_id is missing")
    try:
        validate_image_id(image_id)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{where}: {exc}") from None
    location = _field(raw, "location")
    if location is None:
        raise InvalidArgument(f"{where}: location of image {image_id} is missing")
    try:
        split_scheme(location)
    except ImgstoreError as exc:
        raise InvalidArgument(f"{where}: {exc}") from None
    size = _field(raw, "size")
    if size is not None:
        if isinstance(size, str) and size.isdigit():
            size = int(size)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgument(f"{where}: size must be a whole number >= 0, not {size!r}")
    algo = _field(raw, "os_hash_algo")
    value = _hexdigest(_field(raw, "os_hash_value"), "os_hash_value", None, where)
    if algo is not None:
        try:
            digest_len = len(new_hash(algo).hexdigest())
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where}: {exc}") from None
        algo = algo.lower()
        if value is not None and len(value) != digest_len:
            raise InvalidArgument(
                f"{where}: os_hash_value has {len(value)} hex digits, {algo} gives {digest_len}"
            )
    elif value is not None:
        raise InvalidArgument(f"{where}: os_hash_value without os_hash_algo")
    return ImageRecord(
        image_id=image_id,
        location=location,
        size=size,
        checksum=_hexdigest(_field(raw, "checksum"), "checksum (md5)", 32, where),
        os_hash_algo=algo,
        os_hash_value=value,
        line=line,
    )


def parse_images(text: str | Iterable[str], fmt: str = "auto") -> list[ImageRecord]:
    """Parse JSON lines (``fmt="jsonl"``) or CSV with a header (``"csv"``).

    ``"auto"`` picks JSON lines when the first non-blank character is ``{``.
    Unknown keys and columns are ignored. Any bad row raises
    :class:`InvalidArgument` naming its line (locations redacted), and so does
    an image id listed twice.
    """
    content = text if isinstance(text, str) else "".join(text)
    if fmt == "auto":
        fmt = "jsonl" if content.lstrip().startswith("{") else "csv"
    if fmt == "jsonl":
        records = _parse_jsonl(content)
    elif fmt == "csv":
        records = _parse_csv(content)
    else:
        raise InvalidArgument(f"unknown input format {fmt!r}; use auto, jsonl or csv")
    seen: dict[str, int] = {}
    for rec in records:
        if rec.image_id in seen:
            raise InvalidArgument(
                f"line {rec.line}: image {rec.image_id} is listed twice (first on line "
                f"{seen[rec.image_id]})"
            )
        seen[rec.image_id] = rec.line
    return records


def _parse_jsonl(content: str) -> list[ImageRecord]:
    records = []
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise InvalidArgument(f"line {number}: not a JSON object ({exc.args[0]})") from None
        records.append(make_record(raw, number))
    return records


def _parse_csv(content: str) -> list[ImageRecord]:
    reader = csv.DictReader(io.StringIO(content))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [f for f in ("image_id", "location") if f not in header]
    if missing:
        raise InvalidArgument(
            f"line 1: the CSV header needs the columns image_id and location "
            f"(missing: {', '.join(missing)}); optional: size, checksum, os_hash_algo, "
            "os_hash_value"
        )
    reader.fieldnames = header
    records = []
    try:
        for row in reader:
            if not any((v or "").strip() for k, v in row.items() if k is not None):
                continue
            if None in row:
                raise InvalidArgument(f"line {reader.line_num}: more cells than header columns")
            records.append(make_record(row, reader.line_num))
    except csv.Error as exc:
        raise InvalidArgument(f"line {reader.line_num}: malformed CSV: {exc}") from None
    return records


def read_images(source: str | os.PathLike[str] | IO[str], fmt: str = "auto") -> list[ImageRecord]:
    """:func:`parse_images` on a file path or an open text stream.

    With ``fmt="auto"`` a ``.csv`` file is CSV and a ``.jsonl``/``.json`` file JSON lines.
    """
    if not isinstance(source, (str, os.PathLike)):
        return parse_images(source.read(), fmt)
    path = os.fspath(source)
    if fmt == "auto":
        ext = os.path.splitext(path)[1].lower()
        fmt = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}.get(
            ext, "auto"
        )
    with open(path, encoding="utf-8") as fh:
        return parse_images(fh.read(), fmt)


# -- reports -------------------------------------------------------------------------


@dataclasses.dataclass
class ImageOutcome:
    """What happened to one image; no secrets in any field."""

    image_id: str
    outcome: str
    source: str
    """The source location, redacted."""
    location: str | None = None
    """Where the image is now (the target copy), for the image service's records."""
    size: int | None = None
    checksum: str | None = None
    os_hash_algo: str | None = None
    os_hash_value: str | None = None
    attempts: int = 0
    """Copies of this image started, over all runs of this journal."""
    source_deleted: bool = False
    error_type: str | None = None
    error: str | None = None
    checked: list[str] = dataclasses.field(default_factory=list)
    """What was compared: ``size``, ``os_hash_value``, ``checksum``, ``target`` (read back)."""
    seconds: float = 0.0
    inspection: dict[str, Any] | None = None
    """What the image is (``disk_format``, ``virtual_size``, ``safety``): the copy's,
    when the target backend inspects (migrate), or the stored image's (verify with
    ``inspect``); None when not inspected."""

    @classmethod
    def of(cls, record: ImageRecord, outcome: str, **more: Any) -> ImageOutcome:
        """An outcome for ``record``, with what its input said (source, size, hashes)."""
        fields: dict[str, Any] = {
            "size": record.size,
            "checksum": record.checksum,
            "os_hash_algo": record.os_hash_algo,
            "os_hash_value": record.os_hash_value,
        }
        return cls(record.image_id, outcome, record.shown, **{**fields, **more})

    @property
    def unsafe(self) -> bool:
        """Whether the image was inspected and failed a safety check."""
        return self.inspection is not None and self.inspection["safety"]["result"] != "passed"


@dataclasses.dataclass
class Report:
    """The outcome of a :func:`migrate` or :func:`verify_images` run."""

    operation: str
    images: list[ImageOutcome]
    seconds: float
    bytes: int
    """Bytes read from sources (migrate) or from stored images (verify) in this run."""
    target: str | None = None
    dry_run: bool = False
    delete_source: bool = False
    concurrency: int = 1
    journal: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        """How many images had each outcome."""
        out: dict[str, int] = {}
        for image in self.images:
            out[image.outcome] = out.get(image.outcome, 0) + 1
        return dict(sorted(out.items()))

    @property
    def failed(self) -> list[ImageOutcome]:
        """The images that failed (migrate) or did not verify (verify)."""
        return [i for i in self.images if i.outcome in (FAILED, MISMATCH, UNREADABLE)]

    @property
    def ok(self) -> bool:
        """Whether every image succeeded."""
        return not self.failed

    @property
    def unsafe(self) -> list[ImageOutcome]:
        """The images inspected and found unsafe (a failed safety check)."""
        return [i for i in self.images if i.unsafe]

    @property
    def inspected(self) -> int:
        """How many images were inspected."""
        return sum(1 for i in self.images if i.inspection is not None)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values: a summary and one object per image."""
        return {
            "operation": self.operation,
            "target": self.target,
            "dry_run": self.dry_run,
            "delete_source": self.delete_source,
            "concurrency": self.concurrency,
            "journal": self.journal,
            "summary": {
                "images": len(self.images),
                "outcomes": self.counts,
                "failed": len(self.failed),
                "bytes": self.bytes,
                "seconds": round(self.seconds, 3),
                "inspected": self.inspected,
                "unsafe": len(self.unsafe),
            },
            "images": [dataclasses.asdict(i) for i in self.images],
        }


MigrationReport = Report


@dataclasses.dataclass(frozen=True)
class Status:
    """A progress snapshot handed to the ``progress`` callback."""

    images_done: int
    images_total: int
    images_failed: int
    bytes_done: int
    bytes_total: int | None
    """None when some image's size is unknown."""
    elapsed: float


ProgressCallback = Callable[[Status], None]


class _Tracker:
    """Counts images and bytes across worker threads; calls ``progress`` under a lock."""

    def __init__(self, records: Sequence[ImageRecord], progress: ProgressCallback | None) -> None:
        self._lock = threading.Lock()
        self._progress = progress
        self._start = time.monotonic()
        self.total = len(records)
        self.done = 0
        self.failed = 0
        self.bytes = 0
        sizes = [r.size for r in records]
        self.bytes_total: int | None = (
            None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)
        )
        self._seen: dict[str, int] = {}

    def callback(self, image_id: str) -> Callable[[int, int | None], None]:
        def update(done: int, _total: int | None) -> None:
            with self._lock:
                before = self._seen.get(image_id, 0)
                if done > before:
                    self.bytes += done - before
                    self._seen[image_id] = done
                self._emit()

        return update

    def finish(self, record: ImageRecord, failed: bool) -> None:
        with self._lock:
            self.done += 1
            self.failed += int(failed)
            if record.size is not None:  # the bar ends at its total whatever happened
                self.bytes += max(record.size - self._seen.get(record.image_id, 0), 0)
                self._seen[record.image_id] = record.size
            self._emit()

    def _emit(self) -> None:
        if self._progress is not None:
            self._progress(
                Status(
                    self.done,
                    self.total,
                    self.failed,
                    self.bytes,
                    self.bytes_total,
                    time.monotonic() - self._start,
                )
            )


def _error_fields(exc: BaseException, record: ImageRecord) -> tuple[str, str]:
    if isinstance(exc, _Recorded):
        return exc.name, exc.msg
    message = str(exc) if isinstance(exc, ImgstoreError) else f"{type(exc).__name__}: {exc}"
    return type(exc).__name__, record.scrub(message)


# -- migrate ---------------------------------------------------------------------------


class _Migration:
    def __init__(
        self,
        stores: Stores,
        target: str,
        journal: Journal,
        tracker: _Tracker,
        delete_source: bool,
        retry_failed: bool,
        hash_algo: str,
        stop: threading.Event,
        inspect: bool = False,
    ) -> None:
        self.stores = stores
        self.inspect = inspect
        self.target = target
        self.journal = journal
        self.tracker = tracker
        self.delete_source = delete_source
        self.retry_failed = retry_failed
        self.hash_algo = hash_algo
        self.stop = stop

    def run(self, record: ImageRecord) -> ImageOutcome:
        started = time.monotonic()
        outcome = ImageOutcome.of(record, FAILED)
        try:
            if self.stop.is_set():
                raise InterruptedError("the migration was stopped before this image started")
            self._run(record, outcome)
        except Exception as exc:
            outcome.outcome = FAILED
            outcome.error_type, outcome.error = _error_fields(exc, record)
            LOG.warning("image %s: %s", record.image_id, outcome.error)
            entry = self.journal.get(record.image_id)
            if entry is not None and entry.state not in (journal_mod.FAILED, journal_mod.DONE):
                if entry.state == journal_mod.VERIFIED or getattr(exc, "keep_copying", False):
                    # verified: only deleting the source failed; copying: a copy that could not
                    # be removed stays ours. Either way the next run takes it from there.
                    self.journal.note(record.image_id, outcome.error_type, outcome.error)
                else:
                    self.journal.failed(record.image_id, outcome.error_type, outcome.error)
        entry = self.journal.get(record.image_id)
        if entry is not None:
            outcome.attempts = entry.attempts
            outcome.source_deleted = entry.source_deleted
            if outcome.location is None and entry.state in (journal_mod.DONE, journal_mod.VERIFIED):
                outcome.location = entry.target_location
        outcome.seconds = round(time.monotonic() - started, 3)
        if outcome.outcome in (MIGRATED, PRESENT, FAILED):
            # what a report of this image says, wherever and however often it is read
            self.journal.record_outcome(record.image_id, json.dumps(dataclasses.asdict(outcome)))
        self.tracker.finish(record, outcome.outcome == FAILED)
        return outcome

    def _run(self, record: ImageRecord, outcome: ImageOutcome) -> None:
        entry = self.journal.add(record.image_id, record.shown)
        if entry.source != record.shown:
            raise InvalidArgument(
                f"the journal has image {record.image_id} from {entry.source}, "
                f"not from {record.shown}; use another journal"
            )
        if entry.state == journal_mod.DONE:
            outcome.outcome = ALREADY_MIGRATED
            outcome.location = entry.target_location
            outcome.size = entry.size
            return
        if entry.state == journal_mod.FAILED:
            if not self.retry_failed:
                outcome.error_type = entry.error_type
                outcome.error = (
                    f"failed in an earlier run (retry with --retry-failed): {entry.error}"
                )
                outcome.location = None
                raise _Recorded(entry.error_type or "Error", outcome.error)
            self.journal.retry(record.image_id)
            entry = self.journal.get(record.image_id) or entry
        if entry.state == journal_mod.COPYING:
            if self._resume_copying(record, entry, outcome):
                self._finish(record, outcome)
                return
        elif entry.state == journal_mod.PENDING:
            if self._already_there(record, outcome):
                outcome.outcome = PRESENT
                return
        if entry.state == journal_mod.VERIFIED:  # killed after the check: nothing to copy
            outcome.location = entry.target_location
        else:
            self._copy(record, outcome)
        self._finish(record, outcome)

    def _algo(self, record: ImageRecord) -> str:
        return record.os_hash_algo or self.hash_algo

    def _check_target(self, record: ImageRecord, location: str, outcome: ImageOutcome) -> bool:
        """Whether ``location`` holds exactly the recorded bytes (needs a recorded hash)."""
        if record.os_hash_value is None and record.checksum is None:
            return False
        try:
            self.stores.verify(
                location,
                self._algo(record),
                multihash=record.os_hash_value,
                checksum=record.checksum,
                size=record.size,
                backend=self.target,
            )
        except IntegrityError:
            return False
        outcome.checked = [*_checked(record), "target"]
        return True

    def _already_there(self, record: ImageRecord, outcome: ImageOutcome) -> bool:
        """Before any write: does the target hold this id already (not written by us)?"""
        location = self.stores.location_for(record.image_id, self.target)
        if location is None:
            return False
        try:
            size = self.stores.size(location, backend=self.target)
        except NotFound:
            return False
        if self._check_target(record, location, outcome):
            LOG.info("image %s: the target already holds the same bytes", record.image_id)
            self.journal.present(record.image_id, location, size, record.os_hash_algo)
            outcome.location = location
            outcome.size = size
            return True
        raise Duplicate(
            f"backend {self.target!r} already holds an image {record.image_id} "
            + (
                "whose bytes differ from the recorded hashes"
                if record.os_hash_value or record.checksum
                else "and without recorded hashes it cannot be compared"
            )
            + "; it was left as it was"
        )

    def _resume_copying(
        self, record: ImageRecord, entry: journal_mod.Entry, outcome: ImageOutcome
    ) -> bool:
        """A run stopped during this copy: keep a finished copy that checks, else remove it."""
        location = entry.target_location or self.stores.location_for(record.image_id, self.target)
        if location is not None:
            try:
                size = self.stores.size(location, backend=self.target)
            except NotFound:
                size = None
            if size is not None and self._check_target(record, location, outcome):
                LOG.info("image %s: the interrupted copy is complete and verified", record.image_id)
                self.journal.verified(
                    record.image_id,
                    location,
                    size,
                    record.checksum,
                    self._algo(record),
                    record.os_hash_value or "",
                )
                outcome.location = location
                outcome.size = size
                return True
        removed = self._discard(record)
        if removed:
            LOG.info("image %s: removed what an interrupted copy left", record.image_id)
        return False

    def _discard(self, record: ImageRecord) -> bool:
        """Remove the target's copy of ``record``, waiting while the backend says it is in use:
        a client's hold on an image (an RBD watch, also a killed one's) lapses within ~30 s."""
        deadline = time.monotonic() + DISCARD_WAIT

        def discarded() -> bool | None:
            try:
                return bool(self.stores.discard(record.image_id, self.target))
            except InUse:
                if time.monotonic() > deadline:
                    raise
                return None  # still held: wait and try again

        return poll(discarded, first=1.0, cap=4.0)

    def _copy(self, record: ImageRecord, outcome: ImageOutcome) -> None:
        source_size = self.stores.size(record.location)
        if record.size is not None and source_size != record.size:
            raise SizeMismatch(
                f"source {record.shown} has {source_size} bytes, the record says {record.size}"
            )
        location = self.stores.location_for(record.image_id, self.target)
        self.journal.start_copy(record.image_id, location)  # on disk before any byte moves
        algo = self._algo(record)
        result = self.stores.copy(
            record.location,
            self.target,
            verify=True,  # reads the copy back: the target holds what was read
            image_id=record.image_id,
            hash_algo=algo,
            progress=self.tracker.callback(record.image_id),
            inspect=self.inspect,
        )
        try:
            self._compare(record, result.size, result.checksum, result.multihash)
            if record.checksum is not None and result.checksum is None:  # md5 off (FIPS)
                self.stores.verify(
                    result.location, algo, checksum=record.checksum, backend=self.target
                )
        except IntegrityError as exc:
            LOG.warning(
                "image %s: the source does not match its record; removing the copy",
                record.image_id,
            )
            try:  # the journal says this copy is ours: remove all of it
                self._discard(record)
            except ImgstoreError as cleanup:
                failure = type(exc)(
                    f"{exc}; removing the copy failed too ({cleanup}); the next run removes it"
                )
                failure.keep_copying = True  # type: ignore[attr-defined]
                raise failure from exc
            raise
        self.journal.verified(
            record.image_id, result.location, result.size, result.checksum, algo, result.multihash
        )
        outcome.location = result.location
        outcome.size = result.size
        outcome.checksum = result.checksum
        outcome.os_hash_algo = algo
        outcome.os_hash_value = result.multihash
        outcome.checked = [*_checked(record), "target"]
        if result.safety is not None:
            outcome.inspection = {
                "disk_format": result.disk_format,
                "virtual_size": result.virtual_size,
                "safety": result.safety.as_dict(),
            }

    def _compare(
        self, record: ImageRecord, size: int, checksum: str | None, multihash: str
    ) -> None:
        if record.size is not None and size != record.size:
            raise SizeMismatch(
                f"read {size} bytes from {record.shown}, the record says {record.size}"
            )
        if record.os_hash_value is not None and multihash != record.os_hash_value:
            raise ChecksumMismatch(
                f"{record.shown}: {self._algo(record)} {multihash} differs from the recorded "
                f"{record.os_hash_value}"
            )
        if record.checksum is not None and checksum is not None and checksum != record.checksum:
            raise ChecksumMismatch(
                f"{record.shown}: md5 {checksum} differs from the recorded {record.checksum}"
            )

    def _finish(self, record: ImageRecord, outcome: ImageOutcome) -> None:
        deleted = False
        if self.delete_source:
            try:
                self.stores.delete(record.location)
                LOG.info("image %s: deleted the source %s", record.image_id, record.shown)
            except NotFound:
                LOG.info("image %s: the source is already gone", record.image_id)
            deleted = True
        self.journal.done(record.image_id, deleted)
        outcome.outcome = MIGRATED


class _Recorded(ImgstoreError):
    """A failure recorded by an earlier run, reported again."""

    def __init__(self, name: str, msg: str) -> None:
        super().__init__(msg)
        self.name = name


def _checked(record: ImageRecord) -> list[str]:
    return [
        name
        for name, value in (
            ("size", record.size),
            ("os_hash_value", record.os_hash_value),
            ("checksum", record.checksum),
        )
        if value is not None
    ]


def migrate(
    stores: Stores,
    images: Iterable[ImageRecord],
    target: str,
    *,
    concurrency: int = 1,
    journal: str | os.PathLike[str] | Journal | None = None,
    delete_source: bool = False,
    dry_run: bool = False,
    retry_failed: bool = False,
    hash_algo: str = DEFAULT_HASH_ALGO,
    progress: ProgressCallback | None = None,
    inspect: bool = False,
) -> Report:
    """Copy ``images`` into backend ``target``; return one outcome per image.

    Each image is copied with :meth:`Stores.copy` (read back from the target)
    and what was read is compared with the record's size, ``os_hash_value``
    and md5 ``checksum``; a mismatch removes the copy and fails the image.
    ``journal`` (a sqlite file or a database URL; None keeps it in memory) makes the run
    resumable: images done are never copied again, an interrupted copy is
    removed (or kept when it verifies) before the retry. Sources are deleted
    only with ``delete_source`` and only after their copy is verified.
    ``dry_run`` writes and deletes nothing. One image failing never stops the
    others; see :attr:`Report.failed`. Each copy is inspected as the target's
    ``image_inspection`` says (``inspect``: at least reported):
    :attr:`ImageOutcome.inspection`, :attr:`Report.unsafe`.
    """
    records = list(images)
    if not isinstance(concurrency, int) or concurrency < 1:
        raise InvalidArgument(f"concurrency must be a whole number >= 1, not {concurrency!r}")
    stores.driver(target)  # UnknownBackend now, not once per image
    new_hash(hash_algo)
    started = time.monotonic()
    journal_path = None if isinstance(journal, Journal) else journal
    if dry_run:
        return _dry_run(stores, records, target, journal, started, concurrency)
    jr = journal if isinstance(journal, Journal) else Journal(journal_path or ":memory:", target)
    tracker = _Tracker(records, progress)
    stop = threading.Event()
    engine = _Migration(
        stores, target, jr, tracker, delete_source, retry_failed, hash_algo, stop, inspect
    )
    try:
        outcomes = _run_all(engine.run, records, concurrency, stop)
    finally:
        if not isinstance(journal, Journal):
            jr.close()
    for out in outcomes:
        if out.outcome == FAILED and out.error_type is None:
            out.error_type = "Error"
    return Report(
        operation="migrate",
        images=outcomes,
        seconds=time.monotonic() - started,
        bytes=tracker.bytes,
        target=target,
        delete_source=delete_source,
        concurrency=concurrency,
        journal=jr.path if jr.path != ":memory:" else None,
    )


def _run_all(
    fn: Callable[[ImageRecord], ImageOutcome],
    records: Sequence[ImageRecord],
    concurrency: int,
    stop: threading.Event,
) -> list[ImageOutcome]:
    """``fn`` over ``records`` on ``concurrency`` threads; outcomes in input order."""
    if concurrency == 1:
        return [fn(r) for r in records]
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=concurrency, thread_name_prefix="imgstore-migrate"
    ) as pool:
        futures = [pool.submit(fn, r) for r in records]
        try:
            return [f.result() for f in futures]
        except BaseException:  # Ctrl-C: start nothing new; running copies finish
            stop.set()
            for f in futures:
                f.cancel()
            raise


def _dry_run(
    stores: Stores,
    records: Sequence[ImageRecord],
    target: str,
    journal: str | os.PathLike[str] | Journal | None,
    started: float,
    concurrency: int,
) -> Report:
    """What a real run would do; reads the journal only if it already exists."""
    entries: dict[str, journal_mod.Entry] = {}
    if isinstance(journal, Journal):
        entries = {e.image_id: e for e in journal.entries()}
    elif journal is not None and (is_url(journal) or os.path.exists(journal)):
        with Journal(journal, target) as jr:
            entries = {e.image_id: e for e in jr.entries()}
    outcomes = []
    for record in records:
        out = ImageOutcome.of(record, WOULD_COPY)
        entry = entries.get(record.image_id)
        try:
            if entry is not None and entry.state == journal_mod.DONE:
                out.outcome = ALREADY_MIGRATED
                out.location = entry.target_location
            else:
                size = stores.size(record.location)
                if record.size is not None and size != record.size:
                    raise SizeMismatch(
                        f"source {record.shown} has {size} bytes, the record says {record.size}"
                    )
                out.size = size
                out.location = stores.location_for(record.image_id, target)
                if entry is not None:
                    out.attempts = entry.attempts
        except Exception as exc:
            out.outcome = FAILED
            out.error_type, out.error = _error_fields(exc, record)
        outcomes.append(out)
    return Report(
        operation="migrate",
        images=outcomes,
        seconds=time.monotonic() - started,
        bytes=0,
        target=target,
        dry_run=True,
        concurrency=concurrency,
        journal=None if journal is None else str(getattr(journal, "path", journal)),
    )


# -- verify -----------------------------------------------------------------------------


def verify_images(
    stores: Stores,
    images: Iterable[ImageRecord],
    *,
    concurrency: int = 1,
    hash_algo: str = DEFAULT_HASH_ALGO,
    progress: ProgressCallback | None = None,
    inspect: bool = False,
) -> Report:
    """Re-read every image and check it against its recorded size and hashes.

    Outcomes: ``ok``; ``mismatch`` (size or a hash differs); ``unreadable``
    (missing, or the backend failed). An image with no recorded hash is read
    to its end and checked for its size only. With ``inspect``, each image's disk
    format, virtual size and safety are found in the same read
    (:attr:`ImageOutcome.inspection`, :attr:`Report.unsafe`); an unsafe image is
    reported, its outcome still says whether its bytes verified.
    """
    records = list(images)
    if not isinstance(concurrency, int) or concurrency < 1:
        raise InvalidArgument(f"concurrency must be a whole number >= 1, not {concurrency!r}")
    new_hash(hash_algo)
    started = time.monotonic()
    tracker = _Tracker(records, progress)

    def one(record: ImageRecord) -> ImageOutcome:
        return verify_one(stores, record, hash_algo, inspect, tracker)

    outcomes = _run_all(one, records, concurrency, threading.Event())
    return Report(
        operation="verify",
        images=outcomes,
        seconds=time.monotonic() - started,
        bytes=tracker.bytes,
        concurrency=concurrency,
    )


def verify_one(
    stores: Stores,
    record: ImageRecord,
    hash_algo: str,
    inspect: bool,
    tracker: _Tracker,
) -> ImageOutcome:
    """Read one image back and check it against its record (see :func:`verify_images`)."""
    t0 = time.monotonic()
    out = ImageOutcome.of(record, OK, location=record.shown, checked=_checked(record))
    algo = record.os_hash_algo or hash_algo
    try:
        with stores.get(
            record.location,
            hash_algo=algo,
            expected_multihash=record.os_hash_value,
            expected_checksum=record.checksum,
        ) as reader:
            if record.size is not None and reader.size != record.size:
                raise SizeMismatch(
                    f"{record.shown} holds {reader.size} bytes, the record says {record.size}"
                )
            update = tracker.callback(record.image_id)
            inspector = (
                StreamInspector(InspectionPolicy("report"), None, record.shown) if inspect else None
            )
            for chunk in reader:
                if inspector is not None:
                    inspector.update(chunk)
                update(reader.bytes_read, reader.size)
            if inspector is not None:
                out.inspection = inspector.result().as_dict()
            if out.os_hash_value is None:
                out.os_hash_algo, out.os_hash_value = algo, reader.multihash
            out.size = reader.size
    except IntegrityError as exc:
        out.outcome = MISMATCH
        out.error_type, out.error = _error_fields(exc, record)
    except Exception as exc:
        out.outcome = UNREADABLE
        out.error_type, out.error = _error_fields(exc, record)
    if out.error:
        LOG.warning("image %s: %s", record.image_id, out.error)
    out.seconds = round(time.monotonic() - t0, 3)
    tracker.finish(record, out.outcome != OK)
    return out
