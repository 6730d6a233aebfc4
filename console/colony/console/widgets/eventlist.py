"""The events list: a scroll view that draws only the lines in sight, from a bounded deque.

A DataTable measures every cell of every row added and re-indexes rows on removal, which
at a thousand changes a second costs more than the frame; this draws the visible rows
(a few dozen) per frame, whatever the rate, and forgets the oldest beyond its bound.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from rich.text import Text
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from colony.console.model import EventRow
from colony.console.widgets import cells

KIND_STYLE = {"job": "cyan", "instance": "blue", "node": "magenta", "leader": "yellow"}
COLUMNS = (("TIME", 8), ("#", 7), ("KIND", 9), ("ID", 14), ("VER", 4))
"""The fixed columns (title, width); the summary takes the rest."""


def event_line(row: EventRow) -> Text:
    dim = "" if row.live else "dim"
    text = Text(no_wrap=True, overflow="crop")
    text.append(cells.clock_time(row.ts).ljust(8), style="dim")
    text.append(" " + str(row.index).rjust(7), style="dim")
    text.append(" " + row.kind.ljust(9)[:9], style=KIND_STYLE.get(row.kind, ""))
    text.append(" " + cells.clip(row.id, 14).ljust(14), style=dim)
    text.append(" " + str(row.version).rjust(4), style="dim")
    text.append("  " + row.summary, style=dim)
    return text


def header_line() -> Text:
    titles = [title.rjust(w) if title in ("#", "VER") else title.ljust(w) for title, w in COLUMNS]
    return Text(" ".join(titles) + "  SUMMARY", style="bold", no_wrap=True)


class EventList(ScrollView, can_focus=True):
    """Events, newest last; the cursor stays on the newest while it is there (following)."""

    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("enter", "select", "Payload", show=False),
    ]
    COMPONENT_CLASSES = {"eventlist--cursor"}
    DEFAULT_CSS = """
    EventList > .eventlist--cursor {
        background: $block-cursor-background;
        color: $block-cursor-foreground;
        text-style: bold;
    }
    EventList:blur > .eventlist--cursor {
        background: $block-cursor-blurred-background;
        text-style: none;
    }
    """

    cursor = reactive(-1, repaint=False)

    class Selected(Message):
        """Enter on an event."""

        def __init__(self, row: EventRow) -> None:
            super().__init__()
            self.row = row

    def __init__(self, limit: int, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows: deque[EventRow] = deque(maxlen=limit)

    @property
    def selected(self) -> EventRow | None:
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    def append(self, rows: Iterable[EventRow]) -> None:
        """Add rows at the bottom (the oldest beyond the limit go); the cursor follows the
        newest when it was on the last row, else stays on its row."""
        new = list(rows)
        following = self.cursor >= len(self.rows) - 1
        before = len(self.rows)
        self.rows.extend(new)
        dropped = before + len(new) - len(self.rows)
        self.virtual_size = Size(self.size.width, len(self.rows))
        if following:
            self.cursor = len(self.rows) - 1
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        elif dropped:
            self.cursor = max(0, self.cursor - dropped)
            self.scroll_to(y=max(0, self.scroll_offset.y - dropped), animate=False, immediate=True)
        self.refresh()

    def clear(self) -> None:
        self.rows.clear()
        self.cursor = -1
        self.virtual_size = Size(self.size.width, 0)
        self.scroll_home(animate=False, immediate=True)
        self.refresh()

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        index = self.scroll_offset.y + y
        base = self.rich_style
        if index >= len(self.rows):
            return Strip.blank(width, base)
        text = event_line(self.rows[index])
        text.truncate(width, overflow="crop", pad=True)
        if index == self.cursor:
            text.stylize(self.get_component_rich_style("eventlist--cursor"))
        return Strip(text.render(self.app.console)).apply_style(base).crop_extend(0, width, base)

    def on_click(self, event) -> None:
        self._move_to(self.scroll_offset.y + event.y)

    def watch_cursor(self, before: int, after: int) -> None:
        self.refresh()

    def _move_to(self, index: int) -> None:
        if not self.rows:
            return
        self.cursor = max(0, min(len(self.rows) - 1, index))
        top, height = self.scroll_offset.y, self.scrollable_content_region.height
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False, immediate=True)

    def action_cursor(self, step: int) -> None:
        self._move_to(self.cursor + step)

    def action_page(self, step: int) -> None:
        self._move_to(self.cursor + step * max(1, self.scrollable_content_region.height - 1))

    def action_jump(self, index: int) -> None:
        self._move_to(index if index >= 0 else len(self.rows) - 1)

    def action_select(self) -> None:
        if (row := self.selected) is not None:
            self.post_message(self.Selected(row))
