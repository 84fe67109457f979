"""Generate toolwatch's Grafana dashboards: ``python dashboards/generate.py`` rewrites dashboards/*.json.

Why a generator: the panels are declared once here as small specs (title, queries, size, whether
the test scenario must make them show data); Grafana's own ``grafana-foundation-sdk`` builders
turn them into dashboard JSON of the schema Grafana provisions, and the test suite reads the same
specs to evaluate every query against a real Prometheus. The committed JSON is what Grafana loads;
a test checks it equals this script's output.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import StackingMode, VisibilityMode
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh, VariableSort

HERE = Path(__file__).resolve().parent
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
AGENT = 'agent="$agent"'
TOOLWATCH_TARGETS = "and on (instance, job) toolwatch_build_info"
"""Suffix that keeps generic ``process_*`` series to the targets that are toolwatch daemons."""


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    expect_data: bool | None = None
    """None: as the panel says. False for a target the test scenario cannot feed (e.g. Kafka)."""


@dataclass(frozen=True)
class PanelSpec:
    title: str
    kind: str  # timeseries | stat | table | bargauge | heatmap
    queries: tuple[Query, ...]
    description: str
    width: int = 12
    height: int = 8
    unit: str = ""
    expect_data: bool = True
    """Must return data in the integration test's scenario (a new tool, a burst, a rug-pull)."""
    stacked: bool = False

    @property
    def instant(self) -> bool:
        return self.kind in ("stat", "table", "bargauge")


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[PanelSpec, ...]


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    title: str
    filename: str
    description: str
    rows: tuple[Row, ...]
    agent_variable: bool = False
    tags: tuple[str, ...] = field(default=("toolwatch",))

    def panels(self) -> list[PanelSpec]:
        return [p for r in self.rows for p in r.panels]


def Q(expr: str, legend: str = "", expect_data: bool | None = None) -> Query:
    return Query(" ".join(expr.split()), legend, expect_data)


# ---------------------------------------------------------------------------------------------- fleet
FLEET = DashboardSpec(
    uid="toolwatch-fleet",
    title="toolwatch / Fleet overview",
    filename="toolwatch-fleet.json",
    description="Every agent at a glance: traffic, findings, who is most anomalous, approvals, alert delivery.",
    rows=(
        Row("Traffic and findings", (
            PanelSpec("Tool calls per second", "timeseries", (
                Q("sum by (server) (rate(toolwatch_tool_calls_total[$__rate_interval]))", "{{server}}"),
            ), "Tool calls the daemon ingested per second, stacked by MCP server.", width=8, unit="reqps",
                stacked=True),
            PanelSpec("Findings by detector and severity", "timeseries", (
                Q("sum by (detector, severity) (rate(toolwatch_findings_total[$__rate_interval])) * 60",
                  "{{detector}} {{severity}}"),
            ), "Detector findings per minute, by detector and severity (before alert grouping).",
                width=8, unit="short", stacked=True),
            PanelSpec("Finding scores by detector", "timeseries", (
                Q("histogram_quantile(0.9, sum by (le, detector) (rate(toolwatch_anomaly_score_bucket[$__rate_interval])))",
                  "p90 {{detector}}"),
            ), "90th percentile of finding scores per detector (volume: robust z; others 0..1).", width=8),
        )),
        Row("Agents", (
            PanelSpec("Top agents by anomaly score", "bargauge", (
                Q("topk(10, max_over_time(toolwatch_agent_anomaly_score[$__range]) > 0)", "{{agent}}"),
            ), "Highest finding score per agent in the time range (volume scores are robust z-scores, "
               "other detectors score 0..1).", width=8),
            PanelSpec("Busiest agents", "bargauge", (
                Q("topk(10, sum by (agent) (rate(toolwatch_tool_calls_total[$__range])))", "{{agent}}"),
            ), "Average calls per second per agent over the time range.", width=8, unit="reqps"),
            PanelSpec("Agents learning vs. active", "stat", (
                Q("sum by (state) (toolwatch_agents)", "{{state}}"),
                Q('sum(toolwatch_iforest_agents{scoring="none"})', "not scored by the forest"),
            ), "Agents still learning their baseline vs. judged against it; and agents no IsolationForest "
               "model scores yet (no model of their own, and no group model that covers and fits them).", width=4),
            PanelSpec("Pending rug-pull approvals", "stat", (
                Q("sum(toolwatch_pending_approvals)", "pending"),
            ), "Tool-definition changes waiting for an operator (toolwatch approvals list).", width=4),
        )),
        Row("Alert delivery", (
            PanelSpec("Webhook deliveries by outcome", "timeseries", (
                Q("sum by (receiver, outcome) (rate(toolwatch_webhook_deliveries_total[$__rate_interval]))",
                  "{{receiver}} {{outcome}}"),
            ), "Delivery attempts per second per webhook receiver: success, failure, filtered, dead.",
                width=8, unit="reqps"),
            PanelSpec("Webhook delivery latency", "timeseries", (
                Q("histogram_quantile(0.9, sum by (le, receiver) "
                  "(rate(toolwatch_webhook_delivery_latency_seconds_bucket[$__rate_interval])))", "p90 {{receiver}}"),
            ), "Time from an alert being stored to its delivery (90th percentile), per receiver.", width=8, unit="s"),
            PanelSpec("Webhook outbox", "timeseries", (
                Q("sum by (receiver) (toolwatch_webhook_outbox_depth)", "{{receiver}} waiting"),
                Q("sum by (receiver) (toolwatch_webhook_outbox_dead)", "{{receiver}} dead", expect_data=False),
            ), "Messages waiting for delivery, and those given up on (kept in the store).", width=8,
                unit="short"),
            PanelSpec("Alerts raised by detector", "timeseries", (
                Q("sum by (detector, severity) (increase(toolwatch_alerts_total[$__rate_interval]))",
                  "{{detector}} {{severity}}"),
            ), "Alerts after grouping (what reaches webhooks and the API).", width=24, height=6, unit="short",
                stacked=True),
        )),
    ),
)

