"""OTLP traces with span attributes as a protobuf map: the same wire bytes, read without a dict per span.

On the wire a span's ``repeated KeyValue attributes = 9`` is indistinguishable from a
``map<string, AnyValue> attributes = 9`` (a map entry is a message with ``key = 1`` and
``value = 2``, which is what ``KeyValue`` is). Parsed as a map, the attributes are a hash table
in C: the normaliser asks for the dozen keys it needs instead of creating a ``KeyValue``
wrapper, a key string and an ``AnyValue`` wrapper for every attribute and filling a dict with
them (two fifths of its time, issue #4). Duplicate keys resolve as the dict did: the last wins.

``TracesData`` (field 1 ``resource_spans``, as in ``ExportTraceServiceRequest``) and everything
under it are copied from opentelemetry-proto's own ``trace.proto`` descriptor at import, so every
other field, type and UTF-8 rule is the real one and a body parses here exactly when it parses
as an ``ExportTraceServiceRequest``. Only span attributes change; resource, scope, event and link
attributes stay ``repeated KeyValue``.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = ["AttrMapRequest", "is_attr_map", "parse"]

_PACKAGE = "toolwatch.otlp_attrmap"
_OTLP = "." + trace_pb2.DESCRIPTOR.package + "."
_ANY_VALUE = ".opentelemetry.proto.common.v1.AnyValue"


def _file() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto()
    trace_pb2.DESCRIPTOR.CopyToProto(fd)
    fd.name = "toolwatch/collector/otlp_attrmap.proto"
    fd.package = _PACKAGE
    fd.ClearField("options")
    stack = list(fd.message_type)
    while stack:
        msg = stack.pop()
        stack.extend(msg.nested_type)
        for f in msg.field:
            if f.type_name.startswith(_OTLP):
                f.type_name = f".{_PACKAGE}." + f.type_name[len(_OTLP) :]
    (span,) = (m for m in fd.message_type if m.name == "Span")
    (attrs,) = (f for f in span.field if f.name == "attributes")
    entry = span.nested_type.add(name="AttributesEntry")
    entry.options.map_entry = True
    F = descriptor_pb2.FieldDescriptorProto
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL, json_name="key")
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL, type_name=_ANY_VALUE, json_name="value")
    attrs.type_name = f".{_PACKAGE}.Span.AttributesEntry"
    return fd


def _request_class() -> Any:
    pool = descriptor_pool.Default()
    try:
        desc = pool.FindMessageTypeByName(f"{_PACKAGE}.TracesData")
    except KeyError:
        pool.Add(_file())
        desc = pool.FindMessageTypeByName(f"{_PACKAGE}.TracesData")
    return message_factory.GetMessageClass(desc)


AttrMapRequest: Any = _request_class()
"""Parses an ``ExportTraceServiceRequest`` body; ``span.attributes`` is a ``{key: AnyValue}`` map."""


def is_attr_map(req: Any) -> bool:
    return type(req) is AttrMapRequest


def parse(body: bytes) -> Any | None:
    """``body`` as an ``AttrMapRequest``, or None where that would not read exactly as the original.

    None when the body does not parse (the caller's ``ExportTraceServiceRequest`` path words the
    error or salvages), holds no spans' resources at all (that path tells OTLP from other
    messages), or has a span with unknown fields: protobuf moves a map entry carrying anything but
    ``key``/``value`` (a field it does not know, a wrong wire type) out of the map into the span's
    unknown fields, where a ``KeyValue`` would have kept its key and value.
    """
    req = AttrMapRequest()
    try:
        req.ParseFromString(body)
    except (DecodeError, RuntimeError, ValueError):
        return None
    if not req.resource_spans:
        return None
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                if len(UnknownFieldSet(span)):
                    return None
    return req
