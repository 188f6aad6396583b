"""Migrate across many hosts: one Celery task per image on a broker (RabbitMQ), the
journal in a database every host reaches (MariaDB, PostgreSQL). Needs
``imgstore[distributed]``.

* :func:`submit` records every image in the journal (pending), then publishes one task
  per image; it is safe to run again (a task for an image already done does nothing).
* :func:`run_worker` (``imgstore worker``) runs the tasks: each takes the image's lease
  in the journal, renews it while it copies, and runs the same steps as a single-host
  :func:`imgstore.migrate` (copy, read back, verify, journal each step).
* Delivery is at least once: a task is acknowledged only when it ended (``acks_late``)
  and goes back to the queue when its worker is lost. The journal makes it once in
  effect: a second delivery finds the image leased (and waits for the lease to lapse)
  or done (and does nothing); each image's outcome is kept once
  (:meth:`~imgstore.journal.Journal.record_outcome`).
* :func:`status` and :func:`report` read the journal: progress across hosts, and the
  same report a single-host run gives.

Task messages carry the image's source location as the input gave it (it may hold
credentials, like the journal database's URL in the workers' configuration): the
broker is infrastructure of the same trust. Logs and monitoring (Flower) show only
the redacted form (``kwargsrepr``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from imgstore import journal as journal_mod
from imgstore.backoff import poll
from imgstore.exceptions import (
    AuthenticationFailed,
    BackendUnavailable,
    BadConfiguration,
    InvalidArgument,
)
from imgstore.journal import Journal
from imgstore.migration import (
    FAILED,
    OK,
    ImageOutcome,
    ImageRecord,
    Report,
    _Migration,
    _Tracker,
    make_record,
    verify_one,
)
from imgstore.scrubbing import scrub

LOG = logging.getLogger(__name__)

TASK = "imgstore.migrate_image"
VERIFY_TASK = "imgstore.verify_image"
VERIFY = "@verify"
"""The target a verify run's journal names (no backend is called so: a name with ``@``)."""
LEASE_SECONDS = 60.0
"""How long an image's lease lasts without renewal: a worker that died gives its
images up after this long. The worker renews every third of it."""


def celery_app(broker: str) -> Any:
    """A Celery app on ``broker`` set up for imgstore's tasks: late acknowledgement,
    requeue when a worker is lost, one message at a time per thread, JSON only, no
    result backend (the journal holds the results), task events for Flower."""
    try:
        from celery import Celery
    except ImportError:
        raise BadConfiguration(
            "--broker needs Celery: pip install 'imgstore[distributed]'"
        ) from None
    app = Celery("imgstore", broker=broker, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        # after a reconnect Celery lowers the prefetch count and raises it again with
        # basic.qos calls; with RabbitMQ 3.10 one such call could wait for ever, the
        # worker's reserved tasks stalled and a warm shutdown hung (one per thread is
        # our prefetch anyway, so there is nothing to lower)
        worker_enable_prefetch_count_reduction=False,
        broker_transport_options={"confirm_publish": True},
    )
    return app


def _shown(broker: str) -> str:
    from imgstore.location import redact_uri

    return redact_uri(broker)


