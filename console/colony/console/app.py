"""The console app: the feed runs into a buffer (a feed reading the bus in a thread of its
own, so that it keeps up with the cluster whatever the frames cost); a timer applies the
buffer to the model in batches and redraws only what the batch changed, on the screen in
front.

Batched rendering is what keeps it responsive under a burst: a thousand changes a second
are forty model updates and forty redraws a second, whatever the rate (a batch every
25 ms: a change waits 12 ms on average, the redraw ~15 ms at 120x40). A redraw touches
only the regions that changed: table rows whose cells changed, lines whose text changed,
the events list's lines in sight; the events list keeps its last rows only, and the
model's history is bounded (colony.console.model).

Actions (scale, roll back, promote, stop, drain, undrain) ask for a confirmation, then
run in workers: the screen never waits for the cluster; what happened, or why not,
shows as a notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from colony.console.actions import ActionError, Actions
from colony.console.feed import Feed, FeedThread
from colony.console.model import ConnectionChanged, ConsoleModel, FeedItem, Loaded
from colony.console.screens.base import ConsoleScreen
from colony.console.screens.cluster import ClusterScreen
from colony.console.screens.events import EventsScreen
from colony.console.screens.jobs import JobScreen, JobsScreen
from colony.console.screens.logs import LogsScreen
from colony.console.screens.modals import ConfirmScreen, HelpScreen

THEMES = ("textual-dark", "textual-light")
AGES_EVERY = 2.0
"""Seconds between two redraws of the ages shown (the cells that did not change stay)."""
log = logging.getLogger("colony.console")


class ConsoleApp(App):
    """Colony's operator console."""

    CSS_PATH = "console.tcss"
    TITLE = "colony console"
    MODES = {
        "cluster": ClusterScreen,
        "jobs": JobsScreen,
        "events": EventsScreen,
        "logs": LogsScreen,
    }
    DEFAULT_MODE = "cluster"
    BINDINGS = [
        Binding("1", "switch_mode('cluster')", "Cluster", show=False),
        Binding("2", "switch_mode('jobs')", "Jobs", show=False),
        Binding("3", "switch_mode('events')", "Events", show=False),
        Binding("4", "switch_mode('logs')", "Logs", show=False),
        Binding("question_mark", "help", "Help"),
        Binding("t", "toggle_theme", "Light/dark", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        feed: Feed,
        actions: Actions,
        *,
        clock: Callable[[], float] = time.time,
        batch_interval: float = 0.025,
        log_interval: float = 1.0,
    ) -> None:
        super().__init__()
        self.feed = feed
        self.cluster_actions = actions
        self.clock = clock
        """Wall clock for ages ('3m12s'): tests freeze it."""
        self.batch_interval = batch_interval
        self.log_interval = log_interval
        """Seconds between two reads of the followed instance's output."""
        self.model = ConsoleModel()
        self.log_target = ""
        """The instance the logs screen follows ('' : none picked yet)."""
        self._buffer: deque[FeedItem] = deque()
        """What the feed said since the last batch (appended to from the feed's thread)."""
        self._batch_failed = False
        """A batch failed (said once: the next failures are only logged)."""
        self._feed_thread: FeedThread | None = None
        self.batches = 0
        """Batches applied (for tests and the benchmark: how often the screen was redrawn)."""

    def on_mount(self) -> None:
        _settle_heap()
        if getattr(self.feed, "in_thread", False):  # (a feed reading the bus: BusFeed)
            loop = asyncio.get_running_loop()

            def failed(e: Exception) -> None:
                with contextlib.suppress(RuntimeError):  # (the app already closed)
                    loop.call_soon_threadsafe(self._feed_failed, e)

            self._feed_thread = FeedThread(self.feed, self._buffer.append, failed, "console-feed")
            self._feed_thread.start()
        else:  # (a scripted feed: in this loop, as the tests that push to it are)
            self.run_worker(self._run_feed(), name="feed", group="feed", exit_on_error=False)
        self.set_interval(self.batch_interval, self.apply_buffer)
        self.set_interval(AGES_EVERY, self._ages)

    async def on_unmount(self) -> None:
        if self._feed_thread is not None:
            await asyncio.to_thread(self._feed_thread.stop)

    async def _run_feed(self) -> None:
        try:
            await self.feed.run(self._buffer.append)
        except Exception as e:
            self._feed_failed(e)

    def _feed_failed(self, e: Exception) -> None:
        # the feed reconnects by itself: ending is a bug; what is on screen stays, marked
        # as no longer live, and the operator can still read it and act
        said = f"the console stopped following the cluster: {type(e).__name__}: {e}"
        self.apply_buffer()  # (what it said before failing holds the connection's node)
        lost = replace(self.model.connection, state="disconnected", detail=said)
        self._buffer.append(ConnectionChanged(lost))
        self.notify(
            f"{said}\nWhat shows is no longer live: restart `colony console` to follow the "
            "cluster again.",
            title="feed",
            severity="error",
            timeout=30,
            markup=False,
        )

    def apply_buffer(self) -> None:
        """Apply what the feed said since the last batch; redraw what it changed."""
        if not self._buffer:
            return
        buffer = self._buffer
        # popleft, not a copy then clear: the feed's thread may append between the two
        # (and what it appends now waits for the next batch). Not bounded: dropping items
        # would leave the model wrong; a batch takes all there is, so the buffer only
        # grows while applying cannot keep up at all.
        items = [buffer.popleft() for _ in range(len(buffer))]
        try:
            changed = self.model.apply(items)
            self.batches += 1
            if any(isinstance(item, Loaded) for item in items):
                _settle_heap()
            if changed and self.is_running:  # (not while closing: the screens go first)
                screen = self.front_screen
                if screen is not None and screen.is_running:
                    screen.update_view(changed)
        except Exception as e:  # a bug in one batch must not end the console: say it once
            log.exception("console: a batch of %d feed items failed", len(items))
            if not self._batch_failed:
                self._batch_failed = True
                self.notify(
                    f"{type(e).__name__}: {e} (what shows may be incomplete; restart "
                    "`colony console` to read the cluster afresh)",
                    title="console: could not apply what the feed said",
                    severity="error",
                    timeout=30,
                    markup=False,
                )

    def _ages(self) -> None:
        # ages ('3m12s') move with the clock, not with changes
        screen = self.front_screen
        if self.is_running and screen is not None and screen.is_running:
            screen.update_view({"clock"})

    @property
    def front_screen(self) -> ConsoleScreen | None:
        """The console screen in front (under any dialog, which leaves it in sight)."""
        for screen in reversed(self.screen_stack):
            if isinstance(screen, ConsoleScreen):
                return screen
        return None

    # --- navigation ------------------------------------------------------------------

    def follow(self, instance: str) -> None:
        """Show the logs screen following `instance`."""
        self.log_target = instance
        self.switch_mode("logs")

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(help_sections()))

    def action_toggle_theme(self) -> None:
        self.theme = THEMES[1] if self.theme == THEMES[0] else THEMES[0]

    # --- actions ---------------------------------------------------------------------

    def perform(self, what: str, call: Callable[[], Awaitable[str]]) -> None:
        """Run an action in a worker; say what happened, or why not, in a notification."""

        async def act() -> None:
            try:
                said = await call()
            except ActionError as e:
                self.notify(str(e), title=f"{what}: failed", severity="error", markup=False)
            except Exception as e:  # an unforeseen failure still reads as one, not a crash
                self.notify(
                    f"{type(e).__name__}: {e}",
                    title=f"{what}: failed",
                    severity="error",
                    markup=False,
                )
            else:
                self.notify(said or "done", title=what, markup=False)

        self.run_worker(act(), group="actions", exit_on_error=False)

    def _job_row(self, job: str):
        return next((r for r in self.model.job_rows() if r.name == job), None)

    def ask_scale(self, job: str) -> None:
        row = self._job_row(job)
        current = row.desired if row else 0

        def check(value: str) -> str:
            if not _whole_number(value):
                return "a number of instances: 0 or more"
            return ""

        def then(value: str | None) -> None:
            if value is not None:
                n = int(value)
                self.perform(f"scale {job} to {n}", lambda: self.cluster_actions.scale(job, n))

        self.push_screen(
            ConfirmScreen(
                f"Scale {job}",
                f"How many instances of {job} should run? (now {current})",
                verb="Scale",
                ask="instances",
                value=str(current),
                check=check,
            ),
            then,
        )

    def ask_rollback(self, job: str) -> None:
        record = self.model.jobs.get(job)
        stable = record.stable if record else 0
        to = f"the last good version (v{stable})" if stable else "the last good version"

        def check(value: str) -> str:
            if value and not _whole_number(value.removeprefix("v")):
                return "a version number (3 or v3), or nothing for the last good version"
            return ""

        def then(value: str | None) -> None:
            if value is None:
                return
            version = int(value.removeprefix("v")) if value else None
            target = f"v{version}" if version else "the last good version"
            self.perform(
                f"roll {job} back to {target}", lambda: self.cluster_actions.rollback(job, version)
            )

        current = f" (now v{record.version})" if record else ""
        self.push_screen(
            ConfirmScreen(
                f"Roll back {job}",
                f"Roll {job}{current} back to {to}, or to the version typed below?",
                verb="Roll back",
                danger=True,
                ask="version (empty: the last good one)",
                check=check,
            ),
            then,
        )

    def ask_promote(self, job: str) -> None:
        row = self._job_row(job)
        said = row.rollout if row and row.rollout else "no rollout recorded"
        self._confirm(
            f"Promote {job}",
            f"Promote the canaries of {job} and roll the new version out to every instance?\n"
            f"({said})",
            "Promote",
            f"promote {job}",
            lambda: self.cluster_actions.promote(job),
        )

    def ask_stop(self, job: str) -> None:
        self._confirm(
            f"Stop {job}",
            f"Stop every instance of {job}? The job stays known (run it again to restart).",
            "Stop",
            f"stop {job}",
            lambda: self.cluster_actions.stop(job),
            danger=True,
        )

    def ask_drain(self, node: str) -> None:
        name = self.model.node_name(node)
        self._confirm(
            f"Drain {name}",
            f"Drain {name}: no new instances go there and its instances move to other "
            "nodes (what has not moved in an hour is stopped).",
            "Drain",
            f"drain {name}",
            lambda: self.cluster_actions.drain(node),
            danger=True,
        )

    def ask_undrain(self, node: str) -> None:
        name = self.model.node_name(node)
        self._confirm(
            f"Undrain {name}",
            f"Let instances be placed on {name} again?",
            "Undrain",
            f"undrain {name}",
            lambda: self.cluster_actions.undrain(node),
        )

    def _confirm(
        self,
        title: str,
        message: str,
        verb: str,
        what: str,
        call: Callable[[], Awaitable[str]],
        danger: bool = False,
    ) -> None:
        def then(value: str | None) -> None:
            if value is not None:
                self.perform(what, call)

        self.push_screen(ConfirmScreen(title, message, verb=verb, danger=danger), then)

    # --- command palette -------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for key, (mode, title) in enumerate(
            (("cluster", "Cluster"), ("jobs", "Jobs"), ("events", "Events"), ("logs", "Logs")),
            start=1,
        ):
            yield SystemCommand(
                f"Go to {title}", f"the {title} screen ({key})", lambda m=mode: self.switch_mode(m)
            )
        for row in self.model.job_rows():
            job = row.name
            yield SystemCommand(
                f"Scale {job}", f"{row.desired} wanted now", lambda j=job: self.ask_scale(j)
            )
            yield SystemCommand(
                f"Roll back {job}", f"now v{row.version}", lambda j=job: self.ask_rollback(j)
            )
            if row.waiting_promote:
                yield SystemCommand(
                    f"Promote {job}", row.rollout, lambda j=job: self.ask_promote(j)
                )
            if row.status == "running":
                yield SystemCommand(
                    f"Stop {job}", "stop every instance", lambda j=job: self.ask_stop(j)
                )
            yield SystemCommand(
                f"Open {job}",
                "its instances, versions and history",
                lambda j=job: self._open_job(j),
            )
        for node in self.model.node_rows():
            if node.drain:
                yield SystemCommand(
                    f"Undrain {node.name}",
                    f"{node.drain} now",
                    lambda n=node.node: self.ask_undrain(n),
                )
            else:
                yield SystemCommand(
                    f"Drain {node.name}",
                    f"{node.instances} instances move away",
                    lambda n=node.node: self.ask_drain(n),
                )
        for row in self.model.instances.values():
            if row.desired == "run":
                yield SystemCommand(
                    f"Logs of {row.job}/{row.slot}",
                    f"follow {row.id}",
                    lambda i=row.id: self.follow(i),
                )

    def _open_job(self, job: str) -> None:
        async def go() -> None:
            await self.switch_mode("jobs")
            self.push_screen(JobScreen(job))

        self.run_worker(go(), group="navigation")


