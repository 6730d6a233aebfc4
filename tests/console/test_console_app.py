"""The console driven by keys: navigation, the live tables, filters and pause, each
action's confirmation and call, errors as notifications (a scripted feed, a fake Actions)."""

from __future__ import annotations

from _console import (
    FIXED,
    LAST_INDEX,
    FakeActions,
    change,
    cluster_items,
    instance,
    job,
    make_app,
    node,
    settle,
    until,
)
from textual.widgets import Input, Log

from colony.console.app import ConsoleApp
from colony.console.model import Connection, ConnectionChanged
from colony.console.screens.cluster import ClusterScreen
from colony.console.screens.events import EventsScreen, parse_filter, said
from colony.console.screens.jobs import JobScreen, JobsScreen
from colony.console.screens.logs import LogsScreen
from colony.console.screens.modals import ConfirmScreen, HelpScreen, PayloadScreen
from colony.console.widgets.eventlist import EventList
from colony.console.widgets.status import StatusBar
from colony.console.widgets.table import LiveTable

SIZE = (100, 30)


def plain(table: LiveTable, row: str, column: str) -> str:
    return table.get_cell(row, column).plain


def rows(table: LiveTable) -> list[str]:
    return [key.value for key in table.rows]


def events(app) -> list[int]:
    return [row.index for row in app.screen.query_one("#events", EventList).rows]


def notes(app) -> list[tuple[str, str, str]]:
    return [(n.title, n.message, n.severity) for n in app._notifications]


async def test_number_keys_switch_screens_and_the_bar_says_where_it_is_connected():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, ClusterScreen)
        bar = app.screen.query_one(StatusBar).render().plain
        assert "connected via node-1" in bar and f"#{LAST_INDEX}" in bar
        for key, screen in (("2", JobsScreen), ("3", EventsScreen), ("4", LogsScreen)):
            await pilot.press(key)
            assert isinstance(app.screen, screen)
        await pilot.press("1")
        assert isinstance(app.screen, ClusterScreen)

        app.feed.push(ConnectionChanged(Connection("reconnecting", detail="connection lost")))
        await until(pilot, lambda: app.model.connection.state == "reconnecting", "reconnecting")
        await pilot.pause()
        assert "reconnecting" in app.screen.query_one(StatusBar).render().plain

        # the server answers but no voter does: not shown as plainly connected
        why = "cannot read the state: no voter could answer"
        app.feed.push(ConnectionChanged(Connection("connected", node="node-1", detail=why)))
        await until(pilot, lambda: app.model.connection.detail == why, "the detail")
        await pilot.pause()
        bar = app.screen.query_one(StatusBar).render().plain
        assert "connected, no voter answers via node-1" in bar and "cannot" in bar  # (cut)


async def test_the_nodes_table_shows_roles_and_updates_rows_in_place():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        table = app.screen.query_one("#nodes", LiveTable)
        assert rows(table) == ["n1", "n2", "n3"]
        assert plain(table, "n1", "roles") == "voter leader"
        assert plain(table, "n2", "roles") == "voter mgr e7"  # (manager e7 when wider)
        assert plain(table, "n3", "status") == "suspect draining"
        assert plain(table, "n1", "inst") == "2"
        first_row = table.rows["n1"]

        app.feed.push(change(LAST_INDEX + 1, "node", "n3", 6, node("n3", status="dead")))
        await settle(pilot, LAST_INDEX + 1)
        assert plain(table, "n3", "status") == "dead"
        assert table.rows["n1"] is first_row  # updated in place, not rebuilt

        # the membership view of the selected node
        members = app.screen.query_one("#members", LiveTable)
        assert plain(members, "n3", "status") == "suspect"


