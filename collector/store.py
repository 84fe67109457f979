"""SQLite store (WAL): alerts, the webhook outbox and detector state. One writer: the daemon."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

from .state_json import dumps_state_bytes

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
    dead_at REAL,
    queued_at REAL,
    UNIQUE(sink, alert_id)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(delivered_at, next_at);
"""
STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS detector_state (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0
);
"""


def state_path_for(path: Path | str) -> Path | None:
    """Where detector state lives beside the store at ``path`` (``toolwatch.db`` ->
    ``toolwatch-state.db``); None for an in-memory store, which keeps it in the same database.

    A file of its own: a snapshot process (collector/snapshot_process.py) writes tens of MB in one
    transaction, holding that database's write lock for up to half a second; the daemon's alert
    transactions in the same file waited for it, and the pipeline with them."""
    if str(path) == ":memory:":
        return None
    p = Path(path)
    return p.with_name(f"{p.stem}-state{p.suffix}")


def connect(path: Path | str, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection as the store uses them: autocommit, WAL, waiting up to 5 s for another writer."""
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=check_same_thread)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    return db

_IN_CHUNK = 500
"""Values per ``IN (...)`` query (``Store._rows_in``)."""


class AlertRef(NamedTuple):
    """The id and latest event time of a stored alert: all that grouping a repeat needs."""

    id: str
    last_ns: int


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
    acked_at: float | None = None
    _finding_text: str | None = field(default=None, init=False, compare=False, repr=False)

    def finding_text(self) -> str:
        """The finding as stored (``json.dumps(finding, sort_keys=True)``), made once per alert:
        the store writes it and the log sink embeds it, ~20 µs each for a finding with evidence.
        Alerts are not changed after they are built, so the text stays the finding's."""
        if self._finding_text is None:
            self._finding_text = json.dumps(self.finding, sort_keys=True)
        return self._finding_text

    def to_json(self) -> str:
        """``json.dumps(self.to_dict(), sort_keys=True)``, with ``finding_text`` in the finding's place.

        The alert is dumped with the finding as ``0``, which is then replaced: ``"finding": 0`` stands
        nowhere else, since a ``"`` inside a JSON string is escaped (no string holds ``finding"``)."""
        d = self.to_dict()
        d["finding"] = 0
        return json.dumps(d, sort_keys=True).replace('"finding": 0', '"finding": ' + self.finding_text(), 1)

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
            "acked_at": self.acked_at,
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
        acked_at=row["acked_at"] if "acked_at" in row.keys() else None,
    )


