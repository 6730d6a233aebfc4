"""The console driven by keys against a real nats-server and a real (in-process) voter:
a scripted feed shows what the voter holds (read once at the start), the real
ClusterActions act on it. Each action key, confirmed, changes the voter's records (a
refused one shows as an error notification, and the console goes on)."""

from __future__ import annotations

import pytest
from _console_cluster import NODE, console_cluster, job, node
from textual.widgets import Input

from colony.cli import records
from colony.console.actions import ClusterActions
from colony.console.app import ConsoleApp
from colony.console.feed import ScriptedFeed
from colony.console.model import Connection, ConnectionChanged, Loaded
from colony.console.screens.cluster import ClusterScreen
from colony.console.screens.jobs import JobsScreen
from colony.console.screens.modals import ConfirmScreen
from colony.console.widgets.table import LiveTable
from colony.harness.processes import poll

SIZE = (100, 30)
WAIT = 10.0
"""Seconds for an action to be committed and said (one voter: well under one)."""


@pytest.fixture
async def console(nats_server, tmp_path, bus):
    """The voter's client, and the console on it (not yet running)."""
    async with console_cluster(nats_server, tmp_path, bus) as client:
        items = [
            ConnectionChanged(Connection("connected", nats_server.url, "node-1")),
            Loaded(
                1,
                await records.nodes(client),
                await records.jobs(client),
                await records.instances(client),
            ),
        ]
        app = ConsoleApp(ScriptedFeed(items), ClusterActions(client))
        yield client, app


def notes(app: ConsoleApp) -> list[tuple[str, str]]:
    """The notifications shown: (message, severity)."""
    return [(n.message, n.severity) for n in app._notifications]


async def said(app: ConsoleApp, message: str, severity: str = "information") -> None:
    """Wait for a notification saying `message` (what the action returned)."""
    note = (message, severity)
    await poll(lambda: note in notes(app), WAIT, f"{note} among {notes(app)}")


async def confirm(pilot, value: str | None = None) -> None:
    """Answer the open confirmation (typing `value` first, where it asks one)."""
    app = pilot.app
    await poll(lambda: isinstance(app.screen, ConfirmScreen), WAIT, "the confirmation")
    if value is not None:
        app.screen.query_one("#dialog-input", Input).value = value
    # (enter takes a value typed; with none asked, y: a stop's or drain's has Cancel focused)
    await pilot.press("enter" if value is not None else "y")
    await poll(lambda: not isinstance(app.screen, ConfirmScreen), WAIT, "the dialog closed")


async def loaded(pilot) -> None:
    app = pilot.app
    await poll(lambda: "web" in app.model.jobs and NODE in app.model.nodes, WAIT, "the feed read")
    await pilot.pause()


async def test_job_keys_scale_roll_back_and_stop_and_a_refused_promote_is_said(console):
    client, app = console
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("2")
        assert isinstance(app.screen, JobsScreen)
        app.screen.query_one("#jobs", LiveTable).select("web")
        await pilot.pause()

        await pilot.press("s")
        await confirm(pilot, "3")
        await said(app, "web: scaled to 3")
        assert (await job(client)).replicas == 3

        await pilot.press("r")
        await confirm(pilot, "1")
        await said(app, "web: rolled back: version 3 runs version 1's spec")
        rolled = await job(client)
        assert (rolled.version, rolled.spec.task.command) == (3, "sleep")

        await pilot.press("p")  # nothing waits for a promote: the voter refuses
        await confirm(pilot)
        await poll(lambda: any(s == "error" for _, s in notes(app)), WAIT, "an error note")
        [refused] = [m for m, s in notes(app) if s == "error"]
        assert refused.startswith("web not promoted: ")
        assert isinstance(app.screen, JobsScreen)  # and the console goes on

        await pilot.press("x")
        await confirm(pilot)
        await said(app, "web: stopped: its instances stop now")
        assert (await job(client)).status == "stopped"


async def test_node_keys_drain_and_undrain(console):
    client, app = console
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        assert isinstance(app.screen, ClusterScreen)
        app.screen.query_one("#nodes", LiveTable).select(NODE)
        await pilot.pause()

        await pilot.press("d")
        await confirm(pilot)
        await said(app, "node-1: draining (its instances move away)")
        drained = await node(client)
        assert drained.drain in ("draining", "drained") and not drained.eligible

        await pilot.press("u")
        await confirm(pilot)
        await said(app, "node-1: eligible again")
        back = await node(client)
        assert (back.drain, back.eligible) == ("", True)
