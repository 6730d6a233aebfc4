"""The console on a real 3-node `colony up` cluster, as an operator uses it: opened as
`colony console` opens it (the state dir's servers, voters and secret: a BusFeed and
ClusterActions), run headless at 120x40. A job run from another terminal (the CLI)
appears on the Jobs screen and turns healthy; scaled from the console (its confirmation
answered), the replicas follow; a second version run from the CLI is rolled back from
the console."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import yaml
from _colony import Colony

from colony.cli.console import opened
from colony.cli.main import build_parser
from colony.console.app import ConsoleApp
from colony.console.model import JobRow
from colony.console.screens.jobs import JobsScreen
from colony.console.screens.modals import ConfirmScreen
from colony.console.widgets.cells import CONNECTION_STYLE
from colony.console.widgets.table import LiveTable
from colony.harness.processes import poll
from colony.harness.terminal import Terminal

pytestmark = pytest.mark.e2e

WEB = Path(__file__).parents[2] / "examples" / "web.yaml"
JOB = "console-web"
LEFT = "\x1b[?1049l"
"""What a full-screen program writes as it leaves the terminal's alternate screen."""
CONNECTED = CONNECTION_STYLE["connected"][0]
"""The status bar's mark of a live connection, drawn for no other state."""
SETTLE = 60
"""Seconds for a job's instances to be placed, running and healthy (generous: CI is busy)."""


def spec(replicas: int, version: str) -> dict:
    """examples/web.yaml made quick to roll out: checked every second, every instance
    replaced at once, healthy 1 s before a rollout counts it; `version` in its env (a
    new one is a new spec version)."""
    job = yaml.safe_load(WEB.read_text())
    job["name"] = JOB
    job["replicas"] = replicas
    job["task"]["env"] = {"VERSION": version}
    job["checks"][0].update({"interval": "1s", "grace": "5s"})
    job["update"].update({"max_parallel": 3, "min_healthy_time": "1s"})
    return job


@pytest.fixture(scope="module")
def ready(cluster):
    """The cluster once a manager acts and every node's agent has registered it alive."""
    state, _ = cluster
    here = Colony(state)
    here.manager()
    here.nodes_alive()
    return state


def job_row(app: ConsoleApp) -> JobRow | None:
    return next((r for r in app.model.job_rows() if r.name == JOB), None)


def settled(app: ConsoleApp, version: int, replicas: int | None = None) -> bool:
    """The job at `version`, every one of its instances (`replicas`, if given) running
    and healthy, its rollout over and its bar full (as the console's model has it from the
    change stream)."""
    row = job_row(app)
    return (
        row is not None
        and row.version == version
        and row.desired == row.running == row.healthy == (replicas or row.desired) > 0
        and "succeeded" in row.rollout
        and row.progress == 1.0
    )


async def until(app: ConsoleApp, condition, what: str, timeout: float = SETTLE) -> None:
    """`poll`, saying on failure what the console shows of the job and notified."""
    try:
        await poll(condition, timeout, what, every=0.1)
    except TimeoutError as e:
        said = [f"{n.title}: {n.message}" for n in app._notifications]
        raise AssertionError(f"{e}; the job: {job_row(app)}; notified: {said}") from None


def shown(app: ConsoleApp) -> list[str]:
    """The job's row on the Jobs screen, cell by cell, as drawn."""
    table = app.screen.query_one("#jobs", LiveTable)
    return [str(cell) for cell in table.get_row(JOB)] if JOB in table.rows else []


async def confirm(pilot, value: str | None = None) -> None:
    """Answer the action's confirmation (typing `value` first, where it asks one)."""
    app = pilot.app
    await poll(lambda: isinstance(app.screen, ConfirmScreen), 10, "the confirmation")
    if value is not None:
        field = app.screen.query_one("#dialog-input")
        field.value = value
    await pilot.click("#yes")
    await poll(lambda: not isinstance(app.screen, ConfirmScreen), 10, "the confirmation closed")


def test_colony_console_in_a_terminal_shows_the_cluster_and_quits_on_q(ready):
    argv = [sys.executable, "-m", "colony.cli", "console", "--state-dir", str(ready)]
    with Terminal(argv, size=(120, 40)) as terminal:
        # the bar's mark of a live connection ("connected" alone is in "disconnected" too;
        # "● " and "connected" are drawn as two pieces, each in its own escape sequence)
        terminal.read_until(CONNECTED, "node-1", "node-2", "node-3", timeout=SETTLE)
        terminal.press("q")
        assert terminal.wait(10) == 0, terminal.text()[-2000:]
        said = terminal.text()
        assert "Traceback" not in said, said[-2000:]
        assert LEFT in said[-400:], said[-400:]  # the terminal given back as it was


async def test_a_job_run_outside_appears_turns_healthy_is_scaled_and_rolled_back(ready, tmp_path):
    state = ready
    outside = Colony(state)  # the CLI, as from another terminal
    args = build_parser().parse_args(["console", "--state-dir", str(state)])
    async with opened(args) as (feed, actions):
        app = ConsoleApp(feed, actions)
        async with app.run_test(size=(120, 40)) as pilot:
            await poll(
                lambda: app.model.connection.state == "connected" and len(app.model.nodes) == 3,
                SETTLE,
                "the console connected, with the cluster's 3 nodes",
            )
            await poll(
                lambda: app.model.connection.node.startswith("node-"),
                10,
                "the node connected through named (from its metrics)",
            )
            await pilot.press("2")
            await poll(lambda: isinstance(app.screen, JobsScreen), 10, "the Jobs screen")

            # from another terminal: it appears, then turns healthy
            await asyncio.to_thread(outside.run, spec(2, "1"), tmp_path, "--detach")
            await poll(lambda: shown(app), SETTLE, f"{JOB} on the Jobs screen")
            await until(app, lambda: settled(app, 1, 2), f"{JOB} v1: 2 running and healthy")
            await poll(lambda: shown(app)[:5] == [JOB, "v1", "2", "2", "2"], 10, "drawn so")

            # scaled from the console
            app.screen.query_one("#jobs", LiveTable).select(JOB)
            await pilot.press("s")
            await confirm(pilot, "3")
            await until(app, lambda: settled(app, 1, 3), f"{JOB} scaled: 3 running and healthy")
            await poll(lambda: shown(app)[:5] == [JOB, "v1", "3", "3", "3"], 10, "drawn so")

            # a second version from outside, rolled back from the console
            await asyncio.to_thread(outside.run, spec(3, "2"), tmp_path, "--detach")
            await until(app, lambda: settled(app, 2), f"{JOB} v2: running and healthy")
            app.screen.query_one("#jobs", LiveTable).select(JOB)
            await pilot.press("r")
            await confirm(pilot, "1")
            await until(app, lambda: settled(app, 3), f"{JOB} rolled back: v3 healthy")
            await until(app, lambda: shown(app)[:2] == [JOB, "v3"], "drawn so", 10)
            assert "rollback" in app.model.jobs[JOB].cause, app.model.jobs[JOB]
            newest = (await actions.versions(JOB))[0]
            assert newest.version == 3 and "rollback" in newest.cause, newest

            await actions.stop(JOB, purge=True)
            await poll(lambda: job_row(app) is None, SETTLE, f"{JOB} forgotten")
