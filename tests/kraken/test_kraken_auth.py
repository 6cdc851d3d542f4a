import json
from pathlib import Path

import pytest

from nija.kraken.auth import decode_secret, sign

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kraken"
VECTORS = json.loads((FIXTURES / "auth_vectors.json").read_text())["vectors"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_signature_reproduces_every_vector(vector):
    secret = decode_secret(vector["secret_b64"])
    assert sign(vector["uri_path"], vector["nonce"], vector["body"], secret) == vector["expected_api_sign"]


def test_malformed_secret_error_does_not_echo_it():
    with pytest.raises(ValueError) as info:
        decode_secret("not*base64*secret")
    assert "not*base64*secret" not in str(info.value)