class Store:
    """Thin, synchronous; every write commits before returning, so a crash loses nothing acked."""

    def __init__(self, path: Path | str, *, clock: Any = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = connect(path, check_same_thread=False)
        self.db.executescript(SCHEMA)
        self._add_missing_columns()
        self.state_path = state_path_for(path)
        """The detector-state database (None: in ``db``, for an in-memory store)."""
        self.state_db = self.db if self.state_path is None else connect(self.state_path, check_same_thread=False)
        self.state_db.executescript(STATE_SCHEMA)
        if self.state_path is not None:
            self._move_states_out()
        self._generation = self.state_db.execute(
            "SELECT COALESCE(MAX(generation), 0) FROM detector_state").fetchone()[0]
        """The newest detector-state generation written or reserved: a state written with an older
        one (a snapshot process that took the state before an approval saved it) never replaces it."""

    def _add_missing_columns(self) -> None:
        """Stores written by an older version get the columns added since (additive only)."""
        for table, column, decl in (
            ("outbox", "dead_at", "REAL"), ("outbox", "queued_at", "REAL"), ("alerts", "acked_at", "REAL"),
        ):
            have = {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def _move_states_out(self) -> None:
        """A store written by an older version kept detector state in the main database: copy it to
        the state database (a name already there is newer), then drop it from the main one."""
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='detector_state'").fetchone() is None:
            return
        rows = self.db.execute("SELECT name, state, updated_at FROM detector_state").fetchall()
        self.state_db.executemany("INSERT OR IGNORE INTO detector_state(name, state, updated_at) VALUES (?,?,?)",
                                  [tuple(r) for r in rows])
        self.db.execute("DROP TABLE detector_state")

    def close(self) -> None:
        if self.state_db is not self.db:
            self.state_db.close()
        self.db.close()

    # --- alerts -----------------------------------------------------------------------------
    def open_alert_for(self, dedup_key: str, since_ns: int) -> StoredAlert | None:
        row = self.db.execute(
            "SELECT * FROM alerts WHERE dedup_key=? AND last_ns>=? ORDER BY last_ns DESC, rowid DESC LIMIT 1",
            (dedup_key, since_ns),
        ).fetchone()
        return None if row is None else _row_alert(row)

    def open_alert_ref(self, dedup_key: str, since_ns: int) -> AlertRef | None:
        """``open_alert_for`` without reading the finding: what grouping needs, per finding, cheaply."""
        row = self.db.execute(
            "SELECT id, last_ns FROM alerts WHERE dedup_key=? AND last_ns>=? ORDER BY last_ns DESC, rowid DESC LIMIT 1",
            (dedup_key, since_ns),
        ).fetchone()
        return None if row is None else AlertRef(row[0], row[1])

    def latest_alert_refs(self, dedup_keys: Iterable[str], since_ns: int) -> dict[str, AlertRef]:
        """Each key's latest alert ending at or after ``since_ns`` (one query per 500 keys).

        Answers every ``open_alert_ref(key, s)`` with ``s >= since_ns`` at once: the latest alert is
        the one found if any is, and none is when it ends before ``s``. Latest = greatest
        ``last_ns``, then the last inserted, as ``open_alert_ref``'s ORDER BY. SQLite returns each
        key's rows in that order (the ``alerts_dedup`` index's own order, rowid last), so the
        dict keeps the last row of each key.
        """
        rows = self._rows_in(
            "SELECT dedup_key, id, last_ns FROM alerts WHERE dedup_key IN ({marks})"
            " AND last_ns>=? ORDER BY dedup_key, last_ns, rowid",
            list(dict.fromkeys(dedup_keys)), since_ns,
        )
        return {key: AlertRef(alert_id, last_ns) for key, alert_id, last_ns in rows}

    def record_alerts(
        self,
        new: list[StoredAlert],
        bumps: list[tuple[str, int]],
        sinks: Iterable[str] | Callable[[StoredAlert], Iterable[str]],
    ) -> None:
        """Insert new alerts, bump grouped ones, and queue each new alert for its sinks: one transaction.

        ``sinks`` is a list of sink names, or a function giving the names an alert is routed to.
        """
        route = sinks if callable(sinks) else (lambda _a, names=list(sinks): names)
        now = self.clock()
        rows = [
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
                a.finding_text(),
                a.created_at,
            )
            for a in new
        ]
        with self.db:
            # IMMEDIATE: the write lock first, waiting (busy_timeout) for another connection writing
            # this file (the admin CLI acking an alert, a tool reading the store). A deferred
            # transaction that read before another connection wrote cannot upgrade and fails at once
            # with "database is locked", whatever the timeout (it did, when snapshot processes wrote
            # detector state into this file: now they write toolwatch-state.db).
            self.db.execute("BEGIN IMMEDIATE")
            if rows:
                # One INSERT for all (executemany), and outbox rows only for the alerts it really
                # inserted, as one INSERT OR IGNORE per alert with its rowcount would: an id already
                # stored (a replay), or seen earlier in ``new``, is ignored and queues nothing. (The id
                # is the only reason one is ignored: alerts are built typed, no NOT NULL column None.)
                skip = self._stored_ids([a.id for a in new])
                self.db.executemany(
                    "INSERT OR IGNORE INTO alerts(id, dedup_key, detector, severity, agent_id, first_ns, last_ns,"
                    " count, status, finding, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )
                queued: list[tuple[str, str, float, float]] = []
                for a in new:
                    if a.id not in skip:
                        skip.add(a.id)
                        queued += [(s, a.id, now, now) for s in route(a)]
                if queued:
                    self.db.executemany(
                        "INSERT OR IGNORE INTO outbox(sink, alert_id, next_at, queued_at) VALUES (?,?,?,?)", queued
                    )
            # Repeats of one alert in one call: one UPDATE (count + n, latest time).
            merged: dict[str, list[int]] = {}
            for alert_id, last_ns in bumps:
                m = merged.get(alert_id)
                if m is None:
                    merged[alert_id] = [1, last_ns]
                else:
                    m[0] += 1
                    if last_ns > m[1]:
                        m[1] = last_ns
            self.db.executemany(
                "UPDATE alerts SET count=count+?, last_ns=MAX(last_ns, ?) WHERE id=?",
                [(n, last_ns, alert_id) for alert_id, (n, last_ns) in merged.items()],
            )

    def _stored_ids(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` are stored already (one query per 500)."""
        return {r[0] for r in self._rows_in("SELECT id FROM alerts WHERE id IN ({marks})", ids)}

    def _rows_in(self, sql: str, values: list[Any], *params: Any) -> Iterator[sqlite3.Row]:
        """The rows of ``sql`` for every 500 of ``values`` in turn: ``{marks}`` in it becomes their
        placeholders, followed by ``params`` (SQLite bounds the parameters of one statement)."""
        for i in range(0, len(values), _IN_CHUNK):
            chunk = values[i : i + _IN_CHUNK]
            yield from self.db.execute(sql.format(marks=",".join("?" * len(chunk))), (*chunk, *params))

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
        before: tuple[float, str] | None = None,
    ) -> list[StoredAlert]:
        """Newest first. ``before`` = (created_at, id) of the last alert of the previous page (keyset paging)."""
        where: list[str] = []
        params: list[Any] = []
        for col, val in (("detector", detector), ("severity", severity), ("agent_id", agent_id), ("status", status)):
            if val:
                where.append(f"{col}=?")
                params.append(val)
        if before is not None:
            where.append("(created_at < ? OR (created_at = ? AND id > ?))")
            params += [before[0], before[0], before[1]]
        sql = "SELECT * FROM alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id LIMIT ?"
        params.append(max(1, min(limit, 1000)))
        return [_row_alert(r) for r in self.db.execute(sql, params)]

    def ack_alert(self, alert_id: str) -> bool:
        """Idempotent: acking an acked alert keeps its first ack time. False if there is no such alert."""
        cur = self.db.execute(
            "UPDATE alerts SET status='acked', acked_at=COALESCE(acked_at, ?) WHERE id=?", (self.clock(), alert_id)
        )
        return cur.rowcount > 0

    def count_alerts(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]

    # --- outbox -----------------------------------------------------------------------------
    def due_deliveries(self, sink: str, limit: int = 50) -> list[tuple[int, StoredAlert, int]]:
        rows = self.db.execute(
            "SELECT o.seq, o.attempts, a.* FROM outbox o JOIN alerts a ON a.id=o.alert_id"
            " WHERE o.sink=? AND o.delivered_at IS NULL AND o.dead_at IS NULL AND o.next_at<=?"
            " ORDER BY o.next_at, o.seq LIMIT ?",  # longest-waiting first: a failing message never starves the rest
            (sink, self.clock(), limit),
        ).fetchall()
        return [(r["seq"], _row_alert(r), r["attempts"]) for r in rows]

    def expire_undelivered(self, sink: str, max_age_s: float) -> list[tuple[str, int]]:
        """Mark dead every pending message of ``sink`` queued more than ``max_age_s`` ago.

        Returns (alert_id, attempts) of each; one transaction.
        """
        now = self.clock()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")  # see record_alerts
            rows = self.db.execute(
                "SELECT o.seq, o.alert_id, o.attempts FROM outbox o JOIN alerts a ON a.id=o.alert_id"
                " WHERE o.sink=? AND o.delivered_at IS NULL AND o.dead_at IS NULL"
                " AND COALESCE(o.queued_at, a.created_at) < ?",
                (sink, now - max_age_s),
            ).fetchall()
            for r in rows:
                self.db.execute(
                    "UPDATE outbox SET dead_at=?, last_error=? WHERE seq=?",
                    (now, f"undelivered after {r['attempts']} attempts and {max_age_s:g}s (max_age_s)", r["seq"]),
                )
        return [(r["alert_id"], r["attempts"]) for r in rows]

    def requeue_dead(self, alert_id: str) -> int:
        """Give dead messages of an alert a fresh start (attempts and age reset); returns how many."""
        now = self.clock()
        cur = self.db.execute(
            "UPDATE outbox SET dead_at=NULL, attempts=0, last_error='', next_at=?, queued_at=?"
            " WHERE alert_id=? AND dead_at IS NOT NULL AND delivered_at IS NULL",
            (now, now, alert_id),
        )
        return cur.rowcount

    def dead_count(self, sink: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM outbox WHERE sink=? AND dead_at IS NOT NULL", (sink,)).fetchone()[0]

    def next_due_at(self, sink: str) -> float | None:
        """When the earliest pending message of ``sink`` is due (None when nothing is pending)."""
        row = self.db.execute(
            "SELECT MIN(next_at) FROM outbox WHERE sink=? AND delivered_at IS NULL AND dead_at IS NULL", (sink,)
        ).fetchone()
        return row[0]

    def mark_delivered(self, seq: int) -> None:
        self.db.execute("UPDATE outbox SET delivered_at=?, attempts=attempts+1, last_error='' WHERE seq=?", (self.clock(), seq))

    def mark_failed(self, seq: int, error: str, next_at: float) -> None:
        self.db.execute(
            "UPDATE outbox SET attempts=attempts+1, last_error=?, next_at=? WHERE seq=?", (error[:500], next_at, seq)
        )

    def outbox_depth(self, sink: str) -> int:
        return self.db.execute(
            "SELECT COUNT(*) FROM outbox WHERE sink=? AND delivered_at IS NULL AND dead_at IS NULL", (sink,)
        ).fetchone()[0]

    def delivery_status(self, alert_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT sink, attempts, delivered_at, dead_at, last_error, next_at FROM outbox WHERE alert_id=? ORDER BY sink",
            (alert_id,),
        )
        out = []
        for r in rows:
            d = dict(r)
            d["state"] = "delivered" if d["delivered_at"] is not None else "dead" if d["dead_at"] is not None else "pending"
            out.append(d)
        return out

    # --- detector state ---------------------------------------------------------------------
    def save_state(self, name: str, state: dict[str, Any]) -> None:
        write_states(self.state_db, [(name, dumps_state_bytes(state))], self.reserve_generation(), self.clock())

    def reserve_generation(self) -> int:
        """A generation newer than every state written so far (``write_states``)."""
        self._generation += 1
        return self._generation

    def load_state(self, name: str) -> dict[str, Any] | None:
        row = self.state_db.execute("SELECT state FROM detector_state WHERE name=?", (name,)).fetchone()
        return None if row is None else json.loads(row["state"])


def write_states(db: sqlite3.Connection, states: list[tuple[str, bytes]], generation: int, now: float) -> None:
    """Write detectors' states (JSON as UTF-8 bytes) in one transaction, each only over a state of an
    older ``generation``: a snapshot process (collector/snapshot_process.py) that took the state
    before an approval saved that detector must not put the older state back when it ends later.
    The bytes are stored as TEXT by a CAST, without a decode to ``str`` (a copy and a check of ~70 MB
    for a fleet's IsolationForest state)."""
    sql = ("INSERT INTO detector_state(name, state, updated_at, generation) VALUES (?,CAST(? AS TEXT),?,?)"
           " ON CONFLICT(name) DO UPDATE SET state=excluded.state, updated_at=excluded.updated_at,"
           " generation=excluded.generation WHERE detector_state.generation < excluded.generation")
    rows = [(name, data, now, generation) for name, data in states]
    if len(rows) == 1:  # one statement is a transaction of its own (the daemon's connection is shared)
        db.execute(sql, rows[0])
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany(sql, rows)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
