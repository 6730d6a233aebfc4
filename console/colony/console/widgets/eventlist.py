"""The events list: a scroll view that draws only the lines in sight, from a bounded deque.

A DataTable measures every cell of every row added and re-indexes rows on removal, which
at a thousand changes a second costs more than the frame; this draws the visible rows
(a few dozen) per frame, whatever the rate, and forgets the oldest beyond its bound.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterable

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from colony.console.model import EventRow
from colony.console.widgets import cells

KIND_STYLE = {"job": "cyan", "instance": "blue", "node": "magenta", "leader": "yellow"}
COLUMNS = (("TIME", 8), ("#", 7), ("KIND", 9), ("ID", 14), ("VER", 4))
"""The fixed columns (title, width); the summary takes the rest."""


def event_parts(row: EventRow) -> list[tuple[str, str]]:
    """An event's line: (text, style) per column."""
    dim = "" if row.live else "dim"
    return [
        (cells.clock_time(row.ts).ljust(8), "dim"),
        (" " + str(row.index).rjust(7), "dim"),
        (" " + row.kind.ljust(9)[:9], KIND_STYLE.get(row.kind, "")),
        (" " + cells.clip(row.id, 14).ljust(14), dim),
        (" " + str(row.version).rjust(4), "dim"),
        ("  " + row.summary, dim),
    ]


@functools.cache
def _style(name: str) -> Style:
    return Style.parse(name)


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
        self._base = Style()
        self._cursor = Style()

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

    def render_lines(self, crop: Region) -> list[Strip]:
        # the styles every line shares, looked up once a frame, not once a line
        self._base = self.rich_style
        self._cursor = self.get_component_rich_style("eventlist--cursor")
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        index = self.scroll_offset.y + y
        base = self._base
        if index >= len(self.rows):
            return Strip.blank(width, base)
        cursor = self._cursor if index == self.cursor else None
        # (segments made directly: a Rich Text rendered per line costs several times more,
        # and at a thousand changes a second every line in sight is new each frame)
        segments = []
        for part, extra in event_parts(self.rows[index]):
            style = base + _style(extra) if extra else base
            segments.append(Segment(part, style + cursor if cursor else style))
        pad = base + cursor if cursor else base
        return Strip(segments).crop_extend(0, width, pad)

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
