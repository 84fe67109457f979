from __future__ import annotations

import pytest

from toolwatch.collector.config import ConfigError, load_config, parse_hostport


def write(tmp_path, text):
    p = tmp_path / "tw.yaml"
    p.write_text(text)
    return str(p)


def test_defaults_bind_loopback():
    cfg = load_config(environ={})
    assert cfg.otlp_http == "127.0.0.1:4318" and cfg.otlp_grpc == "127.0.0.1:4317" and cfg.listen == "127.0.0.1:9464"


def test_precedence_file_env_flags(tmp_path):
    path = write(tmp_path, "listen: 127.0.0.1:1000\ndata_dir: /tmp/a\nlog_level: debug\n")
    env = {"TOOLWATCH_LISTEN": "127.0.0.1:2000", "TOOLWATCH_DATA_DIR": "/tmp/b"}
    cfg = load_config(path, environ=env, overrides={"listen": "127.0.0.1:3000", "data_dir": None})
    assert cfg.listen == "127.0.0.1:3000"
    assert cfg.data_dir == "/tmp/b"
    assert cfg.log_level == "debug"


def test_env_names_config_file_and_webhooks(tmp_path):
    path = write(tmp_path, "webhooks:\n  - url: http://127.0.0.1:9/a\n    name: ops\n")
    cfg = load_config(environ={"TOOLWATCH_CONFIG": path, "TOOLWATCH_WEBHOOK": "http://127.0.0.1:9/b"})
    assert [h.url for h in cfg.webhooks] == ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("listen: nonsense\n", "listen"),
        ("listen: 127.0.0.1:99999\n", "listen"),
        ("otlp_http: 0.0.0.0:4318\n", "allow_remote"),
        ("bogus_key: 1\n", "bogus_key"),
        ("pipeline:\n  batch_max_size: 0\n", "pipeline.batch_max_size"),
        ("pipeline:\n  batch_max_size: lots\n", "pipeline.batch_max_size"),
        ("webhooks:\n  - url: ftp://x\n", "webhooks[0].url"),
        ("webhooks:\n  - name: x\n", "webhooks[0].url"),
        ("webhooks:\n  - url: http://a/\n    colour: red\n", "colour"),
        ("webhooks:\n  - {url: 'http://a/', name: x}\n  - {url: 'http://b/', name: x}\n", "webhooks[1].name"),
        ("log_level: loud\n", "log_level"),
        ("- just\n- a list\n", "top level"),
        ("listen: [unclosed\n", "line"),
        ("detectors:\n  new_tool: 3\n", "detectors.new_tool"),
        ("tool_label_cap: 0\n", "tool_label_cap"),
        ("tool_label_cap: 2000000\n", "tool_label_cap"),
        ("tool_label_cap: true\n", "tool_label_cap"),
        ("tool_label_cap: 1.5\n", "tool_label_cap"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), environ={})
    assert needle in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(str(tmp_path / "nope.yaml"), environ={})


def test_remote_bind_allowed_when_asked(tmp_path):
    cfg = load_config(write(tmp_path, "otlp_http: 0.0.0.0:4318\nallow_remote: true\n"), environ={})
    assert cfg.otlp_http == "0.0.0.0:4318"


@pytest.mark.parametrize("value, expected", [("127.0.0.1:1", ("127.0.0.1", 1)), ("[::1]:80", ("::1", 80)), ("localhost:0", ("localhost", 0))])
def test_parse_hostport(value, expected):
    assert parse_hostport(value, "k") == expected


def test_tool_label_cap_is_read_from_the_file(tmp_path):
    assert load_config(environ={}).tool_label_cap == 10_000
    assert load_config(write(tmp_path, "tool_label_cap: 2500\n"), environ={}).tool_label_cap == 2500
