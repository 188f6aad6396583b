"""``sqlite:///absolute/path/to/db.sqlite?image=<id>`` locations.

Kept apart from the driver so that imgstore can parse these URIs (through the
``imgstore.locations`` entry point) without configuring any backend.
"""

from __future__ import annotations

import urllib.parse

from imgstore.exceptions import BadLocation
from imgstore.location import Location, quote_path, unquote_path, urlsplit


class SqliteLocation(Location):
    """One image in one SQLite database file."""

    schemes = ("sqlite",)

    def __init__(self, db_path: str, image_id: str) -> None:
        if not isinstance(db_path, str) or not db_path.startswith("/") or "\x00" in db_path:
            raise BadLocation("an sqlite location needs an absolute database path")
        if not isinstance(image_id, str) or not image_id or not image_id.isprintable():
            raise BadLocation("an sqlite location needs a non-empty printable image id")
        self.db_path = db_path
        self.image_id = image_id

    @classmethod
    def from_uri(cls, uri: str) -> SqliteLocation:
        """Parse ``sqlite:///path?image=<id>``; :class:`BadLocation` when malformed."""
        parts = urlsplit(uri)
        if parts.scheme.lower() != "sqlite":
            raise BadLocation(f"not an sqlite location: {uri[:200]!r}")
        if parts.netloc:
            raise BadLocation(f"sqlite locations name no host: {uri[:200]!r}")
        if parts.fragment or "#" in uri:
            raise BadLocation(f"sqlite locations take no fragment: {uri[:200]!r}")
        try:
            query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise BadLocation(f"malformed query in sqlite location {uri[:200]!r}") from None
        if len(query) != 1 or query[0][0] != "image":
            raise BadLocation(f"an sqlite location needs exactly '?image=<id>': {uri[:200]!r}")
        return cls(unquote_path(parts.path), query[0][1])

    def to_uri(self) -> str:
        """The URI :meth:`from_uri` reads back to an equal location."""
        image = urllib.parse.quote(self.image_id, safe="")
        return f"sqlite://{quote_path(self.db_path)}?image={image}"
