"""Alert API on a real daemon: paging, filters, ack, deliveries, approvals, bearer token; and the CLI."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from helpers.alert_builders import finding
from helpers.daemon import DaemonThread, make_config
from toolwatch.cli import main
from toolwatch.collector.config import WebhookConfig
from toolwatch.detectors.base import Detector
from toolwatch.detectors.events import Batch

TOKEN = "t0ken"


class PinsDetector(Detector):
    """Test double with the rug-pull detector's approval surface (pending/approve/reject)."""

    name = "pins"

    def __init__(self) -> None:
        self._pending = {
            "p1": {"id": "p1", "server": "mail", "tool": "send", "kind": "changed", "reason": "description changed"},
            "p2": {"id": "p2", "server": "fs", "tool": "rm", "kind": "added", "reason": "new tool"},
        }
        self.pinned: list[str] = []
        self.rejected: list[str] = []

    def observe(self, batch: Batch):
        return []

    def snapshot(self) -> dict[str, Any]:
        return {"pending": sorted(self._pending), "pinned": self.pinned, "rejected": self.rejected}

    def restore(self, state: dict[str, Any]) -> None:
        pass

    def pending(self):
        return list(self._pending.values())

    def approve(self, pending_id: str):
        item = self._pending.pop(pending_id)  # KeyError for unknown ids, like the real one
        self.pinned.append(pending_id)
        return {"id": pending_id, "sha256": "abc", "tool": item["tool"]}

    def reject(self, pending_id: str) -> None:
        self._pending.pop(pending_id)
        self.rejected.append(pending_id)


@pytest.fixture
def daemon(tmp_path):
    pins = PinsDetector()
    cfg = make_config(tmp_path, otlp_processes=0, api_token=TOKEN, webhooks=[WebhookConfig(url="http://127.0.0.1:9/hook", name="ops", secret="k")])
    with DaemonThread(cfg, detectors=[pins]) as d:
        d.pins = pins

        async def route(findings):
            return d.daemon.router.route(findings)

        d.route = lambda fs: d.call(route(fs))
        yield d


def get(d, path, token=TOKEN, **params):
    return requests.get(d.api_url + path, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=5)


def post(d, path, token=TOKEN):
    return requests.post(d.api_url + path, headers={"Authorization": f"Bearer {token}"}, timeout=5)


def test_token_is_required_on_the_api_but_not_on_metrics(daemon):
    assert requests.get(daemon.api_url + "/api/v1/alerts", timeout=5).status_code == 401
    assert get(daemon, "/api/v1/alerts", token="wrong").status_code == 401
    assert post(daemon, "/api/v1/approvals/p1/approve", token="wrong").status_code == 401
    assert daemon.pins.pinned == []
    assert requests.get(daemon.api_url + "/metrics", timeout=5).status_code == 200


def test_pages_cover_every_alert_once_newest_first_with_filters(daemon):
    clock = iter(range(100, 200))
    daemon.daemon.router.clock = lambda: float(next(clock))
    alerts = daemon.route([finding(i, severity="high" if i % 2 else "low") for i in range(7)])
    seen, cursor, pages = [], None, 0
    while True:
        r = get(daemon, "/api/v1/alerts", limit=3, **({"cursor": cursor} if cursor else {}))
        assert r.status_code == 200, r.text
        body = r.json()
        seen += [a["id"] for a in body["alerts"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == [a.id for a in reversed(alerts)]
    high = get(daemon, "/api/v1/alerts", severity="high", limit=2).json()
    rest = get(daemon, "/api/v1/alerts", severity="high", limit=2, cursor=high["next_cursor"]).json()
    assert [a["id"] for a in high["alerts"] + rest["alerts"]] == [a.id for a in reversed(alerts) if a.severity == "high"]


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "5000"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "!!not-ours!!"}, "cursor"),
        ({"cursor": "WzFd"}, "cursor"),  # base64 of "[1]"
        ({"severity": "urgent"}, "severity"),
        ({"status": "closed"}, "status"),
        ({"sevrity": "high"}, "sevrity"),
    ],
)
def test_bad_queries_are_400_and_say_which_parameter(daemon, params, needle):
    r = get(daemon, "/api/v1/alerts", **params)
    assert r.status_code == 400 and needle in r.json()["error"]


