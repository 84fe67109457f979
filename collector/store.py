"""SQLite store (WAL): alerts, the webhook outbox and detector state. One writer: the daemon."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    dedup_key TEXT NOT NULL,
    detector TEXT NOT NULL,
    severity TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    first_ns INTEGER NOT NULL,
    last_ns INTEGER NOT NULL,
    count INTEGER NOT NULL DEFAULT 1,
    status TEXT NOT NULL DEFAULT 'open',
    finding TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_dedup ON alerts(dedup_key, last_ns);
CREATE INDEX IF NOT EXISTS alerts_created ON alerts(created_at);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    delivered_at REAL,
    last_error TEXT NOT NULL DEFAULT '',
    UNIQUE(sink, alert_id)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(delivered_at, next_at);
CREATE TABLE IF NOT EXISTS detector_state (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""


@dataclass
class StoredAlert:
    id: str
    detector: str
    severity: str
    agent_id: str
    first_ns: int
    last_ns: int
    count: int
    status: str
    finding: dict[str, Any]
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "detector": self.detector,
            "severity": self.severity,
            "agent_id": self.agent_id,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "count": self.count,
            "status": self.status,
            "created_at": self.created_at,
            "finding": self.finding,
        }


def _row_alert(row: sqlite3.Row) -> StoredAlert:
    return StoredAlert(
        id=row["id"],
        detector=row["detector"],
        severity=row["severity"],
        agent_id=row["agent_id"],
        first_ns=row["first_ns"],
        last_ns=row["last_ns"],
        count=row["count"],
        status=row["status"],
        finding=json.loads(row["finding"]),
        created_at=row["created_at"],
    )


class Store:
    """Thin, synchronous; every write commits before returning, so a crash loses nothing acked."""

    def __init__(self, path: Path | str, *, clock: Any = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- alerts -----------------------------------------------------------------------------
    def open_alert_for(self, dedup_key: str, since_ns: int) -> StoredAlert | None:
        row = self.db.execute(
            "SELECT * FROM alerts WHERE dedup_key=? AND last_ns>=? ORDER BY last_ns DESC LIMIT 1",
            (dedup_key, since_ns),
        ).fetchone()
        return None if row is None else _row_alert(row)

    def record_alerts(self, new: list[StoredAlert], bumps: list[tuple[str, int]], sinks: Iterable[str]) -> None:
        """Insert new alerts, bump grouped ones, and queue each new alert for every sink: one transaction."""
        sinks = list(sinks)
        now = self.clock()
        with self.db:
            self.db.execute("BEGIN")
            for a in new:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO alerts(id, dedup_key, detector, severity, agent_id, first_ns, last_ns,"
                    " count, status, finding, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        a.id,
                        a.finding.get("dedup_key", ""),
                        a.detector,
                        a.severity,
                        a.agent_id,
                        a.first_ns,
                        a.last_ns,
                        a.count,
                        a.status,
                        json.dumps(a.finding, sort_keys=True),
                        a.created_at,
                    ),
                )
                if cur.rowcount:
                    self.db.executemany(
                        "INSERT OR IGNORE INTO outbox(sink, alert_id, next_at) VALUES (?,?,?)",
                        [(s, a.id, now) for s in sinks],
                    )
            for alert_id, last_ns in bumps:
                self.db.execute(
                    "UPDATE alerts SET count=count+1, last_ns=MAX(last_ns, ?) WHERE id=?", (last_ns, alert_id)
                )

    def get_alert(self, alert_id: str) -> StoredAlert | None:
        row = self.db.execute("SELECT * FROM alerts WHERE id=?", (alert_id,)).fetchone()
        return None if row is None else _row_alert(row)

    def list_alerts(
        self,
        *,
        detector: str | None = None,
        severity: str | None = None,
        agent_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[StoredAlert]:
        where, params = [], []
        for col, val in (("detector", detector), ("severity", severity), ("agent_id", agent_id), ("status", status)):
            if val:
                where.append(f"{col}=?")
                params.append(val)
        sql = "SELECT * FROM alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id LIMIT ?"
        params.append(max(1, min(limit, 1000)))
        return [_row_alert(r) for r in self.db.execute(sql, params)]

    def ack_alert(self, alert_id: str) -> bool:
        cur = self.db.execute("UPDATE alerts SET status='acked' WHERE id=?", (alert_id,))
        return cur.rowcount > 0

    def count_alerts(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]

    # --- outbox -----------------------------------------------------------------------------
    def due_deliveries(self, sink: str, limit: int = 50) -> list[tuple[int, StoredAlert, int]]:
        rows = self.db.execute(
            "SELECT o.seq, o.attempts, a.* FROM outbox o JOIN alerts a ON a.id=o.alert_id"
            " WHERE o.sink=? AND o.delivered_at IS NULL AND o.next_at<=? ORDER BY o.seq LIMIT ?",
            (sink, self.clock(), limit),
        ).fetchall()
        return [(r["seq"], _row_alert(r), r["attempts"]) for r in rows]

    def mark_delivered(self, seq: int) -> None:
        self.db.execute("UPDATE outbox SET delivered_at=?, attempts=attempts+1, last_error='' WHERE seq=?", (self.clock(), seq))

    def mark_failed(self, seq: int, error: str, next_at: float) -> None:
        self.db.execute(
            "UPDATE outbox SET attempts=attempts+1, last_error=?, next_at=? WHERE seq=?", (error[:500], next_at, seq)
        )

    def outbox_depth(self, sink: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM outbox WHERE sink=? AND delivered_at IS NULL", (sink,)).fetchone()[0]

    def delivery_status(self, alert_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT sink, attempts, delivered_at, last_error, next_at FROM outbox WHERE alert_id=? ORDER BY sink",
            (alert_id,),
        )
        return [dict(r) for r in rows]

    # --- detector state ---------------------------------------------------------------------
    def save_state(self, name: str, state: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO detector_state(name, state, updated_at) VALUES (?,?,?)"
            " ON CONFLICT(name) DO UPDATE SET state=excluded.state, updated_at=excluded.updated_at",
            (name, json.dumps(state, separators=(",", ":")), self.clock()),
        )

    def load_state(self, name: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT state FROM detector_state WHERE name=?", (name,)).fetchone()
        return None if row is None else json.loads(row["state"])
