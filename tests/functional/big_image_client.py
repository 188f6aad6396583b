"""One big image through one backend, in a process of its own (run by test_big_images.py).

``python -m tests.functional.big_image_client CONFIG BACKEND SIZE`` adds a generated
stream of SIZE bytes (never held in memory, never on local disk), reads it all back,
hashes what it read (md5), deletes it, and prints one JSON line: the
AddResult, the read-back size and digests, and the process's peak RSS (VmHWM), which
is the client's own: nothing else runs in this process.
"""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from imgstore import Stores

CHUNK = 4 * 1024 * 1024


def stream(size: int, seed: int = 5) -> Iterator[bytes]:
    """``size`` bytes in 4 MiB chunks, each different (its index in its first 8 bytes), so
    a lost, repeated or reordered chunk changes every digest."""
    base = hashlib.shake_256(seed.to_bytes(8, "big")).digest(CHUNK)
    sent, index = 0, 0
    while sent < size:
        n = min(CHUNK, size - sent)
        chunk = bytearray(base[:n])
        chunk[: min(8, n)] = index.to_bytes(8, "big")[: min(8, n)]
        yield bytes(chunk)
        sent += n
        index += 1


def digests(*sizes: int) -> dict[int, dict[str, str]]:
    """md5 and sha512 of :func:`stream` for each of ``sizes``, computed here, apart from
    imgstore, in one pass over the longest (a shorter stream is its start): each hash
    on a thread of its own over its own stream (hashlib lets go of the GIL), so the two
    take the time of the slower one."""
    names = ("md5", "sha512")
    found: dict[int, dict[str, str]] = {size: {} for size in sizes}

    def run(name: str) -> None:
        h = hashlib.new(name, usedforsecurity=False)
        ends, done = sorted(set(sizes)), 0
        for chunk in stream(ends[-1]):
            while ends and done + len(chunk) >= ends[0]:  # a size ends in this chunk
                head = h.copy()
                head.update(chunk[: ends[0] - done])
                found[ends.pop(0)][name] = head.hexdigest()
            h.update(chunk)
            done += len(chunk)

    with ThreadPoolExecutor(2) as pool:
        for running in [pool.submit(run, name) for name in names]:
            running.result()
    return found


def peak_rss_kib() -> int:
    """The peak resident set size of this process (VmHWM), in KiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(config: str, backend: str, size: int) -> dict[str, object]:
    """Add, read back, delete; what happened, as plain values."""
    image_id = f"big-{uuid.uuid4()}"
    with Stores.from_config_files(config) as stores:
        result = stores.add(image_id, stream(size), size=size, backend=backend, hash_algo="sha512")
        # the read-back is checked by md5 and size (the add's sha512 multihash is checked
        # against the test's own): a second sha512 of 5.5 GiB would add 6 s of CPU a backend
        md5, read = hashlib.md5(usedforsecurity=False), 0
        try:
            with stores.get(result.location) as reader:
                for chunk in reader:
                    md5.update(chunk)
                    read += len(chunk)
        finally:
            stores.delete(result.location)
    return {
        "added": result.as_dict(),
        "read": {"size": read, "md5": md5.hexdigest()},
        "peak_rss_kib": peak_rss_kib(),
    }


if __name__ == "__main__":
    config_file, backend_name, size_text = sys.argv[1:4]
    sys.stdout.write(json.dumps(main(config_file, backend_name, int(size_text))) + "\n")
