"""The README's first command: `toolwatch demo` stages four attacks and the daemon catches each."""

from __future__ import annotations

import json
import sqlite3

from helpers.procs import run_cli


def test_demo_catches_every_staged_attack(tmp_path):
    data = tmp_path / "demo"
    out = run_cli("demo", "--data-dir", str(data), "--rounds", "8", timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    for heading in ("Learning", "exfiltration", "volume spike", "rug-pull", "prompt injection", "Summary", "Where to look"):
        assert heading in text, heading
    db = sqlite3.connect(data / "toolwatch.db")
    rows = [(d, s, a, json.loads(f)) for d, s, a, f in db.execute("SELECT detector, severity, agent_id, finding FROM alerts")]
    got = {(d, a) for d, s, a, _ in rows if s in ("medium", "high", "critical")}
    # Attack 1 and 4: the secret note's fingerprint flows from the notes server into a mail.
    assert ("exfiltration", "mail-assistant") in got
    assert ("exfiltration", "research-agent") in got
    # Attack 2: the burst.
    assert ("volume", "coding-agent") in got
    # Attack 3: the rug-pull, pending approval, and the poisoned new description.
    assert ("rugpull", "research-agent") in got and ("poisoning", "research-agent") in got
    # Attack 4: the agent changed course right after the injected page.
    assert ("hijack", "research-agent") in got
    # Nothing in the store carries the secret itself.
    from toolwatch.demo.servers import SECRET_AWS_KEY

    for path in data.iterdir():
        if path.is_file():
            assert SECRET_AWS_KEY.encode() not in path.read_bytes(), path
    # Every alert that pages (medium and above, the webhook default) reached the
    # signature-checking inbox, and none was rejected.
    assert "0 bad" in text
    paging = sum(1 for _, s, _, _ in rows if s in ("medium", "high", "critical"))
    assert f"signed webhooks delivered: {paging} " in text
