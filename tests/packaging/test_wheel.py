"""The wheel holds the product and nothing of the lab, the tests or the benchmarks."""

from __future__ import annotations

import zipfile
from pathlib import Path

from tests.packaging.conftest import REPO

PRODUCT = {"common", "agent", "vmferry", "catalog", "clients", "orchestration", "blocks", "tasks", "flows"}
NOT_PRODUCT = {"infra", "tests", "bench", "deployments"}


def test_the_wheel_has_the_product_and_no_infra_or_tests(built_wheel: Path):
    names = zipfile.ZipFile(built_wheel).namelist()
    top = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}

    assert top == PRODUCT
    assert not [name for name in names if name.split("/", 1)[0] in NOT_PRODUCT]
    # Every package of the checkout is either product or named above: a new one must be placed on purpose.
    packages = {path.parent.name for path in REPO.glob("*/__init__.py")}
    assert packages == PRODUCT | (NOT_PRODUCT - {"deployments"})
    # What the product needs at run time beside its modules: the catalog's migrations.
    assert "catalog/migrations/env.py" in names
    assert any(name.startswith("catalog/migrations/versions/") and name.endswith(".py") for name in names)
    for package in PRODUCT:
        assert f"{package}/__init__.py" in names
