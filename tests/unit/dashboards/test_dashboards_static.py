"""Structure of the committed dashboards: generated, unique ids, datasource variable everywhere, sane grid."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
import yaml

from helpers.dashboard_specs import GRAFANA_INTERVALS, ROOT, load_generator, metric_names

gen = load_generator()
SPECS = {spec.filename: spec for spec in gen.DASHBOARDS}
DS_UID = "${datasource}"
_VAR = re.compile(r"\$\{?(\w+)\}?")


def _load(name: str) -> dict:
    return json.loads((ROOT / "dashboards" / name).read_text())


def _panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows keep their panels inside
    return out


@pytest.fixture(params=sorted(SPECS), ids=lambda n: n.removesuffix(".json"))
def dash(request) -> dict:
    return _load(request.param)


def test_committed_json_is_the_generators_output():
    stale = [name for name, spec in SPECS.items() if (ROOT / "dashboards" / name).read_text() != gen.render(spec)]
    assert not stale, f"run `python dashboards/generate.py`: stale {stale}"


def test_dashboards_folder_holds_only_generated_dashboards():
    # Grafana provisions every *.json in the folder: a stray file would be a broken dashboard.
    assert {p.name for p in (ROOT / "dashboards").glob("*.json")} == set(SPECS)


def test_three_dashboards_with_unique_uids_and_titles():
    dashes = [_load(n) for n in SPECS]
    assert len(dashes) == 3
    assert len({d["uid"] for d in dashes}) == 3 and len({d["title"] for d in dashes}) == 3


def test_panel_ids_unique_and_positive(dash):
    ids = [p["id"] for p in _panels(dash)]
    assert all(isinstance(i, int) and i > 0 for i in ids), ids
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {dash['uid']}: {ids}"


def test_datasource_variable_defined_and_used_by_every_panel_and_target(dash):
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for p in _panels(dash):
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": DS_UID}, p["title"]
        assert p["targets"], f"panel {p['title']!r} has no query"
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": DS_UID}, (p["title"], t["refId"])
            assert t["expr"].strip(), (p["title"], t["refId"])
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"]["uid"] == DS_UID, v["name"]


def test_ref_ids_unique_within_each_panel(dash):
    for p in _panels(dash):
        refs = [t["refId"] for t in p.get("targets", [])]
        assert len(refs) == len(set(refs)) and all(refs), (p["title"], refs)


def test_grid_within_24_columns_and_no_overlap(dash):
    boxes = []
    for p in _panels(dash):
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, f"{p['title']!r} spills past column 24: {g}"
        boxes.append((p["title"], g))
    for (ta, a), (tb, b) in itertools.combinations(boxes, 2):
        apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
                 or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"])
        assert apart, f"{ta!r} {a} overlaps {tb!r} {b}"


def test_every_variable_in_a_query_is_defined(dash):
    defined = {v["name"] for v in dash["templating"]["list"]}
    builtins = {k.lstrip("$") for k in GRAFANA_INTERVALS}
    for p in _panels(dash):
        for t in p.get("targets", []):
            used = set(_VAR.findall(t["expr"]))
            assert used <= defined | builtins, (p["title"], used - defined - builtins)


def test_agent_drilldown_is_templated_on_agent_and_every_query_uses_it():
    dash = _load(gen.AGENT_DRILLDOWN.filename)
    agent = next(v for v in dash["templating"]["list"] if v["name"] == "agent")
    assert agent["type"] == "query" and "toolwatch_tool_calls_total" in agent["query"]
    for p in _panels(dash):
        for t in p.get("targets", []):
            assert 'agent="$agent"' in t["expr"], p["title"]


def test_every_query_reads_a_toolwatch_or_process_metric():
    for spec in gen.DASHBOARDS:
        for panel in spec.panels():
            for q in panel.queries:
                assert metric_names(q.expr), (spec.uid, panel.title, q.expr)


def test_instant_panels_use_instant_queries_and_graphs_range_queries(dash):
    for p in _panels(dash):
        for t in p.get("targets", []):
            if p["type"] in ("stat", "table", "bargauge"):
                assert t.get("instant") is True, p["title"]
            elif p["type"] != "row":
                assert t.get("range") is True, p["title"]


def test_docs_describe_every_panel():
    doc = (ROOT / "docs" / "dashboards.md").read_text()
    missing = [f"{s.title}: {p.title}" for s in gen.DASHBOARDS for p in s.panels() if f"**{p.title}**" not in doc]
    assert not missing, f"docs/dashboards.md does not describe: {missing}"


def test_grafana_provisioning_points_at_this_folder():
    provider = yaml.safe_load((ROOT / "compose/grafana/provisioning/dashboards/toolwatch.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    compose = yaml.safe_load((ROOT / "compose/docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"../dashboards:{path}:ro" in mounts, mounts
    datasource = yaml.safe_load((ROOT / "compose/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert any(d["type"] == "prometheus" for d in datasource["datasources"])


def test_generator_check_mode_reports_nothing_stale():
    assert gen.main(["--check"]) == 0