# ---------------------------------------------------------------------------------------------- agent
AGENT_DRILLDOWN = DashboardSpec(
    uid="toolwatch-agent",
    title="toolwatch / Agent drill-down",
    filename="toolwatch-agent.json",
    description="One agent: its call rate against its learned band, which tools and servers it uses, its findings.",
    agent_variable=True,
    rows=(
        Row("Volume", (
            PanelSpec("Call rate vs. baseline band", "timeseries", (
                Q(f"sum(rate(toolwatch_tool_calls_total{{{AGENT}}}[$__rate_interval]))", "live rate"),
                Q(f"toolwatch_agent_calls_per_second{{{AGENT}}}", "last closed window"),
                Q(f'toolwatch_agent_calls_per_second_band{{{AGENT}, bound="high"}}', "baseline high"),
                Q(f'toolwatch_agent_calls_per_second_band{{{AGENT}, bound="low"}}', "baseline low"),
            ), "Calls per second against the volume detector's robust band (median ± k·MAD of past windows); "
               "no band while the agent is learning.", width=24, unit="reqps"),
        )),
        Row("Tools", (
            PanelSpec("Tool mix", "timeseries", (
                Q(f"sum by (server, tool) (rate(toolwatch_tool_calls_total{{{AGENT}}}[$__rate_interval]))",
                  "{{server}}/{{tool}}"),
            ), "Calls per second by server/tool.", unit="reqps", stacked=True),
            PanelSpec("Servers used", "bargauge", (
                Q(f"sort_desc(sum by (server) (increase(toolwatch_tool_calls_total{{{AGENT}}}[$__range])))",
                  "{{server}}"),
            ), "Calls per MCP server over the time range.", unit="short"),
        )),
        Row("Findings", (
            PanelSpec("Anomaly score now", "stat", (
                Q(f"toolwatch_agent_anomaly_score{{{AGENT}}}", "score"),
            ), "Highest finding score in the last five minutes (0 when none).", width=6),
            PanelSpec("Anomaly score distribution", "heatmap", (
                Q(f"sum by (le) (increase(toolwatch_agent_finding_score_bucket{{{AGENT}}}[$__rate_interval]))",
                  "{{le}}"),
            ), "Scores of this agent's findings over time, bucketed.", width=18),
            PanelSpec("Findings by detector and severity", "table", (
                Q(f"sort_desc(sum by (detector, severity) (toolwatch_agent_findings_total{{{AGENT}}}))"),
            ), "Findings since the daemon started; the full list with reasons is "
               "GET /api/v1/alerts on the daemon (or `toolwatch alerts`).", width=24, height=7),
        )),
    ),
)

