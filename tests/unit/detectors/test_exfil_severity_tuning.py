"""Exfiltration severities that decide what pages (>= medium): a read then a send, and flows into
senders, weighed by whether the send goes somewhere new or carries what the read returned."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from toolwatch.detectors.events import Batch, Finding, ToolCall
from toolwatch.detectors.exfiltration import ExfiltrationConfig, ExfiltrationDetector

_spans = itertools.count(1)
T0 = 1_700_000_000_000_000_000


def call(server: str, tool: str, t: float, **kw: Any) -> ToolCall:
    kw.setdefault("agent_id", "agent-1")
    kw.setdefault("session_id", "s1")
    kw.setdefault("span_id", f"x{next(_spans):05d}")
    for key in ("args_labels", "result_labels", "args_fingerprints", "result_fingerprints", "destinations"):
        if key in kw:
            kw[key] = tuple(kw[key])
    return ToolCall(time_ns=T0 + int(t * 1e9), server=server, tool=tool, **kw)


def warmed(known: tuple[str, ...] = ("alice.example", "bob.example"), **conf: Any) -> ExfiltrationDetector:
    """A detector past its destination warm-up (2 calls) that knows ``known``."""
    det = ExfiltrationDetector(ExfiltrationConfig(destination_warmup_calls=2, **conf))
    for i, d in enumerate(known):
        det.observe(Batch(calls=[call("gmail", "send_email", i, session_id=f"w{i}", destinations=[d])]))
    return det


def only(findings: list[Finding], kind: str) -> list[Finding]:
    return [f for f in findings if f.evidence["kind"] == kind]


def read_then_send(det: ExfiltrationDetector, **send: Any) -> list[Finding]:
    read = call("crm", "lookup_customer", 100, result_labels=["card"], result_fingerprints=["fp-read"])
    out = det.observe(Batch(calls=[read, call("gmail", "send_email", 110, **send)]))
    return only(out, "sensitive_then_send")


def test_sensitive_read_then_send_to_a_known_recipient_is_low() -> None:
    [f] = read_then_send(warmed(), destinations=["alice.example"])
    assert f.severity == "low"
    assert f.evidence["new_destinations"] == [] and f.evidence["carried_labels"] == []


def test_sensitive_read_then_send_to_a_new_destination_is_medium() -> None:
    [f] = read_then_send(warmed(), destinations=["drop.example"])
    assert f.severity == "medium" and f.evidence["new_destinations"] == ["drop.example"]


def test_send_carrying_the_reads_sensitive_label_is_medium_even_to_a_known_recipient() -> None:
    [f] = read_then_send(warmed(), destinations=["alice.example"], args_labels=["card"])
    assert f.severity == "medium" and f.evidence["carried_labels"] == ["card"]
    # near miss: a label the read did not return is not "carried"
    [g] = read_then_send(warmed(), destinations=["alice.example"], args_labels=["email"])
    assert g.severity == "low"


def test_new_destination_during_warm_up_does_not_raise_sensitive_then_send() -> None:
    det = ExfiltrationDetector(ExfiltrationConfig(destination_warmup_calls=5))
    [f] = read_then_send(det, destinations=["first.example"])
    assert f.severity == "low" and f.evidence["new_destinations"] == []


def flow_into_send(det: ExfiltrationDetector, **send: Any) -> list[Finding]:
    read = call("crm", "lookup_customer", 200, result_labels=["card"], result_fingerprints=["fp-shared"])
    out = det.observe(Batch(calls=[read, call("gmail", "send_email", 205, args_fingerprints=["fp-shared"], **send)]))
    return only(out, "cross_server_flow")


def test_flow_into_a_sender_to_a_known_destination_is_low() -> None:
    [f] = flow_into_send(warmed(), destinations=["alice.example"])
    assert f.severity == "low" and f.evidence["sink"] is True


@pytest.mark.parametrize("send, severity", [
    ({"destinations": ["drop.example"]}, "critical"),  # new destination, sensitive origin
    ({}, "critical"),                                   # a sender that names no destination: as before
    ({"destinations": ["alice.example", "drop.example"]}, "critical"),  # one new among known ones
])
def test_flow_into_a_sender_to_somewhere_new_or_unnamed_stays_critical(send: dict[str, Any], severity: str) -> None:
    [f] = flow_into_send(warmed(), **send)
    assert f.severity == severity


def test_known_destination_flow_severity_is_configurable_and_validated() -> None:
    assert flow_into_send(warmed(known_destination_flow_severity="off"), destinations=["alice.example"]) == []
    [f] = flow_into_send(warmed(known_destination_flow_severity="high"), destinations=["alice.example"])
    assert f.severity == "high"
    with pytest.raises(ValueError, match="known_destination_flow_severity"):
        ExfiltrationConfig(known_destination_flow_severity="loud").validate()


def test_a_secret_read_then_any_send_stays_medium() -> None:
    det = warmed()
    read = call("vault", "get_secret", 100, result_labels=["secret"])
    out = only(det.observe(Batch(calls=[read, call("gmail", "send_email", 110, destinations=["alice.example"])])),
               "sensitive_then_send")
    assert [f.severity for f in out] == ["medium"]


@pytest.mark.parametrize("known, named", [
    (("https://hooks.example.com/x",), ["https://hooks.example.com/x"]),  # the same URL again
    (("https://hooks.example.com/x",), ["HTTPS://Hooks.Example.com/other"]),  # another path, same host
    (("alice@corp.example",), ["Bob@corp.example"]),  # same mail domain
])
def test_a_url_or_address_already_used_is_a_known_destination(known: tuple[str, ...], named: list[str]) -> None:
    """Destinations are remembered by key (a URL's host, an address's domain); a URL compared as
    written never matched, so every flow to a URL was critical with the URL listed as new."""
    det = warmed(("alice.example", "bob.example", *known))
    [f] = flow_into_send(det, destinations=named)
    assert f.severity == "low" and f.evidence["new_destinations"] == []
    [g] = read_then_send(det, destinations=named)
    assert g.severity == "low" and g.evidence["new_destinations"] == []
    # near miss: another host is new
    [h] = flow_into_send(det, destinations=["https://drop.example/x"])
    assert h.severity == "critical" and h.evidence["new_destinations"] == ["drop.example"]
