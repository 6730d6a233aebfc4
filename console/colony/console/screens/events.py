"""Events (3): the change stream as it comes, filtered by kind, job, node and free text
(`/`), paused and resumed with space; enter shows an event's whole payload."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Input, Static

from colony.console.model import EventFilter
from colony.console.screens.base import ConsoleScreen
from colony.console.screens.modals import PayloadScreen
from colony.console.widgets.eventlist import EventList, header_line
from colony.console.widgets.line import Line, retitle

SHOWN = 1000
"""Rows the events list keeps (the model keeps its own, longer, history)."""
FILTER_HELP = "kind:job,instance  job:NAME  node:NAME  free text   (enter applies, esc cancels)"


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
        self._paused_at = 0
        """The change index the list stopped at (while paused)."""
        self._last = 0
        """The index of the newest event in the table."""

    def compose_body(self) -> ComposeResult:
        yield Input(placeholder=FILTER_HELP, id="filter")
        yield Line(id="events-state")
        with Vertical(id="events-pane"):
            yield Static(header_line(), id="events-header")
            yield EventList(SHOWN, id="events")

    def update_view(self, changed) -> None:
        super().update_view(changed)
        if "events" in changed or not self._last:
            self._draw()

    def _draw(self) -> None:
        model = self.console.model
        # paused, the list stays as it was (a new filter shows what it held then, however
        # many events came since)
        upto = self._paused_at if self.paused else None
        rows = model.events_matching(self.filter, limit=SHOWN, upto=upto)
        shown = [row for row in rows if row.index > self._last]
        if shown:
            self.query_one("#events", EventList).append(shown)
            self._last = shown[-1].index
        waiting = 0
        if self.paused:
            for row in reversed(model.events):
                if row.index <= self._paused_at:
                    break
                waiting += self.filter.matches(row)
        self._draw_state(waiting)
        pane = self.query_one("#events-pane")
        retitle(pane, f"events (the last {SHOWN})")

    def _draw_state(self, waiting: int) -> None:
        text = Text()
        if self.paused:
            text.append(" PAUSED ", style="bold reverse yellow")
            text.append(f" {waiting} new", style="yellow")
        else:
            text.append(" ▶ LIVE ", style="bold reverse green")
        shown = len(self.query_one("#events", EventList).rows)
        text.append(f"  {shown} shown", style="dim")
        if said(self.filter):
            text.append("  filter: ", style="dim")
            text.append(said(self.filter), style="bold")
        else:
            text.append("  / filters, space pauses", style="dim")
        self.query_one("#events-state", Line).show(text)

    def set_filter(self, f: EventFilter) -> None:
        self.filter = f
        self._last = 0
        self.query_one("#events", EventList).clear()
        self._draw()

    def action_edit_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = said(self.filter)
        box.display = True
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.input.display = False
        self.query_one("#events", EventList).focus()
        self.set_filter(parse_filter(event.value))

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if box.display:  # esc while typing one: leave the filter as it was
            box.display = False
            self.query_one("#events", EventList).focus()
        elif said(self.filter):
            self.set_filter(EventFilter())

    def action_pause(self) -> None:
        self.paused = not self.paused
        self._paused_at = self._last
        self._draw()

    def on_event_list_selected(self, event: EventList.Selected) -> None:
        self.app.push_screen(PayloadScreen(event.row))

    def action_payload(self) -> None:
        self.query_one("#events", EventList).action_select()