async def test_a_burst_of_changes_is_drawn_in_a_few_batches():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("3")
        before = app.batches
        record = instance("web-0-cccc", "web", 2, 0, "n1")
        burst = [
            change(LAST_INDEX + i, "instance", "web-0-cccc", 10 + i, record) for i in range(1, 1001)
        ]
        app.feed.push(*burst)
        await settle(pilot, LAST_INDEX + 1000)
        assert app.batches - before < 100, "each batch should absorb many changes"
        shown = events(app)
        assert len(shown) == 1000 and shown[-1] == LAST_INDEX + 1000  # bounded, newest last


def test_a_filter_reads_as_typed():
    f = parse_filter("kind:job,instance job:web node:node-2 went down")
    assert f.kinds == {"job", "instance"} and f.job == "web" and f.node == "node-2"
    assert f.text == "went down"
    assert said(f) == "kind:instance,job job:web node:node-2 went down"


async def test_events_filter_on_slash_and_clear_on_escape():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("3")
        assert events(app) == [41, 42, 43, 44]
        await pilot.press("slash")
        assert app.screen.query_one("#filter", Input).has_focus
        await pilot.press(*"kind:instance", "enter")
        assert events(app) == [43]
        await pilot.press("slash", "end", *" node-3", "enter")  # and a free text
        assert app.screen.filter.text == "node-3" and events(app) == [43]
        await pilot.press("escape")
        assert events(app) == [41, 42, 43, 44]
        await pilot.press("slash")
        app.screen.query_one("#filter", Input).value = "node:node-3"
        await pilot.press("enter")
        assert events(app) == [41, 43]


async def test_space_pauses_and_resumes_the_events():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("3", "space")
        assert app.screen.paused
        app.feed.push(change(LAST_INDEX + 1, "node", "n2", 9, node("n2")))
        await settle(pilot, LAST_INDEX + 1)
        assert LAST_INDEX + 1 not in events(app)
        assert "1 new" in app.screen.query_one("#events-state").render().plain
        await pilot.press("slash", *"kind:node", "enter")  # a filter shows what was held
        assert events(app) == [41]
        await pilot.press("escape")
        assert events(app) == [41, 42, 43, 44]
        await pilot.press("space")
        assert events(app)[-1] == LAST_INDEX + 1


async def test_a_filter_while_paused_shows_what_was_held_however_much_came_since():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("3", "space")
        many = range(LAST_INDEX + 1, LAST_INDEX + 1201)  # (more than the list shows)
        app.feed.push(*(change(i, "node", "n2", i, node("n2")) for i in many))
        await settle(pilot, many[-1])
        assert "1200 new" in app.screen.query_one("#events-state").render().plain
        await pilot.press("slash", *"kind:node", "enter")
        assert events(app) == [41]
        assert "1200 new" in app.screen.query_one("#events-state").render().plain


async def test_enter_on_an_event_shows_its_whole_payload():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("3", "enter")
        assert isinstance(app.screen, PayloadScreen)
        assert app.screen.row.index == LAST_INDEX  # the cursor follows the newest
        await pilot.press("escape", "up", "up", "enter")
        assert app.screen.row.index == LAST_INDEX - 2
        await pilot.press("escape")
        assert isinstance(app.screen, EventsScreen)
        app.feed.push(change(LAST_INDEX + 1, "node", "n2", 9, node("n2")))
        await settle(pilot, LAST_INDEX + 1)
        assert app.screen.query_one("#events", EventList).selected.index == LAST_INDEX - 2


async def _on_job(pilot, job: str = "web") -> None:
    await settle(pilot)
    await pilot.press("2")
    app = pilot.app
    app.screen.query_one("#jobs", LiveTable).select(job)
    await pilot.pause()


