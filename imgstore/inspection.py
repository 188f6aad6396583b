"""Disk-format inspection in the stream: what an image is, and whether it is safe.

Images are hostile input: a qcow2 whose header names an external ``data-file`` or a
backing file, or a vmdk whose descriptor names a host file as an extent, makes qemu
read files of the host that opens it (OSSA-2024-001). oslo.utils' format inspector
(:mod:`oslo_utils.imageutils.format_inspector`, the one Glance and Nova use) reads
the few regions of an image that tell its format, its virtual size and whether it
passes its safety checks. imgstore feeds it the chunks the core already reads for
the hashes, on the pipeline's thread while the hash threads hash the same chunk
(:mod:`imgstore.pipeline`): no second pass, no temporary file, and memory bounded by
the inspector's regions.

Policy (:class:`InspectionPolicy`, options ``image_inspection`` and
``allowed_disk_formats``):

* ``off``: nothing is inspected (unless the caller declares a format);
* ``report`` (the default): every add reports ``disk_format``, ``virtual_size``
  and ``safety``; nothing is refused for what it is;
* ``enforce``: an image that fails a safety check, matches several formats at once
  (an ISO that also carries a qcow2 header...) or is not in ``allowed_disk_formats``
  is :class:`~imgstore.exceptions.UnsafeImage`: the write is aborted, nothing stored.

A declared format (``expected_disk_format``, Glance's ``disk_format``) is checked in
every mode but ``off``: bytes of another format are
:class:`~imgstore.exceptions.DiskFormatMismatch`, as early as the inspector can tell.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from oslo_utils.imageutils import format_inspector as fi

from imgstore.exceptions import (
    BadConfiguration,
    DiskFormatMismatch,
    InvalidArgument,
    UnsafeImage,
)

LOG = logging.getLogger(__name__)

MODES = ("off", "report", "enforce")
"""The values of ``image_inspection``."""
DEFAULT_MODE = "report"
FORMATS: tuple[str, ...] = tuple(fi.ALL_FORMATS)
"""The disk formats the inspector knows (raw, qcow2, vhd, vhdx, vmdk, vdi, qed, iso,
gpt, luks)."""
_RAW_NAMES = {"ami": "raw", "ari": "raw", "aki": "raw"}
"""Glance's disk formats that are raw bytes to qemu."""
_ALSO_RAW = {"gpt"}
"""Detected formats a declared ``raw`` accepts: a raw disk with a partition table."""


def declared_format(name: str) -> str:
    """The inspector's name for a declared disk format; :class:`InvalidArgument` when
    the inspector does not know it."""
    key = _RAW_NAMES.get(name.strip().lower(), name.strip().lower())
    if key not in FORMATS:
        raise InvalidArgument(
            f"unknown disk format {name!r}: the inspector knows {', '.join(FORMATS)}"
        )
    return key


@dataclasses.dataclass(frozen=True)
class Safety:
    """The result of the inspector's safety checks."""

    passed: bool
    failed_checks: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Each failed check's name, and why it failed."""

    def as_dict(self) -> dict[str, Any]:
        """``{"result": "passed"|"failed", "failed_checks": {name: reason}}``."""
        return {
            "result": "passed" if self.passed else "failed",
            "failed_checks": dict(self.failed_checks),
        }

    def __str__(self) -> str:
        if self.passed:
            return "passed"
        return "failed: " + "; ".join(f"{k} ({v})" for k, v in self.failed_checks.items())


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What an image is."""

    disk_format: str | None
    """The detected format; None when the bytes match several formats at once."""
    virtual_size: int | None
    """The size of the disk the image describes (bytes); None when unknown."""
    safety: Safety
    formats: tuple[str, ...] = ()
    """Every format the bytes match (more than one: the mixed-format trick)."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready form used by ``--json`` output."""
        return {
            "disk_format": self.disk_format,
            "virtual_size": self.virtual_size,
            "safety": self.safety.as_dict(),
        }


