"""One call to make an ``mcp`` ``ClientSession`` emit a span per ``tools/call`` and ``tools/list``.

The session's own methods are wrapped on the instance (nothing global is patched), so two
sessions of one process can belong to two agents. Spans are built after the call returns, from
the same JSON the wire carried, by ``spans.py`` — the proxy uses the same builders.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Tracer

from . import semconv as sc
from .spans import RedactorLike, SessionInfo, record_span, span_name, tool_call_attributes, tool_list_attributes

__all__ = ["setup_tracing", "instrument_session", "SessionInstrumentation", "default_redactor", "TRACER_NAME"]

TRACER_NAME = "toolwatch.instrumentation"
DEFAULT_OTLP_HTTP_ENDPOINT = "http://127.0.0.1:4318"


def _traces_url(endpoint: str) -> str:
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def setup_tracing(
    service_name: str = "toolwatch-agent",
    *,
    endpoint: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> TracerProvider:
    """An SDK ``TracerProvider`` exporting OTLP/HTTP through a ``BatchSpanProcessor``.

    Honours the standard variables: ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` win over
    ``service_name``; ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``,
    ``OTEL_EXPORTER_OTLP_HEADERS`` and ``OTEL_BSP_*`` are read by the SDK. An explicit
    ``endpoint`` (base URL, ``/v1/traces`` is appended) wins over the environment; with neither,
    spans go to the local toolwatch daemon at http://127.0.0.1:4318. The provider is returned,
    not installed globally: pass it to ``instrument_session`` and call ``shutdown()`` at exit.
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    env = os.environ if environ is None else environ
    attributes: dict[str, Any] = {}
    if not env.get("OTEL_SERVICE_NAME") and "service.name=" not in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes[sc.SERVICE_NAME] = service_name
    resource = Resource.create(attributes)
    if endpoint is not None:
        url: str | None = _traces_url(endpoint)
    elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        url = None  # the exporter resolves the standard variables itself
    else:
        url = _traces_url(DEFAULT_OTLP_HTTP_ENDPOINT)
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    return provider


def default_redactor() -> RedactorLike:
    """``Redactor.from_env()`` (key from ``TOOLWATCH_FINGERPRINT_KEY``)."""
    try:
        from .redact import Redactor
    except ImportError as exc:  # pragma: no cover - only without the redaction module
        raise RuntimeError(
            "toolwatch.instrumentation.redact is not available; pass redactor=... to instrument_session"
        ) from exc
    return Redactor.from_env()


def _dump(model: Any) -> dict[str, Any]:
    """Wire form of a pydantic result, as the proxy would see it."""
    if isinstance(model, Mapping):
        return dict(model)
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)


@dataclass(slots=True)
class SessionInstrumentation:
    """Handle returned by ``instrument_session``: the session's span context and an undo."""

    session: Any
    info: SessionInfo
    tracer: Tracer
    redactor: RedactorLike
    _originals: dict[str, Any]

    def refresh_server_info(self) -> None:
        """Copy server name/version/protocol from the session once ``initialize`` has run."""
        result = getattr(self.session, "initialize_result", None)
        if result is not None and not self.info.protocol_version:
            self.info.adopt_initialize_result(_dump(result))
            return
        server_info = getattr(self.session, "server_info", None)
        if server_info is not None and not self.info.server_name:
            self.info.server_name = server_info.name or ""
            self.info.server_version = server_info.version or ""
        version = getattr(self.session, "protocol_version", None)
        if version and not self.info.protocol_version:
            self.info.protocol_version = version

    def uninstrument(self) -> None:
        """Put the session's original methods back."""
        for name, original in self._originals.items():
            if name.startswith("_"):
                setattr(self.session, name, original)
                continue
            try:
                delattr(self.session, name)
            except AttributeError:
                pass
        self._originals.clear()
        self.session._toolwatch = None


def _wrap(inst: SessionInstrumentation) -> None:
    session = inst.session
    original_call = session.call_tool
    original_list = session.list_tools
    inst._originals.update(call_tool=original_call, list_tools=original_list)

    async def call_tool(name: str, arguments: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> Any:
        inst.refresh_server_info()
        start = time.time_ns()
        result: Any = None
        error: Mapping[str, Any] | None = None
        error_type: str | None = None
        try:
            result = await original_call(name, arguments, *args, **kwargs)
            return result
        except BaseException as exc:
            error, error_type = _describe_failure(exc)
            raise
        finally:
            end = time.time_ns()
            wire = _dump(result) if result is not None else None
            attrs, status = tool_call_attributes(
                inst.info, inst.redactor, tool=name, arguments=arguments,
                result=wire, error=error, error_type=error_type,
            )
            record_span(inst.tracer, span_name(sc.METHOD_TOOLS_CALL, name), attrs,
                        start_ns=start, end_ns=end, status=status)

    async def list_tools(*args: Any, **kwargs: Any) -> Any:
        inst.refresh_server_info()
        start = time.time_ns()
        result: Any = None
        error: Mapping[str, Any] | None = None
        error_type: str | None = None
        try:
            result = await original_list(*args, **kwargs)
            return result
        except BaseException as exc:
            error, error_type = _describe_failure(exc)
            raise
        finally:
            end = time.time_ns()
            tools = _dump(result).get("tools", []) if result is not None else None
            attrs, status = tool_list_attributes(inst.info, tools=tools, error=error, error_type=error_type)
            record_span(inst.tracer, sc.METHOD_TOOLS_LIST, attrs, start_ns=start, end_ns=end, status=status)

    session.call_tool = call_tool
    session.list_tools = list_tools

    # Tee server notifications so the next tools/list span says it followed a list_changed.
    # ``_message_handler`` is the SDK's one seam for them; skip quietly if it ever moves.
    original_handler = getattr(session, "_message_handler", None)
    if callable(original_handler):
        async def message_handler(message: Any) -> None:
            if getattr(message, "method", None) == sc.METHOD_LIST_CHANGED:
                inst.info.list_changed_pending = True
            await original_handler(message)

        inst._originals["_message_handler"] = original_handler
        session._message_handler = message_handler


def _describe_failure(exc: BaseException) -> tuple[Mapping[str, Any] | None, str | None]:
    """A JSON-RPC error object for ``MCPError``; otherwise a low-cardinality error type."""
    error = getattr(exc, "error", None)
    if error is not None and hasattr(error, "code"):
        return {"code": error.code, "message": getattr(error, "message", "")}, None
    return None, type(exc).__qualname__


def instrument_session(
    session: Any,
    *,
    agent_id: str,
    agent_name: str | None = None,
    tracer_provider: TracerProvider | None = None,
    redactor: RedactorLike | None = None,
    server_name: str | None = None,
    session_id: str | None = None,
) -> SessionInstrumentation:
    """Make every ``call_tool`` / ``list_tools`` of an ``mcp`` session emit a toolwatch span.

    ``session`` is a ``mcp.ClientSession`` or an entered ``mcp.Client`` (its session is used).
    ``server_name`` overrides the name the server gives in ``initialize`` (useful when two
    servers call themselves the same). A session is instrumented once; a second call returns
    the first handle. Without ``tracer_provider`` the global provider is used; without
    ``redactor``, ``Redactor.from_env()``.
    """
    if not agent_id:
        raise ValueError("instrument_session: agent_id is required (the unit of a baseline)")
    target = session
    if not hasattr(target, "send_request") and hasattr(target, "session"):
        target = target.session  # mcp.Client: instrument the ClientSession it drives
    existing = getattr(target, "_toolwatch", None)
    if isinstance(existing, SessionInstrumentation):
        return existing
    from opentelemetry import trace

    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    info = SessionInfo(agent_id=agent_id, agent_name=agent_name or "", server_name=server_name or "")
    if session_id:
        info.session_id = session_id
    inst = SessionInstrumentation(
        session=target,
        info=info,
        tracer=provider.get_tracer(TRACER_NAME),
        redactor=redactor if redactor is not None else default_redactor(),
        _originals={},
    )
    _wrap(inst)
    target._toolwatch = inst
    return inst
