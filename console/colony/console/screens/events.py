"""Events (3): the change stream as it comes, filtered by kind, job, node and free text
(`/`), paused and resumed with space; enter shows an event's whole payload."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input, Static

from colony.console.model import EventFilter, EventRow
from colony.console.screens.base import ConsoleScreen
from colony.console.screens.modals import PayloadScreen
from colony.console.widgets import cells
from colony.console.widgets.table import LiveTable

SHOWN = 500
"""Rows the events table keeps (the model keeps its own, longer, history)."""
FILTER_HELP = "kind:job,instance  job:NAME  node:NAME  free text   (enter applies, esc cancels)"
KIND_STYLE = {"job": "cyan", "instance": "blue", "node": "magenta", "leader": "yellow"}


def parse_filter(said: str) -> EventFilter:
    """'kind:job,node job:web some words' → the filter; words without a prefix are the
    free text."""
    kinds: set[str] = set()
    job = node = ""
    words = []
    for word in said.split():
        prefix, sep, value = word.partition(":")
        if sep and prefix == "kind":
            kinds.update(k for k in value.split(",") if k)
        elif sep and prefix == "job":
            job = value
        elif sep and prefix == "node":
            node = value
        else:
            words.append(word)
    return EventFilter(kinds=frozenset(kinds), job=job, node=node, text=" ".join(words))


def said(f: EventFilter) -> str:
    """The filter as one would type it ('' : none)."""
    words = []
    if f.kinds:
        words.append("kind:" + ",".join(sorted(f.kinds)))
    if f.job:
        words.append("job:" + f.job)
    if f.node:
        words.append("node:" + f.node)
    if f.text:
        words.append(f.text)
    return " ".join(words)


def event_cells(row: EventRow) -> list[Text]:
    dim = "" if row.live else "dim"
    return [
        cells.cell(cells.clock_time(row.ts), "dim"),
        cells.number(row.index, "dim"),
        cells.cell(row.kind, KIND_STYLE.get(row.kind, "")),
        cells.cell(cells.clip(row.id, 14), dim),
        cells.number(row.version, "dim"),
        cells.cell(row.summary, dim),
    ]


class EventsScreen(ConsoleScreen):
    MODE = "events"
    AUTO_FOCUS = "#events"
    BINDINGS = [
        Binding("slash", "edit_filter", "Filter"),
        Binding("space", "pause", "Pause/resume"),
        Binding("escape", "clear_filter", "Clear filter"),
        Binding("enter", "payload", "Payload", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.filter = EventFilter()
        self.paused = False
        self._last = 0
        """The index of the newest event in the table."""

    def compose_body(self) -> ComposeResult:
        yield Input(placeholder=FILTER_HELP, id="filter")
        yield Static(id="events-state")
        yield LiveTable(
            [
                ("time", "TIME"),
                ("index", "#"),
                ("kind", "KIND"),
                ("id", "ID"),
                ("version", "VER"),
                ("summary", "SUMMARY"),
            ],
            id="events",
        )

    def update_view(self, changed) -> None:
        super().update_view(changed)
        if "events" in changed or not self._last:
            self._draw()

    def _draw(self) -> None:
        rows = self.console.model.events_matching(self.filter, limit=SHOWN)
        new = [row for row in rows if row.index > self._last]
        if not self.paused and new:
            table = self.query_one("#events", LiveTable)
            table.append([(str(row.index), event_cells(row)) for row in new], limit=SHOWN)
            self._last = new[-1].index
            new = []
        self._draw_state(len(new))

    def _draw_state(self, waiting: int) -> None:
        text = Text()
        if self.paused:
            text.append(" ⏸ paused ", style="bold reverse yellow")
            text.append(f" {waiting} new", style="yellow")
        else:
            text.append(" ▶ live ", style="bold reverse green")
        shown = self.query_one("#events", LiveTable).row_count
        text.append(f"  {shown} shown", style="dim")
        if said(self.filter):
            text.append("  filter: ", style="dim")
            text.append(said(self.filter), style="bold")
        else:
            text.append("  / filters, space pauses", style="dim")
        self.query_one("#events-state", Static).update(text)

    def set_filter(self, f: EventFilter) -> None:
        self.filter = f
        self._last = 0
        self.query_one("#events", LiveTable).empty()
        self._draw()

    def action_edit_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = said(self.filter)
        box.display = True
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.input.display = False
        self.query_one("#events", LiveTable).focus()
        self.set_filter(parse_filter(event.value))

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if box.display:  # esc while typing one: leave the filter as it was
            box.display = False
            self.query_one("#events", LiveTable).focus()
        elif said(self.filter):
            self.set_filter(EventFilter())

    def action_pause(self) -> None:
        self.paused = not self.paused
        self._draw()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_payload()

    def action_payload(self) -> None:
        key = self.query_one("#events", LiveTable).selected
        if key is None:
            return
        index = int(key)
        row = next((r for r in reversed(self.console.model.events) if r.index == index), None)
        if row is not None:
            self.app.push_screen(PayloadScreen(row))
