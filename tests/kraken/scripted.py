"""A scripted Kraken on 127.0.0.1 for the client's narrow tests: each method answers from a script of replies
(an envelope, a raw status and body, or a socket-level failure) and records what it was sent."""

import asyncio
import socket
import struct
import time
from contextlib import asynccontextmanager
from urllib.parse import parse_qs

from aiohttp import web

from nija.kraken.auth import decode_secret, sign


def envelope(result=None, error=()):
    return {"error": list(error), "result": result} if not error else {"error": list(error)}


class Raw:
    """A non-envelope reply: any status, body and content type."""

    def __init__(self, status, body, content_type="text/html"):
        self.status, self.body, self.content_type = status, body, content_type


DROP = "drop"  # close the connection without answering
RESET = "reset"  # reset the connection (TCP RST) without answering
HANG = "hang"  # answer later than the client's timeout


class Recorder:
    """Records every request to one method (form fields, headers, signature check) and answers from a script;
    the last reply repeats."""

    def __init__(self, secret_b64, *replies):
        self.secret = decode_secret(secret_b64)
        self.replies = list(replies)
        self.requests: list[dict] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.method == "POST":
            fields = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            valid = request.headers.get("API-Sign") == sign(request.path, fields["nonce"], body, self.secret)
        else:
            fields, valid = dict(request.query), True
        self.requests.append({"fields": fields, "headers": dict(request.headers), "signature_valid": valid,
                              "received_at": time.time()})
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if reply == DROP:
            request.transport.abort()
            return web.Response()
        if reply == RESET:
            request.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.transport.abort()
            return web.Response()
        if reply == HANG:
            await asyncio.sleep(0.5)
            return web.json_response(envelope({}))
        if isinstance(reply, Raw):
            return web.Response(status=reply.status, text=reply.body, content_type=reply.content_type)
        return web.json_response(reply)


class ScriptedKraken:
    def __init__(self):
        self.routes: dict[str, Recorder] = {}

    def on(self, method: str, recorder: Recorder) -> Recorder:
        self.routes[method] = recorder
        return recorder

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        recorder = self.routes.get(request.match_info["method"])
        if recorder is None:
            return web.json_response(envelope(error=["EGeneral:Unknown method"]))
        return await recorder.handle(request)


@asynccontextmanager
async def serve_scripted():
    """A ScriptedKraken served on a free port of 127.0.0.1 (its `.url`), stopped on leaving."""
    scripted = ScriptedKraken()
    app = web.Application()
    app.router.add_route("*", "/0/{scope}/{method}", scripted.dispatch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    scripted.url = f"http://127.0.0.1:{port}"
    try:
        yield scripted
    finally:
        await runner.cleanup()
