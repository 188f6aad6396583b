"""The journal's Alembic revisions, oldest first."""