# ---------------------------------------------------------------------------------------------- daemon
DAEMON = DashboardSpec(
    uid="toolwatch-daemon",
    title="toolwatch / Daemon health",
    filename="toolwatch-daemon.json",
    description="The daemon itself: what comes in, what is refused, how far behind the pipeline is, memory.",
    rows=(
        Row("Ingest", (
            PanelSpec("Spans received by receiver", "timeseries", (
                Q("sum by (receiver) (rate(toolwatch_spans_received_total[$__rate_interval]))", "{{receiver}}"),
            ), "Spans per second per receiver (otlp_http, otlp_grpc, kafka).", unit="reqps"),
            PanelSpec("Rejections by reason", "timeseries", (
                Q("sum by (receiver, reason) (rate(toolwatch_requests_rejected_total[$__rate_interval]))",
                  "request {{receiver}} {{reason}}"),
                Q("sum by (receiver, reason) (rate(toolwatch_spans_rejected_total[$__rate_interval]))",
                  "span {{receiver}} {{reason}}", expect_data=False),
                Q("sum by (action, reason) (rate(toolwatch_spans_event_time_total[$__rate_interval]))",
                  "event time {{action}} {{reason}}", expect_data=False),
            ), "Requests and single spans refused, by receiver and reason (too_large, bad_protobuf, "
               "queue_full, …), and spans whose timestamps broke the event-time rule (clamped or rejected).", unit="reqps"),
        )),
        Row("Pipeline", (
            PanelSpec("Pipeline lag", "timeseries", (
                Q("histogram_quantile(0.5, sum by (le) (rate(toolwatch_pipeline_lag_seconds_bucket[$__rate_interval])))",
                  "p50"),
                Q("histogram_quantile(0.99, sum by (le) (rate(toolwatch_pipeline_lag_seconds_bucket[$__rate_interval])))",
                  "p99"),
            ), "Time from a request's arrival to its findings being stored.", width=8, unit="s"),
            PanelSpec("Queue depth", "timeseries", (
                Q("sum(toolwatch_pipeline_queue_depth)", "events waiting"),
            ), "Events waiting for the detectors; at queue_max_spans receivers answer 429.", width=8,
                unit="short"),
            PanelSpec("Batch size and detector errors", "timeseries", (
                Q("histogram_quantile(0.5, sum by (le) (rate(toolwatch_pipeline_batch_size_bucket[$__rate_interval])))",
                  "median batch"),
                Q("sum by (detector) (rate(toolwatch_detector_errors_total[$__rate_interval]))",
                  "errors {{detector}}", expect_data=False),
            ), "Events per micro-batch, and exceptions raised by detectors (should be none).", width=8,
                unit="short"),
        )),
        Row("Kafka and outbox", (
            PanelSpec("Kafka consumer", "timeseries", (
                Q("sum by (partition) (toolwatch_kafka_consumer_lag)", "lag p{{partition}}", expect_data=False),
                Q("sum by (outcome) (rate(toolwatch_kafka_records_total[$__rate_interval]))",
                  "records {{outcome}}", expect_data=False),
                Q("max(toolwatch_kafka_paused)", "paused", expect_data=False),
                Q("sum(rate(toolwatch_kafka_decode_fallback_records_total[$__rate_interval]))",
                  "decoded in the consumer thread", expect_data=False),
            ), "Records behind the partitions' high-water marks, records consumed per second, 1 while the "
               "receiver pauses (pipeline full), and records the decode workers handed back to the consumer "
               "thread per second (a worker died, hung or failed them; see the log). Empty when the Kafka "
               "receiver is off.", unit="short", expect_data=False),
            PanelSpec("Webhook outbox depth", "timeseries", (
                Q("sum by (receiver) (toolwatch_webhook_outbox_depth)", "{{receiver}}"),
            ), "Undelivered webhook messages per receiver.", unit="short"),
        )),
        Row("Process", (
            PanelSpec("Memory", "timeseries", (
                Q(f"process_resident_memory_bytes {TOOLWATCH_TARGETS}", "{{instance}} resident"),
            ), "Resident memory of each daemon.", width=8, unit="bytes"),
            PanelSpec("CPU", "timeseries", (
                Q(f"rate(process_cpu_seconds_total[$__rate_interval]) {TOOLWATCH_TARGETS}", "{{instance}}"),
            ), "CPU seconds per second of each daemon.", width=8, unit="percentunit"),
            PanelSpec("Rule set", "timeseries", (
                Q("sum(toolwatch_rules_loaded)", "rules loaded"),
                Q("sum by (outcome) (increase(toolwatch_rules_reloads_total[$__rate_interval]))", "reloads {{outcome}}",
                  expect_data=False),
            ), "Rules and correlations in the active rule set, and rule-file reloads by outcome.", width=8,
                unit="short"),
        )),
    ),
)