@dataclasses.dataclass(frozen=True)
class InspectionPolicy:
    """What a backend does with an inspection (options ``image_inspection`` and
    ``allowed_disk_formats``)."""

    mode: str = DEFAULT_MODE
    allowed_formats: tuple[str, ...] = ()
    """Formats an ``enforce`` backend stores (empty: every format the inspector knows)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise BadConfiguration(
                f"image_inspection must be one of {', '.join(MODES)}, not {self.mode!r}"
            )
        unknown = [f for f in self.allowed_formats if f not in FORMATS]
        if unknown:
            raise BadConfiguration(
                f"allowed_disk_formats: unknown {', '.join(unknown)}; the inspector knows "
                f"{', '.join(FORMATS)}"
            )

    @classmethod
    def from_options(cls, mode: str | None, allowed: list[str] | None) -> InspectionPolicy:
        """The policy of the option values (None: the default)."""
        formats = []
        for name in allowed or ():
            try:
                formats.append(declared_format(name))
            except InvalidArgument as exc:
                raise BadConfiguration(f"allowed_disk_formats: {exc}") from None
        return cls((mode or DEFAULT_MODE).strip().lower(), tuple(formats))

    def inspector(self, expected: str | None, describe: str) -> StreamInspector | None:
        """A new inspector for one image, or None when nothing is to be inspected."""
        if self.mode == "off" and expected is None:
            return None
        return StreamInspector(self, expected, describe)

    def refusal(self, inspection: Inspection) -> str | None:
        """Why an ``enforce`` backend refuses the image; None when it stores it."""
        if self.mode != "enforce":
            return None
        if not inspection.safety.passed:
            return f"it failed the disk-format safety checks: {inspection.safety}"
        fmt = inspection.disk_format
        if self.allowed_formats and fmt not in self.allowed_formats:
            return f"its format {fmt} is not in allowed_disk_formats"
        return None


SLICE = 64 * 1024
"""While an inspector still looks for its regions, it is fed slices of this size: a
region it learns of from another (VHDX's metadata from its region table...) must start
after the data it was learned from, as in the small reads Glance feeds it."""


class StreamInspector:
    """The inspection of one image, fed chunk by chunk.

    :meth:`update` takes each chunk (the pipeline's thread calls it while the hash
    threads hash the chunk); :meth:`conclude`, once every chunk was fed, returns the
    :class:`Inspection` or raises what the policy refuses. Only a declared format's
    mismatch raises from :meth:`update` (the add stops early); anything an inspector
    trips on takes it out of the running, as in oslo's ``InspectWrapper``, whose
    decision rules :meth:`result` follows. Chunks are fed in :data:`SLICE` pieces until
    every inspector has what it looks for (the first few KiB of most images), then
    whole: the inspectors cost ~0.03 s of CPU per GiB after that.
    """

    def __init__(self, policy: InspectionPolicy, expected: str | None, describe: str) -> None:
        self.policy = policy
        self.expected = None if expected is None else declared_format(expected)
        self._describe = describe
        self._inspectors: list[fi.FileInspector] = [cls() for cls in fi.ALL_FORMATS.values()]
        self._live = list(self._inspectors)
        """The inspectors that have not failed on the bytes so far."""
        self._settled = False
        """Every live inspector is complete: whole chunks from now on."""
        self.fed = 0
        """Bytes inspected so far."""

    def update(self, chunk: Any) -> None:
        """Inspect the next chunk (a bytes-like object, not kept)."""
        view = memoryview(chunk)
        self.fed += len(view)
        at = 0
        while not self._settled and at < len(view):
            self._eat(view[at : at + SLICE])
            at += SLICE
        if at < len(view):
            self._eat(view[at:])

    def _eat(self, piece: memoryview) -> None:
        for inspector in list(self._live):
            try:
                inspector.eat_chunk(piece)  # type: ignore[arg-type]  # any bytes-like object
            except Exception as exc:
                if inspector.NAME == self.expected:
                    raise DiskFormatMismatch(
                        f"{self._describe} is not the declared disk format {self.expected}: {exc}"
                    ) from None
                LOG.debug("%s: not %s (%s)", self._describe, inspector.NAME, exc)
                self._live.remove(inspector)
                continue
            if inspector.NAME == self.expected and inspector.complete:
                if not inspector.format_match:
                    raise DiskFormatMismatch(
                        f"{self._describe} is not the declared disk format {self.expected}"
                    )
        self._settled = all(i.complete for i in self._live)

    @property
    def decided(self) -> bool:
        """Whether the rest of the image cannot change :meth:`result`: every inspector has
        the regions it looks for, and the format found needs nothing from the image's end
        (a vmdk with its grain directory in a footer does). ``imgstore inspect`` stops
        reading there."""
        if not self._settled:
            return False
        found = [i for i in self._inspectors if i.NAME != "raw" and _matches(i)]
        return not any(i.has_region("footer") for i in found)

    def result(self, size: int | None = None) -> Inspection:
        """What the image is, from every chunk fed so far (ends the inspection).

        ``size``: the image's whole size, when only its start was fed (:attr:`decided`):
        a raw image's virtual size is its size, a LUKS volume's its size after the
        header, as the inspector would have counted them."""
        for inspector in self._inspectors:
            inspector.finish()
        matches = [i for i in self._inspectors if i.NAME != "raw" and _matches(i)]
        if not matches:
            matches = [i for i in self._inspectors if i.NAME == "raw"]
        names = tuple(sorted(str(m) for m in matches))
        if len(matches) != 1:
            why = f"the bytes match several formats at once: {', '.join(names)}"
            return Inspection(None, None, Safety(False, {"multiple_formats": why}), names)
        found = matches[0]
        failures: dict[str, str] = {}
        try:
            found.safety_check()
        except fi.SafetyCheckFailed as exc:
            failures = {name: str(reason) for name, reason in exc.failures.items()}
        except Exception as exc:  # ImageFormatError, or the inspector's own failure
            failures = {"format": str(exc) or type(exc).__name__}
        failures.update(_more_checks(found))
        virtual: int | None
        try:
            counted = int(found.virtual_size)
        except Exception:  # a header it could not read: unknown
            virtual = None
        else:
            if size is not None and size > self.fed and str(found) in ("raw", "luks"):
                counted += size - self.fed  # what it counts, of the bytes not fed
            virtual = counted
        return Inspection(str(found), virtual, Safety(not failures, failures), names)

    def conclude(self) -> Inspection:
        """The :class:`Inspection`; raises :class:`DiskFormatMismatch` for a declared
        format the bytes are not, :class:`UnsafeImage` for what ``enforce`` refuses."""
        inspection = self.result()
        if self.expected is not None and not _is(inspection.disk_format, self.expected):
            found = inspection.disk_format or " or ".join(inspection.formats) or "unknown"
            raise DiskFormatMismatch(
                f"{self._describe} was declared {self.expected} but its bytes are {found}"
            )
        why = self.policy.refusal(inspection)
        if why is not None:
            raise UnsafeImage(f"{self._describe} is refused (image_inspection = enforce): {why}")
        return inspection


def _more_checks(found: Any) -> dict[str, str]:
    """Checks on top of the inspector's, on what it parsed: a single-file vmdk
    (monolithicSparse, streamOptimized: the only kinds it accepts) whose descriptor
    names more than one extent would have qemu open other files next to the image."""
    if str(found) != "vmdk" or not getattr(found, "desc_text", None):
        return {}
    lines = [line.strip().lower() for line in str(found.desc_text).split("\n")]
    extents = [x for x in lines if x.split(" ")[0] in ("rw", "rdonly", "noaccess")]
    if len(extents) > 1:
        return {"extents": f"a single-file vmdk names {len(extents)} extents"}
    return {}


def _matches(inspector: fi.FileInspector) -> bool:
    """Whether the bytes are ``inspector``'s format (an inspector that failed part-way may
    still have matched: then its safety check says what is wrong)."""
    try:
        return bool(inspector.format_match)
    except Exception:
        return False


def _is(detected: str | None, expected: str) -> bool:
    return detected == expected or (expected == "raw" and detected in _ALSO_RAW)
