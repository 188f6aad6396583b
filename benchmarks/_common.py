"""What the backend benchmarks share: timing, sources, child processes, medians, targets.

Each benchmark runs every contender in a process of its own, ``--repeat``
times, interleaved, and reports the median; the machines are noisy, so one run
of each says little. Each prints the *hashing floor* measured in the same run:
the CPU seconds per GiB that md5 + sha512 alone cost on this CPU, which every
contender that hashes (imgstore and glance_store) must pay.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".cache" / "bench"
MIB = 1024 * 1024
GIB = 1024 * MIB


def service_details(name: str) -> dict[str, Any]:
    """``details.json`` of the test harness's server ``name``."""
    path = ROOT / ".cache" / "services" / name / "details.json"
    if not path.exists():
        raise SystemExit(
            f"{name} is not up: run `.venv/bin/python -m tests.functional.services up {name}`"
        )
    return dict(json.loads(path.read_text()))


def usage(children: bool = False) -> tuple[float, float]:
    """(wall clock, CPU seconds of this process and, optionally, its waited-for children)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    cpu = me.ru_utime + me.ru_stime
    if children:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu += kids.ru_utime + kids.ru_stime
    return time.perf_counter(), cpu


def since(start: tuple[float, float], children: bool = False) -> tuple[float, float]:
    """(wall seconds, CPU seconds) since ``start`` from :func:`usage`."""
    now = usage(children)
    return now[0] - start[0], now[1] - start[1]


class HashThreadCPU:
    """CPU seconds imgstore's hash threads spend, counted in this process.

    :func:`hash_floor` estimates what md5 + sha512 cost from a separate loop, and that
    estimate moves by 10-15% from run to run on these machines; the CPU of the hash
    threads themselves, read with ``time.thread_time()`` as each one ends, splits an
    add's CPU exactly into hashing and everything else (imgstore's own work and the
    client library's). Call :meth:`install` in an imgstore child before the add.
    """

    seconds = 0.0

    @classmethod
    def install(cls) -> None:
        import threading

        from imgstore import pipeline

        run = pipeline._HashWorker._run
        lock = threading.Lock()

        def counted(worker: Any) -> None:
            start = time.thread_time()
            try:
                run(worker)
            finally:
                with lock:
                    cls.seconds += time.thread_time() - start

        pipeline._HashWorker._run = counted  # type: ignore[method-assign]


def outside_hashing_line(what: str, per_gib: Iterable[float]) -> str:
    """``what``'s CPU per GiB outside the hash threads: the median and every round."""
    values = sorted(per_gib)
    rounds = ", ".join(f"{v:.2f}" for v in values)
    return (
        f"{what} CPU outside its hash threads (counted in-process): "
        f"{statistics.median(values):.2f} s/GiB (rounds: {rounds})"
    )


def sink(chunks: Iterable[bytes]) -> int:
    """Write ``chunks`` to /dev/null; return the byte count."""
    fd = os.open(os.devnull, os.O_WRONLY)
    total = 0
    try:
        for chunk in chunks:
            total += len(chunk)
            os.write(fd, chunk)
    finally:
        os.close(fd)
    return total


def ensure_venv(path: Path, requirements: Sequence[str]) -> Path:
    """A venv at ``path`` with ``requirements`` (made once, then reused); its python."""
    python = path / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
    return python


