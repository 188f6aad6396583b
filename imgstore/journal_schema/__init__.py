"""The migration journal's schema as Alembic revisions (``versions/``), applied by
:mod:`imgstore.journal_db` to a database named by a SQLAlchemy URL.

A new revision is a file in ``versions/`` written by hand (``down_revision`` = the
previous head) and the same change in :mod:`imgstore.journal_db`'s sqlite statements,
which keep a sqlite journal usable without SQLAlchemy;
``tests/unit/test_journal_schema.py`` fails when the two differ.
"""
