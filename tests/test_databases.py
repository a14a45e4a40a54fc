"""The MariaDB half of the suite must not vanish silently in CI."""

from __future__ import annotations

import pytest

from tests.databases import require_mariadb


def test_unreachable_mariadb_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true requires it"):
        require_mariadb(port=1)


def test_unreachable_mariadb_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="unreachable"):
        require_mariadb(port=1)