def test_ack_is_idempotent_and_alert_shows_routed_deliveries(daemon):
    (a,) = daemon.route([finding(1)])
    first = post(daemon, f"/api/v1/alerts/{a.id}/ack").json()
    assert first["status"] == "acked" and first["acked_at"] is not None
    again = post(daemon, f"/api/v1/alerts/{a.id}/ack").json()
    assert again["acked_at"] == first["acked_at"]
    assert post(daemon, "/api/v1/alerts/nope/ack").status_code == 404
    detail = get(daemon, f"/api/v1/alerts/{a.id}").json()
    (delivery,) = detail["deliveries"]
    assert delivery["sink"] == "ops" and delivery["state"] == "pending"  # nothing listens on port 9
    assert [x["id"] for x in get(daemon, "/api/v1/alerts", status="acked").json()["alerts"]] == [a.id]
    assert post(daemon, f"/api/v1/alerts/{a.id}/redeliver").json() == {"id": a.id, "requeued": 0}  # not dead
    assert post(daemon, "/api/v1/alerts/nope/redeliver").status_code == 404


def test_approvals_list_approve_reject_and_unknown(daemon):
    body = get(daemon, "/api/v1/approvals").json()
    assert body["detector"] == "pins" and [p["id"] for p in body["pending"]] == ["p1", "p2"]
    assert daemon.metric("toolwatch_pending_approvals") == 2
    r = post(daemon, "/api/v1/approvals/p1/approve")
    assert r.status_code == 200 and r.json() == {"id": "p1", "decision": "approved", "detector": "pins", "result": {"id": "p1", "sha256": "abc", "tool": "send"}}
    assert post(daemon, "/api/v1/approvals/p1/approve").status_code == 404
    assert post(daemon, "/api/v1/approvals/p2/reject").json()["decision"] == "rejected"
    assert daemon.pins.pinned == ["p1"] and daemon.pins.rejected == ["p2"]
    assert daemon.metric("toolwatch_pending_approvals") == 0
    # The decision is saved with the detector's state at once, not at the next snapshot.
    assert daemon.daemon.store.load_state("pins") == {"pending": [], "pinned": ["p1"], "rejected": ["p2"]}


def test_approvals_without_a_capable_detector_say_what_to_enable(tmp_path):
    cfg = make_config(tmp_path, otlp_processes=0)
    cfg.detectors = {"rugpull": {"enabled": False}}
    with DaemonThread(cfg) as d:
        r = requests.get(d.api_url + "/api/v1/approvals", timeout=5)
        assert r.status_code == 404 and "rugpull" in r.json()["error"]


def test_cli_alerts_and_approvals(daemon, capsys, monkeypatch):
    (a,) = daemon.route([finding(3, reason="called send for the first time")])
    url = ["--url", daemon.api_url]
    monkeypatch.setenv("TOOLWATCH_API_TOKEN", TOKEN)
    assert main(["alerts", "list", *url]) == 0
    out = capsys.readouterr().out
    assert a.id in out and "called send for the first time" in out and "open" in out
    assert main(["alerts", "ack", a.id, *url]) == 0
    assert capsys.readouterr().out.strip() == f"acknowledged {a.id}"
    assert main(["alerts", "redeliver", a.id, *url]) == 0
    assert capsys.readouterr().out.strip() == f"requeued 0 dead webhook message(s) of {a.id}"
    assert main(["alerts", "list", "--status", "acked", "--json", *url]) == 0
    assert [x["id"] for x in json.loads(capsys.readouterr().out)] == [a.id]
    assert main(["approvals", "list", *url]) == 0
    assert "p1" in capsys.readouterr().out
    assert main(["approvals", "approve", "p1", *url]) == 0 and capsys.readouterr().out.strip() == "approved p1"
    assert main(["approvals", "reject", "p2", *url]) == 0 and capsys.readouterr().out.strip() == "rejected p2"
    assert main(["approvals", "approve", "p9", *url]) == 1
    assert "no pending change with id 'p9'" in capsys.readouterr().err
    monkeypatch.delenv("TOOLWATCH_API_TOKEN")
    assert main(["alerts", "list", *url, "--token", "wrong"]) == 1
    assert "TOOLWATCH_API_TOKEN" in capsys.readouterr().err


def test_cli_all_pages(daemon, capsys):
    alerts = daemon.route([finding(i) for i in range(5)])
    assert main(["alerts", "list", "--url", daemon.api_url, "--token", TOKEN, "--limit", "2", "--all", "--json"]) == 0
    assert sorted(x["id"] for x in json.loads(capsys.readouterr().out)) == sorted(a.id for a in alerts)