async def test_scale_asks_the_count_then_scales():
    actions = FakeActions()
    app = make_app(actions=actions)
    async with app.run_test(size=SIZE) as pilot:
        await _on_job(pilot)
        await pilot.press("s")
        assert isinstance(app.screen, ConfirmScreen)
        assert app.screen.query_one("#dialog-input", Input).value == "3"  # what it wants now
        await pilot.press("backspace", "x", "enter")
        assert isinstance(app.screen, ConfirmScreen), "not a number: the dialog stays"
        assert "a number" in app.screen.query_one("#dialog-error").render().plain
        await pilot.press("backspace", "²", "enter")  # (a digit to str.isdigit; no count)
        assert isinstance(app.screen, ConfirmScreen), "not a count: the dialog stays"
        await pilot.press("backspace", "5", "enter")
        await until(pilot, lambda: actions.calls[-1:] == [("scale", "web", 5)], "scale")
        await until(pilot, lambda: any(t == "scale web to 5" for t, _, _ in notes(app)), "a note")
        assert isinstance(app.screen, JobsScreen)


async def test_a_cancelled_dialog_does_nothing():
    actions = FakeActions()
    app = make_app(actions=actions)
    async with app.run_test(size=SIZE) as pilot:
        await _on_job(pilot)
        for key in "sxrp":
            await pilot.press(key)
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("escape")
            assert isinstance(app.screen, JobsScreen)
        await pilot.pause()
        assert [c for c in actions.calls if c[0] != "versions"] == []


async def test_rollback_promote_and_stop_after_confirming():
    actions = FakeActions()
    app = make_app(actions=actions)
    async with app.run_test(size=SIZE) as pilot:
        await _on_job(pilot)
        await pilot.press("r", "enter")  # nothing typed: the last good version
        await pilot.press("r", "v", "²", "enter")  # not a version: the dialog stays
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("backspace", "backspace", "2", "enter")
        await pilot.press("p", "enter")
        await pilot.press("x")
        assert app.screen.focused.id == "no", "a stray enter must not stop a job"
        await pilot.press("enter")
        await pilot.press("x", "y")
        want = [("rollback", "web", None), ("rollback", "web", 2)]
        want += [("promote", "web"), ("stop", "web")]
        await until(pilot, lambda: actions.calls == want, f"{want}, not {actions.calls}")


async def test_the_cursor_stays_on_its_row_when_a_row_above_goes():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("2")
        app.feed.push(change(LAST_INDEX + 1, "job", "aaa", 1, job("aaa", 1, 1, None)))
        table = app.screen.query_one("#jobs", LiveTable)
        await until(pilot, lambda: rows(table) == ["aaa", "api", "web"], "job aaa shown")
        table.select("api")
        app.feed.push(change(LAST_INDEX + 2, "job", "aaa", 0, None))  # purged
        await until(pilot, lambda: rows(table) == ["api", "web"], "job aaa gone")
        assert table.selected == "api"


async def test_drain_and_undrain_the_selected_node():
    actions = FakeActions()
    app = make_app(actions=actions)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        table = app.screen.query_one("#nodes", LiveTable)
        table.select("n2")
        await pilot.press("d")
        assert "node-2" in app.screen.query_one("#dialog-message").render().plain
        assert app.screen.focused.id == "no"
        await pilot.press("y")
        table.select("n3")
        await pilot.press("u", "y")
        await until(pilot, lambda: actions.calls == [("drain", "n2"), ("undrain", "n3")], "calls")


async def test_an_action_error_shows_as_an_error_notification():
    actions = FakeActions()
    actions.fail["promote"] = "web has no canaries waiting: its rollout is over"
    app = make_app(actions=actions)
    async with app.run_test(size=SIZE) as pilot:
        await _on_job(pilot)
        await pilot.press("p", "enter")
        await until(pilot, lambda: any(s == "error" for _, _, s in notes(app)), "an error note")
        assert ("promote web: failed", actions.fail["promote"], "error") in notes(app)
        assert isinstance(app.screen, JobsScreen)  # and the console goes on


