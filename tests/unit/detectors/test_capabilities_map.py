"""CapabilityMap: heuristics, annotations that only add, operator overrides that win."""

from __future__ import annotations

import pytest

from toolwatch.detectors.capabilities import (
    DESTRUCTIVE,
    READS_SENSITIVE,
    READS_UNTRUSTED,
    SENDS_OUT,
    CapabilityConfig,
    CapabilityMap,
    heuristic_capabilities,
)
from toolwatch.detectors.events import ToolDefinition, ToolListing


@pytest.mark.parametrize(
    ("server", "tool", "expected"),
    [
        ("gmail", "send_email", {SENDS_OUT}),
        ("gmail", "read_inbox", {READS_UNTRUSTED}),
        ("web", "fetch", {READS_UNTRUSTED}),
        ("browser", "navigateTo", {READS_UNTRUSTED}),
        ("filesystem", "read_file", {READS_SENSITIVE}),
        ("vault", "get", {READS_SENSITIVE}),
        ("postgres", "query", {READS_SENSITIVE}),
        ("github", "list_issues", {READS_UNTRUSTED}),
        ("slack", "post_message", {SENDS_OUT}),
        ("stripe", "transfer", {SENDS_OUT}),
        ("filesystem", "delete_file", {DESTRUCTIVE}),
        ("calc", "add_numbers", set()),
    ],
)
def test_heuristics_label_common_tools(server: str, tool: str, expected: set[str]) -> None:
    assert set(heuristic_capabilities(server, tool)) == expected


@pytest.mark.parametrize(
    ("server", "tool", "expected"),
    [
        ("git", "status_0db00000", set()),  # a hex id is not the noun "db"
        ("git", "status_3db1a2c3", set()),
        ("content", "get_article_00feed00", set()),  # nor the noun "feed"
        ("jobs-0db123", "status", set()),
        ("sql", "read_db", {READS_SENSITIVE}),  # real words around ids still count
        ("sql", "query_db2", {READS_SENSITIVE}),
        ("sql", "getDb", {READS_SENSITIVE}),
        ("cache", "job_deadbeef", set()),  # letters only: words as before (none of them a noun)
    ],
)
def test_hex_ids_in_names_are_not_words(server: str, tool: str, expected: set[str]) -> None:
    assert set(heuristic_capabilities(server, tool)) == expected


def test_description_phrase_marks_sender() -> None:
    assert SENDS_OUT in heuristic_capabilities("acme", "notify_team", "")
    assert SENDS_OUT in heuristic_capabilities("acme", "relay", "Sends the text as an e-mail to a recipient.")
    assert SENDS_OUT not in heuristic_capabilities("acme", "relay", "Formats text for display.")


def _listing(server: str, *defs: ToolDefinition) -> ToolListing:
    return ToolListing(time_ns=1, agent_id="a", server=server, tools=defs)


def test_annotations_add_but_read_only_hint_never_removes() -> None:
    cmap = CapabilityMap()
    cmap.learn([_listing("acme", ToolDefinition("zap", annotations={"destructiveHint": True}))])
    assert DESTRUCTIVE in cmap.of("acme", "zap")
    # A hostile server declaring its sender read-only does not hide it.
    cmap.learn([_listing("mailer", ToolDefinition("send_email", annotations={"readOnlyHint": True}))])
    assert SENDS_OUT in cmap.of("mailer", "send_email")


def test_open_world_hint_adds_untrusted_and_send_unless_read_only() -> None:
    cmap = CapabilityMap()
    cmap.learn([_listing("x", ToolDefinition("lookup", annotations={"openWorldHint": True, "readOnlyHint": True}))])
    assert cmap.of("x", "lookup") == frozenset({READS_UNTRUSTED})
    cmap.learn([_listing("x", ToolDefinition("lookup", annotations={"openWorldHint": True}))])
    assert cmap.of("x", "lookup") == frozenset({READS_UNTRUSTED, SENDS_OUT})


def test_operator_overrides_apply_in_order_and_win() -> None:
    cfg = CapabilityConfig.from_dict(
        {
            "tools": [
                {"match": "notes/*", "set": ["reads_sensitive"]},
                {"match": "notes/share_*", "add": ["sends_out"]},
                {"match": "gmail/send_email", "remove": ["sends_out"]},
            ]
        }
    )
    cmap = CapabilityMap(cfg)
    assert cmap.of("notes", "append") == frozenset({READS_SENSITIVE})
    assert cmap.of("notes", "share_note") == frozenset({READS_SENSITIVE, SENDS_OUT})
    assert SENDS_OUT not in cmap.of("gmail", "send_email")


def test_heuristics_can_be_switched_off() -> None:
    cmap = CapabilityMap(CapabilityConfig(heuristics=False))
    assert cmap.of("gmail", "send_email") == frozenset()


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"tools": [{"match": "a/*", "add": ["teleports"]}]}, "capabilities.tools[0].add"),
        ({"tools": [{"match": "", "add": ["sends_out"]}]}, "capabilities.tools[0].match"),
        ({"tools": [{"match": "a/*", "ad": ["sends_out"]}]}, "capabilities.tools[0]"),
        ({"tool": []}, "capabilities: unknown key tool"),
        ({"max_tools": 0}, "capabilities.max_tools"),
    ],
)
def test_config_errors_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ValueError, match=__import__("re").escape(key)):
        CapabilityConfig.from_dict(data)


def test_changed_definition_invalidates_cache_and_snapshot_round_trips() -> None:
    cmap = CapabilityMap()
    cmap.learn([_listing("acme", ToolDefinition("relay", description="Formats text."))])
    assert SENDS_OUT not in cmap.of("acme", "relay")
    cmap.learn([_listing("acme", ToolDefinition("relay", description="Sends the text to a webhook."))])
    assert SENDS_OUT in cmap.of("acme", "relay")
    other = CapabilityMap()
    other.restore(cmap.snapshot())
    assert other.of("acme", "relay") == cmap.of("acme", "relay")


def test_memory_is_bounded() -> None:
    cmap = CapabilityMap(CapabilityConfig(max_tools=5))
    for i in range(50):
        cmap.learn([_listing("s", ToolDefinition(f"t{i}", annotations={"destructiveHint": True}))])
        cmap.of("s", f"t{i}")
    assert len(cmap.snapshot()["definitions"]) == 5
    assert DESTRUCTIVE in cmap.of("s", "t49")
    assert DESTRUCTIVE not in cmap.of("s", "t0")
