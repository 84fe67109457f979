"""The compose stack is verified statically here (no docker engine): it must stay runnable as written."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "compose"


def compose() -> dict:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def test_every_yaml_parses():
    files = list(COMPOSE.rglob("*.yml")) + list(COMPOSE.rglob("*.yaml"))
    assert len(files) >= 6
    for f in files:
        yaml.safe_load(f.read_text())


def test_images_are_pinned_and_services_complete():
    svc = compose()["services"]
    assert {"toolwatch", "kafka", "otel-collector", "prometheus", "alertmanager", "grafana"} <= set(svc)
    for name, s in svc.items():
        image = s.get("image", "")
        assert re.search(r":[\w.\-]+$", image) and not image.endswith(":latest"), f"{name}: image {image!r} not pinned"


def test_published_ports_bind_loopback():
    for name, s in compose()["services"].items():
        for port in s.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: port {port} is published beyond loopback"


def test_mounted_files_exist():
    for name, s in compose()["services"].items():
        for vol in s.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith((".", "/")):
                assert (COMPOSE / src).resolve().exists(), f"{name}: mounts missing {src}"
        build = s.get("build")
        if build:
            assert (COMPOSE / build["context"] / build["dockerfile"]).resolve().exists()


def test_dockerfile_runs_as_non_root_on_slim_base():
    text = (COMPOSE / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root)(?!0\b)\S+", text, re.M)
    assert all("slim" in line for line in text.splitlines() if line.startswith("FROM "))


def test_toolwatch_config_in_compose_is_valid():
    from toolwatch.collector.config import load_config

    cfg = load_config(str(COMPOSE / "toolwatch" / "toolwatch.yaml"), environ={})
    assert cfg.allow_remote and cfg.listen.endswith(":9464")
    # toolwatch consumes what the collector writes: same brokers service, same topic.
    collector = yaml.safe_load((COMPOSE / "otel-collector" / "config.yaml").read_text())
    exporter = collector["exporters"]["kafka"]
    assert cfg.kafka.enabled and cfg.kafka.topic == exporter["traces"]["topic"]
    assert cfg.kafka.bootstrap_servers in exporter["brokers"]
    assert "kafka" in compose()["services"]["toolwatch"]["depends_on"]


def test_otel_collector_pipeline_references_defined_components():
    conf = yaml.safe_load((COMPOSE / "otel-collector" / "config.yaml").read_text())
    for pipe in conf["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for comp in pipe.get(kind, []):
                assert comp in conf[kind], f"{kind} {comp} used but not defined"
    assert conf["exporters"]["kafka"]["traces"]["topic"] == "otlp_spans"


def test_promtool_checks_config_and_rules(tmp_path):
    conf = yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())
    rules_dir = COMPOSE / "prometheus" / "rules"
    conf["rule_files"] = [str(rules_dir / "*.rules.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(conf))
    out = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_amtool_checks_alertmanager_config():
    out = subprocess.run(
        ["amtool", "check-config", str(COMPOSE / "alertmanager" / "alertmanager.yml")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
