"""Errors the catalog raises; each message says what happened and what to do."""

from vmferry.errors import NotFoundError, VmferryError


class CatalogError(VmferryError):
    """Base class for catalog errors."""


class CatalogUnavailable(CatalogError):
    """The catalog database cannot be reached or migrated."""


class PortRangeExhausted(CatalogError):
    """Every port of the configured NBD range is leased."""


class UnknownRecord(CatalogError, NotFoundError):
    """A row the caller named does not exist."""
