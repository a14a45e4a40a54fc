"""This catalog's installation id: a UUID made once, the owner tag on every CloudStack volume vmferry creates.

Two catalogs replicating into one CloudStack account (a second site, a catalog rebuilt after a loss) have
different ids, so neither can take the other's volumes for its own, whatever the volumes are called.
"""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from catalog.db import Catalog
from catalog.models import Installation

_ROW = 1


def installation_id(catalog: Catalog) -> str:
    """The id, made by the first caller (a concurrent first caller reads the winner's)."""

    def work(session: Session) -> str:
        row = session.get(Installation, _ROW)
        if row is None:
            row = Installation(id=_ROW, installation_id=str(uuid.uuid4()))
            session.add(row)
            session.flush()
        return row.installation_id

    return catalog.write(work, retry_integrity=True)


def existing_installation_id(catalog: Catalog) -> str | None:
    """The id when one was made, without making it (a reader that must not write, like a dry run)."""
    with catalog.session() as session:
        row = session.get(Installation, _ROW)
        return row.installation_id if row is not None else None
