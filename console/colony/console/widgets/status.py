"""The bar at the top of every screen: where you are, and whether what you see is live."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from colony.console.widgets.cells import CONNECTION_STYLE

TABS = (
    ("1", "Cluster", "cluster"),
    ("2", "Jobs", "jobs"),
    ("3", "Events", "events"),
    ("4", "Logs", "logs"),
)


class StatusBar(Widget):
    """Tabs, then the connection state, the node it goes through and the last change
    index seen; the server URL and the leader when the width allows."""

    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; color: $foreground; }
    """

    def __init__(self, mode: str, id: str | None = None) -> None:
        super().__init__(id=id)
        self.mode = mode

    def render(self) -> Text:
        app = self.app
        model = app.model  # type: ignore[attr-defined]
        conn = model.connection
        width = self.size.width
        left = Text.assemble((" ◆ colony ", "bold reverse"), " ")
        for key, label, mode in TABS:
            if mode == self.mode:
                left.append(f" {key} {label} ", style="bold reverse")
            else:
                left.append(f" {key}", style="bold")
                left.append(f" {label} ", style="dim")
        mark, style = CONNECTION_STYLE.get(conn.state, ("?", ""))
        state = conn.state
        if state == "connected" and conn.detail:  # the server answers, the voters do not
            mark, style = "◐", "yellow"
            state = "connected, no voter answers"
        right = Text.assemble((mark + " ", style), (state, style))
        if conn.node:
            right.append(" via ")
            right.append(conn.node, style="bold")
        # (display order, priority: the most useful kept when there is no room)
        extra: list[tuple[int, Text]] = []
        if conn.detail:  # (connected with a detail: the state cannot be read; say why)
            extra.append((0, Text(conn.detail, style="red")))
        extra.append((3, Text(f"#{model.index}", style="dim")))
        if model.leader:
            extra.append((2, Text.assemble(("leader ", "dim"), model.node_name(model.leader))))
        if conn.server:
            extra.append((1, Text(conn.server, style="dim")))
        room = width - left.cell_len - right.cell_len - 2
        kept: list[tuple[int, Text]] = []
        for order, piece in extra:
            if order == 0 and piece.cell_len + 2 > room:  # what went wrong: cut, not left out
                piece.truncate(max(0, room - 2), overflow="ellipsis")
            if piece.cell_len and piece.cell_len + 2 <= room:
                kept.append((order, piece))
                room -= piece.cell_len + 2
        for _, piece in sorted(kept, key=lambda k: k[0], reverse=True):
            right = Text.assemble(piece, "  ", right)
        gap = max(1, width - left.cell_len - right.cell_len - 1)
        return Text.assemble(left, " " * gap, right, " ", no_wrap=True, overflow="crop")
