"""The tests' PromQL helpers: metric-name extraction and Grafana variable substitution (property-based)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers.dashboard_specs import metric_names, substitute

suffix = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)
metric = st.builds(lambda p, s: f"{p}_{s}", st.sampled_from(["toolwatch", "process"]), suffix)
label_value = st.text(alphabet=st.characters(blacklist_characters='"\\', blacklist_categories=("Cs",)), max_size=20)


@given(st.lists(metric, min_size=1, max_size=4), st.lists(label_value, min_size=1, max_size=4))
def test_metric_names_finds_exactly_the_metrics_and_no_label_values(names, values):
    parts = [f'sum by (agent) (rate({n}{{agent="{v}"}}[5m]))' for n, v in zip(names, values * len(names))]
    expr = " + ".join(parts)
    assert metric_names(expr) == set(names)


@given(label_value)
def test_label_values_that_look_like_metrics_are_ignored(value):
    assert metric_names(f'toolwatch_x{{tool="toolwatch_fake_{value}"}}') == {"toolwatch_x"}


@given(st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True))
def test_substitute_replaces_both_variable_spellings(agent):
    out = substitute('a{agent="$agent"}[$__rate_interval] + b{agent="${agent}"}[$__range]', {"agent": agent})
    assert out == f'a{{agent="{agent}"}}[5s] + b{{agent="{agent}"}}[5m]'


def test_substitute_refuses_an_unknown_variable():
    with pytest.raises(ValueError, match=r"\$job"):
        substitute('up{job="$job"}', {"agent": "a"})
