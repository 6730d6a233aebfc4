"""The console's cells: names shown as they are, compact numbers, sparklines and bars."""

from __future__ import annotations

from colony.console.widgets import cells


def test_names_are_not_read_as_markup():
    assert cells.cell("[b]web[/b]").plain == "[b]web[/b]"


def test_compact_numbers():
    assert cells.short_bytes(512 * 2**20) == "512M"
    assert cells.short_bytes(1.5 * 2**30) == "1.5G"
    assert cells.short_cores(0.25) == "0.25" and cells.short_cores(4) == "4.0"
    assert cells.usage(0.5, 0.25, 4.0).plain == "0.50/0.25/4.0"


def test_reserved_past_capacity_shows_red():
    assert cells.usage(5.0, 1.0, 4.0).spans[0].style == "bold red"
    assert cells.usage(3.5, 1.0, 4.0).spans[0].style == "yellow"


def test_a_sparkline_scales_to_its_top_and_keeps_the_last_values():
    assert cells.spark([0, 1, 2, 4], 4, top=4).plain == "▁▂▄█"
    assert cells.spark([1.0] * 20, 5).plain == "█████"
    assert cells.spark([1.0], 3).plain == "  █"  # right-aligned: the newest at the right


def test_a_bar_is_done_then_to_do():
    bar = cells.bar(1 / 3, 9)
    assert bar.plain == "━" * 9 and bar.spans[0].end == 3


def test_node_status_says_the_drain():
    assert cells.node_status("alive", "drained").plain == "alive drained"
    assert cells.node_status("alive", "", eligible=False).plain == "alive ineligible"
