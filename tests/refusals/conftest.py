"""Refusal tests: every place that raises one of our ``*Refused`` errors, reached for real, on SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.databases import fresh_catalog_url
from vmferry.errors import EXIT_REFUSED, exit_code_of, is_permanent, label_of


@pytest.fixture(params=["sqlite"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_catalog_url(request.param, tmp_path) as url:
        yield url


def assert_refusal(exc: BaseException, *named: str) -> None:
    """A refusal: exit 4 on the command line, never retried, and its words name the VM or disk and the fix."""
    assert exit_code_of(exc) == EXIT_REFUSED and label_of(exc) == "refused" and is_permanent(exc)
    message = str(exc)
    for words in named:
        assert words in message, f"{words!r} not in {message!r}"
