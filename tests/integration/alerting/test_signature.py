"""Receivers can verify webhook signatures with nothing but the hmac module, as docs/webhooks.md says,
and can detect a tampered body and a replayed request."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

from helpers.daemon import DaemonThread, make_config
from helpers.spans import emit_call, provider
from helpers.webhook_receiver import WebhookReceiver
from toolwatch.collector.config import WebhookConfig

SECRET = b"receiver-shared-secret"
TOLERANCE_S = 300


class DocsVerifier:
    """An independent receiver-side implementation of docs/webhooks.md (no toolwatch imports)."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.seen: dict[str, float] = {}

    def check(self, headers: dict[str, str], body: bytes, now: float) -> str:
        ts = headers["X-Toolwatch-Timestamp"]
        if abs(now - int(ts)) > TOLERANCE_S:
            return "stale"
        expected = "v1=" + hmac.new(self.secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, headers["X-Toolwatch-Signature"]):
            return "bad-signature"
        key = headers["Idempotency-Key"]
        if key in self.seen:
            return "replay"
        self.seen[key] = now
        return "ok"


def test_signature_verifies_independently_and_tampering_and_replays_are_caught(tmp_path):
    with WebhookReceiver() as hook:
        cfg = make_config(tmp_path, otlp_processes=0, webhooks=[WebhookConfig(url=hook.url, name="ops", secret=SECRET.decode(), detectors=["new_tool"])])
        cfg.detectors = {"new_tool": {"min_calls": 1, "severity": "high"}}
        with DaemonThread(cfg) as d:
            tp = provider(OTLPSpanExporter(endpoint=d.otlp_http_url))
            emit_call(tp, agent="coder", server="fs", tool="read_file")
            emit_call(tp, agent="coder", server="mail", tool="send_mail")
            tp.shutdown()
            (got,) = hook.wait_for(1)
    headers, body, now = got.headers, got.body, time.time()
    v = DocsVerifier(SECRET)
    assert v.check(headers, body, now) == "ok"
    # The same request again (a replay inside the window) is caught by its Idempotency-Key ...
    assert v.check(headers, body, now + 1) == "replay"
    # ... and outside the window by its timestamp, even by a receiver that forgot its keys.
    assert DocsVerifier(SECRET).check(headers, body, now + TOLERANCE_S + 5) == "stale"
    # Tampered body: one changed field breaks the signature.
    doc = json.loads(body)
    doc["alert"]["severity"] = "info"
    tampered = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    assert tampered != body and DocsVerifier(SECRET).check(headers, tampered, now) == "bad-signature"
    # Re-stamping a body with a fresh timestamp without the secret does not verify either.
    fresh = {**headers, "X-Toolwatch-Timestamp": str(int(now) + 10)}
    assert DocsVerifier(SECRET).check(fresh, body, now) == "bad-signature"
    assert DocsVerifier(b"another-secret").check(headers, body, now) == "bad-signature"