FULL_GC_EVERY = 1000
"""Collections of the middle generation between two full ones (Python's default: 10)."""


def _settle_heap() -> None:
    """Keep the garbage collector's full passes out of the frames: under a busy stream a
    full pass over everything held (Textual's objects, the state, the history) took
    50-115 ms, every second or so. What is held now is frozen (left out of every pass;
    still freed when no longer referenced, only cycles among it are not collected), and
    full passes come a hundred times less often (the young generations, where the
    garbage of each frame is, are collected as usual)."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_GC_EVERY)


def help_sections() -> list[tuple[str, list[tuple[str, str]]]]:
    """Every key, from the bindings themselves (so the help never lags behind them)."""

    def keys(bindings) -> list[tuple[str, str]]:
        found = []
        for b in bindings:
            if isinstance(b, Binding):
                found.append((_key_name(b.key), b.description or b.action))
            else:
                found.append((_key_name(b[0]), b[2] if len(b) > 2 else b[1]))
        return found

    general = keys(ConsoleApp.BINDINGS)
    general[:4] = [("1 2 3 4", "the four screens")]
    general.append(("ctrl+p", "every action, by name"))
    general.append(("↑↓ pgup pgdn", "move in a table"))
    return [
        ("Everywhere", general),
        ("Cluster (1)", keys(ClusterScreen.BINDINGS)),
        ("Jobs (2)", keys(JobsScreen.BINDINGS)),
        ("A job (enter on Jobs)", keys(JobScreen.BINDINGS)),
        ("Events (3)", keys(EventsScreen.BINDINGS)),
        ("Logs (4)", keys(LogsScreen.BINDINGS)),
        (
            "Dialogs",
            [
                ("enter", "press focused button"),
                ("y", "yes (no value asked)"),
                ("esc", "cancel"),
            ],
        ),
    ]


def _key_name(key: str) -> str:
    names = {"question_mark": "?", "slash": "/", "space": "space", "escape": "esc"}
    return " ".join(names.get(k, k) for k in key.split(","))


async def run_console(feed: Feed, actions: Actions) -> None:
    """Run the console in this terminal until the operator quits (in the running event
    loop: the one the actions' connection lives in; a feed reading the bus runs in a
    thread of its own, with its own connection)."""
    await ConsoleApp(feed, actions).run_async()


def _whole_number(value: str) -> bool:
    """Digits 0-9 only: what int() takes as a count ('²' is a digit to str.isdigit, and
    int() raised on it, ending the app)."""
    return value.isascii() and value.isdecimal()
