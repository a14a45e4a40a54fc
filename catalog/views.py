"""ORM rows to the pydantic views the catalog hands out, by one rule: a view's field is read from the row's
attribute of the same name. What is not a plain attribute (a nested list, a derived value, a renamed column)
is given explicitly, so every exception to the rule is visible where the view is made."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel

from catalog.errors import CatalogError

V = TypeVar("V", bound=BaseModel)


def view(model: type[V], row: object, **given: object) -> V:
    """``model`` built from ``row``: ``given`` values first, then the row's attributes; a field the row does not
    have keeps the view's default, and one without a default is an error naming both (a renamed column must not
    turn into a silent None)."""
    unknown = sorted(set(given) - set(model.model_fields))
    if unknown:
        raise CatalogError(f"{model.__name__} has no field(s) {unknown}")
    values: dict[str, object] = {}
    for name, field in model.model_fields.items():
        if name in given:
            values[name] = given[name]
        elif hasattr(row, name):
            values[name] = getattr(row, name)
        elif field.is_required():
            raise CatalogError(f"{model.__name__}.{name} has no attribute to read on {type(row).__name__}")
    return model.model_validate(values)
