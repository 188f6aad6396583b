"""Child process of test_rbd.py's quick-open test: size and read one RBD image in a loop.

``python -m tests.functional.rbd_open_loop CONFIG LOCATION SECONDS THREADS``: each
thread opens and closes the image (``Stores.size``) as fast as it can; it prints how
many it did. A librbd crash ends the process with a signal.
"""

from __future__ import annotations

import sys
import threading
import time

from imgstore import Stores


def main(config: str, location: str, seconds: float, threads: int) -> int:
    done = [0] * threads
    stop = time.monotonic() + seconds
    with Stores.from_config_files(config) as stores:

        def run(n: int) -> None:
            while time.monotonic() < stop:
                stores.size(location)
                done[n] += 1

        workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    sys.stdout.write(f"{sum(done)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