def link_ceph_bindings(python: Path) -> None:
    """Link Debian's rados/rbd modules into the venv of ``python``, as scripts/setup does."""
    import sysconfig

    platlib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['platlib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for mod in ("rados", "rbd"):
        link = Path(platlib) / f"{mod}{suffix}"
        if not link.exists():
            link.symlink_to(f"/usr/lib/python3/dist-packages/{mod}{suffix}")


def make_source(prefix: str, size: int) -> Path:
    """A file of ``size`` random bytes under ``.cache/bench`` (kept), read into the page cache."""
    path = BENCH_DIR / f"{prefix}-src-{size}.bin"
    if not path.exists() or path.stat().st_size != size:
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            left = size
            while left:
                n = min(left, 16 * MIB)
                fh.write(os.urandom(n))
                left -= n
    with open(path, "rb") as fh:
        while fh.read(16 * MIB):
            pass
    return path


def run_child(name: str, cmd: Sequence[str], imgstore: bool) -> dict[str, Any]:
    """Run one contender's process; return the JSON object it printed last."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) if imgstore else ""}
    out = subprocess.run(list(cmd), capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def hash_floor(size: int = 256 * MIB, algos: Sequence[str] = ("md5", "sha512")) -> float:
    """CPU seconds per GiB that ``algos`` (md5 + sha512) cost on this machine, measured now."""
    block = os.urandom(8 * MIB)
    start = usage()
    for algo in algos:
        h = hashlib.new(algo)
        for _ in range(max(1, size // len(block))):
            h.update(block)
    return since(start)[1] / (max(1, size // len(block)) * len(block) / GIB)


class Runs:
    """(wall, CPU) samples per contender and operation; medians over the repeats."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
        self.extra: dict[str, list[float]] = {}
        self.not_hashing: dict[str, list[float]] = {}
        """Add CPU seconds per GiB outside imgstore's hash threads, per round."""

    def record(
        self, name: str, result: Mapping[str, Any], ops: Sequence[str] = ("add", "get")
    ) -> None:
        for op in ops:
            if op in result:
                wall, cpu = result[op]
                self.samples.setdefault((name, op), []).append((float(wall), float(cpu)))
        if "rss_mib" in result:
            self.extra.setdefault(name, []).append(float(result["rss_mib"]))
        if "add_hash_cpu" in result:
            outside = float(result["add"][1]) - float(result["add_hash_cpu"])
            self.not_hashing.setdefault(name, []).append(outside / (self.size / GIB))

    def outside_hashing(self, name: str) -> str:
        """A line: ``name``'s add CPU per GiB outside its hash threads, if measured."""
        values = self.not_hashing.get(name)
        return outside_hashing_line(f"{name} add", values) if values else ""

    def outside_hashing_less(self, name: str, cost: float) -> float:
        """The median of ``name``'s add CPU per GiB outside its hash threads, less ``cost``
        (per GiB: a hash its client library must compute besides, say)."""
        return statistics.median(v - cost for v in self.not_hashing[name])

    def mbps(self, name: str, op: str) -> float:
        return statistics.median(self.size / 1e6 / w for w, _ in self.samples[name, op])

    def span(self, name: str, op: str) -> str:
        rates = [self.size / 1e6 / w for w, _ in self.samples[name, op]]
        return f"{min(rates):.0f}..{max(rates):.0f}"

    def cpu_per_gib(self, name: str, op: str) -> float:
        return statistics.median(c for _, c in self.samples[name, op]) / (self.size / GIB)

    def speedup(self, name: str, other: str, op: str) -> float:
        """MB/s of ``name`` over MB/s of ``other`` for ``op`` (medians)."""
        return self.mbps(name, op) / self.mbps(other, op)

    def peak_rss(self, name: str) -> float:
        return max(self.extra.get(name, [0.0]))

    def table(self) -> str:
        lines = [f"{'contender':28} {'op':4} {'MB/s':>8} {'min..max MB/s':>14} {'CPU s/GiB':>10}"]
        for name, op in self.samples:
            lines.append(
                f"{name:28} {op:4} {self.mbps(name, op):8.0f} {self.span(name, op):>14} "
                f"{self.cpu_per_gib(name, op):10.2f}"
            )
        return "\n".join(lines)


def add_common_args(parser: argparse.ArgumentParser, size_mib: int = 1024) -> None:
    """--size-mib and --repeat for the run; --child/--source/--size for a contender's process."""
    parser.add_argument("--size-mib", type=int, default=size_mib)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; medians count")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)


def interleave(
    repeat: int,
    size: int,
    contenders: Iterable[str],
    run: Callable[[str], Mapping[str, Any]],
    between: Callable[[], None] = lambda: None,
) -> Runs:
    """Run every contender once per round, ``repeat`` rounds; ``between`` after each run."""
    runs = Runs(size)
    names = list(contenders)
    for i in range(repeat):
        print(f"# round {i + 1}/{repeat}", file=sys.stderr, flush=True)
        for name in names:
            runs.record(name, run(name))
            between()
    return runs


def report(ratios: Mapping[str, float], targets: Mapping[str, tuple[str, float]]) -> bool:
    """Print one line per ratio with its target's verdict; True when every target is met."""
    print()
    ok = True
    for label, value in ratios.items():
        line, met = verdict(label, value, targets.get(label))
        ok &= met
        print(line)
    return ok


def verdict(label: str, value: float, target: tuple[str, float] | None = None) -> tuple[str, bool]:
    """One report line, and whether its target (``(">=" | "<=", bound)``) is met."""
    if target is None:
        return f"{label:50} {value:6.2f}", True
    op, bound = target
    ok = value >= bound if op == ">=" else value <= bound
    return f"{label:50} {value:6.2f}  (target {op} {bound}: {'met' if ok else 'MISSED'})", ok


def floor_lines(
    floor: float, glance_cpu: float, transport_cpu: float = 0.0, transport: str = ""
) -> str:
    """Explain the least CPU per GiB an add that hashes can use, against glance_store's.

    ``transport_cpu`` is what moving the bytes costs without hashing, when a
    contender measured exactly that (bare librbd aio); else only the floor counts.
    """
    lines = [f"hashing floor (md5 + sha512 on this CPU, this run): {floor:.2f} CPU s/GiB"]
    least = floor + transport_cpu
    plus = f"floor + {transport} ({transport_cpu:.2f}) = " if transport else ""
    lines.append(
        f"least CPU for an add that hashes: {plus}{least:.2f} CPU s/GiB"
        f" = {least / glance_cpu:.2f}x glance_store's {glance_cpu:.2f}"
    )
    return "\n".join(lines)