def check_broker(app: Any, broker: str) -> None:
    """Connect to the broker once: :class:`AuthenticationFailed` or
    :class:`BackendUnavailable` now, before anything is recorded or sent."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=10)
    except (KeyError, ImportError, ValueError) as exc:  # kombu knows no such transport
        raise InvalidArgument(
            f"not a broker URL: {_shown(broker)} ({scrub(str(exc), _secrets_of(broker))}); "
            "e.g. amqp://user:...@host:5672/vhost"
        ) from None
    except Exception as exc:
        message = f"broker {_shown(broker)}: {scrub(str(exc), _secrets_of(broker))}"
        if "ACCESS_REFUSED" in str(exc) or "access refused" in str(exc).lower():
            raise AuthenticationFailed(message) from None
        raise BackendUnavailable(message) from None


def _secrets_of(url: str) -> list[str]:
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return [p for p in {password, unquote(password or "")} if p]


@dataclasses.dataclass(frozen=True)
class Options:
    """How each image of a run is migrated (what a single-host ``migrate`` takes)."""

    target: str
    delete_source: bool = False
    retry_failed: bool = False
    hash_algo: str = "sha512"
    inspect: bool = False


def queue_of(journal: Journal) -> str:
    """The queue of a journal's tasks: its workers take those and no others, so runs
    with other journals can share the broker."""
    return f"imgstore.migrate.{journal.id}"


def submit(broker: str, journal: Journal, records: Sequence[ImageRecord], options: Options) -> int:
    """Record every image as pending in ``journal``, then publish one task per image not
    done yet on the journal's queue; the number published. Nothing is recorded or sent
    if the broker cannot be reached; a run stopped half-way is finished by running it
    again."""
    app = celery_app(broker)
    check_broker(app, broker)
    todo = []
    for record in records:
        entry = journal.add(record.image_id, record.shown)
        if entry.source != record.shown:
            raise InvalidArgument(
                f"the journal has image {record.image_id} from {entry.source}, "
                f"not from {record.shown}; use another journal"
            )
        if entry.state != journal_mod.DONE:
            todo.append(record)
    try:
        with app.producer_or_acquire() as producer:
            for record in todo:
                app.send_task(
                    VERIFY_TASK if options.target == VERIFY else TASK,
                    kwargs={
                        "journal": journal.id,
                        "record": _record_dict(record),
                        "options": dataclasses.asdict(options),
                    },
                    kwargsrepr=repr({"image_id": record.image_id, "source": record.shown}),
                    producer=producer,
                    queue=queue_of(journal),
                )
    except Exception as exc:
        raise BackendUnavailable(
            f"broker {_shown(broker)}: publishing failed "
            f"({scrub(str(exc), _secrets_of(broker))}); run the same command again"
        ) from None
    return len(todo)


def _record_dict(record: ImageRecord) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


# -- the worker ------------------------------------------------------------------------


class Worker:
    """What a worker process holds: the stores of its configuration and the journal."""

    def __init__(self, stores: Any, journal: Journal, lease_seconds: float = LEASE_SECONDS) -> None:
        self.stores = stores
        self.journal = journal
        self.lease_seconds = lease_seconds
        self.stop = threading.Event()

    def migrate(
        self, journal_id: str, raw: dict[str, Any], raw_options: dict[str, Any]
    ) -> float | None:
        """Migrate one image; None when done (or done before), else the seconds to wait
        before trying again (another worker holds the image's lease)."""
        if journal_id != self.journal.id:
            raise InvalidArgument(
                f"a task of journal {journal_id} reached the worker of journal {self.journal.id}"
            )
        record = make_record(raw, raw.get("line", 0))
        options = Options(**raw_options)
        if options.target != self.journal.target:
            raise InvalidArgument(
                f"a task for backend {options.target!r} reached the worker of a migration "
                f"to {self.journal.target!r}"
            )
        journal = self.journal
        entry = journal.add(record.image_id, record.shown)
        if entry.state == journal_mod.DONE:
            return None
        if not journal.claim(record.image_id, self.lease_seconds):
            entry = journal.get(record.image_id) or entry
            if entry.state == journal_mod.DONE:
                return None
            return max((entry.lease_expires or 0) - time.time(), 0) + 1
        engine = _Migration(
            self.stores,
            options.target,
            journal,
            _Tracker([record], None),
            options.delete_source,
            options.retry_failed,
            options.hash_algo,
            self.stop,
            options.inspect,
        )
        try:
            with _renewing(journal, record.image_id, self.lease_seconds):
                outcome = engine.run(record)
        finally:
            journal.release(record.image_id)
        LOG.info("image %s: %s", record.image_id, outcome.outcome)
        return None

    def verify(
        self, journal_id: str, raw: dict[str, Any], raw_options: dict[str, Any]
    ) -> float | None:
        """Verify one image, keeping its outcome in the journal (``done`` when its bytes
        verified, else ``failed``); like :meth:`migrate`, None or the seconds to wait."""
        if journal_id != self.journal.id or self.journal.target != VERIFY:
            raise InvalidArgument(
                f"a verify task of journal {journal_id} reached the worker of journal "
                f"{self.journal.id} (to {self.journal.target!r})"
            )
        record = make_record(raw, raw.get("line", 0))
        options = Options(**raw_options)
        journal = self.journal
        entry = journal.add(record.image_id, record.shown)
        if entry.outcome is not None:
            return None
        if not journal.claim(record.image_id, self.lease_seconds):
            return max((entry.lease_expires or 0) - time.time(), 0) + 1
        try:
            with _renewing(journal, record.image_id, self.lease_seconds):
                outcome = verify_one(
                    self.stores, record, options.hash_algo, options.inspect,
                    _Tracker([record], None),
                )  # fmt: skip
            if outcome.outcome == OK:
                journal.present(record.image_id, record.shown, outcome.size or 0,
                                outcome.os_hash_algo)  # fmt: skip
            else:
                journal.failed(record.image_id, outcome.error_type or "Error",
                               outcome.error or outcome.outcome)  # fmt: skip
            journal.record_outcome(record.image_id, json.dumps(dataclasses.asdict(outcome)))
        finally:
            journal.release(record.image_id)
        LOG.info("image %s: %s", record.image_id, outcome.outcome)
        return None


@contextmanager
def _renewing(journal: Journal, image_id: str, seconds: float) -> Iterator[None]:
    """Renew this worker's lease on ``image_id`` every third of ``seconds`` meanwhile."""
    done = threading.Event()

    def renew() -> None:
        while not done.wait(seconds / 3):
            try:
                if not journal.claim(image_id, seconds):
                    LOG.error("image %s: lease lost to another worker", image_id)
            except Exception as exc:  # the next renewal tries again
                LOG.warning("image %s: renewing the lease failed: %s", image_id, exc)

    thread = threading.Thread(target=renew, name=f"imgstore-lease-{image_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _node_name(worker: str) -> str:
    """Celery's name for the worker (``name@host``), one per process: workers on one
    host must not share one (their control queues would clash)."""
    host, pid, rand = worker.split(":", 2)
    return f"imgstore-{pid}-{rand}@{host}"


def _journal_when_used(spec: str) -> Journal:
    """The journal at ``spec`` once a migration has used it (workers may start first)."""
    from imgstore.journal import read_meta
    from imgstore.journal_db import open_database

    db = open_database(spec)
    try:
        if read_meta(db).get("target") is None:
            LOG.info("waiting for a migration to use the journal %s", db.shown)
            poll(lambda: read_meta(db).get("target"), first=0.5, cap=1.0)
    finally:
        db.close()
    return Journal.existing(spec)


def register(app: Any, worker: Worker) -> None:
    """The tasks, bound to ``worker``'s stores and journal: each runs its image and, when
    another worker holds the image's lease, goes back to the queue until it lapses."""
    for name, run in ((TASK, worker.migrate), (VERIFY_TASK, worker.verify)):

        def image_task(
            task: Any,
            journal: str,
            record: dict[str, Any],
            options: dict[str, Any],
            run: Callable[..., float | None] = run,
        ) -> None:
            wait = run(journal, record, options)
            if wait is not None:
                raise task.retry(countdown=wait)

        app.task(name=name, bind=True, acks_late=True, max_retries=None)(image_task)


def run_worker(
    broker: str,
    journal_spec: str,
    stores: Any,
    concurrency: int,
    loglevel: str = "INFO",
    lease_seconds: float = LEASE_SECONDS,
) -> None:
    """Run a worker of the migration ``journal_spec`` names until it is stopped (SIGTERM
    or Ctrl-C: the images in hand finish)."""
    app = celery_app(broker)
    check_broker(app, broker)
    worker = Worker(stores, _journal_when_used(journal_spec), lease_seconds)
    register(app, worker)
    try:
        app.worker_main(
            [
                "worker",
                f"--concurrency={concurrency}",
                "--pool=threads",
                f"--hostname={_node_name(worker.journal.worker)}",
                f"--queues={queue_of(worker.journal)}",
                f"--loglevel={loglevel}",
                "--without-gossip",
                "--without-mingle",
                "--task-events",
            ]
        )
    finally:
        worker.stop.set()
        worker.journal.close()


# -- progress and the report -----------------------------------------------------------


def status(journal: Journal) -> dict[str, Any]:
    """Progress across all hosts: images by state, in flight (leased now), by host and by
    worker process (done, failed, bytes copied) and throughput between the first and the
    last finish."""
    entries = journal.entries()
    now = time.time()
    by_state = collections.Counter(e.state for e in entries)
    hosts: dict[str, dict[str, int]] = collections.defaultdict(
        lambda: {"done": 0, "failed": 0, "bytes": 0}
    )
    workers: dict[str, dict[str, int]] = collections.defaultdict(
        lambda: {"done": 0, "failed": 0, "bytes": 0}
    )
    finished = []
    for e in entries:
        if e.worker and e.state in (journal_mod.DONE, journal_mod.FAILED):
            copied = (e.size or 0) if e.state == journal_mod.DONE and e.attempts else 0
            for counts in (hosts[e.worker.split(":", 1)[0]], workers[e.worker]):
                counts[e.state] += 1
                counts["bytes"] += copied
            if copied or (e.state == journal_mod.DONE and e.attempts):
                finished.append((e.finished or 0, copied))
    in_flight = sum(1 for e in entries if e.lease_owner and (e.lease_expires or 0) > now)
    span = max(f for f, _ in finished) - min(f for f, _ in finished) if len(finished) > 1 else 0
    copied = sum(size for _, size in finished)
    return {
        "journal": journal.path,
        "target": journal.target,
        "images": len(entries),
        "states": dict(sorted(by_state.items())),
        "in_flight": in_flight,
        "hosts": dict(sorted(hosts.items())),
        "workers": dict(sorted(workers.items())),
        "bytes_copied": copied,
        "bytes_per_second": round(copied / span) if span > 0 else None,
    }


def finished(journal: Journal, image_ids: Sequence[str], since: float) -> tuple[int, int]:
    """How many of ``image_ids`` are finished, and how many of those failed: an outcome
    kept, or done before ``since`` (a :func:`time.time`: when the run was submitted)."""
    wanted = set(image_ids)
    done = failed = 0
    for e in journal.entries():
        if e.image_id not in wanted:
            continue
        if e.outcome is not None:
            done += 1
            failed += e.state == journal_mod.FAILED
        elif e.state == journal_mod.DONE and (e.finished or 0) < since:
            done += 1
    return done, failed


def wait(
    journal: Journal,
    records: Sequence[ImageRecord],
    since: float,
    progress: Callable[[int, int, int], None] | None = None,
    every: float = 0.25,
    timeout: float | None = None,
) -> None:
    """Wait until every image of ``records`` is finished (see :func:`finished`);
    ``progress(done, total, failed)`` after each look."""
    ids = [r.image_id for r in records]

    def look() -> bool | None:
        done, failed = journal.finished_count(since)  # the journal may hold other images
        if done >= len(ids):
            done, failed = finished(journal, ids, since)  # these ones: all of them?
        if progress is not None:
            progress(min(done, len(ids)), len(ids), failed)
        return True if done >= len(ids) else None

    def too_long() -> NoReturn:
        done, _ = finished(journal, ids, since)
        raise BackendUnavailable(
            f"{len(ids) - done} of {len(ids)} images not finished after {timeout} s: "
            "are workers running? (imgstore migrate status shows progress)"
        )

    if timeout is None:
        poll(look, first=every, cap=every, factor=1.0)
    else:
        poll(look, timeout, too_long, first=every, cap=every, factor=1.0)


def report(journal: Journal, records: Sequence[ImageRecord], seconds: float) -> Report:
    """The report of a distributed run, from the outcomes the workers kept: the same as
    a single-host run's (an image done before this journal kept outcomes is
    ``already_migrated``)."""
    entries = {e.image_id: e for e in journal.entries()}
    images = []
    for record in records:
        entry = entries.get(record.image_id)
        if entry is not None and entry.outcome is not None:
            images.append(ImageOutcome(**json.loads(entry.outcome)))
        else:
            images.append(
                ImageOutcome(
                    record.image_id,
                    "already_migrated" if entry and entry.state == journal_mod.DONE else FAILED,
                    record.shown,
                    location=entry.target_location if entry else None,
                    size=entry.size if entry else record.size,
                    error=None if entry and entry.state == journal_mod.DONE else "not finished",
                )
            )
    if journal.target == VERIFY:
        return Report(
            operation="verify",
            images=images,
            seconds=seconds,
            bytes=sum(i.size or 0 for i in images),
        )
    return Report(
        operation="migrate",
        images=images,
        seconds=seconds,
        bytes=sum(i.size or 0 for i in images if i.outcome == "migrated"),
        target=journal.target,
        journal=journal.path,
    )
