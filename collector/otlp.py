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

from dataclasses import dataclass, field

from google.protobuf import json_format
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope

from . import otlp_attrmap

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


class DecodeError(ValueError):
    """Input that is not a valid OTLP request. ``reason`` is a short metric label."""

    def __init__(self, reason: str, message: str, *, salvageable: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.salvageable = salvageable
        """False when the body is not an OTLP request at all, so no span in it can be kept."""


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


_BAD_ID: dict[str, str] = {}  # not a bytes value: the span carrying it fails to parse, alone


def _fix_ids(node: Any, strict: bool = True) -> None:
    """Rewrite OTLP/JSON hex ids to base64 in place so protobuf's JSON parser accepts them.

    ``strict``: a bad id rejects the whole request; otherwise it marks only its own span bad.
    """
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            for key, val in cur.items():
                if key in _ID_KEYS and isinstance(val, str) and val:
                    try:
                        cur[key] = base64.b64encode(bytes.fromhex(val)).decode()
                    except ValueError:
                        if not strict:
                            cur[key] = _BAD_ID.copy()
                            continue
                        raise DecodeError("bad_json", f"{key} {val[:40]!r} is not a hex id") from None
                elif isinstance(val, (dict, list)):
                    stack.append(val)
        elif isinstance(cur, list):
            stack.extend(v for v in cur if isinstance(v, (dict, list)))


def decode_request(body: bytes, content_type: str | None, *, attr_map: bool = False) -> ExportTraceServiceRequest:
    """``body`` as an ``ExportTraceServiceRequest``; raises ``DecodeError`` whose ``reason`` names what is wrong.

    ``attr_map``: a protobuf body comes back as an ``otlp_attrmap.AttrMapRequest`` wherever that
    reads exactly as the ``ExportTraceServiceRequest`` (what the normaliser reads fastest).
    """
    mtype = media_type(content_type)
    if attr_map and mtype == PROTOBUF:
        fast = otlp_attrmap.parse(body)
        if fast is not None:
            return fast  # type: ignore[no-any-return]
    req = ExportTraceServiceRequest()
    if mtype == PROTOBUF:
        try:
            req.ParseFromString(body)
        except (ProtobufDecodeError, RuntimeError, ValueError) as exc:
            raise DecodeError("bad_protobuf", f"body is not a valid OTLP ExportTraceServiceRequest protobuf: {exc}") from None
        if body and not req.resource_spans and len(UnknownFieldSet(req)):
            # Parses only as unknown fields: some other message or random bytes, not OTLP traces.
            raise DecodeError(
                "bad_protobuf", "body is not an OTLP ExportTraceServiceRequest (no resourceSpans field)", salvageable=False
            )
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


@dataclass
class Decoded:
    """A request with every span that could be decoded; ``rejected`` spans could not be.

    ``request`` is an ``otlp_attrmap.AttrMapRequest`` (span attributes as a map, what the
    normaliser reads fastest) where that reads exactly as the ``ExportTraceServiceRequest`` would.
    """

    request: Any
    rejected: int = 0
    errors: list[str] = field(default_factory=list)

    def lost(self, n: int, message: str) -> None:
        self.rejected += n
        if len(self.errors) < 5:
            self.errors.append(message)


_PARSE_ERRORS = (ProtobufDecodeError, RuntimeError, ValueError)
_LEN = 2  # protobuf wire type: length-delimited


def _fields(blob: bytes) -> list[tuple[int, int, object]]:
    """(number, wire type, data) of each field of a message, read by protobuf as unknown fields."""
    holder = Empty()
    holder.ParseFromString(blob)
    return [(f.field_number, f.wire_type, f.data) for f in UnknownFieldSet(holder)]


def _salvage_protobuf(body: bytes) -> Decoded:
    """Keep every span that parses when the request as a whole does not (e.g. one non-UTF-8 string).

    Walks ResourceSpans -> ScopeSpans -> Span with protobuf's own parser, field numbers from
    trace.proto (1 resource_spans; 1 resource, 2 scope_spans; 1 scope, 2 spans).
    """
    out = Decoded(ExportTraceServiceRequest())
    try:
        top = _fields(body)
    except _PARSE_ERRORS as exc:
        raise DecodeError("bad_protobuf", f"body is not a valid OTLP ExportTraceServiceRequest protobuf: {exc}") from None
    for num, wt, blob in top:
        if num != 1 or wt != _LEN:
            continue
        rs = out.request.resource_spans.add()
        try:
            rs.ParseFromString(blob)  # type: ignore[arg-type]
            continue
        except _PARSE_ERRORS:
            rs.Clear()
        try:
            rs_fields = _fields(blob)  # type: ignore[arg-type]
        except _PARSE_ERRORS:
            out.lost(1, "a resourceSpans entry is not valid protobuf; its spans are lost")
            continue
        for rnum, rwt, rblob in rs_fields:
            if rwt != _LEN:
                continue
            if rnum == 1:
                try:
                    rs.resource.CopyFrom(Resource.FromString(rblob))  # type: ignore[arg-type]
                except _PARSE_ERRORS:
                    out.errors.append("a resource could not be decoded; its spans fall back to other agent hints")
            elif rnum == 2:
                _salvage_scope(rblob, rs, out)  # type: ignore[arg-type]
    return out


def _salvage_scope(blob: bytes, rs: ResourceSpans, out: Decoded) -> None:
    ss = rs.scope_spans.add()
    try:
        ss.ParseFromString(blob)
        return
    except _PARSE_ERRORS:
        ss.Clear()
    try:
        ss_fields = _fields(blob)
    except _PARSE_ERRORS:
        out.lost(1, "a scopeSpans entry is not valid protobuf; its spans are lost")
        return
    for num, wt, data in ss_fields:
        if wt != _LEN:
            continue
        if num == 1:
            try:
                ss.scope.CopyFrom(InstrumentationScope.FromString(data))  # type: ignore[arg-type]
            except _PARSE_ERRORS:
                pass
        elif num == 2:
            try:
                ss.spans.append(Span.FromString(data))  # type: ignore[arg-type]
            except _PARSE_ERRORS as exc:
                out.lost(1, f"a span is not valid protobuf (e.g. a string that is not UTF-8): {exc}"[:200])


def _salvage_json(data: dict[str, Any]) -> Decoded:
    """Keep every span that parses when the request as a whole does not (a wrong type somewhere)."""
    out = Decoded(ExportTraceServiceRequest())
    rss = data.get("resourceSpans", data.get("resource_spans"))
    if not isinstance(rss, list):
        raise DecodeError("bad_json", "resourceSpans must be a list")
    for rs_data in rss:
        rs = out.request.resource_spans.add()
        try:
            json_format.ParseDict(rs_data, rs, ignore_unknown_fields=True)
            continue
        except (json_format.ParseError, ValueError, TypeError, RecursionError, AttributeError):
            rs.Clear()
        if not isinstance(rs_data, dict):
            out.lost(1, "a resourceSpans entry is not a JSON object")
            continue
        try:
            json_format.ParseDict(rs_data.get("resource") or {}, rs.resource, ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError, TypeError, RecursionError, AttributeError):
            rs.resource.Clear()
            out.errors.append("a resource could not be decoded; its spans fall back to other agent hints")
        sss = rs_data.get("scopeSpans", rs_data.get("scope_spans")) or []
        for ss_data in sss if isinstance(sss, list) else [sss]:
            ss = rs.scope_spans.add()
            spans = ss_data.get("spans") if isinstance(ss_data, dict) else None
            if not isinstance(spans, list):
                out.lost(1, "a scopeSpans entry has no spans list")
                continue
            for span_data in spans:
                try:
                    json_format.ParseDict(span_data, ss.spans.add(), ignore_unknown_fields=True)
                except (json_format.ParseError, ValueError, TypeError, RecursionError, AttributeError) as exc:
                    del ss.spans[-1]
                    out.lost(1, f"a span is not valid OTLP JSON: {exc}"[:200])
    return out


def decode_export(body: bytes, content_type: str | None) -> Decoded:
    """Like ``decode_request``, but one bad span costs only itself: the rest are kept and counted."""
    mtype = media_type(content_type)
    if mtype == PROTOBUF:
        try:
            return Decoded(decode_request(body, content_type, attr_map=True))
        except DecodeError as exc:
            if not exc.salvageable:
                raise
            out = _salvage_protobuf(body)
            if not out.request.resource_spans and not out.rejected:
                raise
            return out
    if mtype == JSON:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise DecodeError("bad_json", f"body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise DecodeError("bad_json", "body must be a JSON object with resourceSpans")
        try:
            _fix_ids(data, strict=False)
        except RecursionError:
            raise DecodeError("bad_json", "JSON is nested too deeply") from None
        req = ExportTraceServiceRequest()
        try:
            json_format.ParseDict(data, req, ignore_unknown_fields=True)
            return Decoded(req)
        except (json_format.ParseError, ValueError, TypeError, RecursionError, AttributeError, binascii.Error):
            pass
        return _salvage_json(data)
    return Decoded(decode_request(body, content_type))


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
