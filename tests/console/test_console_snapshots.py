"""Screenshots of each screen at a fixed size with the clock frozen (pytest-textual-snapshot:
`--snapshot-update` rewrites them after a deliberate change; review the SVGs)."""

from __future__ import annotations

from _console import make_app, settle, until

from colony.console.widgets.table import LiveTable

SIZE = (100, 30)


def snap(snap_compare, *keys: str, size=SIZE, then=None) -> bool:
    async def run_before(pilot) -> None:
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
        if then is not None:
            await then(pilot)
        await pilot.pause()

    return snap_compare(make_app(), terminal_size=size, run_before=run_before)


def test_cluster(snap_compare):
    assert snap(snap_compare)


def test_cluster_at_80x24(snap_compare):
    assert snap(snap_compare, size=(80, 24))


def test_cluster_wide(snap_compare):
    assert snap(snap_compare, size=(140, 36))


def test_jobs(snap_compare):
    assert snap(snap_compare, "2", "down")


async def _versions_read(pilot) -> None:
    table = pilot.app.screen.query_one("#versions", LiveTable)
    await until(pilot, lambda: table.row_count == 3, "the versions read")


def test_job_page(snap_compare):
    assert snap(snap_compare, "2", "down", "enter", then=_versions_read)


def test_job_page_at_80x24(snap_compare):
    assert snap(snap_compare, "2", "down", "enter", size=(80, 24), then=_versions_read)


async def _filtered_and_paused(pilot) -> None:
    pilot.app.screen.query_one("#filter").value = "kind:node,instance"
    await pilot.press("enter", "space")


def test_events_filtered_and_paused(snap_compare):
    assert snap(snap_compare, "3", "slash", then=_filtered_and_paused)


def test_event_payload(snap_compare):
    assert snap(snap_compare, "3", "up", "enter")


async def _output(pilot) -> None:
    pilot.app.follow("web-1-dddd")

    def shown() -> bool:
        logs = pilot.app.screen.query("#log")
        return bool(logs) and logs.first().line_count >= 2

    await until(pilot, shown, "the output")


def test_logs(snap_compare):
    assert snap(snap_compare, then=_output)


def test_scale_dialog_light(snap_compare):
    assert snap(snap_compare, "t", "2", "down", "s")


def test_help(snap_compare):
    assert snap(snap_compare, "question_mark")
