"""Request signing: the simulator verifies as CloudStack's ApiServer.verifyRequest, the client signs to match."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from clients.cloudstack import CloudStackAuthError, CloudStackClient, encode_value, sign, signing_string
from infra.lab.cloudstack.signature import compute_signature, java_url_encode, unsigned_request
from tests.cloudstack.helpers import UNVERIFIED, base_params, expires_in, new_volume, raw_call

TRICKY_VALUES = [
    "plain",
    "with space",
    "tilde~here",
    "star*here",
    "plus+and/slash",
    "amp&eq=semi;colon:",
    "quote'double\"back\\",
    "percent%20literal",
    "unicode é ü 日本",
    "",
]


def _error_shape(response, name: str = "listzonesresponse", errorcode: int = 401, text: str = UNVERIFIED) -> None:
    assert response.status_code == errorcode
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {name: {"uuidList": [], "errorcode": errorcode, "errortext": text}}


def test_good_signature_via_get_and_post(cloudstack_sim):
    for method in ("GET", "POST"):
        response = raw_call(cloudstack_sim, base_params(cloudstack_sim, "listZones"), method=method)
        assert response.status_code == 200, response.text
        assert response.json()["listzonesresponse"]["count"] == 1


def test_client_signature_is_accepted(cs, cloudstack_sim):
    zones = cs.call("listZones")
    assert zones["zone"][0]["id"] == cloudstack_sim.info().zone_id


def test_bad_signature_is_401_with_cloudstack_error_shape(cloudstack_sim):
    params = base_params(cloudstack_sim, "listZones")
    _error_shape(raw_call(cloudstack_sim, params, secret_key="not-the-secret"))
    _error_shape(raw_call(cloudstack_sim, params, signature="AAAAAAAAAAAAAAAAAAAAAAAAAAA="))


def test_missing_signature_or_api_key_is_401(cloudstack_sim):
    params = base_params(cloudstack_sim, "listZones")
    _error_shape(raw_call(cloudstack_sim, params, sign=False))
    without_key = {k: v for k, v in params.items() if k != "apiKey"}
    _error_shape(raw_call(cloudstack_sim, without_key))
    _error_shape(raw_call(cloudstack_sim, {**params, "apiKey": "someone-else"}))


def test_signature_version_3_needs_a_future_expires(cloudstack_sim):
    params = base_params(cloudstack_sim, "listZones", signatureVersion="3")
    _error_shape(raw_call(cloudstack_sim, params))  # no expires
    _error_shape(raw_call(cloudstack_sim, {**params, "expires": expires_in(-60)}))
    _error_shape(raw_call(cloudstack_sim, {**params, "expires": "tomorrow"}))
    assert raw_call(cloudstack_sim, {**params, "expires": expires_in(300)}).status_code == 200
    # CloudStack's own example format, with a non-UTC offset
    assert raw_call(cloudstack_sim, {**params, "expires": "2999-10-10T12:00:00+0530"}).status_code == 200


def test_legacy_request_without_signature_version_is_accepted(cloudstack_sim):
    # api.enforce.post.requests.and.timestamps is off by default: no expires needed without signatureVersion=3
    assert raw_call(cloudstack_sim, base_params(cloudstack_sim, "listZones")).status_code == 200


def test_parameter_names_sort_case_sensitively_before_lower_casing(cloudstack_sim):
    """Java sorts "B" before "a"; signing with lower-case-then-sort gives another string and is refused."""
    params = base_params(cloudstack_sim, "listZones", B="1", a="2")
    assert raw_call(cloudstack_sim, params).status_code == 200
    lower_then_sort = "&".join(
        f"{k.lower()}={java_url_encode(v)}" for k, v in sorted((k.lower(), v) for k, v in params.items())
    ).lower()
    assert lower_then_sort != unsigned_request(params).lower()
    wrong = base64.b64encode(
        hmac.new(cloudstack_sim.secret_key.encode(), lower_then_sort.encode(), hashlib.sha1).digest()
    ).decode()
    _error_shape(raw_call(cloudstack_sim, params, signature=wrong))


def test_upper_case_names_verify_and_command_parameters_are_case_insensitive(cloudstack_sim):
    info = cloudstack_sim.info()
    # apiKey / signatureVersion / expires are matched ignoring case ...
    params = {
        "command": "listZones",
        "response": "json",
        "APIKEY": cloudstack_sim.api_key,
        "SignatureVersion": "3",
        "EXPIRES": expires_in(60),
    }
    assert raw_call(cloudstack_sim, params).status_code == 200
    # ... and so are a command's own parameters: ParamUnpackWorker lower-cases every top-level name
    params = base_params(
        cloudstack_sim, "createVolume", ZoneId=info.zone_id, diskOfferingId=info.custom_disk_offering_id, Size="1"
    )
    response = raw_call(cloudstack_sim, params)
    assert response.status_code == 200, response.text
    assert set(response.json()["createvolumeresponse"]) == {"id", "jobid"}


@pytest.mark.parametrize("value", TRICKY_VALUES)
def test_client_encoding_matches_java_url_encoder(value):
    assert encode_value(value) == java_url_encode(value).replace("+", "%20")
    params = {"command": "listVolumes", "name": value, "apikey": "k"}
    assert signing_string(params) == unsigned_request(params).lower()
    assert sign(params, "s3cret") == compute_signature(params, "s3cret")


def test_tilde_space_and_star_values_round_trip_through_a_signed_request(cs, cloudstack_sim):
    for value in TRICKY_VALUES[:-1]:
        volume = new_volume(cs, cloudstack_sim, name=value)
        assert volume.name == value
        assert [v.id for v in cs.list_volumes(name=value)] == [volume.id]


def test_client_with_wrong_secret_raises_auth_error_quoting_cloudstack(cloudstack_sim):
    client = CloudStackClient(cloudstack_sim.url, cloudstack_sim.api_key, "wrong", timeout=5)
    with pytest.raises(CloudStackAuthError) as caught:
        client.list_volumes()
    assert caught.value.errorcode == 401
    assert f'"{UNVERIFIED}"' in str(caught.value)
    assert "listVolumes" in str(caught.value)
    client.close()