async def test_a_job_page_shows_instances_versions_and_history_then_its_logs():
    actions = FakeActions()
    app = make_app(actions=actions)
    async with app.run_test(size=SIZE) as pilot:
        await _on_job(pilot)
        await pilot.press("enter")
        assert isinstance(app.screen, JobScreen) and app.screen.job == "web"
        instances = app.screen.query_one("#instances", LiveTable)
        assert rows(instances) == ["web-0-cccc", "web-1-dddd", "web-2-eeee"]
        assert plain(instances, "web-1-dddd", "restarts") == "2"
        assert plain(instances, "web-0-cccc", "age") == "2m05s"
        assert plain(instances, "web-0-cccc", "address") == "10.0.0.1:8000"
        versions = app.screen.query_one("#versions", LiveTable)
        await until(pilot, lambda: versions.row_count == 3, "the versions read")
        assert rows(app.screen.query_one("#history", LiveTable)) == ["42", "43"]

        await pilot.press("s", "escape")  # the actions work from here too
        assert isinstance(app.screen, JobScreen)
        await pilot.press("l")
        assert isinstance(app.screen, LogsScreen)
        log = app.screen.query_one("#log", Log)
        await until(pilot, lambda: "serving on :8000" in "\n".join(log.lines), "the output")
        actions.output.append("GET / 200\n")
        await until(pilot, lambda: "GET / 200" in log.lines, "the followed output")
        assert log.lines.count("starting") == 1

        await pilot.press("2")  # back on the jobs mode, the job page is where it was
        assert isinstance(app.screen, JobScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, JobsScreen)


async def test_a_log_read_failing_says_so_once():
    actions = FakeActions()
    actions.fail["logs"] = "node-1 does not answer: its agent may be down"
    app = make_app(actions=actions)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.follow("web-0-cccc")
        await until(pilot, lambda: len([c for c in actions.calls if c[0] == "logs"]) >= 3, "reads")
        errors = [n for n in notes(app) if n[2] == "error"]
        assert errors == [("logs of web-0-cccc", actions.fail["logs"], "error")]
        assert actions.fail["logs"] in app.screen.query_one("#log-state").render().plain


async def test_help_lists_every_key_and_the_palette_offers_the_actions():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        listed = {key for _, keys in app.screen.sections for key, _ in keys}
        for key in ("1 2 3 4", "?", "ctrl+p", "d", "u", "s", "r", "p", "x", "l", "/", "space"):
            assert key in listed, key
        await pilot.press("escape")
        assert isinstance(app.screen, ClusterScreen)

        commands = {c.title: c for c in app.get_system_commands(app.screen)}
        for title in ("Scale web", "Promote web", "Stop api", "Undrain node-3", "Drain node-1"):
            assert title in commands, title
        assert "Promote api" not in commands  # nothing waits for a promote
        commands["Drain node-1"].callback()
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)


async def test_light_theme_and_80x24():
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("t")
        assert app.theme == "textual-light"
        for key in "12341":
            await pilot.press(key)
        assert app.clock() == FIXED
        screen = app.screen.region
        for mode, table, wanted in (
            ("1", "#nodes", ["name", "status", "roles", "cpu", "mem", "inst"]),
            ("2", "#jobs", ["name", "version", "desired", "running", "healthy"]),
        ):
            await pilot.press(mode)
            await pilot.pause()
            bar = app.screen.query_one(StatusBar)
            assert screen.contains_region(bar.region) and bar.region.width == 80
            assert "connected via node-1" in bar.render().plain
            shown = app.screen.query_one(table, LiveTable)
            assert screen.contains_region(shown.region) and shown.region.height >= 5
            assert set(wanted) <= set(in_sight(shown)), f"{table}: {in_sight(shown)}"


def in_sight(table: LiveTable) -> list[str]:
    """The keys of the columns drawn whole within the table's width (not scrolled)."""
    x, room, keys = 0, table.scrollable_content_region.width, []
    for column in table.ordered_columns:
        x += column.get_render_width(table)
        if x <= room:
            keys.append(column.key.value)
    return keys


class BrokenFeed:
    async def run(self, emit) -> None:
        for item in cluster_items():
            emit(item)
        raise RuntimeError("decoder bug")