DASHBOARDS: tuple[DashboardSpec, ...] = (FLEET, AGENT_DRILLDOWN, DAEMON)


# ---------------------------------------------------------------------------------------------- build
def _target(q: Query, ref: str, instant: bool, kind: str) -> prometheus.Dataquery:
    t = prometheus.Dataquery().datasource(DATASOURCE).expr(q.expr).ref_id(ref).legend_format(q.legend or "__auto")
    if instant:
        t = t.instant()
    else:
        t = t.range()
    if kind == "table":
        t = t.format("table")
    elif kind == "heatmap":
        t = t.format("heatmap")
    return t


def _panel(spec: PanelSpec, panel_id: int) -> object:
    builder = {
        "timeseries": timeseries.Panel,
        "stat": stat.Panel,
        "table": table.Panel,
        "bargauge": bargauge.Panel,
        "heatmap": heatmap.Panel,
    }[spec.kind]()
    p = (builder.id(panel_id).title(spec.title).description(spec.description).datasource(DATASOURCE)
         .span(spec.width).height(spec.height))
    if spec.unit and spec.kind != "heatmap":
        p = p.unit(spec.unit)
    if spec.kind == "timeseries":
        p = p.fill_opacity(20 if spec.stacked else 0).show_points(VisibilityMode.NEVER)
        if spec.stacked:
            p = p.stacking(_stacking())
    for i, q in enumerate(spec.queries):
        p = p.with_target(_target(q, chr(ord("A") + i), spec.instant, spec.kind))
    return p


def _stacking() -> object:
    from grafana_foundation_sdk.builders.common import StackingConfig

    return StackingConfig().mode(StackingMode.NORMAL)


def build(spec: DashboardSpec) -> dict:
    d = (db.Dashboard(spec.title).uid(spec.uid).description(spec.description).tags(list(spec.tags))
         .editable().time("now-1h", "now").refresh("30s").timezone("browser")
         .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus")))
    if spec.agent_variable:
        d = d.with_variable(
            db.QueryVariable("agent").label("Agent").datasource(DATASOURCE)
            .query("label_values(toolwatch_tool_calls_total, agent)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
        )
    panel_id = 1
    for row in spec.rows:
        d = d.with_row(db.Row(row.title).id(panel_id))
        panel_id += 1
        for p in row.panels:
            d = d.with_panel(_panel(p, panel_id))
            panel_id += 1
    return json.loads(JSONEncoder(sort_keys=True, indent=2).encode(d.build()))


def render(spec: DashboardSpec) -> str:
    """The exact file content committed for ``spec``."""
    return json.dumps(build(spec), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Rewrite every dashboard's JSON next to this script; ``--check`` only reports stale files."""
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    stale = []
    for spec in DASHBOARDS:
        path = HERE / spec.filename
        text = render(spec)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path.name)
        if not check:
            path.write_text(text)
    if check and stale:
        print(f"stale: {', '.join(stale)}; run: python dashboards/generate.py", file=sys.stderr)
        return 1
    for name in stale:
        print(f"wrote dashboards/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
