"""Private calls written straight onto pooled connections (nija.kraken.wire): every reply shape HTTP/1.1 allows
reaches the call it answers, and never the next one, against a raw HTTP server on 127.0.0.1."""

import asyncio
import gzip
import json

import aiohttp
import pytest

from nija.kraken.client import KrakenClient, KrakenContext


def _reply(status_line: bytes, body: bytes, *headers: bytes) -> bytes:
    return b"\r\n".join([status_line, *headers, b"", b""]) + body


def plain(body: bytes) -> bytes:
    return _reply(b"HTTP/1.1 200 OK", body, b"Content-Type: application/json", b"Content-Length: %d" % len(body))


def early_hints_then(body: bytes) -> bytes:
    return _reply(b"HTTP/1.1 103 Early Hints", b"", b"Link: </x>; rel=preload") + plain(body)


def chunked(body: bytes) -> bytes:
    half = len(body) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]))
    return _reply(b"HTTP/1.1 200 OK", chunks + b"0\r\n\r\n", b"Content-Type: application/json",
                  b"Transfer-Encoding: chunked")


def gzipped(body: bytes) -> bytes:
    packed = gzip.compress(body)
    return _reply(b"HTTP/1.1 200 OK", packed, b"Content-Type: application/json", b"Content-Encoding: gzip",
                  b"Content-Length: %d" % len(packed))


def closing(body: bytes) -> bytes:
    return _reply(b"HTTP/1.1 200 OK", body, b"Content-Type: application/json", b"Content-Length: %d" % len(body),
                  b"Connection: close")


def unframed(body: bytes) -> bytes:  # neither length nor chunking: the body runs to the connection's close
    return _reply(b"HTTP/1.1 200 OK", body, b"Content-Type: application/json", b"Connection: close")


CLOSES_AFTER = {closing, unframed}


class RawServer:
    """Answers the n-th request (over any connection) with {"n": n}, framed by `shape`, and counts connections."""

    def __init__(self, shape):
        self.shape, self.requests, self.connections = shape, 0, 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                n, self.requests = self.requests, self.requests + 1
                writer.write(self.shape(json.dumps({"error": [], "result": {"n": n}}).encode()))
                await writer.drain()
                if self.shape in CLOSES_AFTER:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])  # how each loop handles sockets
@pytest.mark.parametrize("shape", [plain, early_hints_then, chunked, gzipped, closing, unframed])
async def test_each_reply_reaches_the_call_it_answers(context, secret_b64, shape):
    raw = RawServer(shape)
    server = await asyncio.start_server(raw.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = KrakenClient("wire-test-key", secret_b64, base_url=f"http://127.0.0.1:{port}", context=context,
                          read_attempts=1)
    try:
        answers = [await client.private("Balance") for _ in range(4)]
    finally:
        server.close()
    assert answers == [{"n": n} for n in range(4)]
    assert raw.connections == (4 if shape in CLOSES_AFTER else 1)  # kept alive unless the server closes


@pytest.mark.parametrize("session_options", [{"trust_env": True}, {"proxy": "http://127.0.0.1:3128"}])
async def test_a_session_that_sends_through_a_proxy_is_refused(secret_b64, tmp_path, session_options):
    async with aiohttp.ClientSession(**session_options) as session:
        with pytest.raises(ValueError, match="proxy"):
            KrakenClient("wire-test-key", secret_b64, session=session)
        with pytest.raises(ValueError, match="proxy"):
            KrakenContext(state_dir=tmp_path, session=session)


def test_a_user_agent_that_would_break_the_request_is_refused(tmp_path):
    with pytest.raises(ValueError, match="user_agent"):
        KrakenContext(state_dir=tmp_path, user_agent="nija\r\nAPI-Key: other")


@pytest.mark.parametrize("key", ["key with space", "key\r\nX-Other: 1", "clé"])
def test_an_api_key_that_would_break_the_request_is_refused_without_echoing_it(secret_b64, key):
    with pytest.raises(ValueError) as info:
        KrakenClient(key, secret_b64)
    assert key not in str(info.value) and "copy it again" in str(info.value)


async def test_a_method_name_that_would_break_the_request_is_refused(context, secret_b64):
    client = KrakenClient("wire-test-key", secret_b64, base_url="http://127.0.0.1:9", context=context)
    with pytest.raises(ValueError, match="method name"):
        await client.private("Balance HTTP/1.1\r\nX: y")
