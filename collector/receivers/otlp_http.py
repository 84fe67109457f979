"""OTLP/HTTP receiver: ``POST /v1/traces`` with protobuf or JSON bodies, gzip allowed.

Answers per the OTLP specification: 200 with a (partial-success) ExportTraceServiceResponse,
400/413/415 with a google.rpc.Status naming what is wrong, 401 without the bearer token,
429 + Retry-After when the pipeline queue is full, 503 + Retry-After while starting or draining
(both retryable, so exporters back off). Optional TLS (``tls``).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.rpc import status_pb2

from .. import otlp
from . import NetworkReceiver, Overloaded, Unavailable

log = logging.getLogger("toolwatch.receiver.otlp_http")
NAME = "otlp_http"
_HTTP_FOR = {"too_large": 413, "bad_content_type": 415}
STOP_GRACE_S = 5.0
"""How long a stop lets requests in flight finish before it closes their connections. aiohttp's
default (60 s) let one slow or stalled client, its body half sent, hold the daemon's stop (or an
OTLP worker's, which the daemon then killed after 20 s) past a service manager's stop timeout. A
request cut off was not admitted; the exporter sends it again, as after any connection error."""


def _status_body(content_type: str, code: int, message: str) -> tuple[bytes, str]:
    st = status_pb2.Status(code=code, message=message)
    if otlp.media_type(content_type) == otlp.JSON:
        return json_format.MessageToJson(st, indent=None).encode(), otlp.JSON
    return st.SerializeToString(), otlp.PROTOBUF


class OtlpHttpReceiver(NetworkReceiver):
    name = NAME

    _runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        # Decompression is ours (bounded, zip-bomb safe), not aiohttp's.
        app = web.Application(client_max_size=self.max_body_bytes, handler_args={"auto_decompress": False})
        app.router.add_post("/v1/traces", self.handle)
        return app

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=STOP_GRACE_S)
        await self._runner.setup()
        site = self._site(self._runner, self.tls.ssl_context() if self.tls else None)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.port
        log.info("OTLP/HTTP receiver on %s://%s:%s/v1/traces", "https" if self.tls else "http", self.host, self.bound_port)

    def _site(self, runner: web.AppRunner, ssl_context: Any) -> web.BaseSite:
        """Where to listen: ``host:port`` here; a worker process accepts on a socket it was handed."""
        return web.TCPSite(runner, self.host, self.port, ssl_context=ssl_context)

    async def shutdown(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def _reject(self, request: web.Request, status: int, reason: str, message: str, **extra: Any) -> web.Response:
        self._count_rejected(reason)
        body, ctype = _status_body(request.content_type, 3 if status < 500 else 14, message)
        return web.Response(status=status, body=body, content_type=ctype, **extra)

    def _status(self, request: web.Request, status: int, message: str, **extra: Any) -> web.Response:
        """A retryable answer; the request was counted by ``Ingest`` already."""
        body, ctype = _status_body(request.content_type, 8 if status == 429 else 14, message)
        return web.Response(status=status, body=body, content_type=ctype, **extra)

    async def handle(self, request: web.Request) -> web.Response:
        if self.bearer_token and not hmac.compare_digest(request.headers.get("Authorization", ""), self._auth):
            return self._reject(request, 401, "unauthorized", "missing or wrong bearer token")
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return self._reject(
                request, 413, "too_large", f"body of {request.content_length} bytes exceeds the limit of {self.max_body_bytes}"
            )
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._reject(request, 413, "too_large", f"body exceeds the limit of {self.max_body_bytes} bytes")
        retry = {"Retry-After": str(self.retry_after_s)}
        try:
            self.refuse_early()  # before the body is decompressed and decoded only to be refused
        except Overloaded as exc:
            return self._status(request, 429, str(exc), headers=retry)
        try:
            body = otlp.decompress(raw, request.headers.get("Content-Encoding"), self.max_body_bytes)
            decoded = otlp.decode_export(body, request.headers.get("Content-Type"))
        except otlp.DecodeError as exc:
            return self._reject(request, _HTTP_FOR.get(exc.reason, 400), exc.reason, str(exc))
        try:
            result = await self.admit(decoded)
        except Overloaded as exc:
            return self._status(request, 429, str(exc), headers=retry)
        except Unavailable as exc:
            return self._status(request, 503, str(exc), headers=retry)
        ctype = otlp.JSON if otlp.media_type(request.content_type) == otlp.JSON else otlp.PROTOBUF
        return web.Response(
            status=200, body=otlp.encode_response(ctype, result.rejected, result.message), content_type=ctype
        )
