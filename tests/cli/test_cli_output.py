"""The CLI prints text exactly as it is: a thumbprint (``AB:AB:...``, where rich would see the emoji code
``:ab:``) and a bracketed datastore path come out byte for byte, so an operator can copy them."""

from __future__ import annotations

import uuid

import pytest

from blocks.vcenter import VCenter

pytestmark = pytest.mark.usefixtures("prefect_backend")


def test_a_thumbprint_error_is_printed_exactly(vmferry, lab, configured_catalog):
    pinned = ":".join(["AB"] * 20)
    name = f"wrong-print-{uuid.uuid4().hex[:8]}"
    vc = lab.vcenter
    VCenter(host=vc.host, port=vc.port, username=vc.user, password=vc.password, thumbprint=pinned).save(name)

    result = vmferry("discover", "pgtest1", "--vcenter", name)

    assert result.exit_code == 1, result.output
    assert f"the pinned thumbprint is {pinned}" in result.stderr, result.stderr
    assert "\N{NEGATIVE SQUARED AB}" not in result.stderr
    presented = result.stderr.split("presented certificate ", 1)[1].split(",", 1)[0]
    assert len(presented.split(":")) in (20, 32) and all(len(p) == 2 for p in presented.split(":")), presented
