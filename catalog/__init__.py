"""The shared catalog: SQLAlchemy models, Alembic migrations and repository functions (Prefect-free)."""

from __future__ import annotations

import threading

from catalog.db import Catalog, open_catalog

_opened: dict[str, Catalog] = {}
_lock = threading.Lock()


def default_catalog() -> Catalog:
    """The configured catalog, opened and migrated once per process."""
    from vmferry.settings import get_settings

    url = get_settings().resolved_catalog_url()
    with _lock:
        if url not in _opened:
            _opened[url] = open_catalog(url)
        return _opened[url]


__all__ = ["Catalog", "default_catalog", "open_catalog"]
