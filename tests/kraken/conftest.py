"""Fixtures for the Kraken client tests: a context per test with its own state dir and fast public pacing."""

import base64
import os

import pytest

from nija.kraken.client import KrakenContext
from nija.kraken.nonce import NonceCoordinator
from tests.kraken.scripted import serve_scripted


@pytest.fixture
def secret_b64() -> str:
    return base64.b64encode(os.urandom(64)).decode()


@pytest.fixture
async def context(tmp_path):
    ctx = KrakenContext(nonces=NonceCoordinator(tmp_path / "state"), public_rate_per_s=1000.0)
    yield ctx
    await ctx.close()


@pytest.fixture
async def kraken():
    """A scripted Kraken on 127.0.0.1 (tests.kraken.scripted): `kraken.on("Balance", Recorder(...))`, `kraken.url`."""
    async with serve_scripted() as scripted:
        yield scripted
