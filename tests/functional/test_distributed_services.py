"""The servers of the distributed migrate, as the harness starts them: RabbitMQ, MariaDB
and PostgreSQL (``tests/functional/services/``).

Each one does a real round trip with the credentials the harness published (a message
published and consumed through kombu, Celery's transport; a table created, written and
read through SQLAlchemy), refuses a wrong password, and refuses its well-known default
credentials (guest/guest, root without a password, postgres without a password).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.functional.conftest import import_or_fail, require_service

pytestmark = pytest.mark.functional

WHY = "the distributed extra: .venv/bin/pip install -e '.[distributed]'"
amqp = import_or_fail("amqp", WHY)
kombu = import_or_fail("kombu", WHY)
sqlalchemy = import_or_fail("sqlalchemy", WHY)

DATABASES = ("mariadb", "postgresql")


@pytest.fixture(scope="module")
def rabbitmq() -> dict[str, Any]:
    return require_service("rabbitmq")


@pytest.fixture(scope="module", params=DATABASES)
def database(request: pytest.FixtureRequest) -> dict[str, Any]:
    return require_service(request.param)


# -- RabbitMQ -------------------------------------------------------------------


def _amqp_login(host: str, port: int, user: str, password: str, vhost: str) -> None:
    conn = amqp.Connection(
        host=f"{host}:{port}",
        userid=user,
        password=password,
        virtual_host=vhost,
        connect_timeout=10,
    )
    try:
        conn.connect()
    finally:
        conn.collect()


def test_rabbitmq_message_round_trip(rabbitmq: dict[str, Any]) -> None:
    """A message published on one connection is consumed on another, through the broker."""
    queue = f"imgstore-selftest-{uuid.uuid4().hex[:12]}"
    body = {"image": str(uuid.uuid4()), "step": "copy"}
    with kombu.Connection(rabbitmq["url_with_password"], connect_timeout=10) as producer:
        simple = producer.SimpleQueue(queue)
        simple.put(body, serializer="json")
        simple.close()
    with kombu.Connection(rabbitmq["url_with_password"], connect_timeout=10) as consumer:
        simple = consumer.SimpleQueue(queue)
        try:
            message = simple.get(block=True, timeout=10)
            message.ack()
            left = simple.qsize()
        finally:
            simple.close()  # cancels the consumer: then the queue can go
            consumer.default_channel.queue_delete(queue)
    assert message.payload == body
    assert message.delivery_info["routing_key"] == queue
    assert left == 0


def test_rabbitmq_login_reaches_only_its_vhost(rabbitmq: dict[str, Any]) -> None:
    host, port, user = rabbitmq["host"], rabbitmq["port"], rabbitmq["user"]
    _amqp_login(host, port, user, rabbitmq["password"], rabbitmq["vhost"])
    with pytest.raises(amqp.exceptions.NotAllowed, match="vhost / not found"):
        _amqp_login(host, port, user, rabbitmq["password"], "/")


def test_rabbitmq_refuses_a_wrong_password(rabbitmq: dict[str, Any]) -> None:
    with pytest.raises(amqp.exceptions.AccessRefused):
        _amqp_login(
            rabbitmq["host"],
            rabbitmq["port"],
            rabbitmq["user"],
            rabbitmq["password"] + "x",
            rabbitmq["vhost"],
        )


@pytest.mark.parametrize("vhost", ["/", "imgstore"])
def test_rabbitmq_refuses_guest(rabbitmq: dict[str, Any], vhost: str) -> None:
    """guest/guest, RabbitMQ's default user, does not exist (we connect from 127.0.0.1,
    where the default broker would let guest in)."""
    with pytest.raises(amqp.exceptions.AccessRefused):
        _amqp_login(rabbitmq["host"], rabbitmq["port"], "guest", "guest", vhost)


def test_rabbitmq_url_without_credentials_is_refused(rabbitmq: dict[str, Any]) -> None:
    with (
        pytest.raises(amqp.exceptions.AccessRefused),
        kombu.Connection(rabbitmq["url"], connect_timeout=10) as conn,
    ):
        conn.connect()


# -- MariaDB and PostgreSQL --------------------------------------------------------


@pytest.fixture
def engine(database: dict[str, Any]) -> Iterator[Any]:
    eng = sqlalchemy.create_engine(database["url_with_password"], pool_pre_ping=True)
    yield eng
    eng.dispose()


def _refused(url: Any) -> str:
    """The error message of a login to ``url`` (which must fail)."""
    eng = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError) as info, eng.connect():
            pass
    finally:
        eng.dispose()
    return str(info.value.orig)


def _is_auth_refusal(name: str, message: str) -> bool:
    if name == "mariadb":
        return "(1045," in message and "Access denied" in message
    return "password authentication failed" in message or "no password supplied" in message


def test_database_table_round_trip(database: dict[str, Any], engine: Any) -> None:
    """Create a table, insert rows in one transaction, read them back on a new connection."""
    meta = sqlalchemy.MetaData()
    table = sqlalchemy.Table(
        f"selftest_{uuid.uuid4().hex[:12]}",
        meta,
        sqlalchemy.Column("image_id", sqlalchemy.String(36), primary_key=True),
        sqlalchemy.Column("size", sqlalchemy.BigInteger, nullable=False),
        sqlalchemy.Column("state", sqlalchemy.String(16), nullable=False),
    )
    rows = [
        {"image_id": str(uuid.uuid4()), "size": 5 * 2**40 + n, "state": "copied"} for n in range(3)
    ]
    meta.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(table.insert(), rows)
        engine.dispose()  # the read below comes over a new connection
        with engine.connect() as conn:
            got = [dict(r._mapping) for r in conn.execute(table.select().order_by("image_id"))]
            database_name = conn.execute(
                sqlalchemy.text(
                    "SELECT DATABASE()"
                    if database["name"] == "mariadb"
                    else "SELECT current_database()"
                )
            ).scalar()
        assert got == sorted(rows, key=lambda r: r["image_id"])
        assert database_name == database["database"]
    finally:
        meta.drop_all(engine)
    with engine.connect() as conn:
        assert not sqlalchemy.inspect(conn).has_table(table.name)


def test_database_user_is_not_an_administrator(database: dict[str, Any], engine: Any) -> None:
    """The published user owns its database and nothing else."""
    with engine.connect() as conn:
        if database["name"] == "mariadb":
            with pytest.raises(sqlalchemy.exc.OperationalError, match=r"\(1142,|\(1044,"):
                conn.execute(sqlalchemy.text("SELECT User FROM mysql.user"))
        else:
            superuser = conn.execute(
                sqlalchemy.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            ).scalar()
            assert superuser is False


def test_database_admin_logs_in(database: dict[str, Any]) -> None:
    eng = sqlalchemy.create_engine(
        database["admin_url_with_password"], poolclass=sqlalchemy.pool.NullPool
    )
    try:
        with eng.connect() as conn:
            user = conn.execute(sqlalchemy.text("SELECT current_user")).scalar()
    finally:
        eng.dispose()
    assert str(user).split("@")[0] == database["admin_user"]


def test_database_refuses_a_wrong_password(database: dict[str, Any]) -> None:
    url = sqlalchemy.make_url(database["url_with_password"])
    message = _refused(url.set(password=database["password"] + "x"))
    assert _is_auth_refusal(database["name"], message), message
    assert database["password"] not in message


@pytest.mark.parametrize("password", [None, ""])
def test_database_refuses_the_default_superuser_without_password(
    database: dict[str, Any], password: str | None
) -> None:
    """root (MariaDB) and postgres (PostgreSQL) need their generated password."""
    url = sqlalchemy.make_url(database["url"]).set(
        username=database["admin_user"], password=password
    )
    message = _refused(url)
    assert _is_auth_refusal(database["name"], message), message


def test_mariadb_root_without_password_is_refused_on_the_socket_too() -> None:
    """No ``unix_socket`` login for root either: the machine's root needs the password."""
    details = require_service("mariadb")
    url = sqlalchemy.make_url(f"mysql+pymysql://root@localhost/?unix_socket={details['socket']}")
    message = _refused(url)
    assert _is_auth_refusal("mariadb", message), message