async def test_a_feed_that_fails_leaves_the_console_up_and_says_so():
    app = ConsoleApp(BrokenFeed(), FakeActions(), clock=lambda: FIXED, batch_interval=0.01)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.model.connection.state == "disconnected", "disconnected")
        await pilot.pause()
        bar = app.screen.query_one(StatusBar).render().plain
        assert "disconnected via node-1" in bar and "the console stopped" in bar
        [(_, said, severity)] = notes(app)
        assert severity == "error" and "restart `colony console`" in said
        assert app.screen.query_one("#nodes", LiveTable).row_count == 3  # still readable


async def test_the_command_palette_finds_an_action_by_name():
    actions = FakeActions()
    app = make_app(actions=actions)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+p", *"scale web")

        def first_hit() -> str:
            hits = app.screen.query("OptionList")
            if not hits or not hits.first().option_count:
                return ""
            return str(hits.first().get_option_at_index(0).prompt)

        await until(pilot, lambda: "Scale web" in first_hit(), "the hit")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        await pilot.press("enter")
        await until(pilot, lambda: actions.calls == [("scale", "web", 3)], "the scale")


async def test_before_anything_is_heard_every_screen_and_key_is_harmless():
    actions = FakeActions()
    app = make_app(items=[], actions=actions)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert "connecting" in app.screen.query_one(StatusBar).render().plain
        assert "no nodes" in app.screen.query_one("#node-summary").render().plain
        await pilot.press("d", "u", "2", "s", "r", "p", "x", "enter")
        assert "no jobs yet" in app.screen.query_one("#job-line").render().plain
        await pilot.press("3", "enter", "space", "4")
        assert isinstance(app.screen, LogsScreen) and actions.calls == []


async def test_output_faster_than_a_read_a_pause_is_read_at_once():
    actions = FakeActions()
    actions.output = [f"line {n}\n" for n in range(50)]
    actions.chunk = 5  # (a read is cut at its size limit: ten reads to catch up)
    app = make_app(actions=actions)
    app.log_interval = 60.0  # (a pause between reads would show as a timeout)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.follow("web-0-cccc")
        await until(pilot, lambda: app.screen.query("#log"), "the logs screen")
        log = app.screen.query_one("#log", Log)
        await until(pilot, lambda: "line 49" in log.lines, "all the output", timeout=5)


async def test_an_unforeseen_failure_in_a_worker_or_a_batch_is_said_not_fatal():
    actions = FakeActions()
    actions.crash["versions"] = RuntimeError("versions broke")
    actions.crash["logs"] = KeyError("logs broke")
    app = make_app(actions=actions)
    async with app.run_test(size=SIZE) as pilot:
        await _on_job(pilot)
        await pilot.press("enter")
        await until(pilot, lambda: any("versions broke" in m for _, m, _ in notes(app)), "said")
        app.follow("web-0-cccc")
        await until(pilot, lambda: any("logs broke" in m for _, m, _ in notes(app)), "said")

        apply = app.model.apply

        def broken(items):
            raise ValueError("a bug in the model")

        app.model.apply = broken
        app.feed.push(ConnectionChanged(Connection("reconnecting")))
        await until(pilot, lambda: any("a bug in the model" in m for _, m, _ in notes(app)), "said")
        app.model.apply = apply
        app.feed.push(ConnectionChanged(Connection("connected", detail="back")))
        await until(pilot, lambda: app.model.connection.detail == "back", "batches go on")
        assert app.is_running
        errors = [n for n in notes(app) if "a bug in the model" in n[1]]
        assert len(errors) == 1


async def test_the_sparklines_keep_a_modest_height_and_the_nodes_take_the_room():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        for spark in ("#cpu-spark", "#mem-spark"):
            assert app.screen.query_one(spark).region.height <= 4
        nodes = app.screen.query_one("#nodes").region
        assert nodes.height > app.screen.query_one("#node-detail").region.height
        summary = app.screen.query_one("#node-summary").render().plain
        assert "cpu reserved 0.50  of 4.0" in summary
