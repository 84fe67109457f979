"""OTLP/trace wire formats: decode requests, encode responses. Uses opentelemetry-proto's classes.

OTLP/JSON differs from protobuf's canonical JSON in one way that matters: trace and span ids are
hex, not base64 (OTLP specification, "JSON Protobuf Encoding"), so ids are rewritten before parsing.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import zlib
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


class DecodeError(ValueError):
    """Input that is not a valid OTLP request. ``reason`` is a short metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding``; never inflate past ``limit`` bytes (zip bombs)."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc not in ("gzip", "deflate"):
        raise DecodeError("bad_encoding", f"Content-Encoding {enc!r} is not supported; use gzip or identity")
    wbits = 16 + zlib.MAX_WBITS if enc == "gzip" else zlib.MAX_WBITS
    try:
        d = zlib.decompressobj(wbits)
        out = d.decompress(body, limit + 1)
        if len(out) > limit or d.unconsumed_tail:
            raise DecodeError("too_large", f"decompressed body exceeds the limit of {limit} bytes")
        if not d.eof:
            raise DecodeError("bad_encoding", f"{enc} body is truncated")
        return out
    except zlib.error as exc:
        raise DecodeError("bad_encoding", f"{enc} body cannot be decompressed: {exc}") from None


def _fix_ids(node: Any) -> None:
    """Rewrite OTLP/JSON hex ids to base64 in place so protobuf's JSON parser accepts them."""
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            for key, val in cur.items():
                if key in _ID_KEYS and isinstance(val, str) and val:
                    try:
                        cur[key] = base64.b64encode(bytes.fromhex(val)).decode()
                    except ValueError:
                        raise DecodeError("bad_json", f"{key} {val[:40]!r} is not a hex id") from None
                elif isinstance(val, (dict, list)):
                    stack.append(val)
        elif isinstance(cur, list):
            stack.extend(v for v in cur if isinstance(v, (dict, list)))


def decode_request(body: bytes, content_type: str | None) -> ExportTraceServiceRequest:
    mtype = media_type(content_type)
    req = ExportTraceServiceRequest()
    if mtype == PROTOBUF:
        try:
            req.ParseFromString(body)
        except (ProtobufDecodeError, RuntimeError, ValueError) as exc:
            raise DecodeError("bad_protobuf", f"body is not a valid OTLP ExportTraceServiceRequest protobuf: {exc}") from None
        if body and not req.resource_spans and len(UnknownFieldSet(req)):
            # Parses only as unknown fields: some other message or random bytes, not OTLP traces.
            raise DecodeError("bad_protobuf", "body is not an OTLP ExportTraceServiceRequest (no resourceSpans field)")
        return req
    if mtype == JSON:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise DecodeError("bad_json", f"body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise DecodeError("bad_json", "body must be a JSON object with resourceSpans")
        try:
            _fix_ids(data)
            json_format.ParseDict(data, req, ignore_unknown_fields=True)
        except DecodeError:
            raise
        except (json_format.ParseError, ValueError, TypeError, RecursionError, binascii.Error) as exc:
            raise DecodeError("bad_json", f"JSON is not an OTLP ExportTraceServiceRequest: {exc}") from None
        return req
    raise DecodeError(
        "bad_content_type",
        f"Content-Type {content_type or '(none)'!r} is not supported; use {PROTOBUF} or {JSON}",
    )


def encode_response(content_type: str, rejected: int = 0, message: str = "") -> bytes:
    resp = ExportTraceServiceResponse()
    if rejected or message:
        resp.partial_success.rejected_spans = rejected
        resp.partial_success.error_message = message
    if media_type(content_type) == JSON:
        return json_format.MessageToJson(resp, indent=None).encode()
    return resp.SerializeToString()


def gzip_body(body: bytes) -> bytes:
    return gzip.compress(body)
