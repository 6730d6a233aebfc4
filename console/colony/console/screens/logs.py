"""Logs (4): follow an instance's output (its node keeps it; `actions.logs` reads what is
new every second while this screen shows)."""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Log, Select, Static

from colony.console.actions import ActionError
from colony.console.screens.base import ConsoleScreen


class LogsScreen(ConsoleScreen):
    MODE = "logs"
    AUTO_FOCUS = "#log"
    BINDINGS = [
        Binding("e", "stream", "stdout/stderr"),
        Binding("f", "follow", "Follow on/off"),
        Binding("i", "pick", "Instance"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.instance = ""
        self.stream = "stdout"
        self._choices: list[str] = []
        self._offset = -1
        """Where the next read starts (-1: the output's tail)."""
        self._read = 0
        """Characters shown of the followed output."""
        self._said = ""
        """What the last read said went wrong ('' : nothing): said once, not every second."""

    def compose_body(self) -> ComposeResult:
        yield Select([], prompt="pick an instance (i)", id="instance")
        yield Static(id="log-state")
        yield Log(id="log", max_lines=5000)

    def update_view(self, changed) -> None:
        super().update_view(changed)
        if changed & {"instances", "nodes"}:
            self._draw_choices()
        wanted = self.console.log_target
        if wanted and wanted != self.instance:
            self.show(wanted)
        elif not self.instance:
            self.query_one("#log-state", Static).update(
                Text("i picks an instance (or l on an instance of a job's page)", style="dim")
            )

    def _draw_choices(self) -> None:
        model = self.console.model
        found = sorted(model.instances.values(), key=lambda i: (i.job, i.desired != "run", i.slot))
        ids = [i.id for i in found]
        if ids == self._choices:
            return
        self._choices = ids
        select = self.query_one("#instance", Select)
        with self.prevent(Select.Changed):
            select.set_options(
                (f"{i.job}/{i.slot}  {i.id}  on {model.node_name(i.node)}", i.id) for i in found
            )
            if self.instance in ids:
                select.value = self.instance

    def on_select_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and event.value != self.instance:
            self.console.log_target = event.value
            self.show(event.value)

    def show(self, instance: str) -> None:
        """Follow `instance` from its output's tail."""
        self.instance = instance
        # (after a refresh: on the screen's first mount the Select's parts are not there
        # yet, and setting its value then raised NoMatches, which ended the app)
        self.call_after_refresh(self._mark, instance)
        log = self.query_one("#log", Log)
        log.clear()
        log.border_title = f"{self.stream} of {instance}"
        self._offset, self._read = -1, 0
        self.follow_output()

    def _mark(self, instance: str) -> None:
        """Show `instance` picked in the Select."""
        select = self.query_one("#instance", Select)
        if instance == self.instance and instance in self._choices and select.value != instance:
            with self.prevent(Select.Changed):
                select.value = instance

    def on_screen_suspend(self) -> None:
        self.workers.cancel_group(self, "logs")  # read only while it shows

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        if self.instance:
            self.follow_output()

    @work(exclusive=True, group="logs", exit_on_error=False)
    async def follow_output(self) -> None:
        instance, stream = self.instance, self.stream
        log = self.query_one("#log", Log)
        while True:
            more = False
            try:
                chunk = await self.console.cluster_actions.logs(instance, stream, self._offset)
            except ActionError as e:
                self._state(instance, stream, problem=str(e))
            except Exception as e:  # an unforeseen failure reads as one, not a crash
                self._state(instance, stream, problem=f"{type(e).__name__}: {e}")
            else:
                # (written and moved on in one step: a restarted worker reads on from here)
                if chunk.text:
                    log.write(chunk.text)
                    self._read += len(chunk.text)
                self._offset = chunk.offset
                self._state(instance, stream, running=chunk.running)
                more = chunk.more  # (output faster than a read a pause: keep up, not lag)
            await asyncio.sleep(0 if more else self.console.log_interval)

    def _state(self, instance: str, stream: str, running: bool = True, problem: str = "") -> None:
        model = self.console.model
        record = model.instances.get(instance)
        text = Text.assemble(("following " if running else "ended: ", "bold"))
        if record is not None:
            text.append(f"{record.job}/{record.slot} ", style="bold")
        text.append(instance, style="dim")
        text.append(f"  {stream}", style="cyan")
        text.append(f"  {self._read} characters read", style="dim")
        if not self.query_one("#log", Log).auto_scroll:
            text.append("  (not scrolling: f)", style="yellow")
        if problem:
            text.append("\n" + problem, style="bold red")
            if problem != self._said:
                self.notify(problem, title=f"logs of {instance}", severity="error", markup=False)
        self._said = problem
        self.query_one("#log-state", Static).update(text)

    def action_stream(self) -> None:
        self.stream = "stderr" if self.stream == "stdout" else "stdout"
        if self.instance:
            self.show(self.instance)

    def action_follow(self) -> None:
        log = self.query_one("#log", Log)
        log.auto_scroll = not log.auto_scroll
        if log.auto_scroll:
            log.scroll_end(animate=False)

    def action_pick(self) -> None:
        select = self.query_one("#instance", Select)
        select.focus()
        select.expanded = True
